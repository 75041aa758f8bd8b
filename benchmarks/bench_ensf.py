"""Time ``ensf_analysis`` against a plain eager EnSF update, in the same run.

The test case is the paper's Lorenz-type one: every state variable observed through
``arctan``, N = 20 members. The baseline is the reference formulation written out with
plain torch ops: explicit Euler–Maruyama, mixture prior score, closed-form arctan
gradient. Both run on the same prior, observations and device; the table gives the
best of a few repetitions and the ratio baseline / xensf (> 1: xensf is faster).

    python benchmarks/bench_ensf.py [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from xensf.filters.ensf import ensf_analysis
from xensf.filters.operators import LinearObservationOperator
from xensf.filters.schedule import DiffusionSchedule

OBS_STD = 0.5  # in the units of arctan(x), x ~ N(0, 1)


def plain_ensf(prior, y, obs_std, steps, generator, eps_alpha=0.05, eps_beta=0.025):
    """The eager reference update: explicit Euler–Maruyama, mixture score, arctan obs."""
    sched = DiffusionSchedule(eps_alpha, eps_beta)
    mean = prior.mean(-2, keepdim=True)
    scale = prior.std(-2, keepdim=True)
    z0 = (prior - mean) / scale
    dt = 1.0 / steps
    z = torch.randn(prior.shape, generator=generator, device=prior.device, dtype=prior.dtype)
    for k in range(steps):
        tau = 1.0 - k * dt
        alpha, beta2 = sched.alpha(tau), sched.beta2(tau)
        f, g2, h = sched.drift(tau), sched.diffusion2(tau), 1.0 - tau
        diff = z.unsqueeze(-2) - alpha * z0.unsqueeze(-3)  # (..., N, N, d): the naive way
        w = torch.softmax(-(diff**2).sum(-1) / (2 * beta2), dim=-1)
        score = (alpha * (w @ z0) - z) / beta2
        x = mean + scale * z
        score = score + h * scale * (y - torch.atan(x)) / (obs_std**2 * (1 + x**2))
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z = z + dt * (-f * z + g2 * score) + math.sqrt(dt * g2) * noise
    return mean + scale * z


def best_time(fn, repeats, device):
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="small cases, one repetition")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        cases = [(400, 20, 100), (10_000, 20, 100), (100_000, 20, 100), (1_000_000, 20, 100)]
    else:
        name = f"CPU ({torch.get_num_threads()} threads)"
        cases = [(400, 20, 100), (10_000, 20, 100), (100_000, 20, 50)]
    repeats = 3
    if args.quick:
        cases = [(400, 20, 100), (10_000, 20, 50)] + ([] if device.type == "cpu" else cases[2:])
        repeats = 1

    print(f"device: {name}   torch {torch.__version__}   obs: arctan of every variable")
    header = f"{'d':>9} {'N':>4} {'steps':>5} {'xensf [s]':>10} {'plain [s]':>10} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for d, n, steps in cases:
        gen = torch.Generator(device=device).manual_seed(0)
        prior = torch.randn(n, d, generator=gen, device=device)
        truth = torch.randn(d, generator=gen, device=device)
        y = torch.atan(truth) + OBS_STD * torch.randn(d, generator=gen, device=device)
        index = torch.arange(d, device=device)[:, None]
        op = LinearObservationOperator(index, torch.ones(d, 1, device=device), torch.atan)
        scale = prior.std(-2)

        def ours(prior=prior, y=y, op=op, scale=scale, steps=steps):
            return ensf_analysis(prior, y, op, OBS_STD, steps=steps, scale=scale, generator=1)

        def plain(prior=prior, y=y, steps=steps):
            g = torch.Generator(device=device).manual_seed(1)
            return plain_ensf(prior, y, OBS_STD, steps, g)

        ours()  # warm-up (allocator, kernels)
        plain()
        t_ours = best_time(ours, repeats, device)
        t_plain = best_time(plain, repeats, device)
        print(
            f"{d:>9} {n:>4} {steps:>5} {t_ours:>10.3f} {t_plain:>10.3f} {t_plain / t_ours:>6.2f}"
        )


if __name__ == "__main__":
    main()
