"""Skill scores: one RMSE, used by the accessor and the demos, against numpy."""

from __future__ import annotations

import numpy as np
import xarray as xr

import xensf  # noqa: F401  (registers the accessor)
from xensf.metrics import ensemble_rmse


def _case():
    rng = np.random.default_rng(0)
    ens = xr.Dataset(
        {"t": (("time", "member", "lat", "lon"), rng.standard_normal((3, 5, 4, 6)))},
        coords={"time": np.arange(3), "lat": np.arange(4.0), "lon": np.arange(6.0)},
    )
    truth = xr.Dataset({"t": (("time", "lat", "lon"), rng.standard_normal((3, 4, 6)))})
    return ens, truth


def test_accessor_rmse_is_per_time_by_default():
    ens, truth = _case()
    got = ens.ensf.rmse(truth)
    expected = np.sqrt(((ens.t.values.mean(1) - truth.t.values) ** 2).mean((1, 2)))
    np.testing.assert_allclose(got.t.values, expected)
    assert got.t.dims == ("time",)
    np.testing.assert_allclose(
        ens.ensf.rmse(truth, dims=["time", "lat", "lon"]).t, np.sqrt(np.mean(expected**2))
    )


def test_ensemble_rmse_over_every_point_and_where():
    ens, truth = _case()
    error = ens.t.values.mean(1) - truth.t.values
    assert np.isclose(ensemble_rmse(ens.t, truth.t, "member"), np.sqrt((error**2).mean()))
    where = truth.t > 0
    assert np.isclose(
        ensemble_rmse(ens.t, truth.t, "member", where), np.sqrt((error[where.values] ** 2).mean())
    )
