"""ERA5 from any store in one canonical form: :func:`normalise`.

ERA5 reaches users from several stores that hold the same fields in different
shapes. WeatherBench2's regridded stores name variables ``geopotential``,
``temperature`` ..., store them as ``(time, level, longitude, latitude)`` with latitude
ascending and leave ``time`` and ``level`` without attributes; ARCO-ERA5 and
WeatherBench2's 0.25° store keep ``(time, level, latitude, longitude)`` with latitude
descending; files written by cfgrib call the member dim ``number``, the level dim
``isobaricInhPa``, label ``time`` as ``forecast_reference_time`` and put a
``_FillValue`` on coordinates; all of them spell units the GRIB way (``m**2 s**-2``).

:func:`normalise` gives them one shape, the same whichever store they came from.
"""

from __future__ import annotations

import re

import numpy as np
import xarray as xr

from ..errors import OptionError

__all__ = ["CANONICAL_DIMS", "ERA5_VARIABLES", "cf_units", "normalise"]

#: The dims of a normalised dataset, in this order (those present).
CANONICAL_DIMS: tuple[str, ...] = ("member", "time", "level", "latitude", "longitude")

#: What xensf knows of ERA5 variables: short name (the output name) ->
#: (name in WeatherBench2 / ARCO-ERA5 stores, CF standard_name, CF units).
ERA5_VARIABLES: dict[str, tuple[str, str, str]] = {
    "z": ("geopotential", "geopotential", "m2 s-2"),
    "t": ("temperature", "air_temperature", "K"),
    "u": ("u_component_of_wind", "eastward_wind", "m s-1"),
    "v": ("v_component_of_wind", "northward_wind", "m s-1"),
    "w": ("vertical_velocity", "lagrangian_tendency_of_air_pressure", "Pa s-1"),
    "q": ("specific_humidity", "specific_humidity", "kg kg-1"),
    "r": ("relative_humidity", "relative_humidity", "%"),
    "t2m": ("2m_temperature", "air_temperature", "K"),
    "u10": ("10m_u_component_of_wind", "eastward_wind", "m s-1"),
    "v10": ("10m_v_component_of_wind", "northward_wind", "m s-1"),
    "msl": ("mean_sea_level_pressure", "air_pressure_at_mean_sea_level", "Pa"),
    "sp": ("surface_pressure", "surface_air_pressure", "Pa"),
    "tcwv": ("total_column_water_vapour", "atmosphere_mass_content_of_water_vapor", "kg m-2"),
    "z_sfc": ("geopotential_at_surface", "surface_geopotential", "m2 s-2"),
    "lsm": ("land_sea_mask", "land_binary_mask", "1"),
}

# Dimension names that stores give to the roles of the canonical form (lower case).
_ALIASES: dict[str, tuple[str, ...]] = {
    "member": ("member", "number", "realization", "ensemble", "ensemble_member", "ens", "mem"),
    "level": ("level", "isobaricinhpa", "pressure_level", "plev", "pressure", "lev"),
    "latitude": ("latitude", "lat", "nav_lat"),
    "longitude": ("longitude", "lon", "nav_lon"),
    "time": ("time", "valid_time"),
}

# CF attributes of the canonical coordinates (filled in where a store has none).
_COORD_ATTRS: dict[str, dict[str, str]] = {
    "time": {"standard_name": "time", "long_name": "time", "axis": "T"},
    "level": {
        "standard_name": "air_pressure",
        "long_name": "pressure",
        "units": "hPa",
        "positive": "down",
        "axis": "Z",
    },
    "latitude": {
        "standard_name": "latitude",
        "long_name": "latitude",
        "units": "degrees_north",
        "axis": "Y",
    },
    "longitude": {
        "standard_name": "longitude",
        "long_name": "longitude",
        "units": "degrees_east",
        "axis": "X",
    },
    "member": {"standard_name": "realization", "long_name": "ensemble member", "units": "1"},
}

# GRIB unit strings pint cannot read, and what they mean.
_GRIB_UNITS: dict[str, str] = {
    "(0 - 1)": "1",
    "~": "1",
    "m of water equivalent": "m",
    "gpm": "m",
    "Dobson": "DU",
    "(-1 - 1)": "1",
}


def _role_dim(ds: xr.Dataset, role: str) -> str | None:
    found = [d for d in ds.dims if str(d).lower() in _ALIASES[role]]
    if role == "time" and len(found) > 1:
        found = [d for d in found if d == "time"]
    if len(found) > 1:
        raise OptionError(
            f"the dataset has several {role} dims {found}; rename all but one before normalising"
        )
    return found[0] if found else None


def cf_units(units: str) -> str:
    """A units string in the CF/UDUNITS spelling: ``"m**2 s**-2"`` -> ``"m2 s-2"``.

    GRIB spellings that pint cannot parse (``"(0 - 1)"``, ``"~"``) become ``"1"``.
    """
    units = units.strip()
    if units in _GRIB_UNITS:
        return _GRIB_UNITS[units]
    return re.sub(r"\s*(\*\*|\^)\s*", "", units)


def _time_from_valid_time(ds: xr.Dataset) -> xr.Dataset:
    """Make the valid time the ``time`` coordinate; keep a non-zero lead as a coordinate."""
    if "valid_time" not in ds.coords or "time" not in ds.dims:
        return ds
    valid = ds["valid_time"]
    if valid.dims != ("time",):
        return ds
    same = bool((valid.values == ds["time"].values).all())
    if same:
        drop = ["valid_time"]
        if "step" in ds.coords and ds["step"].ndim == 0:
            drop.append("step")
        return ds.drop_vars(drop)
    reference = ds["time"].variable.copy()
    reference.attrs = {"standard_name": "forecast_reference_time", "long_name": "initial time"}
    ds = ds.assign_coords(time=valid.values, forecast_reference_time=("time", reference.data))
    ds["forecast_reference_time"].attrs = reference.attrs
    return ds.drop_vars("valid_time")


