"""Lazy throughput of ``assimilate(method="latent-ensf")`` from a zarr store.

One year of 6-hourly data on a 64 × 32 global grid (1460 times, 10 members, two
variables) is written to a zarr store in a temporary directory, together with sparse
gridded observations (every 4th point in each direction). A latent model of the
right shape is built with untrained weights (training is not what is timed; the
networks do the same work either way). Then:

1. the threaded scheduler (the default), all cores: time of ``assimilate`` → ``to_zarr``;
2. ``dask.distributed.LocalCluster`` with 1 and with 2 single-threaded workers;
3. ``--memory``: one memory-limited worker on a store more than twice its memory limit
   (more members), in chunks of 4 times: the peak memory of the worker process, sampled
   with ``distributed.diagnostics.MemorySampler``.

    python benchmarks/bench_throughput.py              # 1460 times: the target table
    python benchmarks/bench_throughput.py --quick      # 120 times: tests the script
    python benchmarks/bench_throughput.py --memory --width 4 --steps 10   # memory-bounded
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import xensf  # noqa: F401  (registers the accessor)
from xensf.bridge.dims import find_dims
from xensf.bridge.layout import StateLayout
from xensf.bridge.signature import data_signature
from xensf.errors import ModelQualityWarning
from xensf.latent import LatentModel
from xensf.latent.model import build_networks
from xensf.latent.networks import LatentGrid, choose_latent_grid

NLAT, NLON, MEMBERS = 32, 64, 10


def quiet() -> None:
    """Silence the warnings this benchmark triggers by design (also run on each worker).

    zarr 3 warns on every append that consolidated metadata is not in its v3 spec; the
    weights are untrained, so every analysis warns that the model cannot represent the
    prior (``ModelQualityWarning``). The timing is what matters here.
    """
    warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
    warnings.filterwarnings("ignore", category=ModelQualityWarning)


quiet()


def write_store(path: Path, n_times: int, members: int, chunk: int) -> tuple[Path, Path]:
    """Prior and observation zarr stores, written chunk by chunk (bounded memory)."""
    lat = np.linspace(-87.19, 87.19, NLAT)
    lon = np.arange(NLON) * 360.0 / NLON
    time_ = np.datetime64("2020-01-01", "ns") + np.arange(n_times) * np.timedelta64(6, "h")
    coords = {
        "time": time_,
        "member": np.arange(members),
        "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
        "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"}),
    }
    prior_path, obs_path = path / "prior.zarr", path / "obs.zarr"
    rng = np.random.default_rng(0)
    for i, start in enumerate(range(0, n_times, chunk)):
        t = slice(start, min(start + chunk, n_times))
        nt = t.stop - t.start
        base = 280.0 + 20.0 * np.cos(np.deg2rad(lat))[:, None] + 0.0 * lon
        truth = base + rng.standard_normal((nt, 1, NLAT, NLON))
        t2m = (truth + rng.standard_normal((nt, members, NLAT, NLON))).astype(np.float32)
        z = (5500.0 + 10 * t2m - 2800.0).astype(np.float32)
        ds = xr.Dataset(
            {
                "t": (("time", "member", "lat", "lon"), t2m, {"units": "K"}),
                "z": (("time", "member", "lat", "lon"), z, {"units": "m"}),
            },
            {**coords, "time": time_[t]},
        )
        obs = ds.isel(member=0, drop=True)
        mask = (np.arange(NLAT)[:, None] % 4 == 0) & (np.arange(NLON)[None, :] % 4 == 0)
        obs = obs.where(xr.DataArray(mask, dims=("lat", "lon")))
        encoding = {v: {"chunks": (chunk, members, NLAT, NLON)} for v in ds.data_vars}
        obs_encoding = {v: {"chunks": (chunk, NLAT, NLON)} for v in obs.data_vars}
        if i == 0:
            ds.to_zarr(prior_path, mode="w", encoding=encoding, consolidated=True)
            obs.to_zarr(obs_path, mode="w", encoding=obs_encoding, consolidated=True)
        else:
            ds.to_zarr(prior_path, append_dim="time", consolidated=True)
            obs.to_zarr(obs_path, append_dim="time", consolidated=True)
    return prior_path, obs_path


def build_model(prior: xr.Dataset, latent_dim: int, width: int, blocks: int) -> LatentModel:
    """A latent model of the right shape with untrained weights.

    The latent grid is the one ``train_latent`` would pick for ``latent_dim`` on this grid.
    """
    grid = choose_latent_grid((NLAT, NLON), latent_dim)
    latent = LatentGrid((NLAT, NLON), **grid)
    config = {
        "architecture": dict(
            channels=2, grid_shape=[NLAT, NLON], **grid, width=width, blocks=blocks,
            periodic_lon=True,
        ),
        "obs_layout": {"kind": "gridded"},
        "variables": ["t", "z"],
        "units": ["K", "m"],
    }  # fmt: skip
    torch.manual_seed(0)
    vae, obs_encoder = build_networks(config)
    model = LatentModel(
        vae,
        obs_encoder,
        torch.tensor([280.0, 5500.0]),
        torch.tensor([10.0, 100.0]),
        torch.full((latent.size,), 0.3),
        config,
    )
    layout = StateLayout(("t", "z"), ((), ()), ((), ()), (NLAT, NLON))
    model.config["data"] = data_signature(prior, find_dims(prior), layout)
    return model


def run(prior_path, obs_path, model, out: Path, steps: int, times: int | None = None) -> float:
    """Seconds for ``assimilate`` → ``to_zarr`` over the store (or its first ``times``)."""
    prior = xr.open_zarr(prior_path).isel(time=slice(0, times))
    obs = xr.open_zarr(obs_path).isel(time=slice(0, times))
    analysis = prior.ensf.assimilate(obs, model=model, seed=0, steps=steps)
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    analysis.to_zarr(out, mode="w", compute=True)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="120 times instead of 1460")
    parser.add_argument("--memory", action="store_true", help="the memory-bounded run")
    parser.add_argument("--chunk", type=int, default=40, help="times per dask chunk")
    parser.add_argument("--latent-dim", type=int, default=128, help="latent size aimed at")
    parser.add_argument("--width", type=int, default=8, help="channels of the networks")
    parser.add_argument("--blocks", type=int, default=2, help="residual blocks per scale")
    parser.add_argument("--steps", type=int, default=100, help="EnSF pseudo-time steps")
    parser.add_argument("--limit", default="700MB", help="worker memory limit (--memory)")
    parser.add_argument("--dir", default=None, help="where to write the stores")
    args = parser.parse_args(argv)
    from dask.distributed import Client, LocalCluster

    n_times = 120 if args.quick else 1460
    members = MEMBERS
    workdir = Path(tempfile.mkdtemp(prefix="xensf-throughput-", dir=args.dir))
    try:
        if args.memory:
            # One worker, and a store more than twice its memory limit: more members
            # (the state is what a worker holds). Small chunks: a worker holds a few
            # chunks and the networks' activations for all states of one chunk.
            from dask.utils import parse_bytes

            limit = parse_bytes(args.limit)
            per_member = n_times * 2 * NLAT * NLON * 4
            members = max(members, int(np.ceil(2.1 * limit / per_member)))
            args.chunk = min(args.chunk, 4)
        start = time.perf_counter()
        prior_path, obs_path = write_store(workdir, n_times, members, args.chunk)
        size = sum(f.stat().st_size for f in prior_path.rglob("*") if f.is_file())
        raw = n_times * members * 2 * NLAT * NLON * 4
        print(
            f"# store: {n_times} times x {members} members x 2 variables x {NLAT}x{NLON}, "
            f"{raw / 1e6:.0f} MB raw ({size / 1e6:.0f} MB on disk), chunks of {args.chunk} "
            f"times; written in {time.perf_counter() - start:.1f} s"
        )
        model = build_model(xr.open_zarr(prior_path), args.latent_dim, args.width, args.blocks)
        arch = model.config["architecture"]
        print(
            f"# latent-ensf, latent_dim {model.latent_dim} "
            f"({' x '.join(map(str, model.latent_shape))}; patch {arch['patch']}, "
            f"downsample {arch['downsample']}), networks of width {args.width} and "
            f"{args.blocks} blocks per scale, {args.steps} steps; "
            f"{os.cpu_count()} CPUs; torch {torch.__version__}"
        )
        print("| run | time [s] | per analysis time [ms] | peak memory |")
        print("|---|---:|---:|---:|")
        out = workdir / "analysis.zarr"

        def row(name, seconds, peak="–", times=n_times):
            print(f"| {name} | {seconds:.1f} | {seconds / times * 1e3:.1f} | {peak} |", flush=True)

        if not args.memory:
            # One torch thread per task: dask runs one task per core already (the
            # distributed workers below get OMP_NUM_THREADS=1 from dask itself).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            seconds = run(prior_path, obs_path, model, out, args.steps)
            torch.set_num_threads(threads)
            row(f"threaded scheduler, {os.cpu_count()} threads, 1 torch thread each", seconds)
            for workers in (1, 2):
                with LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True,
                    dashboard_address=None,
                ) as cluster, Client(cluster) as client:  # fmt: skip
                    client.run(quiet)
                    # warm the workers up (imports, model load) on one chunk per worker
                    run(prior_path, obs_path, model, out, args.steps, workers * args.chunk)
                    seconds = run(prior_path, obs_path, model, out, args.steps)
                row(f"LocalCluster, {workers} worker(s) x 1 thread", seconds)
        else:
            from distributed.diagnostics import MemorySampler

            # The first tenth of the store, then all of it, each on a fresh worker: a
            # bounded design has the same peak for both.
            for times in (n_times // 10, n_times):
                sampler = MemorySampler()
                with LocalCluster(
                    n_workers=1, threads_per_worker=1, processes=True, memory_limit=args.limit,
                    dashboard_address=None,
                ) as cluster, Client(cluster) as client:  # fmt: skip
                    client.run(quiet)
                    with sampler.sample("run", measure="process", interval=0.2):
                        seconds = run(prior_path, obs_path, model, out, args.steps, times)
                peak = float(sampler.to_pandas()["run"].max())
                read = raw * times / n_times
                row(
                    f"LocalCluster, 1 worker, memory_limit {args.limit}: {times} of the "
                    f"store's {n_times} times ({read / 1e6:.0f} MB raw read; store "
                    f"{size / 1e6:.0f} MB on disk)",
                    seconds,
                    f"{peak / 1e6:.0f} MB (worker process)",
                    times,
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
