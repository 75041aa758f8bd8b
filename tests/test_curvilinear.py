"""Curvilinear grids (2-D latitude/longitude): station interpolation and LETKF distances.

Checked against the same field on a regular grid: a regular grid written with 2-D
coordinates gives the regular grid's analysis exactly, and a grid rotated by 30°
gives the regular grid's analysis to the interpolation error of smooth fields.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

import xensf
from xensf.curvilinear import cell_areas, curvilinear_weights, is_periodic_columns
from xensf.errors import (
    DimensionError,
    ObservationDomainError,
    ObservationMismatchError,
    OptionError,
)
from xensf.obs import bilinear_weights


def _dense(idx, w, size):
    out = np.zeros((idx.shape[0], size))
    np.add.at(out, (np.arange(idx.shape[0])[:, None], idx), w)
    return out


def test_a_regular_grid_as_2d_coordinates_gives_the_regular_weights():
    lat, lon = np.linspace(-60, 60, 25), np.arange(0.0, 360.0, 7.5)  # global: wraps
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    rng = np.random.default_rng(0)
    plat, plon = rng.uniform(-60, 60, 300), rng.uniform(-180, 180, 300)
    plat[0], plon[0] = lat[4], lon[7]  # on a node
    plat[1], plon[1] = 12.0, 356.0  # between the last column and the first
    want = _dense(*bilinear_weights(lat, lon, plat, plon), lat2.size)
    got = _dense(*curvilinear_weights(lat2, lon2, plat, plon), lat2.size)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[0].max() == pytest.approx(1.0)  # a station on a node reads that node


def _rotated(n=31, step=1.0, angle=30.0, centre=(10.0, 20.0)):
    """A regional grid whose rows and columns run at ``angle`` to the parallels."""
    a = np.deg2rad(angle)
    i, j = np.meshgrid(np.arange(n) - n // 2, np.arange(n) - n // 2, indexing="ij")
    lat = centre[0] + step * (i * np.cos(a) + j * np.sin(a))
    lon = centre[1] + step * (-i * np.sin(a) + j * np.cos(a))
    return lat, lon


def test_rotated_cells_reproduce_a_linear_field_and_refuse_outside_points():
    lat2, lon2 = _rotated()
    rng = np.random.default_rng(1)
    plat, plon = rng.uniform(2, 18, 200), rng.uniform(12, 28, 200)
    idx, w = curvilinear_weights(lat2, lon2, plat, plon)
    assert np.all(w >= 0) and np.allclose(w.sum(-1), 1.0)
    field = (2.0 * lat2 - 3.0 * lon2).ravel()
    np.testing.assert_allclose((field[idx] * w).sum(-1), 2.0 * plat - 3.0 * plon, atol=1e-9)
    with pytest.raises(ObservationDomainError, match=r"2 of 3 .*curvilinear grid"):
        curvilinear_weights(lat2, lon2, [10.0, 40.0, np.nan], [20.0, 20.0, 20.0])
    assert not is_periodic_columns(lat2, lon2)
    with pytest.raises(ObservationMismatchError, match="2-D latitude and longitude"):
        curvilinear_weights(lat2[0], lon2[0], [10.0], [20.0])
    # text was read as numbers ("10") or crashed numpy ("10N")
    for plat, what in [(["10"], "point latitudes"), (["10N"], "point latitudes")]:
        with pytest.raises(ObservationMismatchError, match=f"{what} must be numbers"):
            curvilinear_weights(lat2, lon2, plat, [20.0])
    with pytest.raises(ObservationMismatchError, match="the grid's longitude must be numbers"):
        curvilinear_weights(lat2, lon2.astype(str), [10.0], [20.0])


def test_cells_round_a_pole_and_a_periodic_seam():
    # a polar cap: rings of constant latitude, columns of longitude (periodic), the
    # gnomonic chart near the pole; a smooth field sin(latitude) is interpolated closely
    lat = np.linspace(70.0, 89.0, 20)
    lon = np.arange(0.0, 360.0, 5.0)
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    assert is_periodic_columns(lat2, lon2)
    rng = np.random.default_rng(2)
    plat, plon = rng.uniform(70, 89, 100), rng.uniform(-180, 180, 100)
    idx, w = curvilinear_weights(lat2, lon2, plat, plon)
    field = np.sin(np.deg2rad(lat2)).ravel()
    np.testing.assert_allclose((field[idx] * w).sum(-1), np.sin(np.deg2rad(plat)), atol=1e-4)
    areas = cell_areas(lat2, lon2)
    np.testing.assert_allclose(areas[:, 0] / areas[:, 0].max(), np.cos(np.deg2rad(lat)) /
                               np.cos(np.deg2rad(lat)).max(), rtol=2e-2)  # fmt: skip


def _smooth_members(lat, lon, n=8, seed=3):
    """Ensemble members that are smooth functions of position (degrees)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((n, 4))
    base = 280 + 0.3 * lat
    return np.stack(
        [
            base
            + c[k, 0] * np.sin(np.deg2rad(4 * lat))
            + c[k, 1] * np.cos(np.deg2rad(3 * lon))
            + c[k, 2] * np.sin(np.deg2rad(2 * (lat + lon)))
            + 0.5 * c[k, 3]
            for k in range(n)
        ]
    )


