"""Train the small latent model shipped for ``xensf demo`` and write it into the package.

    python scripts/make_demo_model.py [--output xensf/data/swe-demo.xensf] [--seed 0]

Runs the planar shallow-water basin of the demo's reduced setup
(:data:`xensf.demo_swe.DEMO_SETUP`, 40 x 40 cells) from random bump positions, none
the truth's (:func:`xensf.twin.training_runs`), and trains a Latent-EnSF model (state
VAE + observation encoder for eta, u, v observed at every 4th point) with the settings
in :data:`xensf.demo_swe.TRAINING` (100 epochs). Deterministic for a given seed on one
machine; takes about 35 minutes on two quiet CPU cores (20 s per epoch with two torch
threads). The bundle is safetensors + JSON.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from xensf.demo_swe import DEMO_SETUP, TRAINING, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        default=str(Path(__file__).resolve().parents[1] / "xensf" / "data" / "swe-demo.xensf"),
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    start = time.perf_counter()
    model = train_model(DEMO_SETUP, Path(args.output), "demo", seed=args.seed, device=args.device)
    record = model.config["training"]
    print(
        f"trained on {record['n_train']} + {record['n_val']} states in "
        f"{time.perf_counter() - start:.0f} s ({record['epochs_run']} epochs, best "
        f"{record['best_epoch']}); wrote {args.output} with {TRAINING['demo']}"
    )


if __name__ == "__main__":
    main()
