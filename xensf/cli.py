"""The ``xensf`` command.

- ``xensf demo``: the shallow-water twin experiment of the Latent-EnSF paper, reduced
  to run in a few minutes on two CPU cores (``--full``: the paper-size setup, GPU
  advised). Cycles every method, prints the table of relative errors, writes the zarr
  stores and the figures.
- ``xensf demo-era5``: sparse synthetic observations assimilated into the real ERA5
  ensemble sample shipped with the package.
- ``xensf info BUNDLE``: what a latent model was trained on and how well it
  reconstructs its validation data, read from the bundle's JSON (no weights loaded).

``python -m xensf`` is the same command.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]

SWE_METHODS = ("latent-ensf", "latent-ensf-letkf", "ensf", "letkf", "latent-letkf")


def _demo(args: argparse.Namespace) -> int:
    from .experiments.demo_swe import run

    return run(args)


def _demo_era5(args: argparse.Namespace) -> int:
    from .experiments.demo_era5 import run

    return run(args)


def _info(args: argparse.Namespace) -> int:
    print(describe_bundle(args.bundle))  # an XensfError is reported by main
    return 0


def _coverage_text(curve) -> str:
    """What half the layout costs the encoder, from a model's coverage curve."""
    if not curve or 0.5 not in curve.get("coverage", []):
        return ""
    decoded = curve["obs_relative_rmse"]
    return (
        f"; decoded observation error {decoded[curve['coverage'].index(0.5)]:.3f} with half "
        f"the layout, {decoded[-1]:.3f} whole"
    )


def describe_bundle(path) -> str:
    """A plain-text account of a latent model bundle, from its JSON alone."""
    from .latent.bundle import bundle_info
    from .latent.model import _OBS_POINTS_TENSOR, COVERAGE_TOLERANCE, check_model_metadata
    from .latent.networks import LatentGrid

    info = bundle_info(path)
    meta = info["metadata"]
    check_model_metadata(meta, str(path))
    config = meta["config"]
    arch, data = config["architecture"], config.get("data") or {}
    latent = LatentGrid(
        tuple(arch["grid_shape"]), arch["latent_channels"], arch["patch"], arch["downsample"]
    )
    quality, training = config.get("quality") or {}, config.get("training") or {}
    layout = config.get("obs_layout") or {}
    lines = [
        f"{path}: xensf latent model (format version {meta['format_version']}), written by "
        f"xensf {info.get('xensf_version', '?')} on {info.get('created', '?')}",
        f"  grid        {arch['grid_shape'][0]} x {arch['grid_shape'][1]}"
        + (" (periodic longitude)" if arch["periodic_lon"] else "")
        + (f", dims ({data['lat_dim']}, {data['lon_dim']})" if "lat_dim" in data else ""),
        f"  latent      {' x '.join(map(str, latent.shape))} "
        f"(patch {arch['patch']}, {arch['downsample']} stride-2 stages, width "
        f"{arch['width']}, {arch['blocks']} residual blocks)",
        f"  observes    {layout.get('kind', '?')}"
        + (f", every {layout['stride']} points" if "stride" in layout else "")
        + (f", {layout['n_observed']} points per field" if "n_observed" in layout else "")
        + (f", {layout['n_obs']} station slots" if "n_obs" in layout else "")
        + (f" ({layout['n_values']} values in all)" if "n_values" in layout else "")
        + (f"; trained with noise {layout['noise']}" if "noise" in layout else ""),
        "  layout      "
        + (
            "its grid points recorded: observations elsewhere are kept from the encoder, "
            "with a warning"
            if layout.get("kind") == "gridded"
            and ("stride" in layout or _OBS_POINTS_TENSOR in (info.get("tensors") or {}))
            else "stations: the encoder reads its slots"
            if layout.get("kind") == "points"
            else "its points not recorded: observations anywhere on the grid reach the "
            "encoder (xensf.latent.calibrate_obs_error records them)"
        ),
        "  gaps        "
        + (
            f"trained with up to {training['obs_dropout']:.0%} of each sample's observations "
            "left out"
            if training.get("obs_dropout")
            else "trained on whole layouts only: warns when a time's observations cover "
            f"less than {1 - COVERAGE_TOLERANCE:.0%} of them"
        )
        + _coverage_text((config.get("latent") or {}).get("coverage_error")),
    ]
    channels = _channel_names(config, arch["channels"])
    units = config.get("units") or [None] * len(channels)
    rel = quality.get("relative_rmse") or [None] * len(channels)
    rmse = quality.get("rmse") or [None] * len(channels)
    lines.append("  channels    validation reconstruction error (relative to the channel's std)")
    width = max([12, *map(len, channels)])
    for name, unit, r, a in zip(channels, units, rel, rmse, strict=False):
        shown = "not recorded" if r is None else f"{r:.3f}  (rmse {a:.4g} {unit or ''})"
        lines.append(f"    {name:<{width}} {shown}")
    if training:
        lines.append(
            f"  trained     {training.get('epochs_run', '?')} epochs (best {training.get('best_epoch', '?')}) "
            f"in {training.get('seconds', 0):.0f} s on {training.get('device', '?')}; "
            f"{training.get('n_train', '?')} training, {training.get('n_val', '?')} validation states; "
            f"seed {training.get('seed', '?')}, lambda {training.get('lam', '?')}"
        )
    return "\n".join(lines)


