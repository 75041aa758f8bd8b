"""xensf's warnings name the line of the caller's code that called into xensf."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

import xensf
from xensf.errors import warn_user


def _record(call):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        call()
    return record


def test_warn_user_names_the_calling_line():
    (w,) = _record(lambda: warn_user("a message", xensf.XensfWarning))
    assert w.filename == __file__ and w.category is xensf.XensfWarning


def test_a_warning_from_deep_inside_assimilate_names_the_users_call():
    """The observation errors dwarf the spread: the warning is issued four calls deep
    in xensf, and shown at the line below that called ``assimilate``."""
    rng = np.random.default_rng(0)
    prior = xr.Dataset(
        {
            "t": (
                ("member", "lat", "lon"),
                280 + 0.01 * rng.standard_normal((6, 5, 8)),
                {"units": "K"},
            )
        },
        coords={"lat": np.linspace(-60, 60, 5), "lon": np.arange(8) * 45.0},
    )
    obs = xr.full_like(prior.t[0], np.nan).to_dataset()
    obs.t[2, 3] = 282.0
    record = _record(
        lambda: prior.ensf.assimilate(obs, method="letkf", obs_error=5.0, loc_radius=None)
    )
    (w,) = [w for w in record if w.category is xensf.ObservationErrorWarning]
    assert w.filename == __file__
    assert "assimilate" in open(__file__).read().splitlines()[w.lineno - 1]


@pytest.mark.parametrize("lazy", [False, True])
def test_the_user_line_is_named_with_dask_too(lazy):
    """Computed lazily the warning comes when the graph runs, in the scheduler's
    thread: it then names the dask frame that called xensf there, never one inside."""
    rng = np.random.default_rng(1)
    prior = xr.Dataset(
        {
            "t": (
                ("time", "member", "lat", "lon"),
                280 + 0.01 * rng.standard_normal((2, 6, 5, 8)),
                {"units": "K"},
            )
        },
        coords={"time": np.arange(2), "lat": np.linspace(-60, 60, 5), "lon": np.arange(8) * 45.0},
    )
    obs = xr.full_like(prior.t[:, 0], np.nan).to_dataset()
    obs.t[:, 2, 3] = 282.0
    if lazy:
        prior = prior.chunk({"time": 1})
    record = _record(
        lambda: prior.ensf.assimilate(
            obs, method="letkf", obs_error=5.0, loc_radius=None
        ).compute()
    )
    found = [w for w in record if w.category is xensf.ObservationErrorWarning]
    assert found
    package = xensf.errors._PACKAGE
    assert all(not w.filename.startswith(package) for w in found)
    if not lazy:
        assert all(w.filename == __file__ for w in found)
