"""What it costs to resume a long run: ``xensf.cycle`` on a store of n committed cycles.

An operational system often runs one cycle per process (a cron job, a batch queue),
so every cycle starts by resuming the store. For each ``--cycles n`` the script cycles
the soak's twin (``bench_soak.py``: 16 × 16 shallow water, 6 members, LETKF) into a
store of n cycles, then, on fresh copies of it (best of ``--repeat``), times

- opening the store to write: the lock, the committed metadata and the recovery of
  whatever a killed writer may have left (``CycleStore.open``);
- the whole resume of one more cycle: ``xensf.cycle(..., store=...)`` with ``until``
  one cycle further, which also reads the finished run back (``xr.open_zarr``);
- that read alone.

A resume whose cost grows with n is what the table is for.

    python benchmarks/bench_resume.py [--cycles 400 1600] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from bench_soak import _experiment


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, nargs="+", default=[400, 1600])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    import xensf
    from xensf.cycling.store import CycleStore, read_run

    warnings.simplefilter("ignore", xensf.XensfWarning)  # the twin's spread warnings
    model, start, obs, errors = _experiment(max(args.cycles) + 1)
    options = dict(method="letkf", progress=False, seed=1, obs_error=errors, loc_radius=None)
    print(f"{'cycles':>8} {'open to write s':>16} {'resume +1 cycle s':>18} {'read back s':>12}")
    with tempfile.TemporaryDirectory() as folder:
        for n in args.cycles:
            base = Path(folder) / f"base-{n}.zarr"
            xensf.cycle(model, start, obs, store=base, until=obs.time.values[n - 1], **options)
            rows = []
            for _ in range(args.repeat):
                work = Path(folder) / "work.zarr"
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(base, work)
                t = time.perf_counter()
                with CycleStore.open(work):
                    pass
                opened = time.perf_counter() - t
                t = time.perf_counter()
                run = xensf.cycle(
                    model, start, obs, store=work, until=obs.time.values[n], **options
                )
                resumed = time.perf_counter() - t
                assert run.sizes["time"] == n + 1
                run.close()
                t = time.perf_counter()
                read_run(work).close()
                rows.append((opened, resumed, time.perf_counter() - t))
            best = [min(r[i] for r in rows) for i in range(3)]
            print(f"{n:>8} {best[0]:>16.3f} {best[1]:>18.3f} {best[2]:>12.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
