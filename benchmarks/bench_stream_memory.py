"""Peak memory of training a latent model streamed from a zarr store far larger than a batch.

Writes a synthetic ERA5-like zarr store with the WeatherBench2 schema (variables
``geopotential``, ``temperature``, ``u_component_of_wind``, ``v_component_of_wind`` at
500 and 850 hPa, stored ``(time, level, longitude, latitude)`` on the 240 × 121 grid,
6-hourly, 8 times per chunk; at least ``--gigabytes`` of float32 data) into a
temporary directory, opens it lazily with :func:`xensf.era5.open` (8 channels of
121 × 240 per state), trains a small latent model on it for one epoch with
:func:`xensf.train_latent` and a batch of ``--batch-size`` states, and samples the
resident memory (RSS, of the process and of any dask worker processes it started)
every 20 ms while training runs. The store is written by a child process, so the
training process's own peak (``ru_maxrss``) does not include the writing.

Prints a table: store size (in memory and on disk), states, batch size and bytes,
RSS before training, peak RSS during training and the increase, wall time.

    python benchmarks/bench_stream_memory.py [--gigabytes 2.1] [--batch-size 16]
        [--scheduler threads|distributed] [--keep DIR]

``--scheduler distributed`` runs the same under a ``dask.distributed`` LocalCluster
(one worker process, two threads); the RSS reported is then the sum over the
training process and the worker.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

LEVELS = [500, 850]
VARIABLES = ["geopotential", "temperature", "u_component_of_wind", "v_component_of_wind"]
UNITS = {
    "geopotential": "m**2 s**-2",
    "temperature": "K",
    "u_component_of_wind": "m s**-1",
    "v_component_of_wind": "m s**-1",
}
NLAT, NLON = 121, 240
TIME_CHUNK = 8


def n_times_for(gigabytes: float) -> int:
    per_time = len(VARIABLES) * len(LEVELS) * NLAT * NLON * 4
    n = int(np.ceil(gigabytes * 1e9 / per_time))
    return int(np.ceil(n / TIME_CHUNK) * TIME_CHUNK)


def _block(name: str, block_info=None):
    """One chunk of smooth synthetic fields (time, level, longitude, latitude)."""
    info = block_info[None]
    (t0, t1), (l0, l1), (x0, x1), (y0, y1) = info["array-location"]
    rng = np.random.default_rng([VARIABLES.index(name), t0])
    lat = np.deg2rad(np.linspace(-90, 90, NLAT)[y0:y1])[None, None, None, :]
    lon = np.deg2rad(np.arange(NLON) * 1.5)[x0:x1][None, None, :, None]
    lev = np.asarray(LEVELS[l0:l1], np.float64)[None, :, None, None]
    nt = t1 - t0
    phase = rng.uniform(0, 2 * np.pi, (nt, 1, 1, 1, 3))
    amp = rng.normal(1, 0.2, (nt, 1, 1, 1, 3))
    wave = sum(amp[..., k] * np.cos(lat) * np.cos((k + 1) * lon + phase[..., k]) for k in range(3))
    scale = {"geopotential": 9.81 * 7000.0, "temperature": 40.0}.get(name, 10.0)
    base = {
        "geopotential": 9.81 * 7000.0 * np.log(1000.0 / lev),
        "temperature": 250.0 + 0.04 * lev,
    }.get(name, 0.0 * lev)
    noise = 0.01 * rng.standard_normal((nt, l1 - l0, x1 - x0, y1 - y0))
    return (base + 0.05 * scale * (wave + noise)).astype(np.float32)


def write_store(path: Path, n_times: int) -> None:
    import dask.array as da
    import xarray as xr

    shape = (n_times, len(LEVELS), NLON, NLAT)
    chunks = (TIME_CHUNK, len(LEVELS), NLON, NLAT)
    data = {}
    for name in VARIABLES:
        arr = da.map_blocks(
            _block, name, chunks=da.core.normalize_chunks(chunks, shape), dtype=np.float32
        )
        data[name] = (
            ("time", "level", "longitude", "latitude"),
            arr,
            {"units": UNITS[name], "long_name": name.replace("_", " ").capitalize()},
        )
    times = np.datetime64("1979-01-01T00", "ns") + np.arange(n_times) * np.timedelta64(6, "h")
    ds = xr.Dataset(
        data,
        coords={
            "time": times,
            "level": np.asarray(LEVELS, np.int64),
            "longitude": np.arange(NLON) * 1.5,
            "latitude": np.linspace(-90, 90, NLAT),
        },
    )
    ds.to_zarr(path, mode="w", zarr_format=2, consolidated=True)


class RSSSampler(threading.Thread):
    """Samples the RSS of this process and its children every ``interval`` seconds."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.stop = threading.Event()

    def rss(self) -> int:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # a child that just ended
                pass
        return total

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=2.1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--scheduler", choices=["threads", "distributed"], default="threads")
    parser.add_argument("--keep", type=Path, default=None, help="write/reuse the store here")
    parser.add_argument("--write-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    n_times = n_times_for(args.gigabytes)
    if args.write_only is not None:
        write_store(args.write_only, n_times)
        return

    tmp = None
    if args.keep is not None:
        store = args.keep
    else:
        tmp = Path(tempfile.mkdtemp(prefix="xensf-stream-"))
        store = tmp / "era5-like.zarr"
    try:
        if not (store / ".zmetadata").exists():
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, __file__, "--gigabytes", str(args.gigabytes), "--write-only",
                 str(store)],
                check=True,
            )  # fmt: skip
            print(f"wrote {store} in {time.perf_counter() - t0:.0f} s", flush=True)
        run(store, args)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run(store: Path, args) -> None:
    import torch

    import xensf
    import xensf.era5

    torch.set_num_threads(2)
    client = None
    if args.scheduler == "distributed":
        from dask.distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=True)
        client = Client(cluster)
    ds = xensf.era5.open(store, variables=["z", "t", "u", "v"], levels=LEVELS)
    n_states = ds.sizes["time"]
    state_bytes = sum(
        int(np.prod([ds.sizes[d] for d in ds[v].dims if d != "time"])) * 4 for v in ds.data_vars
    )
    logical = n_states * state_bytes
    on_disk = du(store)

    sampler = RSSSampler()
    before = sampler.rss()
    sampler.start()
    t0 = time.perf_counter()
    model = xensf.train_latent(
        ds,
        obs_layout=8,
        latent_dim=32,  # 4 x 2 x 4 on 121 x 240 (patch 4, 4 stride-2 stages)
        width=8,
        blocks=1,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-3,
        seed=0,
        device="cpu",
        progress=False,
    )
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    if client is not None:
        client.close()
        cluster.close()
    streamed = model.config["training"]["streamed"]

    def gb(x):
        return f"{x / 1e9:.2f} GB"

    def mb(x):
        return f"{x / 1e6:.0f} MB"

    rows = [
        ("scheduler", args.scheduler),
        ("store (float32 in memory)", gb(logical)),
        ("store on disk", gb(on_disk)),
        ("states x channels x grid", f"{n_states} x 8 x {NLAT} x {NLON}"),
        (
            "dask chunk (per variable)",
            f"{TIME_CHUNK} times, {mb(TIME_CHUNK * 2 * NLAT * NLON * 4)}",
        ),
        ("batch size", f"{args.batch_size} states, {mb(args.batch_size * state_bytes)}"),
        ("epochs", str(args.epochs)),
        ("streamed (not loaded whole)", str(streamed)),
        ("RSS before training", mb(before)),
        ("peak RSS during training (sampled)", mb(sampler.peak)),
        ("peak increase", mb(sampler.peak - before)),
        ("ru_maxrss of the training process", mb(maxrss)),
        ("peak RSS / store size", f"{sampler.peak / logical:.1%}"),
        ("wall time", f"{wall:.0f} s ({n_states * args.epochs / wall:.2g} states/s)"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
