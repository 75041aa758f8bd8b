"""Rotated-pole grids (CORDEX ``rlat``/``rlon``): stations, whose positions are
geographic, are put in the grid's frame before they are interpolated.

They were read as positions in the frame: Paris was refused as outside the EURO-CORDEX
domain, and a station in the Gulf of Guinea was assimilated in central Europe."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from test_cycle import assert_same_run  # bit for bit but the history line

from xensf.bridge.rotated import RotatedPole
from xensf.errors import ObservationDomainError, ObservationMismatchError

#: The EURO-CORDEX pole.
EUR = RotatedPole(39.25, -162.0)
OPTIONS = {"method": "letkf", "obs_error": 0.5, "loc_radius": 500.0}


def _cordex(mapping: bool = True) -> xr.Dataset:
    """A small ensemble on the EURO-CORDEX frame, rlat/rlon every 2 degrees (no 2-D
    geographic coordinates), with its grid mapping variable as the files have it."""
    rlat, rlon = np.arange(-10.0, 10.1, 2.0), np.arange(-12.0, 12.1, 2.0)
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"tas": (("member", "rlat", "rlon"), 280 + rng.standard_normal((8, rlat.size, rlon.size)),
                 {"units": "K", "grid_mapping": "rotated_pole"})},
        coords={"rlat": ("rlat", rlat, {"standard_name": "grid_latitude", "units": "degrees"}),
                "rlon": ("rlon", rlon, {"standard_name": "grid_longitude", "units": "degrees"})},
    )  # fmt: skip
    if mapping:
        ds["rotated_pole"] = (
            (),
            np.int32(0),
            {"grid_mapping_name": "rotated_latitude_longitude",
             "grid_north_pole_latitude": EUR.lat, "grid_north_pole_longitude": EUR.lon},
        )  # fmt: skip
    return ds


def _stations(lat, lon, frame: bool = False) -> xr.Dataset:
    names = ("grid_latitude", "grid_longitude") if frame else ("latitude", "longitude")
    return xr.Dataset(
        {"tas": ("station", np.full(len(lat), 290.0))},
        coords={"lat": ("station", lat, {"standard_name": names[0]}),
                "lon": ("station", lon, {"standard_name": names[1]})},
    )  # fmt: skip


def test_the_turn_is_the_cf_rotated_pole():
    # the frame's pole and origin where CF puts them, and the EUR-11 grid's south-west
    # corner (rlat -23.375, rlon -28.375) at 21.99 N, 10.06 W, as the domain's tables give
    assert EUR.to_frame(EUR.lat, EUR.lon)[0] == pytest.approx(90.0)
    np.testing.assert_allclose(EUR.to_earth(0.0, 0.0), (90.0 - EUR.lat, EUR.lon + 180.0))
    np.testing.assert_allclose(EUR.to_earth(-23.375, -28.375), (21.99, -10.06), atol=0.01)
    turned = RotatedPole(39.25, -162.0, grid_lon=30.0)  # the Earth's pole at rlon 30
    np.testing.assert_allclose(turned.to_frame(90.0, 0.0), (EUR.lat, 30.0), atol=1e-9)
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(-89, 89, 200), rng.uniform(-180, 180, 200)
    for pole in (EUR, turned, RotatedPole(-30.0, 75.0)):
        back = pole.to_earth(*pole.to_frame(lat, lon))
        np.testing.assert_allclose(back, (lat, lon), atol=1e-9)
        # a turn of the sphere: distances are kept
        a, b = (np.stack(pole.to_frame(lat[i::2], lon[i::2]), -1) for i in (0, 1))
        np.testing.assert_allclose(
            _arc(*a.T, *b.T), _arc(lat[::2], lon[::2], lat[1::2], lon[1::2])
        )


def test_the_turn_agrees_with_proj():
    pyproj = pytest.importorskip("pyproj")
    rng = np.random.default_rng(2)
    lat, lon = rng.uniform(-80, 80, 100), rng.uniform(-180, 180, 100)
    for pole in (EUR, RotatedPole(-30.0, 75.0, grid_lon=-40.0)):
        crs = pyproj.CRS.from_cf(
            {"grid_mapping_name": "rotated_latitude_longitude",
             "grid_north_pole_latitude": pole.lat, "grid_north_pole_longitude": pole.lon,
             "north_pole_grid_longitude": pole.grid_lon}
        )  # fmt: skip
        rlon, rlat = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(
            lon, lat
        )
        ours = pole.to_frame(lat, lon)
        np.testing.assert_allclose(ours[0], rlat, atol=1e-9)
        np.testing.assert_allclose(np.mod(ours[1] - rlon + 180, 360) - 180, 0.0, atol=1e-9)


def _arc(lat1, lon1, lat2, lon2):
    p1, p2, dl = np.deg2rad(lat1), np.deg2rad(lat2), np.deg2rad(lon2 - lon1)
    return np.arccos(
        np.clip(np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(dl), -1, 1)
    )


def test_a_station_is_put_in_the_grids_frame():
    ds = _cordex()
    paris = (np.array([48.85]), np.array([2.35]))
    in_frame = EUR.to_frame(*paris)
    expected = ds.ensf.assimilate(_stations(*in_frame, frame=True), **OPTIONS)
    got = ds.ensf.assimilate(_stations(*paris), **OPTIONS)
    assert_same_run(got, expected)
    assert not np.array_equal(got.tas.values, ds.tas.values)
    # its diagnostics say where the filter put it, in the frame's terms
    diag = ds.ensf.innovations(_stations(*paris), obs_error=0.5)
    assert diag.grid_latitude.attrs["standard_name"] == "grid_latitude"
    np.testing.assert_allclose(diag.grid_latitude.values, in_frame[0])
    # a station in the Gulf of Guinea, whose numbers fall inside the frame's extent
    with pytest.raises(ObservationDomainError, match="rotated frame"):
        ds.ensf.assimilate(_stations([0.0], [2.35]), **OPTIONS)
    # stations named as the grid's own coordinates are in its frame
    named = _stations(*in_frame).rename(lat="rlat", lon="rlon")
    for c in ("rlat", "rlon"):
        del named[c].attrs["standard_name"]
    assert_same_run(ds.ensf.assimilate(named, **OPTIONS), expected)


def test_a_rotated_grid_without_its_pole_refuses_geographic_positions():
    ds = _cordex(mapping=False)
    with pytest.raises(
        ObservationMismatchError, match=r"no rotated_latitude_longitude .*rotated_pole"
    ):
        ds.ensf.assimilate(_stations([48.85], [2.35]), **OPTIONS)
    # in the frame, they need no pole
    ds.ensf.assimilate(_stations(*EUR.to_frame([48.85], [2.35]), frame=True), **OPTIONS)
    broken = _cordex()
    broken["rotated_pole"].attrs["grid_north_pole_latitude"] = "39.25"
    with pytest.raises(ObservationMismatchError, match="without a pole"):
        broken.ensf.assimilate(_stations([48.85], [2.35]), **OPTIONS)
