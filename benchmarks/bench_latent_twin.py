"""Latent-EnSF against full-space EnSF and LETKF on an advected-blob twin experiment.

A latent model is trained with ``xensf.bridge.training.train_latent`` on runs of a
Gaussian bump advected across a periodic planar basin from random positions
(``tests/blob.py``); it is then applied, through ``prior.ensf.assimilate``, to a
held-out true run observed at every 10th point in each direction (1/100 of the grid)
with 10 % noise. Two priors of 10 members:

* **hard** (the headline): members start around a wrong position, so the ensemble
  spread does not contain the displacement;
* **easy**: members start around the truth's position with a jitter of a few cells,
  so the uncertainty is nearly two-dimensional and ensemble methods should do well.

The table gives, per method, the relative RMSE of the ensemble mean (RMSE over all
times and points divided by the truth's spatial standard deviation) and the analysis
time; the training time is printed above it.

    python benchmarks/bench_latent_twin.py [--quick] [--device cpu|cuda] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from blob import (
    TRUTH_START,
    BlobGrid,
    blob_observations,
    blob_prior,
    blob_training,
    blob_truth,
    relative_rmse,
)

import xensf  # noqa: F401  (registers the accessor)
from xensf.bridge.training import train_latent

STRIDE = 10
NOISE = 0.1
MEMBERS = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40x40, small network (<2 min CPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.quick:
        grid = BlobGrid(n=40, sigma=5.0)
        runs, steps, n_times = 60, 10, 4
        net = dict(latent_dim=8, width=4, blocks=1, epochs=15, batch_size=16, lr=3e-3)
    else:
        grid = BlobGrid(n=50, sigma=6.0)
        runs, steps, n_times = 200, 10, 8
        net = dict(latent_dim=8, width=8, blocks=1, epochs=40, batch_size=16, lr=3e-3)

    training = blob_training(n_runs=runs, n_times=steps, grid=grid, seed=1)
    start = time.perf_counter()
    model = train_latent(
        training,
        STRIDE,
        noise=f"{NOISE:.0%}",
        patience=net["epochs"],
        seed=args.seed,
        device=args.device,
        progress=False,
        **net,
    )
    train_s = time.perf_counter() - start
    record = model.config["training"]
    n_obs = (len(range(0, grid.n, STRIDE))) ** 2
    print(
        f"grid {grid.n}x{grid.n}, {n_obs} observed points (1/{grid.n**2 // n_obs}), "
        f"noise {NOISE:.0%}, {MEMBERS} members, {n_times} analysis times"
    )
    print(
        f"training: {record['n_train']} + {record['n_val']} states, {record['epochs_run']} "
        f"epochs (best {record['best_epoch']}), {train_s:.1f} s on {record['device']}, "
        f"latent_dim {model.latent_dim} ({'x'.join(map(str, model.latent_shape))}), "
        f"width {net['width']}, {net['blocks']} block(s) per scale"
    )

    truth = blob_truth(n_times, grid=grid)
    obs, std = blob_observations(truth, stride=STRIDE, noise=NOISE, seed=3 + args.seed)
    obs_error = float(std.mean())
    priors = {
        "hard": blob_prior(MEMBERS, n_times, grid=grid, seed=2 + args.seed),
        "easy": blob_prior(
            MEMBERS, n_times, grid=grid, start=TRUTH_START, jitter=3.0, seed=2 + args.seed
        ),
    }
    methods = {
        "prior": None,
        "ensf": dict(method="ensf", obs_error=obs_error),
        "letkf": dict(method="letkf", obs_error=obs_error, loc_radius=None),  # global ETKF
        "latent-ensf": dict(model=model),
        "latent-letkf": dict(model=model, method="latent-letkf"),
    }
    rows = []
    for name, kwargs in methods.items():
        row = [name]
        for prior in priors.values():
            if kwargs is None:
                row += [relative_rmse(prior, truth), 0.0]
                continue
            t0 = time.perf_counter()
            post = prior.ensf.assimilate(obs, seed=args.seed, device=args.device, **kwargs)
            post = post.compute()
            row += [relative_rmse(post, truth), time.perf_counter() - t0]
        rows.append(row)

    print()
    print(
        f"{'method':<14}{'hard: rel. RMSE':>16}{'time s':>9}{'easy: rel. RMSE':>18}{'time s':>9}"
    )
    for name, e_hard, t_hard, e_easy, t_easy in rows:
        print(f"{name:<14}{e_hard:>16.3f}{t_hard:>9.2f}{e_easy:>18.3f}{t_easy:>9.2f}")
    decoded = model.decode(model.encode_obs(np.asarray(obs.h.values)[:, None])[0]).cpu().numpy()
    only = truth.copy()
    only["h"] = (truth.h.dims, decoded[:, 0])
    print(
        f"\n(the observation encoder alone, decoded, without any prior: "
        f"{relative_rmse(only, truth):.3f})"
    )


if __name__ == "__main__":
    main()
