"""Train the small latent model shipped for ``xensf demo`` and write it into the package.

    python scripts/make_demo_model.py [--output xensf/data/swe-demo.xensf] [--seed 0]
    python scripts/make_demo_model.py --calibrate-only

Runs the planar shallow-water basin of the demo's reduced setup
(:data:`xensf.experiments.demo_swe.DEMO_SETUP`, 40 x 40 cells) from random bump positions, none
the truth's (:func:`xensf.experiments.twin.training_runs`), and trains a Latent-EnSF model (state
VAE with a 4 x 10 x 10 latent + observation encoder for eta, u, v observed at every 4th
point) with the settings in :data:`xensf.experiments.demo_swe.TRAINING`: the run ends at its time
budget of 28 minutes (the learning-rate schedule is stretched to it), in bfloat16: about
91 epochs with ``--threads 2`` on two quiet CPU cores with AVX-512 BF16 (47 in float32). So the result depends on the machine's
speed; the seed fixes everything else. On a CPU without native bfloat16 it trains in
float32 (a ``PrecisionWarning``; about 17 epochs on a 2-core AVX2 machine measured in
docs/performance.md): remake the shipped model on a CPU with AVX-512 BF16 or a GPU.
The bundle is safetensors + JSON.

``--calibrate-only`` keeps the weights of the bundle at ``--output`` and (re)measures
its latent observation error against the observation noise and against the share of
the layout observed (:func:`xensf.latent.calibrate_obs_error`) on 30 fresh runs from
other random bump positions (none the truth's; training runs are not reused). The
float32 sums depend on the thread count (the shipped curves: ``--threads 2``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from xensf.experiments.demo_swe import DEMO_SETUP, TRAINING, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output",
        default=str(Path(__file__).resolve().parents[1] / "xensf" / "data" / "swe-demo.xensf"),
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--lam", type=float, default=None, help="KL weight (default TRAINING's)")
    parser.add_argument(
        "--minutes", type=float, default=None, help="time budget (default TRAINING's)"
    )
    parser.add_argument(
        "--obs-dropout",
        type=float,
        default=None,
        help="largest share of a training sample's observations left out (default TRAINING's)",
    )
    parser.add_argument(
        "--calibrate-only",
        action="store_true",
        help="keep the weights; measure the latent error's noise curve on fresh runs",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.calibrate_only:
        calibrate(Path(args.output), args.device)
        return
    changes = {}
    if args.lam is not None:
        changes["lam"] = args.lam
    if args.obs_dropout is not None:
        changes["obs_dropout"] = args.obs_dropout
    if args.minutes is not None:
        changes["time_budget"] = args.minutes * 60
    start = time.perf_counter()
    model = train_model(
        DEMO_SETUP, Path(args.output), "demo", seed=args.seed, device=args.device, **changes
    )
    record = model.config["training"]
    print(
        f"trained on {record['n_train']} + {record['n_val']} states in "
        f"{time.perf_counter() - start:.0f} s ({record['epochs_run']} epochs, best "
        f"{record['best_epoch']}, {torch.get_num_threads()} torch threads); validation "
        f"relative RMSE per channel {model.config['quality']['relative_rmse']}; wrote "
        f"{args.output} with { ({**TRAINING['demo'], **changes}) }"
    )


def calibrate(path: Path, device: str) -> None:
    """Measure the shipped model's latent-error curve on fresh runs and re-save it."""
    import numpy as np

    import xensf
    from xensf.experiments.twin import observed_points, training_runs
    from xensf.latent import calibrate_obs_error, mask_obs

    model = xensf.load(path, device=device)
    runs = training_runs(DEMO_SETUP, 30, every=TRAINING["demo"]["every"], seed=8, device=device)
    names = model.config["variables"]
    states = np.stack([runs[v].values for v in names], axis=2).reshape(
        -1, len(names), *runs[names[0]].shape[-2:]
    )
    noise = model.config["obs_layout"]["noise"]["std_fraction"]
    curve = calibrate_obs_error(
        model, torch.from_numpy(states), mask_obs(observed_points(DEMO_SETUP), noise)
    )
    coverage = model.config["latent"]["coverage_error"]
    model.save(path)
    print(
        f"latent error on {states.shape[0]} fresh states at noise (normalised RMS) "
        + ", ".join(
            f"{n:.3f}: {float(np.sqrt(np.mean(np.square(s)))):.4f}"
            for n, s in zip(curve["noise"], curve["std"], strict=True)
        )
        + "; at coverage "
        + ", ".join(
            f"{c:g}: {float(np.sqrt(np.mean(np.square(s)))):.4f}"
            for c, s in zip(coverage["coverage"], coverage["std"], strict=True)
        )
        + f"; wrote {path}"
    )


if __name__ == "__main__":
    main()
