"""Soak: many cycles of a small twin through ``xensf.cycle``; does memory stay flat?

A 16 × 16 shallow-water basin (``xensf.experiments.twin``), 6 members started near the true bump,
every 4th point of the truth observed with 5 % noise every 10 model steps, LETKF (or
``--method``) each cycle, every cycle committed to a zarr run store. The run is made in ``--legs`` calls
of ``xensf.cycle`` on the same store (each resumes the last), as a long operational
run is; a thread samples the process's resident memory (RSS) and its open file
descriptors every ``--every`` seconds throughout.

Prints one row per leg as it ends (cycles done, wall time, RSS and open files) and
the verdict: the RSS growth over the second half of the run per 1000 cycles, and the
change in open files, against thresholds (flat: < 1 MB per 1000 cycles, no file
descriptor leaked).

    python benchmarks/bench_soak.py [--cycles 10000] [--legs 10] [--method letkf]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--legs", type=int, default=10)
    parser.add_argument("--method", default="letkf")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    args = parser.parse_args(argv)

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
            run = xensf.cycle(
                model, start, obs, method=args.method, store=store, until=until,
                progress=False, seed=1, **options,
            )  # fmt: skip
            _, rss, fds = sampler.sample()
            rows.append((run.sizes["time"], time.perf_counter() - began, rss, fds))
            run.close()
            if leg == 1:
                print(f"{'cycles':>8} {'wall s':>9} {'RSS MB':>9} {'open fds':>9}", flush=True)
            print(f"{rows[-1][0]:>8} {rows[-1][1]:>9.1f} {rss:>9.1f} {fds:>9}", flush=True)
        sampler.stop.set()
        sampler.join()
        size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 1e6

    print(f"soak: {args.cycles} cycles of a {N}x{N} shallow-water twin, {MEMBERS} members, "
          f"{args.method}, in {args.legs} resumed legs; store {size:.1f} MB")  # fmt: skip
    times = np.array([s[0] for s in sampler.samples])
    rss = np.array([s[1] for s in sampler.samples])
    half = times >= times[0] + 0.5 * (times[-1] - times[0])
    # cycles per second from the legs, to turn the RSS slope into MB per 1000 cycles
    rate = rows[-1][0] / rows[-1][1]
    slope = np.polyfit(times[half], rss[half], 1)[0] / rate * 1000 if half.sum() > 2 else 0.0
    fd_change = rows[-1][3] - rows[0][3]
    print(f"RSS: first leg {rows[0][2]:.1f} MB, peak {rss.max():.1f} MB, last {rows[-1][2]:.1f} "
          f"MB; second-half slope {slope:+.3f} MB per 1000 cycles")  # fmt: skip
    print(f"open file descriptors: {rows[0][3]} after the first leg, {rows[-1][3]} at the end")
    flat = abs(slope) < 1.0 and fd_change <= 0
    print("verdict:", "flat" if flat else "GROWING")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
