"""The performance targets, one table each: ours, a plain formulation, the floor, the ratio.

Every row is measured in this one run, on one device: "ours" is xensf as a user calls
it; "plain" is the same computation written the way a reader would (an eager torch
loop, one analysis at a time, or DAPPER for the LETKF); "floor" is the memory-traffic
bound ``bytes / bandwidth`` with the bandwidth measured here (a large ``clone()``,
read + write), where one exists. Ratio = plain / ours (> 1: ours faster); "of floor"
= ours / floor (1 is the bound). Absolute times are only meaningful on a GPU, with
the GPU named; on a shared CPU they are indicative.

    python benchmarks/bench_perf.py                       # every section, CPU
    python benchmarks/bench_perf.py ensf latent --quick   # small sizes (tests the script)
    python benchmarks/bench_perf.py --device cuda         # the GPU tables

Sections: ``ensf`` (full-space EnSF, arctan of every variable), ``latent`` (EnSF at
latent size, batched over analysis times), ``letkf`` (Lorenz-96 40 against DAPPER,
and a localised analysis at large d), ``models`` (shallow water and Lorenz-96 steps).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from xensf.filters.ensf import ensf_analysis
from xensf.filters.letkf import letkf_analysis
from xensf.filters.localization import cyclic_distance, gaspari_cohn
from xensf.filters.operators import LinearObservationOperator
from xensf.filters.schedule import DiffusionSchedule
from xensf.models.l96 import lorenz96_step
from xensf.models.swe import ShallowWaterConfig, initial_state, shallow_water_step

OBS_STD = 0.5


# -- timing and the table ------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (after one warm-up call), synchronised."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def bandwidth(device: torch.device) -> float:
    """Copy bandwidth in bytes/s: read + write of a large ``clone()``."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)  # 1 GiB / 128 MiB of float32
    x = torch.ones(n, device=device)
    t = best_time(lambda: x.clone(), device, 5)
    return 2 * 4 * n / t


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


