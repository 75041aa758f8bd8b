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
(``relative-rmse.png``, ``maps-eta.png``, ...). Definitions: :mod:`xensf.twin`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xensf.cli import SWE_METHODS
from xensf.demo_swe import run


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
    print("\n===== summary: relative RMSE, mean over the second half =====")
    for prior, summary in results.items():
        table = summary["relative_rmse_second_half"]
        labels = [f"{p:g}%" for p in summary["noise_percent"]]
        print(f"\n{prior} prior")
        print(f"{'method':<14}" + "".join(f"{lab:>10}" for lab in labels))
        for method, row in table.items():
            print(f"{method:<14}" + "".join(f"{row[lab]:>10.3f}" for lab in labels))


if __name__ == "__main__":
    main()