def normalise(ds: xr.Dataset, *, latitude: str | None = "ascending") -> xr.Dataset:
    """Put an ERA5 dataset from any store into xensf's canonical form, lazily.

    =====================  =====================================================
    stores differ in        the canonical form
    =====================  =====================================================
    dim names               ``member`` (from ``number``, ``realization``, ...),
                            ``time`` (from ``valid_time``), ``level`` (from
                            ``isobaricInhPa``, ``pressure_level``, ``plev``),
                            ``latitude``, ``longitude`` (from ``lat``, ``lon``)
    dim order               ``member, time, level, latitude, longitude`` (other
                            dims first)
    latitude order          ascending (``latitude="descending"`` for 90 → -90,
                            ``None`` keeps the store's)
    level units             hPa (``plev`` in Pa is divided by 100)
    coordinate dtypes       float64 latitude, longitude and level
    coordinate attributes   CF ``standard_name``, ``units``, ``axis`` where absent
                            (WeatherBench2 has none on ``time`` and ``level``);
                            ``_FillValue`` dropped from coordinates
    time                    the valid time; cfgrib's ``time`` labelled
                            ``forecast_reference_time`` with a ``valid_time``
                            coordinate becomes ``time`` (a non-zero lead keeps the
                            reference time as ``forecast_reference_time``)
    variable names          ERA5 short names (``z``, ``t``, ``u``, ``t2m``, ...;
                            :data:`ERA5_VARIABLES`), others kept
    units                   CF/UDUNITS spelling (``m**2 s**-2`` → ``m2 s-2``,
                            ``(0 - 1)`` → ``1``)
    =====================  =====================================================

    Nothing is computed: dask-backed data stays dask-backed (the latitude flip and
    the transposition are lazy views).

    Parameters
    ----------
    ds : xarray.Dataset
        ERA5 data as a store holds it.
    latitude : {"ascending", "descending", None}
        The latitude order of the result.

    Returns
    -------
    xarray.Dataset
    """
    if latitude not in ("ascending", "descending", None):
        raise OptionError(
            f"latitude must be 'ascending', 'descending' or None (keep), got {latitude!r}"
        )
    ds = ds.copy()
    renames = {}
    for role in ("member", "level", "latitude", "longitude", "time"):
        dim = _role_dim(ds, role)
        if dim is not None and dim != role:
            renames[dim] = role
    if "time" in renames.values() and "time" in ds.variables and "time" not in ds.dims:
        # CDS netCDF: `valid_time` is the dim, a scalar `time` may exist beside it.
        ds = ds.drop_vars("time")
    ds = ds.rename(renames)
    ds = _time_from_valid_time(ds)

    # coordinates: values, dtypes, attributes
    if "level" in ds.dims:
        level = ds["level"]
        values = np.asarray(level.values, dtype=np.float64)
        if str(level.attrs.get("units", "hPa")).strip().lower() in ("pa", "pascal"):
            values = values / 100.0
        ds = ds.assign_coords(level=("level", values))
    for name in ("latitude", "longitude"):
        if name in ds.dims:
            ds = ds.assign_coords({name: (name, np.asarray(ds[name].values, np.float64))})
    for name, attrs in _COORD_ATTRS.items():
        if name not in ds.coords:
            continue
        var = ds[name].variable
        kept = {k: v for k, v in var.attrs.items() if k not in ("stored_direction", "_FillValue")}
        if name == "level":
            kept.pop("units", None)  # converted to hPa above
        if name == "time" and kept.get("standard_name") == "forecast_reference_time":
            kept.pop("standard_name")
            kept.pop("long_name", None)
        var.attrs = {**kept, **{k: v for k, v in attrs.items() if k not in kept}}
        if name == "level":
            var.attrs["units"] = "hPa"
        var.encoding.pop("_FillValue", None)
        var.encoding.pop("missing_value", None)
        if var.dtype.kind == "f":
            var.encoding["_FillValue"] = None

    if "latitude" in ds.dims and latitude is not None and ds.sizes["latitude"] > 1:
        lat = ds["latitude"].values
        ascending = lat[-1] > lat[0]
        if ascending != (latitude == "ascending"):
            ds = ds.isel(latitude=slice(None, None, -1))

    order = [d for d in CANONICAL_DIMS if d in ds.dims]
    ds = ds.transpose(..., *order)

    # variables: names and units
    long_to_short = {long: short for short, (long, _, _) in ERA5_VARIABLES.items()}
    names = {}
    for name in ds.data_vars:
        short = long_to_short.get(str(name))
        if short is not None and short not in ds.variables:
            names[name] = short
    ds = ds.rename(names)
    for name in ds.data_vars:
        var = ds[name].variable
        units = var.attrs.get("units")
        if isinstance(units, str):
            var.attrs["units"] = cf_units(units)
        elif str(name) in ERA5_VARIABLES:
            var.attrs["units"] = ERA5_VARIABLES[str(name)][2]
        if str(name) in ERA5_VARIABLES:
            var.attrs.setdefault("standard_name", ERA5_VARIABLES[str(name)][1])
    from ..bridge.metadata import drop_stale_coordinates

    return drop_stale_coordinates(ds.copy(deep=False))  # the caller's variables untouched
