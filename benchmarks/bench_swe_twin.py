"""The shallow-water twin experiment with every method at three noise levels, both priors.

    python benchmarks/bench_swe_twin.py [--size demo|full] [--model BUNDLE]
                                        [--priors hard easy] [--output DIR] [--device cuda]
                                        [--truth-position X Y] [--prior-position X Y]
                                        [--letkf-inflation F | --adaptive-inflation D]
                                        [--train-minutes M]

``--size demo`` is the reduced setup of ``xensf demo`` (40 x 40 cells, the paper's
10 x 10 observation network, the shipped latent model); ``--size full`` is the paper's
(150 x 150, every 15th point, 2000 steps, 20 members; trains its latent model first,
once for both priors, into ``DIR/swe-full.xensf`` unless ``--model`` is given, for
``--train-minutes`` (default 60); GPU advised). For each prior it runs ``xensf demo`` with
observation noise 0, 10 and 20 % and all methods, which prints the table (relative
RMSE of the ensemble mean over the second half of the run), writes
``DIR/<prior>/summary.json``, the zarr stores and the figures
(``relative-rmse.png``, ``maps-eta.png``, ...). The closing summary gives each method's
relative RMSE over the first / the second half of the run (from the stores), and the
latent model's own floor: its reconstruction of the truth run (encode -> decode, no
assimilation), and its observation encoder's: the truth observed noise-free at the
observed points, encoded and decoded. ``--letkf-inflation`` sets the multiplicative
inflation of the LETKF methods (the setup's 1.1 otherwise); ``--adaptive-inflation D``
gives them adaptive inflation instead (Miyoshi 2011, started from none, damping ``D``,
1 = persistence). Definitions:
:mod:`xensf.experiments.twin`.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from xensf.cli import SWE_METHODS
from xensf.experiments.demo_swe import (
    DEMO_SETUP,
    FULL_SETUP,
    full_model,
    run_twin,
    shipped_model_path,
)
from xensf.experiments.twin import field_scales
from xensf.metrics import relative_rmse

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


def spread_skill(path: Path, truth: xr.Dataset, scales) -> float:
    """Analysis spread / analysis error over the second half (each variable / its s_v).

    Both are root-mean-squares over the grid, the variables and the times of the
    second half: the spread of the members about their mean, and the error of the mean.
    A calibrated ensemble has a ratio near 1.
    """
    store = open_store(path)
    k = store.sizes["time"] // 2
    spread = err = 0.0
    for v in FIELDS:
        mean = store[f"{v}_analysis_mean"][k:]
        spread += float(((store[f"{v}_analysis_spread"][k:] / scales[v]) ** 2).mean())
        err += float((((mean - truth[v].sel(time=mean.time)) / scales[v]) ** 2).mean())
    return float(np.sqrt(spread / err))


def blends(path: Path) -> str:
    """How many cycles of a ``latent-ensf-letkf`` run blended, of how many, and the
    largest weight (a run made before the weight was stored: "-")."""
    store = open_store(path)
    if "blend_weight" not in store:
        return "-"
    weight = store.blend_weight.values
    return f"{int((weight > 0).sum())}/{weight.size}, {weight.max():.2f}"


def decoded_floor(decoded: np.ndarray, truth: xr.Dataset, scales) -> str:
    """Relative RMSE of ``decoded`` ``(time, field, y, x)`` against ``truth``: the mean
    over its times, then by half."""
    decoded = truth.copy(data={v: decoded[:, i] for i, v in enumerate(FIELDS)})
    curve = relative_rmse(decoded, truth, scales)
    return f"{float(curve.mean()):.3f} (halves {halves(curve)})"


def reconstruction(model, truth: xr.Dataset) -> np.ndarray:
    """The latent model's floor: decode(encode(truth)) at every time of the run."""
    x = torch.as_tensor(np.stack([truth[v].values for v in FIELDS], 1))
    return model.decode(model.encode(x)[0]).cpu().numpy()


