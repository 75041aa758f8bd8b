"""The shallow-water twin experiment with every method at three noise levels, both priors.

    python benchmarks/bench_swe_twin.py [--size demo|full] [--model BUNDLE]
                                        [--priors hard easy] [--output DIR] [--device cuda]

``--size demo`` is the reduced setup of ``xensf demo`` (40 x 40 cells, the paper's
10 x 10 observation network, the shipped latent model); ``--size full`` is the paper's
(150 x 150, every 15th point, 2000 steps, 20 members; trains its latent model first
unless ``--model`` is given; GPU advised). For each prior it runs ``xensf demo`` with
observation noise 0, 10 and 20 % and all methods, which prints the table (relative
RMSE of the ensemble mean over the second half of the run), writes
``DIR/<prior>/summary.json``, the zarr stores and the figures
(``relative-rmse.png``, ``maps-eta.png``, ...). The closing summary gives each method's
relative RMSE over the first / the second half of the run (from the stores), and the
latent model's own floor: its reconstruction of the truth run (encode -> decode, no
assimilation). Definitions: :mod:`xensf.twin`.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from xensf.cli import SWE_METHODS
from xensf.demo_swe import run, shipped_model_path
from xensf.twin import field_scales, relative_rmse

FIELDS = ("eta", "u", "v")


def halves(curve: xr.DataArray) -> str:
    """``first / second``: the curve's mean over each half of the run."""
    k = curve.sizes["time"] // 2
    return f"{float(curve[:k].mean()):.3f} / {float(curve[k:].mean()):.3f}"


def open_store(path: Path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr 3 on consolidated metadata
        return xr.open_zarr(path)


def store_halves(path: Path, suffix: str, truth: xr.Dataset, scales) -> str:
    """Relative RMSE of a store's ``{field}{suffix}`` (member means), first / second half."""
    store = open_store(path)
    state = xr.Dataset({v: store[f"{v}{suffix}"] for v in FIELDS})
    return halves(relative_rmse(state, truth.sel(time=state.time), scales))


def reconstruction(model_path, truth: xr.Dataset, scales) -> str:
    """The latent model's floor: relative RMSE of decode(encode(truth)), by half."""
    from xensf.latent import LatentModel

    model = LatentModel.load(model_path)
    x = torch.as_tensor(np.stack([truth[v].values for v in FIELDS], 1))
    rec = model.decode(model.encode(x)[0]).cpu().numpy()
    decoded = truth.copy(data={v: rec[:, i] for i, v in enumerate(FIELDS)})
    return halves(relative_rmse(decoded, truth, scales))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["demo", "full"], default="demo")
    parser.add_argument("--model", default=None)
    parser.add_argument("--priors", nargs="+", default=["hard", "easy"], choices=["hard", "easy"])
    parser.add_argument("--noise", nargs="+", type=float, default=[0.0, 10.0, 20.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--output", default="swe-twin")
    args = parser.parse_args()
    results = {}
    for prior in args.priors:
        out = Path(args.output) / prior
        print(f"\n===== {prior} prior =====")
        run(
            argparse.Namespace(
                full=args.size == "full",
                methods=list(SWE_METHODS),
                noise=args.noise,
                prior=prior,
                model=args.model,
                seed=args.seed,
                device=args.device,
                output=str(out),
                no_plot=False,
            )
        )
        results[prior] = json.loads((out / "summary.json").read_text())
    model_path = args.model or (shipped_model_path() if args.size == "demo" else None)
    summarise(Path(args.output), results, model_path)


def summarise(output: Path, results: dict, model_path) -> None:
    """Print each method's first / second half relative RMSE, and the model's floor."""
    print("\n===== summary: relative RMSE, mean over the first / the second half =====")
    for i, (prior, summary) in enumerate(results.items()):
        out = output / prior
        truth = open_store(out / "truth.zarr").load()
        scales = field_scales(truth)
        noises = summary["noise_percent"]
        print(f"\n{prior} prior")
        print(f"{'method':<14}" + "".join(f"{f'{p:g}%':>18}" for p in noises))
        for method in summary["relative_rmse_second_half"]:
            if method == "free run":  # one run, the same for every noise level
                cells = [store_halves(out / "free-run.zarr", "", truth, scales)] * len(noises)
            else:
                cells = [
                    store_halves(
                        out / f"{method}-noise{p:g}.zarr", "_analysis_mean", truth, scales
                    )
                    for p in noises
                ]
            print(f"{method:<14}" + "".join(f"{c:>18}" for c in cells))
        if model_path is not None and i == 0:
            print(
                f"latent model floor, decode(encode(truth)): {reconstruction(model_path, truth, scales)}"
            )


if __name__ == "__main__":
    main()