def _curvilinear_prior(lat2, lon2, members):
    return xr.Dataset(
        {"t": (("member", "y", "x"), members, {"units": "K"})},
        coords={
            "nav_lat": (("y", "x"), lat2, {"standard_name": "latitude", "units": "degrees_north"}),
            "nav_lon": (("y", "x"), lon2, {"standard_name": "longitude", "units": "degrees_east"}),
        },
    )


def _stations(lat, lon, values):
    return xr.Dataset(
        {"t": ("station", values)},
        coords={"lat": ("station", lat), "lon": ("station", lon)},
    )


@pytest.mark.parametrize(
    "method,options",
    [("letkf", {"loc_radius": 400.0}), ("ensf", {"steps": 20})],
)
def test_regular_grid_written_as_curvilinear_gives_the_same_analysis(method, options):
    lat, lon = np.linspace(-10, 10, 21), np.linspace(0, 30, 31)
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    members = _smooth_members(lat2, lon2)
    regular = xr.Dataset(
        {"t": (("member", "lat", "lon"), members, {"units": "K"})},
        coords={"lat": lat, "lon": lon},
    )
    curvi = _curvilinear_prior(lat2, lon2, members)
    obs = _stations(np.array([-3.3, 2.7, 6.1]), np.array([5.2, 14.9, 22.4]),
                    np.array([281.0, 279.5, 283.0]))  # fmt: skip
    want = regular.ensf.assimilate(obs, method=method, obs_error=0.3, **options)
    got = curvi.ensf.assimilate(obs, method=method, obs_error=0.3, **options)
    np.testing.assert_allclose(got.t.values, want.t.values, rtol=0, atol=1e-4)
    assert got.nav_lat.dims == ("y", "x")  # the 2-D coordinates are kept
    assert not np.allclose(got.t.values, members)  # the stations moved the field
    # gridded observations on the curvilinear grid: checked against its 2-D coordinates
    gridded = curvi.t.isel(member=0).where((curvi.y == 5) & (curvi.x == 6)).to_dataset() + 1
    moved = curvi.ensf.assimilate(gridded, method=method, obs_error=0.3, **options)
    assert float(np.abs(moved.t - curvi.t).isel(y=5, x=6).max()) > 0.1
    with pytest.raises(ObservationMismatchError, match=r"latitude \(nav_lat: 651 values"):
        curvi.ensf.assimilate(gridded.assign_coords(nav_lat=gridded.nav_lat + 1),
                              method=method, obs_error=0.3, **options)  # fmt: skip


def test_rotated_grid_analysis_matches_the_regular_grid_analysis():
    """LETKF on a grid rotated by 30°: at its points the analysis equals the regular
    grid's analysis there, to the interpolation error of the smooth fields."""
    lat2, lon2 = _rotated(n=41, step=0.5)
    lat, lon = np.arange(-4.0, 25.0, 0.5), np.arange(6.0, 35.0, 0.5)
    reg_lat, reg_lon = np.meshgrid(lat, lon, indexing="ij")
    regular = xr.Dataset(
        {"t": (("member", "lat", "lon"), _smooth_members(reg_lat, reg_lon), {"units": "K"})},
        coords={"lat": lat, "lon": lon},
    )
    rotated = _curvilinear_prior(lat2, lon2, _smooth_members(lat2, lon2))
    rng = np.random.default_rng(4)
    slat, slon = rng.uniform(6, 14, 12), rng.uniform(16, 24, 12)
    obs = _stations(slat, slon, 281.0 + rng.standard_normal(12))
    kw = dict(method="letkf", obs_error=0.3, loc_radius=300.0)
    a_reg = regular.ensf.assimilate(obs, **kw).t.mean("member")
    a_rot = rotated.ensf.assimilate(obs, **kw).t.mean("member")
    at = a_reg.interp(
        lat=xr.DataArray(lat2, dims=("y", "x")), lon=xr.DataArray(lon2, dims=("y", "x"))
    )
    increment = a_rot - rotated.t.mean("member")
    assert float(np.abs(increment).max()) > 0.3  # a real update to compare
    err = float(np.sqrt(((a_rot - at) ** 2).mean()))
    assert err < 0.03 * float(np.sqrt((increment**2).mean()))


def test_curvilinear_letkf_on_spatial_blocks_equals_one_chunk():
    pytest.importorskip("dask")
    lat2, lon2 = _rotated(n=24, step=0.5)
    prior = _curvilinear_prior(lat2, lon2, _smooth_members(lat2, lon2))
    rng = np.random.default_rng(5)
    obs = _stations(rng.uniform(8, 12, 6), rng.uniform(18, 22, 6), 281.0 + rng.standard_normal(6))
    kw = dict(method="letkf", obs_error=0.3, loc_radius=100.0)
    whole = prior.ensf.assimilate(obs, **kw)
    blocks = prior.chunk({"y": 8, "x": 12}).ensf.assimilate(obs, **kw)
    assert blocks.t.chunks is not None
    np.testing.assert_allclose(blocks.t.values, whole.t.values, rtol=0, atol=1e-4)


