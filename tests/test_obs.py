"""Tests of xensf.obs: point interpolation, gridded layouts, error specs, locations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from xensf.errors import ObservationDomainError, ObservationMismatchError, OptionError
from xensf.filters.operators import LinearObservationOperator
from xensf.obs import (
    bilinear_weights,
    field_rows,
    gather_observations,
    grid_locations,
    gridded_operator,
    parse_relative,
    point_locations,
    point_operator,
    resolve_obs_error,
)


def _interpolate(field: np.ndarray, indices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (field.ravel()[indices] * weights).sum(-1)


def _linear_field(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """2 + 0.3 lat + 0.05 lon on the grid, with lon as the grid spells it."""
    return 2.0 + 0.3 * lat[:, None] + 0.05 * lon[None, :]


# --------------------------------------------------------------------------------------
# bilinear_weights
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("lat_order", ["ascending", "descending"])
@pytest.mark.parametrize("grid_convention", ["0-360", "pm180"])
@pytest.mark.parametrize("point_convention", ["0-360", "pm180"])
def test_bilinear_exact_for_linear_field(lat_order, grid_convention, point_convention):
    grid_lat = np.arange(-90.0, 90.1, 3.0)
    if lat_order == "descending":
        grid_lat = grid_lat[::-1]
    # A 3-degree global grid, in each convention; the field is linear in longitude
    # measured from 0 eastwards (0-360), so keep points off the 0/360 seam.
    grid_lon360 = np.arange(0.0, 360.0, 3.0)
    grid_lon = grid_lon360 if grid_convention == "0-360" else (grid_lon360 + 180) % 360 - 180
    if grid_convention == "pm180":
        order = np.argsort(grid_lon)
        grid_lon, grid_lon360 = grid_lon[order], grid_lon360[order]
    field = _linear_field(grid_lat, grid_lon360)

    rng = np.random.default_rng(0)
    lat = rng.uniform(-89.9, 89.9, 200)
    lon360 = rng.uniform(1.0, 356.0, 200)
    lon = lon360 if point_convention == "0-360" else (lon360 + 180) % 360 - 180
    indices, weights = bilinear_weights(grid_lat, grid_lon, lat, lon)

    assert indices.shape == (200, 4) and indices.dtype == np.int64
    assert weights.shape == (200, 4) and weights.dtype == np.float64
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-12)
    assert np.all(weights >= 0)
    expected = 2.0 + 0.3 * lat + 0.05 * lon360
    np.testing.assert_allclose(_interpolate(field, indices, weights), expected, rtol=1e-12)


def test_bilinear_irregular_grid_exact():
    grid_lat = np.array([-60.0, -20.0, -5.0, 0.0, 30.0, 75.0])
    grid_lon = np.array([-170.0, -100.0, -90.0, 0.0, 10.0, 120.0, 150.0])
    field = _linear_field(grid_lat, grid_lon)
    lat = np.array([-59.0, -3.0, 31.0, 74.0])
    lon = np.array([-160.0, -95.0, 5.0, 149.0])
    indices, weights = bilinear_weights(grid_lat, grid_lon, lat, lon)
    np.testing.assert_allclose(
        _interpolate(field, indices, weights), 2.0 + 0.3 * lat + 0.05 * lon, rtol=1e-12
    )


@pytest.mark.parametrize("point_lon", [358.5, -1.5])
@pytest.mark.parametrize("lat_order", ["ascending", "descending"])
def test_seam_wrap_global_grid(point_lon, lat_order):
    grid_lat = np.arange(-90.0, 90.1, 3.0)
    if lat_order == "descending":
        grid_lat = grid_lat[::-1]
    grid_lon = np.arange(0.0, 360.0, 3.0)  # 0 ... 357
    rng = np.random.default_rng(1)
    field = rng.normal(size=(grid_lat.size, grid_lon.size))
    row = int(np.flatnonzero(grid_lat == 30.0)[0])

    indices, weights = bilinear_weights(grid_lat, grid_lon, [30.0], [point_lon])
    value = _interpolate(field, indices, weights)[0]
    np.testing.assert_allclose(value, 0.5 * (field[row, -1] + field[row, 0]), rtol=1e-12)
    # Only the columns 357 and 0 take part.
    used = np.unique(indices[weights > 0] % grid_lon.size)
    assert set(used.tolist()) == {0, grid_lon.size - 1}


def test_seam_wrap_pm180_grid_across_dateline():
    grid_lat = np.array([-10.0, 0.0, 10.0])
    grid_lon = np.arange(-180.0, 180.0, 3.0)  # -180 ... 177
    field = np.tile(np.arange(grid_lon.size, dtype=float), (3, 1))
    # 178.5 is halfway from 177 (last column) to 180 == -180 (first column).
    for lon in (178.5, -181.5, 538.5):
        indices, weights = bilinear_weights(grid_lat, grid_lon, [0.0], [lon])
        value = _interpolate(field, indices, weights)[0]
        assert value == pytest.approx(0.5 * (grid_lon.size - 1))


def test_descending_longitude_grid():
    grid_lat = np.array([0.0, 10.0])
    grid_lon = np.arange(357.0, -1.0, -3.0)  # 357 ... 0, descending
    field = _linear_field(grid_lat, grid_lon)
    indices, weights = bilinear_weights(grid_lat, grid_lon, [5.0, 5.0], [100.5, 358.5])
    values = _interpolate(field, indices, weights)
    assert values[0] == pytest.approx(2.0 + 1.5 + 0.05 * 100.5)
    # Across the seam: the average of the 357 and 0 columns.
    assert values[1] == pytest.approx(2.0 + 1.5 + 0.5 * 0.05 * 357.0)


@pytest.mark.parametrize("lat_order", ["ascending", "descending"])
def test_on_node_weight_one(lat_order):
    grid_lat = np.linspace(-87.5, 87.5, 36)
    if lat_order == "descending":
        grid_lat = grid_lat[::-1]
    grid_lon = np.arange(0.0, 360.0, 5.0)
    nlon = grid_lon.size
    cases = [(0, 0), (5, 10), (35, 71), (17, 36), (grid_lat.size - 1, nlon - 1)]
    lat = np.array([grid_lat[i] for i, _ in cases])
    lon = np.array([grid_lon[j] for _, j in cases])
    lon_pm = (lon + 180) % 360 - 180  # the same nodes, spelt -180..180
    for points_lon in (lon, lon_pm):
        indices, weights = bilinear_weights(grid_lat, grid_lon, lat, points_lon)
        for row, (i, j) in enumerate(cases):
            assert np.count_nonzero(weights[row]) == 1
            assert weights[row].max() == 1.0
            assert indices[row, np.argmax(weights[row])] == i * nlon + j


def test_point_on_regional_edge_and_float32_grid():
    grid_lat = np.arange(30.0, 60.1, 0.1).astype(np.float32)
    grid_lon = np.arange(-10.0, 20.1, 0.1).astype(np.float32)
    # float64 spellings of the corner nodes differ from the float32 grid by ~1e-6.
    indices, weights = bilinear_weights(grid_lat, grid_lon, [60.0, 30.0], [20.0, -10.0])
    np.testing.assert_allclose(weights.max(-1), 1.0, atol=1e-4)
    assert indices[1, np.argmax(weights[1])] == 0
    assert indices[0, np.argmax(weights[0])] == grid_lat.size * grid_lon.size - 1


def test_outside_domain_raises_and_names_points():
    grid_lat = np.arange(-60.0, 60.1, 2.0)
    grid_lon = np.arange(0.0, 360.0, 2.0)
    lat = np.array([0.0, 61.0, 10.0, -75.0, np.nan, 20.0])
    lon = np.array([0.0, 10.0, 20.0, 30.0, 40.0, np.nan])
    with pytest.raises(ObservationDomainError) as info:
        bilinear_weights(grid_lat, grid_lon, lat, lon)
    message = str(info.value)
    assert "4 of 6" in message
    assert "#1 (61, 10)" in message
    assert "#3 (-75, 30)" in message
    assert "#4 (nan, 40)" in message
    assert "#5 (20, nan)" in message
    assert "latitude [-60, 60]" in message
    assert "global" in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("descending", [False, True])
def test_a_global_grid_without_pole_rows_takes_stations_in_its_polar_caps(descending):
    # An equiangular 64 x 32 grid (WeatherBench2's) ends half a row short of each pole:
    # a station at the South Pole was outside the grid. Across the pole the station is
    # interpolated along its meridian's great circle, so a field smooth on the sphere (the
    # three Cartesian coordinates) comes out as accurately as between two rows.
    lat, lon = np.linspace(-87.1875, 87.1875, 32), np.arange(64) * 5.625
    plat = np.array([-90.0, 90.0, 89.9, -88.5, 88.0, 87.1875, 90.0])
    plon = np.array([0.0, 33.0, 200.0, 300.0, 10.0, 17.0, 5.625])
    rows = lat[::-1] if descending else lat
    indices, weights = bilinear_weights(rows, lon, plat, plon)
    assert (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(-1), 1.0)
    phi, lam = np.deg2rad(rows)[:, None], np.deg2rad(lon)[None, :]
    p, q = np.deg2rad(plat), np.deg2rad(plon)
    for field, truth in [
        (np.cos(phi) * np.cos(lam), np.cos(p) * np.cos(q)),
        (np.cos(phi) * np.sin(lam), np.cos(p) * np.sin(q)),
        (np.sin(phi) + 0 * lam, np.sin(p)),
    ]:
        np.testing.assert_allclose(_interpolate(field, indices, weights), truth, atol=1.5e-3)
    # at a pole, on a column: half the node below it, half the node opposite
    top = 0 if descending else 31
    np.testing.assert_array_equal(indices[-1][weights[-1] > 0], [top * 64 + 1, top * 64 + 33])
    np.testing.assert_allclose(weights[-1][weights[-1] > 0], [0.5, 0.5])
    # a latitude band that wraps round is not global: beyond its rows is outside
    with pytest.raises(ObservationDomainError, match="#0 \\(61, 10\\)"):
        bilinear_weights(np.arange(-60.0, 60.1, 2.0), np.arange(0.0, 360.0, 2.0), [61.0], [10.0])
    # nor is a regional grid near the pole
    with pytest.raises(ObservationDomainError, match="regional"):
        bilinear_weights(lat, lon[:20], [89.0], [10.0])


def test_outside_domain_lists_only_the_first_few():
    grid_lat = np.array([0.0, 1.0])
    grid_lon = np.array([0.0, 1.0])
    lat = np.full(12, 5.0)
    with pytest.raises(ObservationDomainError, match=r"12 of 12 .* and 7 more"):
        bilinear_weights(grid_lat, grid_lon, lat, np.zeros(12))


def test_regional_grid_does_not_wrap():
    grid_lat = np.arange(30.0, 60.1, 1.0)
    grid_lon = np.arange(-10.0, 30.1, 1.0)
    # Inside, and in the other convention: fine.
    field = _linear_field(grid_lat, grid_lon)
    indices, weights = bilinear_weights(grid_lat, grid_lon, [45.0, 45.0], [29.5, 355.0])
    np.testing.assert_allclose(
        _interpolate(field, indices, weights), 2.0 + 0.3 * 45.0 + 0.05 * np.array([29.5, -5.0])
    )
    with pytest.raises(ObservationDomainError, match=r"1 of 1 .*regional.*#0 \(45, 31\)"):
        bilinear_weights(grid_lat, grid_lon, [45.0], [31.0])
    with pytest.raises(ObservationDomainError, match="regional"):
        bilinear_weights(grid_lat, grid_lon, [45.0], [-10.5])
    # A grid that stops one step short of closing the circle is regional too.
    nearly = np.arange(0.0, 358.5, 1.0)  # 0 ... 358, a 2-degree hole
    with pytest.raises(ObservationDomainError):
        bilinear_weights([0.0, 1.0], nearly, [0.5], [359.0])


def test_regional_grid_across_its_own_seam():
    grid_lat = np.array([40.0, 50.0])
    grid_lon = np.array([350.0, 355.0, 0.0, 5.0, 10.0])  # Europe, 0-360 convention
    field = np.tile(np.array([-10.0, -5.0, 0.0, 5.0, 10.0]), (2, 1))
    indices, weights = bilinear_weights(grid_lat, grid_lon, [45.0, 45.0], [-2.5, 7.0])
    np.testing.assert_allclose(_interpolate(field, indices, weights), [-2.5, 7.0])
    with pytest.raises(ObservationDomainError):
        bilinear_weights(grid_lat, grid_lon, [45.0], [20.0])


def test_periodic_override():
    grid_lat = np.array([0.0, 1.0])
    grid_lon = np.array([0.0, 90.0, 180.0])  # gap of 180 at the seam: regional by default
    with pytest.raises(ObservationDomainError):
        bilinear_weights(grid_lat, grid_lon, [0.5], [270.0])
    indices, weights = bilinear_weights(grid_lat, grid_lon, [0.0], [270.0], periodic=True)
    assert sorted(np.unique(indices[weights > 0]).tolist()) == [0, 2]


@pytest.mark.parametrize(
    ("grid_lat", "grid_lon", "match"),
    [
        ([0.0, 10.0, 5.0, 20.0], [0.0, 1.0], "latitude must be strictly monotonic"),
        ([0.0, 1.0, 1.0], [0.0, 1.0], "latitude must be strictly monotonic"),
        ([0.0, 1.0], [0.0, 10.0, 5.0, 20.0], "longitude must be strictly monotonic"),
        ([0.0, 1.0], [0.0, 180.0, 360.0, 540.0], "longitude must be strictly monotonic"),
        ([0.0], [0.0, 1.0], "at least 2"),
        ([[0.0, 1.0]], [0.0, 1.0], "1-D"),
        ([0.0, np.nan], [0.0, 1.0], "NaN"),
        (["0", "1"], [0.0, 1.0], "latitude must be numbers"),  # (numpy read the text)
        ([0.0, 1.0], ["0E", "1E"], "longitude must be numbers"),  # (numpy's ValueError)
    ],
)
def test_bad_grid_coordinates(grid_lat, grid_lon, match):
    with pytest.raises(ObservationMismatchError, match=match):
        bilinear_weights(grid_lat, grid_lon, [0.0], [0.0])


def test_bilinear_keeps_point_shape_and_accepts_empty():
    grid_lat, grid_lon = np.arange(-90.0, 91.0, 10.0), np.arange(0.0, 360.0, 10.0)
    lat = np.zeros((3, 5))
    indices, weights = bilinear_weights(grid_lat, grid_lon, lat, lat + 15.0)
    assert indices.shape == weights.shape == (3, 5, 4)
    indices, weights = bilinear_weights(grid_lat, grid_lon, [], [])
    assert indices.shape == weights.shape == (0, 4)
    with pytest.raises(ObservationMismatchError, match="same shape"):
        bilinear_weights(grid_lat, grid_lon, [0.0, 1.0], [0.0])
    for lat, lon in [(["45N"], [0.0]), (["45"], [0.0]), ([True], [0.0])]:
        with pytest.raises(ObservationMismatchError, match=r"point latitudes \(or y\) must"):
            bilinear_weights(grid_lat, grid_lon, lat, lon)


# --------------------------------------------------------------------------------------
# point_operator
# --------------------------------------------------------------------------------------
def test_point_operator_offsets_fields():
    grid_lat = np.linspace(-80.0, 80.0, 9)
    grid_lon = np.arange(0.0, 360.0, 20.0)
    nlat, nlon, n_fields = grid_lat.size, grid_lon.size, 3
    rng = np.random.default_rng(2)
    state = rng.normal(size=(4, n_fields, nlat, nlon))  # 4 members
    lat = np.array([10.0, -33.0, 70.0, 0.0])
    lon = np.array([15.0, 200.0, -30.0, 350.0])
    field_index = np.array([0, 2, 1, 2])

    op = point_operator(grid_lat, grid_lon, lat, lon, field_index, n_fields)
    assert isinstance(op, LinearObservationOperator)
    y = op(torch.from_numpy(state.reshape(4, -1)))
    assert y.shape == (4, 4)

    idx, w = bilinear_weights(grid_lat, grid_lon, lat, lon)
    flat = state.reshape(4, n_fields, -1)
    expected = np.stack(
        [(flat[:, f][:, idx[i]] * w[i]).sum(-1) for i, f in enumerate(field_index)], -1
    )
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12)


def test_field_rows_put_the_points_on_each_field_of_a_level_stack():
    grid_lat, grid_lon = np.linspace(-30, 30, 4), np.arange(6) * 60.0
    lat, lon = np.array([-10.0, 12.5, 29.0]), np.array([10.0, 200.0, 359.0])
    idx, w = bilinear_weights(grid_lat, grid_lon, lat, lon)
    rows, weights = field_rows(idx, w, np.array([[1], [3]]), grid_lat.size * grid_lon.size)
    assert rows.shape == weights.shape == (2, 3, 4) and rows.dtype == np.int64
    for i, field in enumerate((1, 3)):  # one operator per field, built on its own
        op = point_operator(grid_lat, grid_lon, lat, lon, field, 5)
        np.testing.assert_array_equal(rows[i], op.indices.numpy())
        np.testing.assert_array_equal(weights[i], op.weights.numpy())
    weights[0, 0, 0] = -1.0  # a copy: the input rows are not views of the result
    assert w[0, 0] != -1.0


def test_point_operator_single_field_and_transform():
    grid_lat = np.array([0.0, 10.0])
    grid_lon = np.array([0.0, 10.0])
    state = torch.arange(8.0).reshape(1, 8)  # two fields of 2x2
    op = point_operator(grid_lat, grid_lon, [5.0], [5.0], 1, 2, transform=torch.arctan)
    assert op(state).item() == pytest.approx(math.atan((4 + 5 + 6 + 7) / 4))


@pytest.mark.parametrize(
    ("field_index", "match"),
    [(3, r"\[0, 3\)"), ([-1, 0], r"\[0, 3\)"), ([0, 1, 2], "does not match"), (0.5, "integers")],
)
def test_point_operator_bad_field_index(field_index, match):
    with pytest.raises(ObservationMismatchError, match=match):
        point_operator([0.0, 1.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5], field_index, 3)


# --------------------------------------------------------------------------------------
# gridded_operator
# --------------------------------------------------------------------------------------
def test_gridded_operator_single_time():
    rng = np.random.default_rng(3)
    mask = rng.random((2, 4, 5)) < 0.3
    index, valid = gridded_operator(mask)
    assert index.dtype == torch.int64 and valid.dtype == torch.bool
    np.testing.assert_array_equal(index.numpy(), np.flatnonzero(mask.ravel()))
    assert bool(valid.all())


def test_gridded_operator_varying_masks_pad():
    rng = np.random.default_rng(4)
    n_time, n_fields, nlat, nlon = 5, 2, 6, 7
    mask = rng.random((n_time, n_fields, nlat, nlon)) < 0.25
    mask[2] = False  # one time with no observation at all
    obs = np.where(mask, rng.normal(size=mask.shape), np.nan)

    index, valid = gridded_operator(torch.from_numpy(mask))
    counts = mask.reshape(n_time, -1).sum(-1)
    assert index.shape == valid.shape == (n_time, counts.max())
    for t in range(n_time):
        expected = np.flatnonzero(mask[t].ravel())
        np.testing.assert_array_equal(index[t, : counts[t]].numpy(), expected)
        assert bool(valid[t, : counts[t]].all())
        assert not bool(valid[t, counts[t] :].any())
        assert bool((index[t, counts[t] :] == 0).all())

    # y with NaN at the padding, equal to direct indexing elsewhere.
    y = gather_observations(obs, index, valid)
    assert torch.isnan(y[~valid]).all()
    np.testing.assert_array_equal(
        y[valid].numpy(), obs[mask].reshape(-1)
    )  # same order: time, then position

    # The operator applied to a state ensemble gives the same values as direct indexing.
    state = torch.from_numpy(rng.normal(size=(n_time, 3, n_fields * nlat * nlon)))
    hx = LinearObservationOperator.from_index(index)(state)
    assert hx.shape == (n_time, 3, counts.max())
    for t in range(n_time):
        direct = state[t][:, torch.from_numpy(np.flatnonzero(mask[t].ravel()))]
        torch.testing.assert_close(hx[t, :, : counts[t]], direct)


def test_gridded_operator_rejects_bad_masks():
    with pytest.raises(ObservationMismatchError, match="boolean"):
        gridded_operator(np.zeros((1, 2, 2)))
    with pytest.raises(ObservationMismatchError, match=r"\(\.\.\., n_fields, nlat, nlon\)"):
        gridded_operator(np.zeros((2, 2), bool))


# --------------------------------------------------------------------------------------
# observation errors
# --------------------------------------------------------------------------------------
FIELDS = [("t", 500), ("t", 850), ("z", 500), "sp"]


def test_obs_error_number():
    assert resolve_obs_error(0.5, FIELDS) == dict.fromkeys(FIELDS, 0.5)
    assert resolve_obs_error(np.float32(2.0), ["x"]) == {"x": 2.0}


def test_obs_error_relative():
    spread = {("t", 500): 4.0, ("t", 850): 2.0, ("z", 500): 100.0, "sp": 50.0}
    out = resolve_obs_error("10%", FIELDS, obs_spread=spread)
    assert out == pytest.approx({k: 0.1 * v for k, v in spread.items()})
    assert list(out) == FIELDS
    assert parse_relative(" 2.5 %") == pytest.approx(0.025)
    assert parse_relative(0.1) is None


def test_obs_error_mapping_forms():
    spec = {"t": {500: 1.0, 850.0: "50%"}, "z": 10.0, "sp": "1%"}
    spread = {("t", 850): 3.0, "sp": 200.0}
    out = resolve_obs_error(spec, FIELDS, obs_spread=spread)
    assert out == pytest.approx({("t", 500): 1.0, ("t", 850): 1.5, ("z", 500): 10.0, "sp": 2.0})
    # One value for every level of a variable.
    out = resolve_obs_error({"t": 0.7, "z": 9.0, "sp": 1.0}, FIELDS)
    assert out[("t", 500)] == out[("t", 850)] == 0.7


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (0.0, "positive"),
        (-1.0, "positive"),
        (math.nan, "positive"),
        (math.inf, "positive"),
        ("abc", "cannot read"),
        ("0.1", "cannot read"),
        ("0%", "positive"),
        ("-5%", "cannot read"),
        (True, "must be a positive number"),
        (None, "must be a positive number"),
        ([0.1], "must be a positive number"),
        ({"t": 1.0, "z": 1.0, "sp": 1.0, "q": 1.0, "u": 2.0}, r"not observed: \['q', 'u'\]"),
        ({"t": 1.0, "z": 1.0}, r"no entry for the observed variables \['sp'\]"),
        ({"t": 1.0, "z": -2.0, "sp": 1.0}, "for 'z'.*positive"),
        ({"t": {500: 1.0}, "z": 1.0, "sp": 1.0}, r"observed levels \[850\]"),
        ({"t": {500: 1.0, 850: 1.0, 300: 1.0}, "z": 1.0, "sp": 1.0}, r"not observed: \[300\]"),
        ({"t": 1.0, "z": 1.0, "sp": {0: 1.0}}, "'sp' has no levels"),
        ({"t": {500: 1.0, 850: "x"}, "z": 1.0, "sp": 1.0}, "cannot read"),
        # a field of errors is sent where it belongs, without its repr in the message
        (
            xr.DataArray(np.full((3, 4), 0.5), dims=("lat", "lon")),
            r"\{'lat': 3, 'lon': 4\}.*'_error'",
        ),
        (np.full(5, 0.5), r"ndarray of shape \(5,\).*'_error'"),
        (xr.DataArray(0.5, attrs={"units": "degC"}), "0-d DataArray; give a plain number"),
    ],
)
def test_obs_error_bad_forms(spec, match):
    with pytest.raises(OptionError, match=match) as info:
        resolve_obs_error(spec, FIELDS, obs_spread=dict.fromkeys(FIELDS, 1.0))
    if "cannot read" in match or "positive" in match or "must be" in match:
        assert "'10%'" in str(info.value)  # the accepted forms are listed


def test_obs_error_relative_needs_a_spread():
    with pytest.raises(OptionError, match="spread"):
        resolve_obs_error("10%", ["t"])
    with pytest.raises(OptionError, match="absolute error"):
        resolve_obs_error("10%", ["t"], obs_spread={"t": 0.0})


# --------------------------------------------------------------------------------------
# locations
# --------------------------------------------------------------------------------------
def test_grid_locations_order_and_longitude_range():
    grid_lat = np.array([10.0, 0.0, -10.0])
    grid_lon = np.array([0.0, 90.0, 180.0, 270.0])
    loc = grid_locations(grid_lat, grid_lon, n_fields=2)
    assert loc.shape == (24, 2)
    np.testing.assert_array_equal(loc[:4, 0], 10.0)
    np.testing.assert_array_equal(loc[:4, 1], [0.0, 90.0, -180.0, -90.0])
    np.testing.assert_array_equal(loc[12:], loc[:12])
    # Row i * nlon + j is the node (i, j) of the flattened field.
    assert tuple(loc[1 * 4 + 3]) == (0.0, -90.0)


def test_point_locations_normalises_longitude():
    loc = point_locations([1.0, 2.0, 3.0, 4.0], [180.0, 359.5, -180.0, -0.0])
    np.testing.assert_array_equal(loc[:, 1], [-180.0, -0.5, -180.0, 0.0])
    assert np.all((loc[:, 1] >= -180.0) & (loc[:, 1] < 180.0))
    assert point_locations([1e-20], [-1e-20])[0, 1] < 180.0


def test_the_padded_gridded_helpers_are_deprecated():
    mask = np.array([[[True, False, True]]])
    with pytest.warns(FutureWarning, match="NaN in y"):
        index, valid = gridded_operator(mask)
    with pytest.warns(FutureWarning, match="next release"):
        gather_observations(np.array([[[1.0, np.nan, 2.0]]]), index, valid)
