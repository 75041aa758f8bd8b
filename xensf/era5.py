"""ERA5 from any store, in one shape: :func:`open` and :func:`normalise`.

ERA5 reaches users from several stores that hold the same fields in different
shapes. WeatherBench2's regridded stores name variables ``geopotential``,
``temperature`` ..., store them as ``(time, level, longitude, latitude)`` with latitude
ascending and leave ``time`` and ``level`` without attributes; ARCO-ERA5 and
WeatherBench2's 0.25° store keep ``(time, level, latitude, longitude)`` with latitude
descending; files written by cfgrib call the member dim ``number``, the level dim
``isobaricInhPa``, label ``time`` as ``forecast_reference_time`` and put a
``_FillValue`` on coordinates; all of them spell units the GRIB way (``m**2 s**-2``).

:func:`open` picks variables, levels and times from such a store without loading it
(everything stays dask-backed) and returns them in one canonical form, the same
whichever store they came from (see :func:`normalise`), ready for
``ds.ensf.assimilate`` and :func:`xensf.train_latent`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .errors import OptionError, StoreError

__all__ = [
    "CANONICAL_DIMS",
    "ERA5_VARIABLES",
    "RESOLUTIONS",
    "normalise",
    "open",
    "open_era5",
    "open_store",
]

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

#: Catalog entries of WeatherBench2 ERA5, by the resolution names :func:`open` takes.
RESOLUTIONS: dict[str, str] = {
    "64x32": "wb2_era5_64x32",
    "5.625": "wb2_era5_64x32",
    "240x121": "wb2_era5_240x121",
    "1.5": "wb2_era5_240x121",
    "1440x721": "wb2_era5_1440x721",
    "0.25": "wb2_era5_1440x721",
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

_LEVEL_SUFFIX = re.compile(r"^(?P<base>.*?[A-Za-z_])(?P<level>\d+(?:\.\d+)?)$")
_REMOTE_PACKAGES = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "az": "adlfs", "abfs": "adlfs"}


# --------------------------------------------------------------------------------------
# opening a store
# --------------------------------------------------------------------------------------
def _protocol(url: str) -> str:
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", url)
    return match.group(1).lower() if match else "file"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _is_zarr(url: str) -> bool:
    stripped = url.rstrip("/")
    return not stripped.endswith((".nc", ".nc4", ".h5", ".hdf5", ".grib", ".grib2", ".grb"))


def open_store(
    url: str | os.PathLike,
    storage_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> xr.Dataset:
    """Open a zarr store or a netCDF file lazily, as it is, with errors that say why not.

    Parameters
    ----------
    url : str or path
        A local path or an fsspec URL (``gs://...``, ``https://...``, ``memory://...``).
        Names ending in ``.nc``/``.nc4``/``.h5`` are opened as netCDF files,
        anything else as a zarr store.
    storage_options : mapping, optional
        Passed to fsspec, e.g. ``{"token": "anon"}`` for public Google Cloud buckets.
    **kwargs
        Passed to :func:`xarray.open_dataset`; ``chunks`` defaults to ``{}`` (the
        store's own chunks), so nothing is read but metadata and coordinates.

    Returns
    -------
    xarray.Dataset
        Dask-backed.

    Raises
    ------
    StoreError
        The package needed for the URL's protocol is missing (``gcsfs`` for
        ``gs://``: ``pip install "xensf[gcs]"``), or the store cannot be reached or
        read; the message names the URL and the underlying error.
    """
    url = os.fspath(url)
    protocol = _protocol(url)
    package = _REMOTE_PACKAGES.get(protocol)
    if package is not None:
        try:
            __import__(package)
        except ImportError:
            extra = ' (pip install "xensf[gcs]")' if package == "gcsfs" else ""
            raise StoreError(
                f"cannot open {url}: reading {protocol}:// stores needs the {package} "
                f"package{extra} and network access"
            ) from None
    if protocol == "file" and not Path(url.removeprefix("file://")).exists():
        raise StoreError(f"cannot open {url}: no such file or directory")
    kwargs.setdefault("chunks", {})
    if _is_zarr(url):
        kwargs.setdefault("engine", "zarr")
        if storage_options:
            kwargs.setdefault("backend_kwargs", {})
            kwargs["backend_kwargs"] = {
                **kwargs["backend_kwargs"],
                "storage_options": dict(storage_options),
            }
        target: Any = url
    else:
        target = url
        if protocol != "file":
            import fsspec

            try:
                target = fsspec.open(url, **dict(storage_options or {})).open()
            except Exception as err:
                raise StoreError(_unreachable(url, protocol, err)) from None
    try:
        with warnings.catch_warnings():
            # zarr warns about unconsolidated metadata and v2 stores read by zarr 3.
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="xarray")
            return xr.open_dataset(target, **kwargs)
    except Exception as err:
        raise StoreError(_unreachable(url, protocol, err)) from None


def _unreachable(url: str, protocol: str, err: BaseException) -> str:
    hint = (
        "check the path"
        if protocol in ("file", "memory")
        else "it needs network access to the store (anonymous access for public buckets: "
        "storage_options={'token': 'anon'})"
    )
    return f"cannot open {url} ({_first_line(err)}); {hint}"


def _catalog_entry(name: str) -> tuple[str, dict | None, dict, dict]:
    """``(url, storage_options, reader kwargs, metadata)`` of a catalog entry."""
    from .catalog import catalog

    cat = catalog()
    if name not in cat.entries:
        raise OptionError(
            f"{name!r} is neither a path, a URL nor an entry of xensf's catalog; the "
            f"catalog has {sorted(cat.entries)}"
        )
    metadata = dict(cat.entries[name].metadata)
    reader = cat[name]
    kwargs = dict(reader.kwargs)
    data = kwargs.pop("args")[0]
    return str(data.url), data.storage_options, kwargs, metadata


# --------------------------------------------------------------------------------------
# the canonical form
# --------------------------------------------------------------------------------------
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
    from .bridge.metadata import drop_stale_coordinates

    return drop_stale_coordinates(ds.copy(deep=False))  # the caller's variables untouched


# --------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------
def _short_aliases(ds: xr.Dataset) -> dict[str, str]:
    """Requestable names -> the dataset's variable names (short, long and own names)."""
    aliases = {str(n): str(n) for n in ds.data_vars}
    for short, (long, _, _) in ERA5_VARIABLES.items():
        if short in ds.data_vars:
            aliases.setdefault(long, short)
    return aliases


def _available(ds: xr.Dataset) -> str:
    names = []
    for n in ds.data_vars:
        long = ERA5_VARIABLES.get(str(n), (None,))[0]
        names.append(f"{n} ({long})" if long else str(n))
    text = ", ".join(names)
    if "level" in ds.dims:
        text += f"; levels (hPa): {_fmt_levels(ds['level'].values)}"
    return text


def _fmt_levels(values: Iterable[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _resolve(token: str, ds: xr.Dataset, aliases: dict[str, str]) -> tuple[str, float | None]:
    """``(variable, level or None)`` for a requested name such as ``"t"`` or ``"z500"``."""
    if token in aliases:
        return aliases[token], None
    match = _LEVEL_SUFFIX.match(token)
    if match and match.group("base") in aliases:
        name = aliases[match.group("base")]
        if "level" not in ds[name].dims:
            raise OptionError(
                f"{token!r} asks for {name!r} at {match.group('level')} hPa, but {name!r} has "
                "no level dim in this store"
            )
        return name, float(match.group("level"))
    raise OptionError(
        f"the store has no variable {token!r}; it has {_available(ds)}. Ask for a name, "
        "or a name with a pressure level in hPa such as 'z500' or 'temperature850'"
    )


def _check_levels(ds: xr.Dataset, wanted: Sequence[float], what: str) -> None:
    have = ds["level"].values
    missing = [lev for lev in wanted if not np.isclose(have, lev).any()]
    if missing:
        raise OptionError(
            f"the store has no level {_fmt_levels(missing)} hPa for {what}; its levels "
            f"(hPa) are {_fmt_levels(have)}"
        )


def _select_variables(ds: xr.Dataset, variables, levels) -> xr.Dataset:
    if levels is not None:
        levels = [float(v) for v in np.atleast_1d(levels)]
        if "level" not in ds.dims:
            raise OptionError(f"levels={levels} given, but the store has no level dim")
        _check_levels(ds, levels, "levels=")
    if variables is None:
        return ds if levels is None else ds.sel(level=levels, method="nearest")
    tokens = [variables] if isinstance(variables, str) else list(variables)
    if not tokens:
        raise OptionError(
            "variables= is empty; name at least one variable (e.g. variables=['z500']), "
            "or leave it out for all of them"
        )
    aliases = _short_aliases(ds)
    out: dict[str, xr.DataArray] = {}
    for token in tokens:
        name, level = _resolve(str(token), ds, aliases)
        da = ds[name]
        if level is None:
            key = name
            if levels is not None and "level" in da.dims:
                da = da.sel(level=levels, method="nearest")
        else:
            _check_levels(ds, [level], repr(token))
            da = da.sel(level=level, method="nearest").drop_vars("level")
            key = f"{name}{level:g}"
            long_name = da.attrs.get("long_name", ERA5_VARIABLES.get(name, (name,))[0])
            da = da.assign_attrs(long_name=f"{long_name} at {level:g} hPa", level=level)
            da.attrs["level_units"] = "hPa"
        if key in out:
            raise OptionError(f"{token!r} asks for {key!r} a second time")
        out[key] = da
    result = xr.Dataset(out, attrs=ds.attrs)
    if "level" in result.dims and "level" in ds.coords:
        result["level"].attrs = ds["level"].attrs
    return result


def _span(times: np.ndarray) -> str:
    fmt = [np.datetime_as_string(t, unit="h") for t in (times[0], times[-1])]
    return f"{fmt[0]} to {fmt[1]}"


def _timestamp(value: Any, what: str) -> np.datetime64:
    try:
        return np.datetime64(pd.Timestamp(value).to_datetime64(), "ns")
    except (ValueError, TypeError) as err:
        raise OptionError(f"cannot read {what} {value!r} as a date/time: {err}") from None


def _select_time(ds: xr.Dataset, time, every) -> xr.Dataset:
    if "time" not in ds.dims:
        if time is not None or every is not None:
            raise OptionError("time= or every= given, but the store has no time dim")
        return ds
    times = ds["time"].values
    if time is not None:
        if times.dtype.kind != "M":
            raise OptionError("time= needs datetime times; the store's times are not dates")
        if isinstance(time, tuple) and len(time) == 2:
            time = slice(*time)
        if isinstance(time, slice):
            if time.step is not None:
                raise OptionError("time= takes a slice without a step; use every=")
            start = _timestamp(time.start, "the start time") if time.start is not None else None
            stop = _timestamp(time.stop, "the stop time") if time.stop is not None else None
            if (start is not None and start < times[0]) or (stop is not None and stop > times[-1]):
                asked = f"{time.start or '…'} to {time.stop or '…'}"
                raise OptionError(
                    f"the time range {asked} lies outside the store's span {_span(times)}"
                )
            ds = ds.sel(time=slice(time.start, time.stop))
            if ds.sizes["time"] == 0:
                raise OptionError(
                    f"no time of the store lies in {time.start} to {time.stop} (store span "
                    f"{_span(times)})"
                )
        else:
            wanted = [time] if isinstance(time, str | dt.datetime | np.datetime64) else time
            stamps = np.array([_timestamp(t, "time") for t in wanted])
            missing = stamps[~np.isin(stamps, times)]
            if missing.size:
                outside = (missing < times[0]) | (missing > times[-1])
                example = np.datetime_as_string(missing[outside.argmax()], unit="m")
                where = "lie outside" if outside.any() else "are not times of the store, within"
                raise OptionError(
                    f"{missing.size} requested time(s) {where} the store's span "
                    f"{_span(times)} (e.g. {example})"
                )
            ds = ds.sel(time=stamps)
    if every is not None:
        step = pd.Timedelta(every).to_timedelta64().astype("timedelta64[ns]")
        if step <= np.timedelta64(0, "ns"):
            raise OptionError(f"every= must be a positive duration, got {every!r}")
        offsets = ds["time"].values.astype("datetime64[ns]").astype(np.int64) % step.astype(
            np.int64
        )
        ds = ds.isel(time=np.flatnonzero(offsets == 0))
        if ds.sizes["time"] == 0:
            raise OptionError(f"no selected time is a multiple of every={every!r} from 00 UTC")
    return ds


def open(
    source: str | os.PathLike | xr.Dataset | None = None,
    *,
    variables: str | Sequence[str] | None = None,
    levels: float | Sequence[float] | None = None,
    time: Any = None,
    every: str | np.timedelta64 | None = None,
    resolution: str | None = None,
    latitude: str | None = "ascending",
    chunks: Mapping[str, int] | str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Open ERA5 from a catalog entry, a store or a file: selected, normalised, lazy.

    Parameters
    ----------
    source : str, path or Dataset, optional
        One of

        * the name of an entry of :func:`xensf.catalog` (``"wb2_era5_64x32"``,
          ``"wb2_era5_240x121"``, ``"wb2_era5_1440x721"``, ``"arco_era5"``,
          ``"era5_sample"``), opened with the entry's URL and storage options;
        * a path or fsspec URL of a zarr store or a netCDF file;
        * an open Dataset (only selected and normalised);
        * ``None``: the WeatherBench2 store of ``resolution``.
    variables : str or sequence of str, optional
        What to take; default every variable. Each is a variable name as the store
        has it (``"geopotential"``) or as ERA5 short name (``"z"``; see
        :data:`ERA5_VARIABLES`) — the result keeps its ``level`` dim, restricted to
        ``levels`` — or such a name followed by a pressure level in hPa (``"z500"``,
        ``"temperature850"``), which gives a 2-D field named ``<short name><level>``
        (``"z500"``, ``"t850"``) with ``level`` and ``level_units`` attributes.
    levels : float or sequence of float, optional
        Pressure levels (hPa) kept for variables asked for without a level; default
        all.
    time : optional
        A ``slice(start, stop)`` or ``(start, stop)`` (both inclusive; strings, dates
        or ``numpy.datetime64``), one time, or a list of times. Must lie within the
        store's span.
    every : str or numpy.timedelta64, optional
        Keep only times that are whole multiples of this step from 00 UTC, e.g.
        ``"6h"`` to take 6-hourly states from hourly ARCO-ERA5.
    resolution : str, optional
        With ``source=None``: ``"64x32"`` (5.625°), ``"240x121"`` (1.5°) or
        ``"1440x721"`` (0.25°) picks the WeatherBench2 ERA5 store.
    latitude : {"ascending", "descending", None}, default "ascending"
        Latitude order of the result; ``None`` keeps the store's.
    chunks : mapping or "auto", optional
        Dask chunks; default the store's own (for WeatherBench2 and ARCO-ERA5: whole
        globes, a few times per chunk). A mapping names the dims of the result
        (``member``, ``time``, ``level``, ``latitude``, ``longitude``), whatever the store
        calls them; the data is opened in the store's chunks and rechunked lazily.
    storage_options : mapping, optional
        fsspec options for a URL ``source`` (for a catalog entry, they override the
        entry's).

    Returns
    -------
    xarray.Dataset
        Dask-backed, in the canonical form of :func:`normalise`: dims among
        ``member, time, level, latitude, longitude``, CF coordinate attributes, ERA5
        short names and CF unit strings. A ``history`` line records the call.

    Raises
    ------
    StoreError
        The store cannot be reached or read; the message names the URL and, for
        ``gs://`` stores without gcsfs, says to ``pip install "xensf[gcs]"``.
    OptionError
        A variable or level the store does not have (the message lists what it
        has), a time range outside the store's span, an unknown catalog entry or
        resolution.

    Examples
    --------
    The sample that ships with xensf (cfgrib's layout: ``number``, ``isobaricInhPa``,
    latitude descending):

    >>> import xensf.era5
    >>> ds = xensf.era5.open("era5_sample", variables=["z500", "t850"])
    >>> dict(ds.sizes)
    {'member': 10, 'time': 4, 'latitude': 61, 'longitude': 120}
    >>> ds.z500.attrs["units"], float(ds.latitude[0])
    ('m2 s-2', -90.0)

    WeatherBench2 at 1.5°, two years of 500 hPa geopotential (needs gcsfs and
    network; reads nothing but metadata until computed):

    >>> z = xensf.era5.open(resolution="240x121", variables="z500",
    ...                     time=("2018-01-01", "2019-12-31"))  # doctest: +SKIP
    """
    if isinstance(source, xr.Dataset):
        raw = source
        label = "<Dataset>"
    else:
        if source is None:
            if resolution is None:
                raise OptionError(
                    "give a source (catalog entry, path or URL) or a resolution "
                    f"({', '.join(sorted(set(RESOLUTIONS) - {'5.625', '1.5', '0.25'}))})"
                )
            key = str(resolution).removesuffix("deg").removesuffix("°")
            if key not in RESOLUTIONS:
                raise OptionError(
                    f"no WeatherBench2 ERA5 store at resolution {resolution!r}; there are "
                    "64x32 (5.625°), 240x121 (1.5°) and 1440x721 (0.25°)"
                )
            source = RESOLUTIONS[key]
        elif resolution is not None:
            raise OptionError("give either source= or resolution=, not both")
        label = os.fspath(source)
        kwargs: dict[str, Any] = {}
        if (
            isinstance(source, str)
            and _protocol(source) == "file"
            and not _looks_like_path(source)
        ):
            url, options, reader_kwargs, _ = _catalog_entry(source)
            kwargs.update(reader_kwargs)
            if storage_options is not None:
                options = {**(options or {}), **storage_options}
        else:
            url, options = os.fspath(source), storage_options
        if isinstance(chunks, str):  # "auto": dask decides, on the store's dims
            kwargs["chunks"] = chunks
        raw = open_store(url, options, **kwargs)
    ds = normalise(raw, latitude=latitude)
    ds = _select_variables(ds, variables, levels)
    ds = _select_time(ds, time, every)
    if isinstance(chunks, Mapping):
        # The names of the result (member, latitude, ...), not the store's (number, lat)
        unknown = sorted(set(chunks) - set(ds.dims))
        if unknown:
            raise OptionError(
                f"chunks names {unknown}, which are not dims of the result; its dims are "
                f"{list(ds.dims)} (e.g. chunks={{'member': -1, 'time': 4}})"
            )
        ds = ds.chunk(dict(chunks))
    call = f"xensf.era5.open({label!r}, variables={variables!r}, levels={levels!r}, time={time!r})"
    from .bridge.metadata import with_history

    ds.attrs = with_history(ds.attrs, call)
    return ds


def _looks_like_path(source: str) -> bool:
    return (
        os.sep in source
        or "/" in source
        or source.endswith((".zarr", ".nc", ".nc4"))
        or Path(source).exists()
    )


#: :func:`open` under a name that says what it opens (``xensf.open_era5``).
open_era5 = open