def observation_floor(model, truth: xr.Dataset, setup: dict) -> np.ndarray:
    """The observation encoder's floor: decode(encode_obs(truth at the observed
    points)), noise-free, at every time of ``truth``. A latent analysis that only
    followed the encoded observation would sit here; below it, the prior's
    information counts."""
    from xensf.experiments.twin import TwinSetup, observed_points

    mask = observed_points(TwinSetup(n=setup["n"], stride=setup["stride"]))
    x = torch.as_tensor(np.stack([truth[v].values for v in FIELDS], 1))
    seen = torch.as_tensor(mask).expand_as(x)
    return model.decode(model.encode_obs(torch.where(seen, x, torch.nan), seen)[0]).cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["demo", "full"], default="demo")
    parser.add_argument("--model", default=None)
    parser.add_argument("--priors", nargs="+", default=["hard", "easy"], choices=["hard", "easy"])
    parser.add_argument("--noise", nargs="+", type=float, default=[0.0, 10.0, 20.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--output", default="swe-twin")
    parser.add_argument("--methods", nargs="+", default=list(SWE_METHODS), choices=SWE_METHODS)
    parser.add_argument("--truth-position", nargs=2, type=float, default=None)
    parser.add_argument("--prior-position", nargs=2, type=float, default=None)
    parser.add_argument(
        "--letkf-inflation", type=float, default=None,
        help="multiplicative inflation of letkf and of latent-ensf-letkf's LETKF step "
        "(default: the setup's, 1.1)",
    )  # fmt: skip
    parser.add_argument(
        "--adaptive-inflation", type=float, default=None, metavar="DAMPING",
        help="adaptive inflation (Miyoshi 2011) instead of the fixed factor for letkf and "
        "latent-ensf-letkf's LETKF step, with this damping (1: persistence)",
    )  # fmt: skip
    parser.add_argument(
        "--members", type=int, default=None, help="ensemble size (default: the setup's, 20)"
    )
    parser.add_argument(
        "--blend-evidence", action="store_true",
        help="latent-ensf-letkf blends on the evidence accumulated over cycles "
        "(blend_evidence=0.0) instead of each analysis's alone",
    )  # fmt: skip
    parser.add_argument(
        "--obs-gaps", type=float, default=0.0, metavar="SHARE",
        help="leave out this share of the observed points at random at each cycle",
    )  # fmt: skip
    parser.add_argument(
        "--train-minutes", type=float, default=None,
        help="--size full without --model: the latent model's training budget (default 60)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.letkf_inflation is not None and args.adaptive_inflation is not None:
        parser.error("--letkf-inflation and --adaptive-inflation exclude each other")
    if args.size == "full" and args.model is None:  # one model for both priors
        setup = FULL_SETUP.with_(seed=args.seed)
        if args.truth_position is not None:
            setup = setup.with_(truth_position=tuple(args.truth_position))
        budget = None if args.train_minutes is None else args.train_minutes * 60
        path = Path(args.output) / "swe-full.xensf"
        args.model = str(full_model(setup, path, device=args.device, train_budget=budget))
    results = {}
    for prior in args.priors:
        out = Path(args.output) / prior
        print(f"\n===== {prior} prior =====")
        setup = (FULL_SETUP if args.size == "full" else DEMO_SETUP).with_(
            prior=prior, seed=args.seed
        )
        for name in ("truth_position", "prior_position"):
            if getattr(args, name) is not None:
                setup = setup.with_(**{name: tuple(getattr(args, name))})
        if args.letkf_inflation is not None:
            setup = setup.with_(letkf_inflation=args.letkf_inflation)
        if args.adaptive_inflation is not None:
            setup = setup.with_(letkf_adaptive_damping=args.adaptive_inflation)
        if args.blend_evidence:
            setup = setup.with_(blend_evidence=True)
        if args.members is not None:
            setup = setup.with_(members=args.members)
        if args.obs_gaps:
            setup = setup.with_(obs_gaps=args.obs_gaps)
        results[prior] = run_twin(
            setup, args.methods, args.noise, out, model=args.model, kind=args.size,
            device=args.device,
        )  # fmt: skip
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
        print(f"{'method':<18}" + "".join(f"{f'{p:g}%':>18}" for p in noises))
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
            print(f"{method:<18}" + "".join(f"{c:>18}" for c in cells))
        print("spread / skill of the analyses over the second half (1 = calibrated)")
        for method in summary["relative_rmse_second_half"]:
            if method == "free run":
                continue
            cells = [
                f"{spread_skill(out / f'{method}-noise{p:g}.zarr', truth, scales):.2f}"
                for p in noises
            ]
            print(f"{method:<18}" + "".join(f"{c:>18}" for c in cells))
        if "latent-ensf-letkf" in summary["relative_rmse_second_half"]:
            print(
                "latent-ensf-letkf: cycles that blended (blend_weight > 0), their largest weight"
            )
            cells = [blends(out / f"latent-ensf-letkf-noise{p:g}.zarr") for p in noises]
            print(f"{'':<18}" + "".join(f"{c:>18}" for c in cells))
        if model_path is not None and i == 0:
            from xensf.latent import LatentModel

            model = LatentModel.load(model_path)
            floor = decoded_floor(reconstruction(model, truth), truth, scales)
            print(f"latent model floor, decode(encode(truth)): {floor}")
            later = truth.isel(time=slice(1, None))  # the analysis times
            rec = observation_floor(model, later, summary["setup"])
            floor = decoded_floor(rec, later, scales)
            print(f"observation encoder floor, decode(encode_obs(observed truth)): {floor}")


if __name__ == "__main__":
    main()
