"""The ``xensf`` command.

- ``xensf demo``: the shallow-water twin experiment of the Latent-EnSF paper, reduced
  to run in a few minutes on two CPU cores (``--full``: the paper-size setup, GPU
  advised). Cycles every method, prints the table of relative errors, writes the zarr
  stores and the figures.
- ``xensf demo-era5``: sparse synthetic observations assimilated into the real ERA5
  ensemble sample shipped with the package.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["build_parser", "main"]

SWE_METHODS = ("latent-ensf", "latent-ensf-letkf", "ensf", "letkf", "latent-letkf")


def _demo(args: argparse.Namespace) -> int:
    from .demo_swe import run

    return run(args)


def _demo_era5(args: argparse.Namespace) -> int:
    from .demo_era5 import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xensf", description=__doc__.splitlines()[0])
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
    p.add_argument("--output", default="xensf-demo", help="folder for the stores and figures")
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
        "--stride", type=int, default=4, help="gridded: observe every STRIDE-th point (default 4)"
    )
    e.add_argument("--stations", type=int, default=200, help="points: number of random stations")
    e.add_argument("--seed", type=int, default=0, help="seed of the observation noise and of EnSF")
    e.add_argument("--output", default="xensf-demo-era5", help="folder for analyses and figures")
    e.add_argument("--no-plot", action="store_true", help="write no figures")
    e.set_defaults(func=_demo_era5)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "stride", 1) < 1 or getattr(args, "stations", 1) < 1:
        print("xensf: --stride and --stations must be positive", file=sys.stderr)
        return 2
    if args.command == "demo" and args.noise is not None:
        bad = [p for p in args.noise if not 0 <= p < 100]
        if bad:
            print(f"xensf demo: --noise takes percentages in [0, 100), got {bad}", file=sys.stderr)
            return 2
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
