"""A small cycling twin experiment, shared by tests/test_cycle.py and the runs it kills.

:func:`experiment` builds it: a 16 × 16 shallow-water basin, a truth run from the
paper's bump, an ensemble of 6 members started from jittered wrong bump positions, and
observations of every 4th point of the truth every 10 model steps.

Run as a script, ``python tests/cycle_run.py STORE`` cycles it (4 cycles, members
recorded) into ``STORE``; the tests start it in a subprocess and kill it from outside.
``python tests/cycle_run.py --kill POINT STORE [POINT STORE ...]`` imports xensf once
and forks one process per pair that cycles into ``STORE`` and kills itself with
SIGKILL at ``POINT`` (``XENSF_CYCLE_KILL``, see :mod:`xensf.cycling.store`); it prints each
child's wait status. Forking after the (slow) imports and before any computation keeps
the test fast.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import xarray as xr

import xensf
from xensf.cycling.forecast import ShallowWaterForecaster
from xensf.models.swe import ShallowWaterConfig

N = 16
EVERY = 10


def experiment(cycles: int = 4, members: int = 6) -> dict:
    """The model, initial ensemble, observations and options of :func:`xensf.cycle`."""
    config = ShallowWaterConfig(n=N)
    truth = xensf.models.shallow_water(n=N, steps=cycles * EVERY, every=EVERY, device="cpu")
    rng = np.random.default_rng(0)
    x0 = config.L / 3 + rng.normal(0, config.L / 20, members)
    y0 = config.L / 3 + rng.normal(0, config.L / 20, members)
    start = xensf.models.shallow_water(x0, y0, n=N, steps=0, every=1, device="cpu")
    mask = xr.DataArray(
        (np.arange(N)[:, None] % 4 == 0) & (np.arange(N)[None, :] % 4 == 0), dims=("y", "x")
    )
    obs = truth.isel(time=slice(1, None)).where(mask)
    return {
        "model": ShallowWaterForecaster(config, device="cpu"),
        "initial_ensemble": start,
        "obs": obs,
        "truth": truth,
        # EnSF, so that the analyses draw random numbers: resuming must repeat them.
        "options": {"method": "ensf", "obs_error": 0.01, "steps": 5, "seed": 3},
    }


def run(store, cycles: int = 4, **kwargs) -> xr.Dataset:
    e = experiment(cycles)
    options = {**e["options"], **kwargs}
    return xensf.cycle(
        e["model"], e["initial_ensemble"], e["obs"], store=store, progress=False, **options
    )


def kill_runs(pairs: list[tuple[str, str]]) -> None:
    """Cycle into each store in a forked child killed at its point; print the statuses."""
    # The heavy imports, once, before forking (including the ones torch and xarray make
    # lazily on first use); no computation, so no thread pool exists yet.
    import dask.array  # noqa: F401
    import torch.fx.experimental.symbolic_shapes  # noqa: F401
    import tqdm.auto  # noqa: F401
    import zarr  # noqa: F401

    import xensf.bridge.analysis  # noqa: F401
    from xensf.cycling.store import KILL_ENV

    children = {}
    for point, store in pairs:
        pid = os.fork()
        if pid == 0:  # the child: no thread pool or event loop was started before the fork
            os.environ[KILL_ENV] = point
            try:
                run(store, 4, members=True)
            finally:
                os._exit(0)
        children[pid] = point
    for pid, point in children.items():
        _, status = os.waitpid(pid, 0)
        print(point, os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--kill":
        rest = sys.argv[2:]
        kill_runs(list(zip(rest[::2], rest[1::2], strict=True)))
    else:
        run(sys.argv[1], 4, members=True)