class Table:
    """Rows of (case, ours, plain, floor); prints as they come."""

    def __init__(self, title: str, device: torch.device, unit: str = "ms"):
        self.unit, self.scale = unit, {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
        print(f"\n## {title}\ndevice: {device_name(device)}; torch {torch.__version__}")
        print(
            f"| case | ours [{unit}] | plain [{unit}] | floor [{unit}] | plain/ours | ours/floor |"
        )
        print("|---|---:|---:|---:|---:|---:|")

    def row(self, case: str, ours: float, plain: float | None, floor: float | None = None):
        def fmt(v):
            return "–" if v is None else f"{v * self.scale:.4g}"

        ratio = "–" if plain is None else f"{plain / ours:.2f}"
        of_floor = "–" if floor is None else f"{ours / floor:.2f}"
        print(
            f"| {case} | {fmt(ours)} | {fmt(plain)} | {fmt(floor)} | {ratio} | {of_floor} |",
            flush=True,
        )


# -- plain formulations --------------------------------------------------------------


def plain_ensf_step(z, z0, mean, scale, y, prec, coef, transform: bool, generator=None):
    """One step of :func:`plain_ensf`; ``coef`` = (α, β², g², h, f, dτ) as a tensor."""
    alpha, beta2, g2, h, f, dt = coef.unbind()
    logits = (alpha * z @ z0.mT - 0.5 * alpha**2 * (z0**2).sum(-1).unsqueeze(-2)) / beta2
    mu = torch.softmax(logits, -1) @ z0
    x = mean + scale * z
    if transform:
        deriv = 1.0 / (1.0 + x**2)
        grad = scale * deriv * prec * (y - torch.atan(x))
        curv = scale**2 * deriv**2 * prec
    else:
        grad = scale * prec * (y - x)
        curv = scale**2 * prec * torch.ones_like(z)
    lam = f + g2 / beta2 + g2 * h * curv
    a = g2 * alpha / beta2 * mu + g2 * h * (grad + curv * z)
    e1 = torch.expm1(-lam * dt)
    phi = -e1 / lam
    std = torch.sqrt(0.5 * g2 * phi * (e1 + 2.0))
    noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    return z + e1 * z + phi * a + std * noise


def plain_ensf(prior, y, obs_std, steps, generator, transform=True, scale=None, step=None):
    """EnSF as a reader would write it: one eager torch op after another, per step.

    The same discretisation as xensf (mixture score, damped likelihood, exact
    Ornstein–Uhlenbeck step of the linearised drift), every variable observed, through
    arctan or directly. ``step`` replaces :func:`plain_ensf_step` (e.g. compiled).
    """
    sched = DiffusionSchedule()
    mean = prior.mean(-2, keepdim=True)
    if scale is None:
        scale = prior.std(-2, keepdim=True)
    scale = torch.as_tensor(scale, device=prior.device, dtype=prior.dtype)
    z0 = (prior - mean) / scale
    dt = 1.0 / steps
    prec = torch.tensor(1.0 / obs_std**2, device=prior.device)
    noise = torch.randn(prior.shape, generator=generator, device=prior.device)
    z = noise * math.sqrt(sched.beta2(1.0)) + sched.alpha(1.0) * z0
    coefs = torch.tensor(
        [
            [s(1.0 - k * dt) for s in (sched.alpha, sched.beta2, sched.diffusion2)]
            + [k * dt, sched.drift(1.0 - k * dt), dt]
            for k in range(steps)
        ],
        device=prior.device,
    )
    for k in range(steps):
        if step is None:
            z = plain_ensf_step(z, z0, mean, scale, y, prec, coefs[k], transform, generator)
        else:
            z = step(z, z0, mean, scale, y, prec, coefs[k], transform)
    return mean + scale * z


# -- sections ------------------------------------------------------------------------


def kernel_status(device: torch.device) -> str:
    """Whether the fused EnSF kernel runs here, or why not."""
    from xensf.filters import ensf_kernel

    if ensf_kernel._failed is not None:
        return f"fused kernel failed, torch step used: {ensf_kernel._failed}"
    if ensf_kernel.kernel_applies(device, torch.float32, 20):
        return "fused Triton kernel (one per step, Philox noise)"
    return "componentwise torch step (no fused kernel on this device)"


def _ensf_case(table, device, d, steps, quick, bw, compile_plain: bool) -> None:
    n = 20
    gen = torch.Generator(device=device).manual_seed(0)
    prior = torch.randn(n, d, generator=gen, device=device)
    truth = torch.randn(d, generator=gen, device=device)
    y = torch.atan(truth) + OBS_STD * torch.randn(d, generator=gen, device=device)
    op = LinearObservationOperator(
        torch.arange(d, device=device)[:, None], torch.ones(d, 1, device=device), torch.atan
    )
    scale = prior.std(-2)

    def ours(impl="auto"):
        return ensf_analysis(
            prior, y, op, OBS_STD, steps=steps, scale=scale, generator=1, implementation=impl
        )

    def plain():
        g = torch.Generator(device=device).manual_seed(1)
        return plain_ensf(prior, y, OBS_STD, steps, g, scale=scale)

    repeats = 1 if quick else 3
    t_ours = best_time(ours, device, repeats)
    t_ref = best_time(lambda: ours("reference"), device, repeats)
    t_plain = best_time(plain, device, repeats)
    floor = steps * (3 * n * d + d) * 4 / bw
    table.row(f"d={d:.0e}, {steps} steps: xensf auto", t_ours, t_plain, floor)
    table.row(f"d={d:.0e}, {steps} steps: xensf reference", t_ref, t_plain, floor)
    if device.type == "cuda" and compile_plain:
        step = torch.compile(plain_ensf_step)  # noise from inductor's Philox, fused
        t_comp = best_time(
            lambda: plain_ensf(prior, y, OBS_STD, steps, None, scale=scale, step=step),
            device,
            repeats,
        )
        table.row(f"d={d:.0e}, {steps} steps: plain, step compiled", t_comp, t_plain, floor)


def section_ensf(device, quick: bool, bw: float) -> None:
    """Full-space EnSF: arctan observations of every variable, N = 20."""
    table = Table("EnSF, full space (arctan of every variable, N = 20)", device)
    if device.type == "cuda":
        cases = [(10_000, 100), (1_000_000, 500)] if not quick else [(100_000, 100)]
    else:
        cases = [(10_000, 100), (100_000, 100)] if not quick else [(2_000, 20)]
    for d, steps in cases:
        # the compiled plain step only at the largest size (compiling takes ~30 s)
        _ensf_case(table, device, d, steps, quick, bw, compile_plain=d == cases[-1][0])
    print(f"xensf auto ran: {kernel_status(device)}")


def _latent_case(table, device, t, n, d, steps, quick, bw) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    prior = torch.randn(t, n, d, generator=gen, device=device)
    y = torch.randn(t, d, generator=gen, device=device)
    std = torch.full((d,), 0.3, device=device)
    idx = torch.arange(d, device=device)
    seeds = list(range(t))

    def ours(impl="auto"):
        return ensf_analysis(prior, y, idx, std, steps=steps, generator=seeds, implementation=impl)

    sample = min(t, 16)

    def plain():  # one analysis after another (timed on up to 16, per analysis)
        for b in range(sample):
            g = torch.Generator(device=device).manual_seed(b)
            plain_ensf(prior[b], y[b], 0.3, steps, g, transform=False, scale=1.0)

    repeats = 1 if quick else 3
    t_ours = best_time(ours, device, repeats) / t
    t_plain = best_time(plain, device, repeats) / sample
    floor = steps * (3 * n * d + d) * 4 / bw
    table.row(f"T={t} times in one call: xensf auto", t_ours, t_plain, floor)
    if t <= 64:
        t_ref = best_time(lambda: ours("reference"), device, repeats) / t
        table.row(f"T={t} times in one call: xensf reference", t_ref, t_plain, floor)


def section_latent(device, quick: bool, bw: float) -> None:
    """EnSF at latent size: d = 400, N = 20, 100 steps, identity operator."""
    table = Table("EnSF at latent size (d = 400, N = 20, 100 steps), per analysis", device)
    n, d, steps = 20, 400, 100
    batches = [1, 64, 1024] if device.type == "cuda" else [1, 16, 64]
    if quick:
        batches, steps = [1, 8], 20
    for t in batches:
        _latent_case(table, device, t, n, d, steps, quick, bw)
    print(f"xensf auto ran: {kernel_status(device)}")


def _dapper_letkf(n_cycles: int, members: int, loc_rad: float, infl: float):
    """DAPPER's LETKF on its Sakov 2008 Lorenz-96 setup: (rmse.a, s/cycle, s/analysis)."""
    import dapper.da_methods as da
    import dapper.da_methods.ensemble as dapper_ensemble
    import dapper.tools.progressbar as dapper_progressbar
    from dapper.mods.Lorenz96.sakov2008 import HMM
    from dapper.tools.seeding import set_seed

    dapper_progressbar.disable_progbar = True

    HMM = HMM.copy()
    HMM.tseq.Ko = n_cycles
    HMM.tseq.BurnIn = min(HMM.tseq.BurnIn, 0.2 * n_cycles * HMM.tseq.dto)
    set_seed(3000)  # DAPPER's own generator: the same truth and observations every round
    xx, yy = HMM.simulate()
    spent = [0.0]
    original = dapper_ensemble.local_analyses

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        spent[0] += time.perf_counter() - start
        return out

    dapper_ensemble.local_analyses = timed
    try:
        xp = da.LETKF(N=members, loc_rad=loc_rad, infl=infl)
        xp.liveplotting = False
        start = time.perf_counter()
        xp.assimilate(HMM, xx, yy)
        total = time.perf_counter() - start
    finally:
        dapper_ensemble.local_analyses = original
    xp.stats.average_in_time()
    rmse = float(xp.avrgs.err.rms.a.val)
    return rmse, total / n_cycles, spent[0] / n_cycles, xx, yy


def _xensf_letkf_cycle(xx, yy, members, radius, infl, device):
    """xensf LETKF on DAPPER's truth and observations: (rmse.a, s/cycle, s/analysis)."""
    d = xx.shape[1]
    rng = np.random.default_rng(0)
    ens = torch.as_tensor(xx[0] + np.sqrt(0.001) * rng.standard_normal((members, d)))
    ens = ens.to(device=device, dtype=torch.float64)
    ring = torch.arange(float(d), device=device)
    dist, idx = cyclic_distance(d), torch.arange(d, device=device)
    obs = torch.as_tensor(np.stack(list(yy)), device=device, dtype=torch.float64)
    errors, spent = [], 0.0
    start = time.perf_counter()
    for k in range(1, len(xx)):
        ens = lorenz96_step(ens)
        t0 = time.perf_counter()
        ens = letkf_analysis(
            ens, obs[k - 1], idx, 1.0, inflation=infl, loc_radius=radius,
            state_coords=ring, distance=dist,
        )  # fmt: skip
        spent += time.perf_counter() - t0
        errors.append(ens.mean(0))
    total = time.perf_counter() - start
    err = (torch.stack(errors).cpu().numpy() - xx[1:]) ** 2
    burn = len(err) // 5
    rmse = float(np.sqrt(err[burn:].mean(-1)).mean())
    return rmse, total / (len(xx) - 1), spent / (len(xx) - 1)


def section_letkf(device, quick: bool, bw: float) -> None:
    """LETKF: Lorenz-96 40 against DAPPER (CPU), a localised analysis at large d."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # DAPPER is single-threaded; compare like with like
    table = Table("LETKF on Lorenz-96 (d = 40, N = 20, loc_rad 4, infl 1.04), per cycle", device)
    n_cycles = 200 if quick else 1000
    rounds = 2 if quick else 5
    try:
        # Alternate DAPPER and xensf in rounds and keep each one's best round, so that
        # the load of a shared machine hits both alike.
        radius = math.sqrt(10.0 / 3.0) * 4.0  # DAPPER's loc_rad → Gaspari–Cohn half-width
        best_d = best_x = None
        for _ in range(rounds):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rmse_d, cyc_d, an_d, xx, yy = _dapper_letkf(n_cycles, 20, 4.0, 1.04)
            rmse_x, cyc_x, an_x = _xensf_letkf_cycle(xx, yy, 20, radius, 1.04, torch.device("cpu"))
            if best_d is None or cyc_d < best_d[1]:
                best_d = (rmse_d, cyc_d, an_d)
            if best_x is None or cyc_x < best_x[1]:
                best_x = (rmse_x, cyc_x, an_x)
        (rmse_d, cyc_d, an_d), (rmse_x, cyc_x, an_x) = best_d, best_x
        table.row(f"whole cycle (RMSE xensf {rmse_x:.3f}, DAPPER {rmse_d:.3f})", cyc_x, cyc_d)
        table.row("analysis only", an_x, an_d)
    except ImportError as err:
        print(f"(DAPPER not installed: {err}; pip install dapper to compare)")
    torch.set_num_threads(threads)

    d = 1_000_000 if device.type == "cuda" else 20_000
    if quick:
        d = 2_000
    n = 20
    table = Table(f"LETKF, localised, d = {d:.0e} ring, N = {n}, every 2nd observed", device)
    gen = torch.Generator(device=device).manual_seed(0)
    ens = torch.randn(n, d, generator=gen, device=device)
    idx = torch.arange(0, d, 2, device=device)
    y = torch.randn(idx.numel(), generator=gen, device=device)
    ring = torch.arange(float(d), device=device)
    dist = cyclic_distance(d)

    def ours():
        return letkf_analysis(
            ens, y, idx, 1.0, inflation=1.04, loc_radius=7.3, state_coords=ring, distance=dist
        )

    t_ours = best_time(ours, device, 1 if quick else 3)
    # The textbook loop over grid points, timed on a sample and scaled to d.
    sample = min(d, 400)
    ens_np = ens.cpu().double().numpy()
    obs_idx = idx.cpu().numpy()
    y_np = y.cpu().double().numpy()
    obs_pts = ring.cpu()[idx.cpu()][:, None]
    start = time.perf_counter()
    plain_letkf_point_loop_sample(ens_np, y_np, obs_idx, obs_pts, sample, dist, 7.3, 1.04)
    t_plain = (time.perf_counter() - start) * d / sample
    table.row(
        "one analysis (plain: numpy loop over points, timed on 400, scaled)", t_ours, t_plain
    )
    _letkf_sphere(device, quick)


def _letkf_sphere(device, quick: bool) -> None:
    """A global lat/lon grid with great-circle localisation: the search from compact
    patches of locations against the same search from runs of consecutive locations
    (bands of rows), as the chunks were cut before."""
    step = 6.0 if quick else 1.5
    lat = torch.arange(-90.0, 90.0 + 1e-9, step)
    lon = torch.arange(0.0, 360.0, step)
    grid = torch.stack(torch.meshgrid(lat, lon, indexing="ij"), -1).reshape(-1, 2).to(device)
    d, n = grid.shape[0], 20
    table = Table(
        f"LETKF, localised, {step:g}° global grid (d = {d}), N = {n}, 1/4 observed, "
        "loc_radius 300 km",
        device,
        unit="s",
    )
    gen = torch.Generator(device=device).manual_seed(0)
    ens = torch.randn(n, d, generator=gen, device=device, dtype=torch.float64)
    idx = torch.randperm(d, generator=gen, device=device)[: d // 4]
    y = torch.randn(idx.numel(), generator=gen, device=device, dtype=torch.float64)

    def run(chunk_size=None):
        return letkf_analysis(
            ens, y, idx, 1.0, inflation=1.04, loc_radius=300.0, state_coords=grid,
            chunk_size=chunk_size,
        )  # fmt: skip

    rows = max(64, int(2 * math.sqrt(d)))  # the size of a patch, cut as a run instead
    t_ours = best_time(run, device, 1 if quick else 3)
    t_rows = best_time(partial(run, rows), device, 1 if quick else 3)
    same = float((run() - run(rows)).abs().max())
    table.row(f"one analysis (plain: runs of {rows} locations; max difference {same:.1e})",
              t_ours, t_rows)  # fmt: skip


def plain_letkf_point_loop_sample(ens, y, obs_idx, obs_pts, n_points, dist, radius, infl):
    """LETKF as a loop over grid points (numpy), the textbook way, for the first points.

    Identity observations ``y`` of the components ``obs_idx`` at ``obs_pts``; every
    point computes its distance to every observation, as such a loop does.
    """
    n = ens.shape[0]
    xm = ens.mean(0)
    xp = (ens - xm) * infl
    yp = xp[:, obs_idx]
    out = np.empty((n, n_points))
    for p in range(n_points):
        r = dist(torch.tensor([[float(p)]], dtype=obs_pts.dtype), obs_pts)[0]
        w = gaspari_cohn(r, radius).double().numpy()
        sel = w > 0
        ys, ws = yp[:, sel], w[sel]
        a = (n - 1) * np.eye(n) + (ys * ws) @ ys.T
        lam, q = np.linalg.eigh(a)
        wbar = q @ ((q.T @ (ys * ws) @ (y[sel] - xm[obs_idx][sel])) / lam)
        wsq = (q * np.sqrt((n - 1) / lam)) @ q.T
        out[:, p] = xm[p] + (wbar[None, :] + wsq.T) @ xp[:, p]
    return out


def section_models(device, quick: bool, bw: float) -> None:
    """Shallow water 150×150 (2000 steps) and a Lorenz-96 RK4 step at 10⁶ × 20."""
    table = Table("Models", device, unit="s")
    n_steps = 2000 if device.type == "cuda" else 200  # 2000 steps of N = 200: minutes on a CPU
    members_list = (20, 200) if device.type == "cuda" else (20,)
    if quick:
        n_steps, members_list = 20, (4,)
    cfg = ShallowWaterConfig(n=150 if not quick else 40, device=device)
    for members in members_list:
        x0 = initial_state(
            cfg,
            torch.linspace(-1e5, 1e5, members, device=device),
            torch.zeros(members, device=device),
        )

        def run(step=shallow_water_step, x0=x0):
            x = x0
            for _ in range(n_steps):
                x = step(x, cfg)
            return x

        t_eager = best_time(run, device, 1)
        row = f"shallow water {cfg.n}², N={members}, {n_steps} steps"
        floor = n_steps * 2 * x0.numel() * 4 / bw
        if device.type == "cuda":
            t_comp = best_time(partial(run, torch.compile(shallow_water_step)), device, 1)
            table.row(row + ": compiled (plain = eager)", t_comp, t_eager, floor)
        else:
            table.row(row + ": eager", t_eager, None, floor)
    d = 1_000_000 if not quick else 10_000
    x = torch.randn(20, d, device=device) + 8.0
    t_step = best_time(lambda: lorenz96_step(x), device, 5)
    floor = 2 * x.numel() * 4 / bw
    if device.type == "cuda":
        compiled = torch.compile(lorenz96_step)
        t_comp = best_time(lambda: compiled(x), device, 5)
        table.row(
            f"Lorenz-96 RK4 step, {d:.0e} × 20: compiled (plain = eager)", t_comp, t_step, floor
        )
    else:
        table.row(f"Lorenz-96 RK4 step, {d:.0e} × 20: eager", t_step, None, floor)


def section_latent_model(device, quick: bool, bw: float) -> None:
    """A whole latent-EnSF analysis with the shipped demo model: encoders, filter, decoder.

    "ours" is ``latent_error="ensemble"`` (the default: a first analysis, its members
    decoded and encoded both ways, then the analysis), "plain" is ``"curve"`` (one
    analysis); per analysis time, one time per network pass as the accessor does.
    """
    import xensf
    from xensf.experiments.demo_swe import shipped_model_path

    table = Table(
        "Latent-EnSF with the demo model (40 × 40 × 3, d = 400, N = 20, 100 steps), per "
        "time: ours = latent_error 'ensemble', plain = 'curve'",
        device,
    )
    model = xensf.load(shipped_model_path(), device=device)
    n = 20
    gen = torch.Generator().manual_seed(0)
    for t in [1] if quick else [1, 16]:
        shape = (t, n, len(model.mean), *model.grid_shape)
        prior = model.mean.cpu()[:, None, None] + model.std.cpu()[:, None, None] * 0.1 * (
            torch.randn(shape, generator=gen)
        )
        obs = torch.full((t, *shape[2:]), float("nan"))
        points = model.obs_points  # the twin's network, the one the encoder reads
        obs[:, points] = prior[:, 0][:, points]

        def run(kind, prior=prior, obs=obs, t=t):
            with warnings.catch_warnings():  # a layout the model does not read times nothing
                warnings.simplefilter("error", xensf.ObservationLayoutWarning)
                model.analyse(
                    prior, obs, generator=list(range(t)), batch_size=n, latent_error=kind
                )

        repeats = 1 if quick else 5
        ours = best_time(lambda: run("ensemble"), device, repeats) / t
        plain = best_time(lambda: run("curve"), device, repeats) / t
        table.row(f"T={t} times in one model call", ours, plain)


SECTIONS = {
    "ensf": section_ensf,
    "latent": section_latent,
    "latent-model": section_latent_model,
    "letkf": section_letkf,
    "models": section_models,
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", help=f"any of {list(SECTIONS)} (default all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    device = torch.device(args.device)
    bw = bandwidth(device)
    print(f"# xensf performance, {device_name(device)}; copy bandwidth {bw / 1e9:.1f} GB/s")
    for name in args.sections or list(SECTIONS):
        SECTIONS[name](device, args.quick, bw)


if __name__ == "__main__":
    main()
