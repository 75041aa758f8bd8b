"""Soak: many cycles of a small twin through ``xensf.cycle``; does memory stay flat?

A 16 × 16 shallow-water basin (``xensf.experiments.twin``), 6 members started near the true bump,
every 4th point of the truth observed with 5 % noise every 10 model steps, LETKF (or
``--method``) each cycle, every cycle committed to a zarr run store. The run is made in ``--legs`` calls
of ``xensf.cycle`` on the same store (each resumes the last), as a long operational
run is; a thread samples the process's resident memory (RSS) and its open file
descriptors every ``--every`` seconds throughout.

Prints one row per leg as it ends (cycles done, wall time, RSS, open files, on glibc
what the C allocator holds — bytes in use and free bytes it keeps — and Python's
small-object arenas, which lie outside the C heap, with the bytes of live objects in
them) and the
verdict: the RSS growth over the second half of the run per 1000 cycles, and the
change in open files, against thresholds (flat: < 1 MB per 1000 cycles, no file
descriptor leaked). With ``--trim`` the allocator's free memory is handed back to the
system (glibc ``malloc_trim``) at the end of each leg before the row is sampled, and
the verdict is taken from those rows: growth that ``--trim`` removes is memory the
allocator kept for reuse, not memory still referenced. With ``--trace LEG`` Python's
``tracemalloc`` follows every allocation from that leg on (about ten times slower), and
at the end the script lists where the memory allocated since then and still alive was
allocated, largest first: what the late legs keep (while it traces, the Python arena
columns read nan and the C heap holds tracemalloc's own records too). ``--samples K``
prints K of the RSS samples, evenly spaced in time: the curve of a run in one leg
(``--legs 1``, one call of ``xensf.cycle``), whose table has a single row.

    python benchmarks/bench_soak.py [--cycles 10000] [--legs 10] [--method letkf] [--trim]
                                    [--trace LEG] [--samples K]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

N, EVERY, MEMBERS = 16, 10, 6


def _experiment(cycles: int):
    """The model, initial ensemble and observations (xensf's own twin pieces)."""
    from xensf.cycling.forecast import ShallowWaterForecaster
    from xensf.experiments.twin import TwinSetup, initial_ensemble, observations, truth_run

    setup = TwinSetup(
        n=N, steps=cycles * EVERY, every=EVERY, stride=4, members=MEMBERS, prior="easy"
    )
    truth = truth_run(setup, device="cpu")
    obs, errors = observations(truth, setup, 0.05)
    start = initial_ensemble(setup, device="cpu")
    return ShallowWaterForecaster(setup.config, device="cpu"), start, obs, errors


_MALLINFO2 = (
    "arena", "ordblks", "smblks", "hblks", "hblkhd",
    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
)  # fmt: skip


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2]