def test_area_weighted_scores_use_the_cell_areas():
    lat2, lon2 = _rotated(n=11, step=2.0)
    prior = _curvilinear_prior(lat2, lon2, _smooth_members(lat2, lon2))
    truth = prior.t.isel(member=0).to_dataset()
    err = prior.t.mean("member") - truth.t
    weights = xr.DataArray(cell_areas(lat2, lon2), dims=("y", "x"))
    want = float(np.sqrt((err**2).weighted(weights).mean()))
    assert float(prior.ensf.rmse(truth).t) == pytest.approx(want, rel=1e-6)


def test_a_grid_written_with_a_time_dim_is_told_how_to_drop_it():
    # WRF writes XLAT(Time, south_north, west_east): no grid was found, and the message
    # said only to name a latitude dim, which leaves the stations without positions
    j, i = np.meshgrid(np.arange(10), np.arange(12), indexing="ij")
    lat, lon = 40 + 0.2 * j + 0.01 * i, -100 + 0.25 * i - 0.01 * j
    rng = np.random.default_rng(0)
    grid = ("Time", "south_north", "west_east")
    wrf = xr.Dataset(
        {"T2": (("member", *grid), 280 + rng.standard_normal((6, 2, 10, 12)), {"units": "K"})},
        coords={"XLAT": (grid, np.stack([lat, lat]), {"units": "degree_north"}),
                "XLONG": (grid, np.stack([lon, lon]), {"units": "degree_east"})},
    )  # fmt: skip
    station = xr.Dataset(
        {"T2": ("station", [285.0])},
        coords={"lat": ("station", [41.0]), "lon": ("station", [-98.5])},
    )
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 100.0}
    fix = r"ds.assign_coords\(XLAT=ds\['XLAT'\].isel\(Time=0, drop=True\), XLONG="
    with pytest.raises(xensf.DimensionError, match=fix):
        wrf.ensf.assimilate(station, **options)
    fixed = wrf.assign_coords(
        XLAT=wrf.XLAT.isel(Time=0, drop=True), XLONG=wrf.XLONG.isel(Time=0, drop=True)
    )
    change = abs(fixed.ensf.assimilate(station, **options).T2 - wrf.T2).mean("member").isel(Time=0)
    near = change.argmax(...)  # the station's cell
    assert abs(lat[near["south_north"].item(), near["west_east"].item()] - 41.0) < 0.2


def test_a_grid_given_as_data_variables_is_refused_with_set_coords():
    # netCDF without a coordinates attribute opens with lat/lon as data variables: the
    # grid was read as numbered points, and loc_radius=300 (km) spanned 300 cells.
    rng = np.random.default_rng(0)
    y, x = np.meshgrid(np.arange(6), np.arange(8), indexing="ij")
    prior = xr.Dataset(
        {
            "t": (("member", "y", "x"), 280 + rng.standard_normal((6, 6, 8)), {"units": "K"}),
            "lat": (("y", "x"), 40 + y + 0.1 * x, {"standard_name": "latitude"}),
            "lon": (("y", "x"), -10 + 1.5 * x + 0.05 * y, {"standard_name": "longitude"}),
        }
    )
    obs = xr.full_like(prior.t[0], np.nan).to_dataset()
    obs.t[2, 3] = 282.0
    options = {"method": "letkf", "obs_error": 0.5, "loc_radius": 150.0}
    with pytest.raises(DimensionError, match="data variables, not coordinates") as info:
        prior.ensf.assimilate(obs, **options)
    fix = re.search(r"make them coordinates: (ds\.set_coords\(.*\))$", str(info.value)).group(1)
    mended = eval(fix, {"ds": prior})
    got = mended.ensf.assimilate(obs, **options)
    moved = (abs(got.t - mended.t).max("member") > 0).sum()
    assert 0 < int(moved) < 48  # localised in km: not the whole grid


def test_periodic_takes_true_false_or_none_only():
    # "no" was true to Python: a regional grid was wrapped round the globe, and a point
    # 135 degrees beyond its last column interpolated between its last and first columns
    lat, lon = np.linspace(-30, 30, 7), np.arange(0.0, 91.0, 15.0)
    with pytest.raises(ObservationDomainError):
        bilinear_weights(lat, lon, [0.0], [225.0], periodic=False)
    assert bilinear_weights(lat, lon, [0.0], [225.0], periodic=True)[1].sum() == 1.0
    lat2, lon2 = np.meshgrid(lat, lon, indexing="ij")
    for weights in (bilinear_weights, curvilinear_weights):
        grid = (lat, lon) if weights is bilinear_weights else (lat2, lon2)
        with pytest.raises(OptionError, match="periodic must be True, False or None, got 'no'"):
            weights(*grid, [0.0], [225.0], periodic="no")
