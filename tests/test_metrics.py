"""Skill scores: one RMSE, used by the accessor and the demos, against numpy."""

from __future__ import annotations

import numpy as np
import xarray as xr

import xensf  # noqa: F401  (registers the accessor)
from xensf.metrics import ensemble_rmse


def _case():
    lat = np.linspace(-80.0, 80.0, 4)
    rng = np.random.default_rng(0)
    ens = xr.Dataset(
        {"t": (("time", "member", "lat", "lon"), rng.standard_normal((3, 5, 4, 6)))},
        coords={"time": np.arange(3), "lat": lat, "lon": np.arange(6.0) * 60},
    )
    truth = xr.Dataset({"t": (("time", "lat", "lon"), rng.standard_normal((3, 4, 6)))})
    return ens, truth


def test_accessor_rmse_is_per_time_and_area_weighted_on_a_sphere():
    ens, truth = _case()
    got = ens.ensf.rmse(truth)
    squared = (ens.t.values.mean(1) - truth.t.values) ** 2  # (time, lat, lon)
    w = np.cos(np.deg2rad(ens.lat.values))[None, :, None] * np.ones_like(squared)
    expected = np.sqrt((squared * w).sum((1, 2)) / w.sum((1, 2)))
    np.testing.assert_allclose(got.t.values, expected)
    assert got.t.dims == ("time",)
    unweighted = np.sqrt(squared.mean((1, 2)))
    assert not np.allclose(expected, unweighted)  # the weighting matters here
    # over time too
    np.testing.assert_allclose(
        ens.ensf.rmse(truth, dims=["time", "lat", "lon"]).t,
        np.sqrt((squared * w).sum() / w.sum()),
    )


def test_accessor_rmse_on_a_planar_grid_is_unweighted():
    ens, truth = _case()
    planar = ens.rename(lat="y", lon="x")
    got = planar.ensf.rmse(truth.rename(lat="y", lon="x"), member_dim="member")
    squared = (ens.t.values.mean(1) - truth.t.values) ** 2
    np.testing.assert_allclose(got.t.values, np.sqrt(squared.mean((1, 2))))


def test_ensemble_rmse_over_every_point_and_where():
    ens, truth = _case()
    error = ens.t.values.mean(1) - truth.t.values
    assert np.isclose(ensemble_rmse(ens.t, truth.t, "member"), np.sqrt((error**2).mean()))
    where = truth.t > 0
    assert np.isclose(
        ensemble_rmse(ens.t, truth.t, "member", where), np.sqrt((error[where.values] ** 2).mean())
    )