def _libc():
    """glibc, where it has ``mallinfo2`` (2.33+); else None (other C libraries)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def allocator(libc) -> tuple[float, float]:
    """C heap (MB): bytes in use (small blocks + mmapped) and free bytes kept."""
    if libc is None:
        return (float("nan"), float("nan"))
    info = libc.mallinfo2()
    return ((info.uordblks + info.hblkhd) / 1e6, info.fordblks / 1e6)


def pymalloc() -> tuple[float, float]:
    """Python's small-object allocator (MB): its arenas (mmap'd, outside the C heap) and
    the bytes of live objects in them, read from ``sys._debugmallocstats``."""
    import os
    import re

    with tempfile.TemporaryFile(mode="w+") as report:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(report.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        report.seek(0)
        text = report.read()

    def number(label: str) -> float:
        match = re.search(rf"# {label}\s*=\s*([\d,]+)", text)
        return float(match.group(1).replace(",", "")) if match else float("nan")

    arena = number("arenas allocated current")
    size = re.search(r"arenas \* (\d+) bytes/arena", text)
    arena_bytes = float(size.group(1)) if size else float("nan")
    return arena * arena_bytes / 1e6, number("bytes in allocated blocks") / 1e6


class Sampler(threading.Thread):
    """RSS (MB) and open file descriptors of this process, every ``every`` seconds."""

    def __init__(self, every: float):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.every = every
        self.samples: list[tuple[float, float, int]] = []
        self.stop = threading.Event()

    def sample(self) -> tuple[float, float, int]:
        return (time.perf_counter(), self.proc.memory_info().rss / 1e6, self.proc.num_fds())

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(self.sample())
            self.stop.wait(self.every)


def alive_since(snapshot, leg: int, top: int = 5) -> None:
    """Print where the memory allocated since ``leg`` and still alive was allocated."""
    ours = tracemalloc.Filter(False, tracemalloc.__file__)
    stats = snapshot.filter_traces([ours]).statistics("traceback")
    total = sum(s.size for s in stats) / 1e6
    print(f"allocated from leg {leg} on and alive at the end: {total:.2f} MB in "
          f"{sum(s.count for s in stats)} blocks; the largest:")  # fmt: skip
    for s in stats[:top]:
        print(f"  {s.size / 1e6:.3f} MB in {s.count} block(s), allocated at")
        for line in s.traceback.format(limit=6):
            print("    " + line)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--legs", type=int, default=10)
    parser.add_argument("--method", default="letkf")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    parser.add_argument(
        "--trim", action="store_true", help="malloc_trim at each leg's end (glibc)"
    )
    parser.add_argument(
        "--samples", type=int, default=0, metavar="K",
        help="also print K of the RSS samples, evenly spaced over the run",
    )  # fmt: skip
    parser.add_argument(
        "--trace", type=int, default=None, metavar="LEG",
        help="tracemalloc from this leg on; list what was allocated since and is alive",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.trace is not None and not 1 <= args.trace <= args.legs:
        parser.error(f"--trace takes a leg from 1 to {args.legs}")
    libc = _libc()
    if args.trim and libc is None:
        parser.error("--trim needs glibc (malloc_trim, mallinfo2)")

    import xensf

    model, start, obs, errors = _experiment(args.cycles)
    options = {"obs_error": errors}
    if args.method == "letkf":
        options["loc_radius"] = None  # the global ETKF, as in the soaks recorded so far
    if args.method == "ensf":
        options["steps"] = 5
    sampler = Sampler(args.every)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "soak.zarr"
        sampler.start()
        began = time.perf_counter()
        for leg in range(1, args.legs + 1):
            until = obs.time.values[round(leg * args.cycles / args.legs) - 1]
            if leg == args.trace:
                tracemalloc.start(10)
            run = xensf.cycle(
                model, start, obs, method=args.method, store=store, until=until,
                progress=False, seed=1, **options,
            )  # fmt: skip
            cycles = run.sizes["time"]
            run.close()
            del run
            if args.trim:
                libc.malloc_trim(0)
            _, rss, fds = sampler.sample()
            used, kept = allocator(libc)
            arenas, objects = pymalloc()
            rows.append(
                (cycles, time.perf_counter() - began, rss, fds, used, kept, arenas, objects)
            )
            if leg == 1:
                print(f"{'cycles':>8} {'wall s':>9} {'RSS MB':>9} {'open fds':>9} "
                      f"{'C in use MB':>12} {'C free MB':>10} {'py arenas MB':>13} "
                      f"{'py objects MB':>14}", flush=True)  # fmt: skip
            print(f"{cycles:>8} {rows[-1][1]:>9.1f} {rss:>9.1f} {fds:>9} {used:>12.1f} "
                  f"{kept:>10.1f} {arenas:>13.1f} {objects:>14.1f}", flush=True)  # fmt: skip
        sampler.stop.set()
        sampler.join()
        if args.trace is not None:
            alive_since(tracemalloc.take_snapshot(), args.trace)
            tracemalloc.stop()
        size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 1e6

    print(f"soak: {args.cycles} cycles of a {N}x{N} shallow-water twin, {MEMBERS} members, "
          f"{args.method}, in {args.legs} resumed legs; store {size:.1f} MB")  # fmt: skip
    if args.trim:  # the leg ends, each sampled after malloc_trim, against cycles done
        times = np.array([r[0] for r in rows], dtype=float)
        rss = np.array([r[2] for r in rows])
        rate = 1.0
    else:  # every sample, against time; cycles per second from the legs
        times = np.array([s[0] for s in sampler.samples])
        rss = np.array([s[1] for s in sampler.samples])
        rate = rows[-1][0] / rows[-1][1]
    half = times >= times[0] + 0.5 * (times[-1] - times[0])
    slope = np.polyfit(times[half], rss[half], 1)[0] / rate * 1000 if half.sum() > 2 else 0.0
    used = np.array([r[4] for r in rows])
    cycles = np.array([r[0] for r in rows], dtype=float)
    later = cycles >= cycles[-1] / 2
    used_slope = np.polyfit(cycles[later], used[later], 1)[0] * 1000 if later.sum() > 2 else 0.0
    fd_change = rows[-1][3] - rows[0][3]
    print(f"RSS: first leg {rows[0][2]:.1f} MB, peak {rss.max():.1f} MB, last {rows[-1][2]:.1f} "
          f"MB; second-half slope {slope:+.3f} MB per 1000 cycles"
          + (" (leg ends after malloc_trim)" if args.trim else ""))  # fmt: skip
    print(f"C heap in use: {used[0]:.1f} MB after the first leg, {used[-1]:.1f} MB at the "
          f"end; second-half slope {used_slope:+.3f} MB per 1000 cycles")  # fmt: skip
    for label, column in (("Python arenas", 6), ("live Python objects", 7)):
        values = np.array([r[column] for r in rows])
        fit = np.polyfit(cycles[later], values[later], 1)[0] * 1000 if later.sum() > 2 else 0.0
        print(f"{label}: {values[0]:.1f} MB after the first leg, {values[-1]:.1f} MB at the "
              f"end; second-half slope {fit:+.3f} MB per 1000 cycles")  # fmt: skip
    print(f"open file descriptors: {rows[0][3]} after the first leg, {rows[-1][3]} at the end")
    if args.samples:  # the sampler's record, at evenly spaced moments of the run
        t0 = sampler.samples[0][0]
        pace = rows[-1][0] / rows[-1][1]  # cycles per second over the whole run
        print(f"{'wall s':>9} {'cycles (at the mean pace)':>26} {'RSS MB':>9} {'open fds':>9}")
        picks = np.linspace(0, len(sampler.samples) - 1, args.samples).round().astype(int)
        for i in sorted(set(picks.tolist())):
            t, rss_mb, fds = sampler.samples[i]
            print(
                f"{t - t0:>9.0f} {min(rows[-1][0], (t - t0) * pace):>26.0f} {rss_mb:>9.1f} {fds:>9}"
            )
    if args.trace is not None:
        print("verdict: none while tracing (tracemalloc's own records are in the numbers)")
        return 0
    flat = abs(slope) < 1.0 and fd_change <= 0
    print("verdict:", "flat" if flat else "GROWING")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
