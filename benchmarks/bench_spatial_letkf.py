"""LETKF (or EnSF) on spatial blocks at scale: a chunked global prior in zarr, stations,
a LocalCluster.

A synthetic prior shaped like global ERA5 (``--grid`` latitudes × twice as many
longitudes, ``--levels`` levels, ``--variables`` variables, ``--members`` members, one
time; smooth random fields) is written to a zarr store in spatial chunks, then
``--stations`` random stations of the first variable at the lowest level are assimilated
with ``method="letkf"`` and ``loc_radius=--radius`` km, the analysis written to another
zarr store, on a dask ``LocalCluster`` whose workers have ``--memory`` of memory each.
Prints the time, the peak memory of any worker (sampled), and the time per million
grid points (latitude × longitude × levels × variables). ``--method ensf`` runs the
EnSF with ``prior_score="paired"`` (``--steps`` steps) instead, with the stations moved
to their nearest grid points (on blocks each observation must read one point).

    python benchmarks/bench_spatial_letkf.py --quick        # 91 x 180, seconds
    python benchmarks/bench_spatial_letkf.py --method ensf  # the paired EnSF on blocks
    python benchmarks/bench_spatial_letkf.py                # 181 x 360, 13 levels, 4 variables
    python benchmarks/bench_spatial_letkf.py --grid 721 --levels 13 --variables 4 \\
        --members 50 --stations 100000 --chunk 90 --memory 4GB   # 0.25 degrees: ~10.8 GB

``--weight-stride k`` computes the LETKF transform every ``k``-th grid point in each
direction and interpolates the weights (``weight_stride=`` of ``assimilate``).

``--device cuda`` analyses each block on the GPU (``device="cuda"``); with dask-cuda
installed the cluster is a ``LocalCUDACluster`` (one worker per GPU, ``--memory`` its
host memory limit), otherwise a ``LocalCluster`` whose workers share the GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np


def _prior(grid: int, levels: int, n_vars: int, members: int, chunk: int, seed: int):
    """Smooth random fields (a few large-scale waves per member) as a lazy Dataset."""
    import dask.array as da
    import xarray as xr

    lat = np.linspace(-90, 90, grid)
    lon = np.arange(2 * (grid - 1)) * (180.0 / (grid - 1))
    shape = (1, members, levels, lat.size, lon.size)
    chunks = da.core.normalize_chunks((1, members, levels, chunk, chunk), shape)

    def block(block_info=None, v=0):
        loc = block_info[None]["array-location"]
        la = np.radians(lat[loc[3][0] : loc[3][1]])[:, None]
        lo = np.radians(lon[loc[4][0] : loc[4][1]])[None, :]
        rng = np.random.default_rng(seed + v)
        amp = rng.standard_normal((members, levels, 4))
        out = np.zeros(tuple(b - a for a, b in loc), dtype=np.float32)
        for k in range(4):
            wave = np.cos((k + 1) * lo + k) * np.cos(la) ** (k + 1)
            out[0] += amp[:, :, k, None, None] * wave
        return out + 280.0

    data = {}
    for v in range(n_vars):
        arr = da.map_blocks(block, dtype=np.float32, chunks=chunks, v=v, meta=np.empty((0,) * 5))
        data[f"v{v}"] = (("time", "member", "level", "lat", "lon"), arr, {"units": "K"})
    return xr.Dataset(
        data,
        coords={"time": [0], "level": np.arange(levels), "lat": lat, "lon": lon},
    )


def _cluster(args):
    """A LocalCUDACluster for ``--device cuda`` where dask-cuda is installed (one worker
    per GPU; ``args.workers`` set to their number), else a LocalCluster."""
    from dask.distributed import LocalCluster

    if args.device == "cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            pass
        else:
            cluster = LocalCUDACluster(memory_limit=args.memory, dashboard_address=None)
            args.workers = len(cluster.workers)
            return cluster, "LocalCUDACluster"
    cluster = LocalCluster(
        n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory,
        dashboard_address=None,
    )  # fmt: skip
    return cluster, "LocalCluster"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="91 x 180, 2 levels, 2 variables")
    parser.add_argument("--grid", type=int, default=181, help="latitudes (longitudes: 2x)")
    parser.add_argument("--levels", type=int, default=13)
    parser.add_argument("--variables", type=int, default=4)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--stations", type=int, default=10_000)
    parser.add_argument("--radius", type=float, default=500.0, help="loc_radius, km")
    parser.add_argument("--chunk", type=int, default=60, help="grid points per chunk side")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory", default="4GB", help="memory limit per worker")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=["letkf", "ensf"], default="letkf")
    parser.add_argument("--device", default=None, help="where blocks are analysed (cuda)")
    parser.add_argument("--steps", type=int, default=100, help="EnSF steps")
    parser.add_argument(
        "--weight-stride",
        type=int,
        default=1,
        help="LETKF transforms every this many grid points, weights interpolated between",
    )
    args = parser.parse_args()
    if args.quick:
        args.grid, args.levels, args.variables, args.stations, args.chunk = 91, 2, 2, 2000, 30

    import xarray as xr
    from dask.distributed import Client

    import xensf  # noqa: F401  (registers the .ensf accessor)

    cluster, cluster_kind = _cluster(args)
    client = Client(cluster)
    peak = {"mb": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                mem = client.run(lambda: __import__("psutil").Process().memory_info().rss)
                peak["mb"] = max(peak["mb"], max(mem.values()) / 1e6)
            except Exception:
                pass
            stop.wait(0.5)

    with tempfile.TemporaryDirectory() as folder:
        prior_path, out_path = Path(folder) / "prior.zarr", Path(folder) / "analysis.zarr"
        prior = _prior(args.grid, args.levels, args.variables, args.members, args.chunk, args.seed)
        size_gb = sum(v.nbytes for v in prior.data_vars.values()) / 1e9
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prior.to_zarr(prior_path, mode="w")
        prior = xr.open_zarr(prior_path)
        rng = np.random.default_rng(args.seed)
        lats = np.degrees(np.arcsin(rng.uniform(-1, 1, args.stations)))
        lons = rng.uniform(-180, 180, args.stations)
        if args.method == "ensf":  # on grid points: each observation reads one point
            lats = prior.lat.values[np.abs(prior.lat.values[:, None] - lats).argmin(0)]
            step = float(prior.lon[1] - prior.lon[0])
            lons = (np.round(lons / step) * step) % 360.0
        stations = xr.Dataset(
            {"v0": (("time", "station"), 280 + rng.standard_normal((1, args.stations)))},
            coords={"time": [0], "lat": ("station", lats), "lon": ("station", lons)},
        ).expand_dims(level=[0], axis=1)
        stations.v0.attrs["units"] = "K"
        points = args.grid * 2 * (args.grid - 1) * args.levels * args.variables
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            options = (
                dict(
                    method="letkf",
                    loc_radius=args.radius,
                    inflation=1.05,
                    weight_stride=args.weight_stride,
                )
                if args.method == "letkf"
                else dict(method="ensf", prior_score="paired", steps=args.steps)
            )
            analysis = prior.ensf.assimilate(
                stations, obs_error=1.0, device=args.device, **options
            )
            analysis.to_zarr(out_path, mode="w")
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
        moved = float(abs(xr.open_zarr(out_path).v0 - prior.v0).max())
    client.close()
    cluster.close()
    print(
        f"grid {args.grid} x {2 * (args.grid - 1)}, {args.levels} levels, {args.variables} "
        f"variables, {args.members} members: {size_gb:.2f} GB float32 in "
        f"{args.chunk} x {args.chunk} chunks; {args.stations} stations; "
        + (
            f"LETKF, loc_radius {args.radius:g} km, weight stride {args.weight_stride}"
            if args.method == "letkf"
            else f"paired EnSF, {args.steps} steps"
        )
        + f"; {cluster_kind}, {args.workers} workers x {args.memory}"
        + (f", device {args.device}" if args.device else "")
    )
    print(f"{'time s':>8} {'peak worker MB':>15} {'s per 1e6 points':>17} {'max change':>11}")
    print(f"{wall:>8.1f} {peak['mb']:>15.0f} {wall / points * 1e6:>17.2f} {moved:>11.3g}")


if __name__ == "__main__":
    main()
