"""Vertical localisation of the LETKF: the ellipsoidal distance, levels beyond the
vertical cut-off left alone, agreement with an analysis whose observation errors carry
the vertical taper instead, block = whole grid, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from xensf.errors import OptionError
from xensf.filters import gaspari_cohn, great_circle_distance, with_vertical

LEVELS = np.array([850.0, 700.0, 500.0, 250.0])


def _case(seed=0, units="hPa", levels=LEVELS):
    r = np.random.default_rng(seed)
    lat, lon = np.linspace(-40, 40, 9), np.arange(12) * 30.0
    shape = (10, levels.size, lat.size, lon.size)
    level = xr.DataArray(levels, dims="level", attrs={"units": units} if units else {})
    ds = xr.Dataset(
        {"t": (("member", "level", "lat", "lon"), 250 + r.standard_normal(shape), {"units": "K"})},
        coords={"level": level, "lat": lat, "lon": lon},
    )
    # stations at the 500 hPa level only (the third level)
    n = 15
    obs = xr.Dataset(
        {"t": (("level", "station"), 250 + 2 * r.standard_normal((1, n)), {"units": "K"})},
        coords={
            "level": xr.DataArray(levels[2:3], dims="level", attrs=level.attrs),
            "lat": ("station", r.uniform(-40, 40, n)),
            "lon": ("station", r.uniform(0, 330, n)),
        },
    )
    return ds, obs


def test_a_purely_vertical_separation_is_tapered_with_the_vertical_radius():
    dist = with_vertical(great_circle_distance, 500.0 / 0.3)  # c = 500 km, c_z = 0.3
    a = torch.tensor([[10.0, 20.0, 0.0], [10.0, 20.0, float("nan")]], dtype=torch.float64)
    b = torch.tensor([[10.0, 20.0, 0.25], [10.0, 25.0, 0.0]], dtype=torch.float64)
    d = dist(a, b)
    vertical = gaspari_cohn(torch.tensor(0.25, dtype=torch.float64), 0.3)
    np.testing.assert_allclose(gaspari_cohn(d[0, 0], 500.0), vertical, rtol=1e-12)
    horizontal = great_circle_distance(a[:1, :2], b[1:, :2])[0, 0]
    np.testing.assert_allclose(d[0, 1], horizontal)  # same level: horizontal only
    np.testing.assert_allclose(d[1, 0], 0.0, atol=1e-9)  # no level (NaN): not localised


def test_levels_beyond_the_vertical_cut_off_keep_their_prior():
    ds, obs = _case()
    options = dict(method="letkf", obs_error=1.0, loc_radius=3000.0, obs_dim="station")
    a = ds.ensf.assimilate(obs, vertical_radius=0.1, **options)  # cut-off 0.2 in ln p
    # ln(700/500) = 0.34 and ln(500/250) = 0.69: beyond; 850 further still
    for lev in (850.0, 700.0, 250.0):
        np.testing.assert_array_equal(a.t.sel(level=lev).values, ds.t.sel(level=lev).values)
    assert not np.allclose(a.t.sel(level=500.0).values, ds.t.sel(level=500.0).values)
    assert a.attrs["xensf_vertical_radius"] == 0.1
    # a radius far beyond the levels' spread is no vertical localisation
    far = ds.ensf.assimilate(obs, vertical_radius=1e6, **options)
    none = ds.ensf.assimilate(obs, **options)
    np.testing.assert_allclose(far.t.values, none.t.values, rtol=0, atol=1e-4)


def test_the_vertical_taper_equals_observation_errors_inflated_by_it():
    # One station on a grid point at 500 hPa: at that point's 700 hPa level its
    # precision is multiplied by gaspari_cohn(ln(700/500), c_z) (no horizontal
    # separation), the same as an error divided by the taper's root.
    ds, obs = _case(1)
    ds = ds.astype("float64")
    obs = obs.astype("float64").isel(station=[0])
    obs = obs.assign_coords(lat=("station", [10.0]), lon=("station", [90.0]))
    c_z, sigma = 0.3, 1.0
    options = dict(method="letkf", loc_radius=3000.0, obs_dim="station")
    taper = float(gaspari_cohn(torch.tensor(np.log(700 / 500), dtype=torch.float64), c_z))
    assert 0 < taper < 1
    vertical = ds.ensf.assimilate(obs, vertical_radius=c_z, obs_error=sigma, **options)
    reference = ds.ensf.assimilate(obs, obs_error=sigma / np.sqrt(taper), **options)
    at = dict(level=700.0, lat=10.0, lon=90.0)
    assert not np.allclose(vertical.t.sel(at).values, ds.t.sel(at).values)
    np.testing.assert_allclose(vertical.t.sel(at).values, reference.t.sel(at).values, rtol=1e-12)


def test_heights_in_metres_and_spatial_blocks_give_the_whole_grid_analysis():
    ds, obs = _case(2, units="m", levels=np.array([0.0, 50.0, 100.0, 300.0]))
    options = dict(
        method="letkf", obs_error=1.0, loc_radius=2500.0, vertical_radius=60.0, obs_dim="station"
    )
    whole = ds.ensf.assimilate(obs, **options)
    blocks = ds.chunk({"lat": 3, "lon": 4}).ensf.assimilate(obs, **options)
    np.testing.assert_allclose(blocks.t.values, whole.t.values, rtol=0, atol=1e-5)
    # 300 m is 200 m above the observed 100 m, beyond the 120 m cut-off
    np.testing.assert_array_equal(whole.t.sel(level=300.0).values, ds.t.sel(level=300.0).values)


def test_vertical_localisation_needs_levels_it_can_measure():
    ds, obs = _case()
    options = dict(method="letkf", obs_error=1.0, obs_dim="station")
    with pytest.raises(OptionError, match="needs a horizontal loc_radius"):
        ds.ensf.assimilate(obs, loc_radius=None, vertical_radius=0.3, **options)
    with pytest.raises(OptionError, match="positive number"):
        ds.ensf.assimilate(obs, loc_radius=1000.0, vertical_radius=-1, **options)
    bare, bare_obs = _case(units=None)
    with pytest.raises(OptionError, match="no units"):
        bare.ensf.assimilate(bare_obs, loc_radius=1000.0, vertical_radius=0.3, **options)
    sigma, sigma_obs = _case(units="1")
    with pytest.raises(OptionError, match="neither a pressure nor a length"):
        sigma.ensf.assimilate(sigma_obs, loc_radius=1000.0, vertical_radius=0.3, **options)
    surface = ds.isel(level=0, drop=True)
    with pytest.raises(OptionError, match="no state variable has a level dim"):
        surface.ensf.assimilate(
            obs.isel(level=0, drop=True), loc_radius=1000.0, vertical_radius=0.3, **options
        )


@pytest.mark.parametrize("method", ["letkf", "ensf"])
def test_observations_of_some_levels_make_rows_for_those_levels_only(method):
    """Stations at one level of four: the plan has one row per station, not one per
    station and state level, and the analysis is the one from the same stations given
    at every level with NaN at the other three; also chunked into spatial blocks."""
    from xensf.bridge.analysis import prepare_state
    from xensf.bridge.dims import find_dims
    from xensf.bridge.observations import prepare_observations

    ds, obs = _case()
    if method == "ensf":  # on grid points (EnSF blocks read one point per observation)
        obs = obs.assign_coords(lat=("station", [-40.0, 0, 10, 20, 40] * 3))
        obs = obs.assign_coords(lon=("station", np.arange(15) * 30.0 % 360))
    dims = find_dims(ds)
    _, layout, grid = prepare_state(ds, dims, ["t"])
    plan, _, _ = prepare_observations(obs, ds, layout, dims, 1.0, grid)
    assert plan.size == obs.sizes["station"]
    assert np.all(plan.indices // layout.grid_size == 2)  # the 500 hPa field
    padded = obs.reindex(level=LEVELS)  # the same stations, NaN at the other levels
    options = dict(method=method, obs_error=1.0, obs_dim="station", seed=1)
    if method == "letkf":
        options["loc_radius"] = 3000.0
    else:
        options["prior_score"] = "paired"
    a = ds.ensf.assimilate(obs, **options)
    xr.testing.assert_equal(a, ds.ensf.assimilate(padded, **options))
    blocks = ds.chunk(lat=3, lon=4).ensf.assimilate(obs, **options).compute()
    np.testing.assert_allclose(blocks.t.values, a.t.values, rtol=0, atol=1e-4)
    assert not np.allclose(a.t.sel(level=500.0).values, ds.t.sel(level=500.0).values)


def test_observations_at_one_level_as_a_scalar_coordinate_are_at_that_level():
    """``obs.isel(level=0)`` or ``obs.sel(level=500)`` leaves the level as a scalar
    coordinate: the observations are at that level (they were refused as lacking the
    level dim), and a scalar level the state lacks is refused as a level dim's is."""
    from xensf.errors import ObservationMismatchError

    ds, obs = _case()
    options = dict(method="letkf", obs_error=1.0, loc_radius=3000.0, seed=1)
    at_500 = ds.ensf.assimilate(obs, **options)
    xr.testing.assert_equal(ds.ensf.assimilate(obs.isel(level=0), **options), at_500)
    gridded = xr.full_like(ds.t.isel(member=0), np.nan).to_dataset()
    gridded.t[2, 4, 5] = 252.0
    xr.testing.assert_equal(
        ds.ensf.assimilate(gridded.sel(level=[500.0]), **options),
        ds.ensf.assimilate(gridded.sel(level=500.0), **options),
    )
    with pytest.raises(ObservationMismatchError, match=r"level values \[600.0\]"):
        ds.ensf.assimilate(obs.isel(level=0).assign_coords(level=600.0), **options)
