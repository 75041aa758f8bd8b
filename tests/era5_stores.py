"""Local zarr stores with the schemas of the public ERA5 stores, for tests without network.

:func:`write_wb2_store` writes a store shaped like WeatherBench2's regridded ERA5
(``1959-2023_01_10-6h-240x121_equiangular_with_poles_conservative.zarr``): variables
named ``geopotential``, ``temperature``, ... stored as ``(time, level, longitude,
latitude)``, latitude ascending from -90 (float64), 6-hourly times and integer levels
(13 of them) without any attributes, GRIB-style unit strings, chunks of several times
with every level and the whole globe.

:func:`write_arco_store` writes one shaped like ARCO-ERA5
(``full_37-1h-0p25deg-chunk-1.zarr-v3``): the same variable names stored as ``(time,
level, latitude, longitude)``, latitude descending from 90 (float32, with
``long_name`` and ``units``), hourly times and 37 integer levels without attributes,
one time per chunk, and the store's global ``valid_time_start``/``valid_time_stop``.

Both hold the same smooth synthetic fields (a function of time, level, latitude and
longitude), so that at the times and levels they share the loader must give
identical Datasets. The grids are coarse (22.5 degrees) to keep the stores small.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

WB2_LEVELS = [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]
ARCO_LEVELS = [1, 2, 3, 5, 7, 10, 20, 30, 50, 70, 100, 125, 150, 175, 200, 225, 250, 300,
               350, 400, 450, 500, 550, 600, 650, 700, 750, 775, 800, 825, 850, 875, 900,
               925, 950, 975, 1000]  # fmt: skip
START = np.datetime64("2020-01-01T00", "ns")
STEP = 22.5  # degrees

# name in the stores -> (short_name, long_name, standard_name, GRIB units, has levels)
VARIABLES = {
    "geopotential": ("z", "Geopotential", "geopotential", "m**2 s**-2", True),
    "temperature": ("t", "Temperature", "air_temperature", "K", True),
    "u_component_of_wind": ("u", "U component of wind", "eastward_wind", "m s**-1", True),
    "v_component_of_wind": ("v", "V component of wind", "northward_wind", "m s**-1", True),
    "2m_temperature": ("t2m", "2 metre temperature", "unknown", "K", False),
    "mean_sea_level_pressure": (
        "msl",
        "Mean sea level pressure",
        "air_pressure_at_mean_sea_level",
        "Pa",
        False,
    ),
    "land_sea_mask": ("lsm", "Land-sea mask", "land_binary_mask", "(0 - 1)", False),
}


def _field(name: str, hours: np.ndarray, level, lat: np.ndarray, lon: np.ndarray):
    """A smooth field on (time, [level], lat, lon), float32."""
    t = hours[:, None, None, None] / 24.0
    la = np.deg2rad(lat)[None, None, :, None]
    lo = np.deg2rad(lon)[None, None, None, :]
    lev = np.asarray(level if level is not None else [1000.0], np.float64)[None, :, None, None]
    seed = sum(map(ord, name)) % 7
    wave = np.cos(la) * np.cos(2 * lo - 0.3 * t + seed) + 0.2 * np.sin(3 * la) * np.sin(lo + t)
    base = {
        "geopotential": 9.81 * 7000.0 * np.log(1000.0 / lev) + 800.0 * wave,
        "temperature": 288.0 - 60.0 * np.log(1000.0 / lev) / np.log(20.0) + 15.0 * wave,
        "u_component_of_wind": 10.0 * np.cos(la) ** 2 + 5.0 * wave,
        "v_component_of_wind": 4.0 * wave,
        "2m_temperature": 285.0 + 20.0 * wave,
        "mean_sea_level_pressure": 101325.0 + 900.0 * wave,
        "land_sea_mask": (wave > 0).astype(np.float64) + 0 * t,
    }[name]
    out = np.broadcast_to(base, (hours.size, lev.shape[1], lat.size, lon.size))
    return out if level is not None else out[:, 0]


def _dataset(hours, levels, lat, lon, lat_attrs, lon_attrs, lat_dtype, lon_first: bool):
    times = START + (hours * 3600 * 10**9).astype("timedelta64[ns]")
    data = {}
    for name, (short, long_name, standard_name, units, leveled) in VARIABLES.items():
        values = _field(name, hours, levels if leveled else None, lat, lon).astype(np.float32)
        dims = (
            ("time", "level", "latitude", "longitude")
            if leveled
            else ("time", "latitude", "longitude")
        )
        attrs = {"long_name": long_name, "short_name": short, "units": units}
        if standard_name != "unknown":
            attrs["standard_name"] = standard_name
        if name == "land_sea_mask":  # static: no time dim
            values, dims = values[0], dims[1:]
        da = xr.DataArray(values, dims=dims, attrs=attrs)
        if lon_first:
            da = da.transpose(*dims[:-2], "longitude", "latitude")
        data[name] = da
    return xr.Dataset(
        data,
        coords={
            "time": ("time", times),
            "level": ("level", np.asarray(levels, np.int64)),
            "latitude": ("latitude", lat.astype(lat_dtype), lat_attrs),
            "longitude": ("longitude", lon.astype(lat_dtype), lon_attrs),
        },
    )


def _lat_lon():
    lat = np.arange(-90.0, 90.0 + STEP / 2, STEP)
    lon = np.arange(0.0, 360.0, STEP)
    return lat, lon


def write_wb2_store(path: str | Path, *, days: int = 2) -> Path:
    """Write a WeatherBench2-schema ERA5 zarr store (6-hourly, 13 levels) to ``path``."""
    lat, lon = _lat_lon()
    hours = np.arange(0, 24 * days, 6, dtype=np.int64)
    ds = _dataset(hours, WB2_LEVELS, lat, lon, {}, {}, np.float64, lon_first=True)
    chunks = {"time": 4, "level": -1, "latitude": -1, "longitude": -1}
    ds = ds.chunk(chunks)
    path = Path(path)
    ds.to_zarr(path, mode="w", zarr_format=2, consolidated=True)
    return path


def write_arco_store(path: str | Path, *, days: int = 2) -> Path:
    """Write an ARCO-ERA5-schema zarr store (hourly, 37 levels) to ``path``."""
    lat, lon = _lat_lon()
    hours = np.arange(0, 24 * days, 1, dtype=np.int64)
    ds = _dataset(
        hours,
        ARCO_LEVELS,
        lat[::-1],
        lon,
        {"long_name": "latitude", "units": "degrees_north"},
        {"long_name": "longitude", "units": "degrees_east"},
        np.float32,
        lon_first=False,
    )
    ds.attrs = {
        "valid_time_start": "2020-01-01",
        "valid_time_stop": str(np.datetime_as_string(ds.time.values[-1], unit="D")),
        "last_updated": "2020-01-03 00:00:00.000000",
    }
    ds = ds.chunk({"time": 1, "level": -1, "latitude": -1, "longitude": -1})
    path = Path(path)
    ds.to_zarr(path, mode="w", zarr_format=2, consolidated=True)
    return path