def _channel_names(config: dict, n: int) -> list[str]:
    """Each channel's variable, with its level where it has one (``t (level 500 hPa)``)."""
    data = config.get("data") or {}
    units = dict(data.get("level_units") or {})
    at_one = {}  # a model of one level (a scalar level coordinate): every channel's
    for dim, (value, unit) in (data.get("scalar_levels") or {}).items():
        at_one[dim], units[dim] = value, unit
    if len(data.get("fields") or []) == n:
        return [
            name
            + "".join(
                f" ({dim} {value:g}{' ' + units[dim] if units.get(dim) else ''})"
                if isinstance(value, int | float)
                else f" ({dim} {value})"
                for dim, value in {**at, **at_one}.items()
            )
            for name, at in data["fields"]
        ]
    return config.get("variables") or [f"channel {i}" for i in range(n)]


def build_parser() -> argparse.ArgumentParser:
    from ._version import VERSION

    parser = argparse.ArgumentParser(
        prog="xensf",
        description="Ensemble data assimilation for xarray: the Latent Ensemble Score "
        "Filter, EnSF and LETKF. Run a demo, or describe a latent model bundle.",
    )
    parser.add_argument("--version", action="version", version=f"xensf {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "demo",
        help="the shallow-water twin experiment (sparse observations, every method)",
        description="Cycle Latent-EnSF, Latent-EnSF + LETKF, EnSF, LETKF and latent LETKF "
        "on the planar shallow-water basin observed at 1 point in 16 (reduced setup: a "
        "few minutes on two CPU cores), print the table of relative errors, write the "
        "zarr stores and the figures.",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="the paper-size setup (150x150, 2000 steps, 20 members; GPU advised; trains "
        "its latent model first unless --model is given)",
    )
    p.add_argument(
        "--methods", nargs="+", default=list(SWE_METHODS), choices=SWE_METHODS, metavar="METHOD"
    )
    p.add_argument(
        "--noise",
        nargs="+",
        type=float,
        default=None,
        metavar="PERCENT",
        help="observation noise levels in %% of each variable's std (default: 10; --full: 0 10 20)",
    )
    p.add_argument(
        "--prior",
        choices=["hard", "easy"],
        default="hard",
        help="which prior ensemble (default hard)",
    )
    p.add_argument(
        "--model", default=None, help="a latent model bundle to use instead of the shipped one"
    )
    p.add_argument(
        "--train-minutes",
        type=float,
        default=None,
        metavar="MINUTES",
        help="--full: the time budget of its latent model's training (default 60; the "
        "learning-rate schedule is stretched to it)",
    )
    p.add_argument(
        "--truth-position",
        nargs=2,
        type=float,
        default=None,
        metavar=("X", "Y"),
        help="the truth's bump position in fractions of the basin side from its centre "
        "(default 0.370 0.25, the paper's L/2.7, L/4)",
    )
    p.add_argument(
        "--prior-position",
        nargs=2,
        type=float,
        default=None,
        metavar=("X", "Y"),
        help="the hard prior's bump position, fractions of the side (default 0.5 0.333)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the observation noise and the filters"
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--output",
        default="xensf-demo",
        help="folder for the stores and figures (a rerun there replaces them)",
    )
    p.add_argument("--no-plot", action="store_true", help="write no figures")
    p.set_defaults(func=_demo)

    e = sub.add_parser(
        "demo-era5",
        help="assimilate synthetic sparse observations into the packaged ERA5 sample",
        description="Assimilate synthetic sparse observations into the real ERA5 ensemble "
        "sample shipped with xensf and print the error of the prior and of each analysis.",
    )
    e.add_argument("--methods", nargs="+", default=["ensf", "letkf"], choices=["ensf", "letkf"])
    e.add_argument(
        "--obs", choices=["gridded", "points"], default="gridded", help="observation layout"
    )
    e.add_argument(
        "--stride",
        type=int,
        default=None,
        help="gridded: observe every STRIDE-th point (default 4)",
    )
    e.add_argument(
        "--stations",
        type=int,
        default=None,
        help="points: number of random stations (default 200)",
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the observation noise and of EnSF")
    e.add_argument(
        "--output",
        default="xensf-demo-era5",
        help="folder for analyses and figures (a rerun there replaces them)",
    )
    e.add_argument("--no-plot", action="store_true", help="write no figures")
    e.set_defaults(func=_demo_era5)

    i = sub.add_parser(
        "info",
        help="describe a latent model bundle (what it was trained on, its quality)",
        description="Describe a latent model bundle from its JSON, without loading weights: "
        "grid, latent, observation layout, variables, validation reconstruction error and "
        "the training record.",
    )
    i.add_argument("bundle", help="the bundle (a NAME.xensf directory)")
    i.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("stride", "stations"):
        if getattr(args, flag, None) is not None and getattr(args, flag) < 1:
            print(
                f"xensf {args.command}: --{flag} takes a positive integer, got {getattr(args, flag)}",
                file=sys.stderr,
            )
            return 2
    if args.command == "demo" and args.noise is not None:
        bad = [p for p in args.noise if not 0 <= p < 100]
        if bad:
            print(f"xensf demo: --noise takes percentages in [0, 100), got {bad}", file=sys.stderr)
            return 2
    if args.command == "demo" and args.train_minutes is not None:
        problem = None
        if not (math.isfinite(args.train_minutes) and args.train_minutes > 0):
            problem = f"takes a positive number of minutes, got {args.train_minutes}"
        elif not args.full:
            problem = "applies to --full only (the reduced demo uses the shipped model)"
        elif args.model is not None:
            problem = "applies when the demo trains its model, not with --model"
        if problem:
            print(f"xensf demo: --train-minutes {problem}", file=sys.stderr)
            return 2
    problem = _argument_problem(args)
    if problem:
        print(f"xensf {args.command}: {problem}", file=sys.stderr)
        return 2
    if args.command == "demo-era5":  # the layout's own flag, given or by default
        args.stride = 4 if args.stride is None else args.stride
        args.stations = 200 if args.stations is None else args.stations
    from .errors import XensfError

    try:
        return args.func(args)
    except (XensfError, OSError) as err:  # what to fix, without a traceback
        print(f"xensf {args.command}: {err}", file=sys.stderr)
        return 1


def _argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the seed, the device or the bump positions, before any work."""
    if getattr(args, "seed", 0) < 0:
        return f"--seed takes a non-negative integer, got {args.seed}"
    for flag in ("noise", "methods"):
        given = getattr(args, flag, None) or []
        twice = sorted(
            {f"{v:g}" if isinstance(v, float) else v for v in given if given.count(v) > 1}
        )
        if twice:
            return f"--{flag} lists {', '.join(twice)} more than once; give each once"
    for flag in ("truth_position", "prior_position"):
        where = getattr(args, flag, None)
        if where is not None and not all(math.isfinite(v) and abs(v) <= 0.5 for v in where):
            return (
                f"--{flag.replace('_', '-')} takes fractions of the basin side from its "
                f"centre, each in [-0.5, 0.5]; got {where[0]:g} {where[1]:g}"
            )
    if args.command == "demo-era5":
        other = {"gridded": "stations", "points": "stride"}[args.obs]
        if getattr(args, other) is not None:
            return f"--{other} does not apply to --obs {args.obs}"
    if getattr(args, "prior_position", None) is not None and args.prior != "hard":
        return (
            "--prior-position places the hard prior's bump; the easy prior's members "
            "start around the truth's (--truth-position)"
        )
    output = getattr(args, "output", None)
    if output is not None:
        path = Path(output)
        blocked = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            where = "is" if blocked == path else f"lies under {str(blocked)!r}, which is"
            return f"--output {output!r} {where} a file; give a folder (made if missing)"
    from .errors import BundleError, OptionError

    if getattr(args, "device", None) is not None:
        from .filters.device import compute_device

        try:
            compute_device(args.device)
        except OptionError as err:
            return str(err)
    if getattr(args, "model", None) is not None:
        from .latent.bundle import bundle_info

        try:
            bundle_info(args.model)  # its JSON only: the weights are read when used
        except BundleError as err:
            return f"--model: {err}"
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
