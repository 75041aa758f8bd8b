"""How the shipped demo model's observation encoder reads observations off its layout.

The encoder was trained on every 4th point (from cell 2) of the 40 x 40 demo basin. For
states of fresh runs (random bump positions, none the truth's, none a training run),
the relative error of ``decode(encode_obs(y))`` with noise-free observations at: its
layout; its layout shifted by two cells; its layout and the odd cells between; every
other point, its layout among them; every point. What ``ObservationLayoutWarning`` guards
against (docs/method.md, "Observations outside the layout"). Prints a table.

    python benchmarks/bench_obs_layout.py [--runs 5] [--threads 1]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import xensf
from xensf.experiments.demo_swe import DEMO_SETUP, shipped_model_path
from xensf.experiments.twin import observed_points, training_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = xensf.load(shipped_model_path())
    runs = training_runs(DEMO_SETUP, args.runs, every=50, seed=11, device="cpu")
    names = model.config["variables"]
    states = np.stack([runs[v].values for v in names], axis=2)
    x = torch.from_numpy(states.reshape(-1, len(names), *states.shape[-2:])).float()
    n = DEMO_SETUP.n
    layout = torch.from_numpy(observed_points(DEMO_SETUP))
    shifted = torch.roll(layout, shifts=(2, 2), dims=(0, 1))
    odd = torch.zeros(n, n, dtype=torch.bool)
    odd[1::2, 1::2] = True  # none of the layout's points (they lie at even cells)
    even = torch.zeros(n, n, dtype=torch.bool)
    even[::2, ::2] = True  # the layout's points among them
    cases = {
        "its layout (every 4th point)": layout,
        "its layout shifted by two cells": shifted,
        "its layout and the odd points between": odd | layout,
        "every other point, its layout among them": even,
        "every point": torch.ones(n, n, dtype=torch.bool),
    }
    xn = model.normalize(x)
    print(
        f"{x.shape[0]} states of {args.runs} fresh runs; relative error of decode(encode_obs(y))"
    )
    print(f"{'observed points':<44} {'values':>6} {'error':>7}")
    with torch.no_grad():
        for label, mask in cases.items():
            decoded = model.decode(model.encode_obs(torch.where(mask, x, torch.nan))[0])
            error = float(
                (model.normalize(decoded) - xn).square().mean().sqrt() / xn.square().mean().sqrt()
            )
            print(f"{label:<44} {int(mask.sum()) * len(names):>6} {error:>7.3f}")


if __name__ == "__main__":
    main()
