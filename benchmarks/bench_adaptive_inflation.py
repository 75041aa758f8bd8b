"""Adaptive inflation against the best hand-tuned fixed inflation, LETKF on Lorenz-96.

For each configuration (ensemble size, localisation, observation network, interval) the
LETKF is cycled with every fixed inflation factor of a grid and once with
:class:`xensf.filters.AdaptiveInflation` at its defaults, started from no inflation
(``Δ = 1``) and never tuned. Prints one row per configuration: the best fixed factor
and its time-mean analysis RMSE after spin-up, the adaptive RMSE, their ratio (target
≤ 1.10) and the adaptive field's mean over the run (as a perturbation factor, √Δ,
comparable with the fixed ones). RMSEs are means over ``--seeds`` twins (the same
truths and observations for every filter of a seed).

    python benchmarks/bench_adaptive_inflation.py            # a few minutes on 2 CPU cores
    python benchmarks/bench_adaptive_inflation.py --quick    # under a minute
    python benchmarks/bench_adaptive_inflation.py --quick --config 3   # where it matters

The exit status is 1 where the target is missed.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from xensf.filters import AdaptiveInflation, cyclic_distance, letkf_analysis
from xensf.models.l96 import lorenz96_run, lorenz96_step

D = 40
FIXED = (1.0, 1.01, 1.02, 1.04, 1.07, 1.1, 1.15, 1.2, 1.3)
QUICK_FIXED = (1.0, 1.02, 1.05, 1.1)


@dataclass(frozen=True)
class Config:
    members: int
    loc_radius: float
    stride: int  # every stride-th variable observed
    every: int  # model steps (dt = 0.05) between analyses
    obs_std: float = 1.0

    def label(self) -> str:
        return (
            f"N={self.members}, c={self.loc_radius:g}, 1/{self.stride} observed, "
            f"every {self.every} step{'s' if self.every > 1 else ''}"
        )


CONFIGS = (
    Config(10, 7.3, 1, 1),
    Config(20, 10.0, 2, 1),
    Config(10, 5.0, 1, 4),
    Config(20, 7.3, 2, 4),
)


def _twin(cfg: Config, seed: int, n_cycles: int):
    """Truth, observations and the initial ensemble of one twin (the same for all)."""
    g = torch.Generator().manual_seed(seed)
    truth = lorenz96_run(8.0 + torch.randn(D, generator=g, dtype=torch.float64), 1000)[-1]
    ens0 = truth + torch.randn(cfg.members, D, generator=g, dtype=torch.float64)
    truths, ys = [], []
    idx = torch.arange(0, D, cfg.stride)
    for _ in range(n_cycles):
        for _ in range(cfg.every):
            truth = lorenz96_step(truth)
        truths.append(truth)
        ys.append(
            truth[idx] + cfg.obs_std * torch.randn(idx.numel(), generator=g, dtype=torch.float64)
        )
    return ens0, torch.stack(truths), torch.stack(ys), idx


def _cycle(cfg, ens, truths, ys, idx, spin_up, inflation=1.0, adaptive=None):
    """Time-mean analysis RMSE after spin-up (inf if diverged), mean adaptive factor."""
    ring = torch.arange(float(D), dtype=torch.float64)
    options = dict(state_coords=ring, distance=cyclic_distance(D), loc_radius=cfg.loc_radius)
    errors, factors = [], []
    for k in range(len(truths)):
        for _ in range(cfg.every):
            ens = lorenz96_step(ens)
        if not bool(torch.isfinite(ens).all()):
            return math.inf, math.nan
        if adaptive is None:
            ens = letkf_analysis(ens, ys[k], idx, cfg.obs_std, inflation=inflation, **options)
        else:
            ens, adaptive = letkf_analysis(
                ens, ys[k], idx, cfg.obs_std, adaptive_inflation=adaptive, **options
            )
            factors.append(float(torch.as_tensor(adaptive.mean).sqrt().mean()))
        errors.append(float((ens.mean(0) - truths[k]).square().mean().sqrt()))
    rmse = float(np.mean(errors[spin_up:]))
    if not math.isfinite(rmse) or rmse > 10:  # lost the truth
        return math.inf, math.nan
    return rmse, (float(np.mean(factors[spin_up:])) if factors else math.nan)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--spin-up", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="200 cycles, one seed, one configuration"
    )
    parser.add_argument(
        "--config",
        type=int,
        choices=range(1, len(CONFIGS) + 1),
        help="only this configuration (1-based, the table's order; --quick: the first)",
    )
    args = parser.parse_args(argv)
    configs, grid = CONFIGS, FIXED
    if args.quick:
        args.cycles, args.spin_up, args.seeds, configs, grid = 200, 50, 1, CONFIGS[:1], QUICK_FIXED
    if args.config is not None:
        configs = (CONFIGS[args.config - 1],)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    print(f"LETKF on Lorenz-96 (d = {D}, F = 8, dt = 0.05), observation error "
          f"{CONFIGS[0].obs_std:g}; {args.cycles} cycles, RMSE over the last "
          f"{args.cycles - args.spin_up}, mean of {args.seeds} seed(s)")  # fmt: skip
    print(f"adaptive: AdaptiveInflation() defaults {AdaptiveInflation()!r}, started at Δ = 1")
    head = (
        "| configuration | best fixed | its RMSE | adaptive RMSE | ratio | adaptive √Δ | "
        "time [s] |"
    )
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for cfg in configs:
        start = time.perf_counter()
        twins = [_twin(cfg, seed, args.cycles) for seed in range(args.seeds)]
        fixed = {
            f: np.mean([_cycle(cfg, *t, args.spin_up, inflation=f)[0] for t in twins])
            for f in grid
        }
        runs = [_cycle(cfg, *t, args.spin_up, adaptive=AdaptiveInflation()) for t in twins]
        adaptive = float(np.mean([r[0] for r in runs]))
        factor = float(np.mean([r[1] for r in runs]))
        best = min(fixed, key=fixed.get)
        ratio = adaptive / fixed[best]
        worst = max(worst, ratio)
        print(f"| {cfg.label()} | {best:g} | {fixed[best]:.3f} | {adaptive:.3f} | "
              f"{ratio:.3f} | {factor:.3f} | {time.perf_counter() - start:.0f} |",
              flush=True)  # fmt: skip
    verdict = "met" if worst <= 1.10 else "NOT met"
    print(f"worst ratio {worst:.3f}: target (adaptive within 10 % of the best fixed) {verdict}")
    return 0 if worst <= 1.10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
