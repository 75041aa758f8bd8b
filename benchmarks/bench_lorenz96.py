"""Lorenz-96 twin experiments: LETKF and EnSF on the 40-variable ring.

Setting: F = 8, RK4 with dt = 0.05, all 40 variables observed. Two observation
operators: the identity (unit error, observed every step, the classic Sakov & Oke 2008
setting) and arctan (error 0.05 as in the EnSF paper, observed every 10 steps, so the
prior spread spans the nonlinearity). Prints one row per experiment: time-mean
analysis RMSE after spin-up, and wall time per cycle (forecast + analysis).

    python benchmarks/bench_lorenz96.py            # the full table (a few minutes on CPU)
    python benchmarks/bench_lorenz96.py --quick    # under a minute
    python benchmarks/bench_lorenz96.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from xensf.filters.ensf import ensf_analysis
from xensf.filters.letkf import letkf_analysis
from xensf.filters.localization import cyclic_distance
from xensf.models.l96 import lorenz96_run, lorenz96_step

D = 40
ENSF_SETTINGS = dict(steps=50, eps_alpha=0.05, eps_beta=0.025, prior_score="mixture", scale=1.0)


@dataclass
class Experiment:
    method: str
    obs: str  # "identity" or "arctan"
    members: int
    options: dict = field(default_factory=dict)

    @property
    def obs_std(self) -> float:
        return 1.0 if self.obs == "identity" else 0.05

    @property
    def every(self) -> int:
        return 1 if self.obs == "identity" else 10

    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.method}" + (f" ({extra})" if extra else "")

    def analysis(self, device) -> Callable:
        op = torch.arange(D, device=device) if self.obs == "identity" else torch.arctan
        std = self.obs_std
        if self.method == "letkf":
            ring = torch.arange(float(D), device=device)

            def run(ens, y, cycle):
                return letkf_analysis(
                    ens, y, op, std, state_coords=ring, distance=cyclic_distance(D), **self.options
                )

            return run

        def run(ens, y, cycle):
            gen = torch.Generator(device=device).manual_seed(cycle)
            return ensf_analysis(ens, y, op, std, generator=gen, **ENSF_SETTINGS, **self.options)

        return run


def twin(exp: Experiment, n_cycles: int, spin_up: int, seed: int, device) -> tuple[float, float]:
    """Time-mean analysis RMSE after spin-up (inf if the filter diverged) and s/cycle."""
    g = torch.Generator(device=device).manual_seed(seed)
    truth = lorenz96_run(8.0 + torch.randn(D, generator=g, device=device), 1000)[-1]
    ens = truth + torch.randn(exp.members, D, generator=g, device=device)
    analysis = exp.analysis(device)
    errors = []
    start = time.perf_counter()
    for cycle in range(n_cycles):
        for _ in range(exp.every):
            truth = lorenz96_step(truth)
            ens = lorenz96_step(ens)
        if not bool(torch.isfinite(ens).all()):  # the filter diverged and the model blew up
            return math.inf, (time.perf_counter() - start) / (cycle + 1)
        h_truth = truth if exp.obs == "identity" else torch.arctan(truth)
        y = h_truth + exp.obs_std * torch.randn(D, generator=g, device=device)
        ens = analysis(ens, y, cycle)
        errors.append((ens.mean(0) - truth).pow(2).mean().sqrt())
    errors = torch.stack(errors).cpu().numpy()  # one sync at the end
    per_cycle = (time.perf_counter() - start) / n_cycles
    return float(np.mean(errors[spin_up:])), per_cycle


EXPERIMENTS = [
    Experiment("letkf", "identity", 40, dict(inflation=1.02)),
    Experiment("letkf", "identity", 40, dict(inflation=1.02, loc_radius=10.0)),
    Experiment("letkf", "identity", 10, dict(inflation=1.03, loc_radius=7.3)),
    Experiment("ensf", "identity", 20),
    Experiment("ensf", "identity", 40),
    Experiment("letkf", "arctan", 20, dict(inflation=1.05)),
    Experiment("ensf", "arctan", 20),
]


def compare_implementations(n_seeds: int, device) -> None:
    """The same skill from both EnSF integrators, seed by seed (a chaotic twin takes
    another path whenever rounding differs, so one seed says little)."""
    print(f"ensf, identity, N=20, 150 cycles (50 spin-up), seeds 0..{n_seeds - 1}")
    for impl in ("reference", "auto"):
        exp = Experiment("ensf", "identity", 20, dict(implementation=impl))
        rmse = [twin(exp, 150, 50, seed, device)[0] for seed in range(n_seeds)]
        shown = " ".join(f"{r:.3f}" for r in rmse)
        print(
            f"{impl:<10} mean {np.mean(rmse):.3f}  min {min(rmse):.3f}  max {max(rmse):.3f}  "
            f"[{shown}]",
            flush=True,
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under a minute)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (d = 40 gains nothing from more)"
    )
    parser.add_argument(
        "--implementations",
        type=int,
        metavar="SEEDS",
        default=0,
        help="instead: identity-EnSF RMSE (N=20, 150 cycles) over this many seeds, for the "
        "reference integrator and the fast path",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.implementations:
        compare_implementations(args.implementations, device)
        return

    print(f"Lorenz-96, d={D}, F=8, RK4 dt=0.05, device={device}, seed={args.seed}")
    print("identity: R = 1, observed every step; arctan: R = 0.05², every 10 steps")
    header = f"{'method':<42} {'obs':<9} {'N':>3} {'cycles':>6} {'RMSE':>7} {'s/cycle':>9}"
    print(header)
    print("-" * len(header))
    for exp in EXPERIMENTS:
        if exp.obs == "identity":
            n_cycles, spin_up = (300, 100) if args.quick else (3000, 500)
        else:
            n_cycles, spin_up = (60, 20) if args.quick else (300, 50)
        if exp.method == "ensf" and args.quick:
            n_cycles, spin_up = min(n_cycles, 150), min(spin_up, 50)
        rmse, per_cycle = twin(exp, n_cycles, spin_up, args.seed, device)
        shown = f"{rmse:>7.3f}" if math.isfinite(rmse) else "diverged"
        print(
            f"{exp.label():<42} {exp.obs:<9} {exp.members:>3} {n_cycles:>6} "
            f"{shown:>7} {per_cycle:>9.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
