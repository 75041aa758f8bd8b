"""Variable localisation of the LETKF (``cross_variable=False``): each variable is
analysed with its own observations only, so the analysis must equal the per-variable
analyses put side by side (a second route to the same numbers), leave a variable with
no observations of its own exactly as it was, and agree between the whole-grid and the
spatial-block paths."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import xensf
from xensf.errors import OptionError
from xensf.filters import great_circle_distance, with_vertical, within_variable

LEVELS = np.array([850.0, 500.0])


def _case(seed=0, n_mem=8):
    """Two variables (one with levels) whose members are correlated across variables,
    observed at stations and on the grid."""
    r = np.random.default_rng(seed)
    lat, lon = np.linspace(-50, 50, 11), np.arange(16) * 22.5
    common = r.standard_normal((n_mem, lat.size, lon.size))
    z = 5000 + 40 * (common[:, None] + 0.5 * r.standard_normal((n_mem, 2, 11, 16)))
    t = 270 + 2 * (common + 0.5 * r.standard_normal((n_mem, 11, 16)))
    ds = xr.Dataset(
        {
            "z": (("member", "level", "lat", "lon"), z, {"units": "m"}),
            "t": (("member", "lat", "lon"), t, {"units": "K"}),
        },
        coords={"level": ("level", LEVELS, {"units": "hPa"}), "lat": lat, "lon": lon},
    )
    grid = ds.isel(member=0, drop=True) + xr.Dataset(
        {"z": 30 * xr.ones_like(ds.z.isel(member=0)), "t": 1.5 * xr.ones_like(ds.t.isel(member=0))}
    )
    mask = xr.zeros_like(ds.t.isel(member=0), dtype=bool)
    mask[::3, ::3] = True
    gridded = grid.where(mask)
    return ds, gridded


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xensf.XensfWarning)
        return fn(*args, **kwargs)


def test_other_variables_are_infinitely_far():
    dist = within_variable(great_circle_distance)
    a = torch.tensor([[10.0, 20.0, 0.0], [10.0, 20.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[12.0, 25.0, 0.0], [12.0, 25.0, 1.0]], dtype=torch.float64)
    d = dist(a, b)
    h = great_circle_distance(a[:1, :2], b[:1, :2])[0, 0]
    np.testing.assert_allclose(d.diagonal(), [h, h])
    assert torch.isinf(d[0, 1]) and torch.isinf(d[1, 0])
    # composed with vertical localisation: the variable id is the last column
    both = within_variable(with_vertical(great_circle_distance, 10.0))
    a3 = torch.tensor([[10.0, 20.0, 0.1, 0.0]], dtype=torch.float64)
    b3 = torch.tensor([[10.0, 20.0, 0.4, 0.0], [10.0, 20.0, 0.4, 1.0]], dtype=torch.float64)
    np.testing.assert_allclose(both(a3, b3)[0, 0], 3.0)
    assert torch.isinf(both(a3, b3)[0, 1])


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"vertical_radius": 0.3},
        {"weight_stride": 2},
        {"inflation": 1.2, "rtps": 0.5},
        {"adaptive_inflation": True},
    ],
    ids=["plain", "vertical", "weight-interpolation", "inflation-rtps", "adaptive"],
)
def test_the_analysis_is_the_per_variable_analyses_side_by_side(extra):
    ds, obs = _case()
    options = dict(method="letkf", obs_error={"z": 30.0, "t": 1.5}, loc_radius=1500.0, **extra)
    joint = _quiet(ds.ensf.assimilate, obs, cross_variable=False, **options)
    for v, e in options["obs_error"].items():
        alone = {**options, "obs_error": {v: e}}
        if "level" not in ds[v].dims:  # nothing to localise vertically (refused)
            alone.pop("vertical_radius", None)
        apart = _quiet(ds[[v]].ensf.assimilate, obs[[v]], **alone)
        np.testing.assert_allclose(joint[v].values, apart[v].values, rtol=1e-6, atol=0)
    # and it is not what the cross-variable analysis gives
    crossed = _quiet(ds.ensf.assimilate, obs, **options)
    assert not np.allclose(crossed.z.values, joint.z.values, rtol=1e-6, atol=0)
    assert joint.attrs["xensf_cross_variable"] == 0


def test_a_variable_without_observations_of_its_own_keeps_its_prior():
    ds, obs = _case()
    only_t = obs[["t"]]
    options = dict(method="letkf", obs_error=1.5, loc_radius=1500.0)
    kept = _quiet(ds.ensf.assimilate, only_t, cross_variable=False, **options)
    np.testing.assert_array_equal(kept.z.values, ds.z.values)
    assert not np.allclose(kept.t.values, ds.t.values)
    moved = _quiet(ds.ensf.assimilate, only_t, **options)  # through the covariances
    assert not np.allclose(moved.z.values, ds.z.values)


def test_stations_and_spatial_blocks_agree_with_the_whole_grid():
    ds, _ = _case(seed=1)
    r = np.random.default_rng(2)
    n = 20
    stations = xr.Dataset(
        {
            "t": (("station",), 270 + r.standard_normal(n), {"units": "K"}),
            "z": (("level", "station"), 5000 + 40 * r.standard_normal((2, n)), {"units": "m"}),
        },
        coords={
            "level": ("level", LEVELS, {"units": "hPa"}),
            "lat": ("station", r.uniform(-45, 45, n)),
            "lon": ("station", r.uniform(0, 330, n)),
        },
    )
    options = dict(
        method="letkf", obs_error={"z": 30.0, "t": 1.0}, loc_radius=1500.0, cross_variable=False
    )
    whole = _quiet(ds.ensf.assimilate, stations, **options)
    blocks = _quiet(ds.chunk({"lat": 6, "lon": 8}).ensf.assimilate, stations, **options).compute()
    for v in ("z", "t"):
        np.testing.assert_allclose(blocks[v].values, whole[v].values, rtol=1e-6, atol=0)
        assert not np.allclose(whole[v].values, ds[v].values)


@pytest.mark.parametrize("value", ["no", 0, None])
def test_cross_variable_must_be_a_bool(value):
    ds, obs = _case()
    with pytest.raises(OptionError, match="cross_variable must be True"):
        ds.ensf.assimilate(
            obs, method="letkf", obs_error=1.0, loc_radius=500.0, cross_variable=value
        )


def test_a_global_etkf_cannot_localise_by_variable():
    ds, obs = _case()
    with pytest.raises(OptionError, match="cross_variable=False needs a loc_radius"):
        ds.ensf.assimilate(
            obs, method="letkf", obs_error=1.0, loc_radius=None, cross_variable=False
        )
