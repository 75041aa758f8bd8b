"""Small EnSF analyses take turns among dask's threads; large ones run at once."""

from __future__ import annotations

import threading
import time

import dask
import numpy as np
import pytest
import xarray as xr

from xensf.filters.device import SMALL_PROBLEM


def most_at_once(monkeypatch):
    """Replace EnSF's two integrators (in :mod:`xensf.filters.ensf`, inside the turn) by
    wrappers that count how many run at once, each held 0.2 s (long enough for another
    thread to start one, if it can); returns a function that gives the most seen."""
    from xensf.filters import ensf

    running, most, guard = [0], [0], threading.Lock()

    def counting(inner):
        def counted(*args, **kwargs):
            with guard:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.2)
            try:
                return inner(*args, **kwargs)
            finally:
                with guard:
                    running[0] -= 1

        return counted

    for name in ("integrate", "integrate_componentwise"):
        monkeypatch.setattr(ensf, name, counting(getattr(ensf, name)))
    return lambda: most[0]


def _ensemble(n_lat: int, n_lon: int, members: int = 10, times: int = 4) -> xr.Dataset:
    rng = np.random.default_rng(0)
    values = 280 + rng.standard_normal((times, members, n_lat, n_lon)).astype("f4")
    return xr.Dataset(
        {"t": (("time", "member", "lat", "lon"), values, {"units": "K"})},
        coords={
            "time": np.datetime64("2001-01-01", "ns") + np.arange(times) * np.timedelta64(6, "h"),
            "lat": np.linspace(-60, 60, n_lat),
            "lon": np.arange(n_lon) * 360.0 / n_lon,
        },
    )


@pytest.mark.parametrize(
    ("shape", "alone"),
    [((8, 16), True), ((40, 48), False)],  # 10 × 128 values; 10 × 1920 ≥ SMALL_PROBLEM
)
def test_small_ensf_calls_take_turns_and_large_ones_do_not(monkeypatch, shape, alone):
    assert (10 * shape[0] * shape[1] < SMALL_PROBLEM) is alone
    prior = _ensemble(*shape)
    obs = prior.t.isel(member=0).where(prior.lat > 0).to_dataset()
    eager = prior.ensf.assimilate(obs, method="ensf", obs_error=0.5, seed=0, steps=5)
    most = most_at_once(monkeypatch)
    lazy = prior.chunk(time=1).ensf.assimilate(obs, method="ensf", obs_error=0.5, seed=0, steps=5)
    with dask.config.set(scheduler="threads", num_workers=4):
        result = lazy.compute()
    assert (most() == 1) is alone
    np.testing.assert_array_equal(result.t.values, eager.t.values)
