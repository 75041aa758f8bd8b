"""Opening ERA5 selected and normalised, lazily: :func:`open`.

:func:`open` picks variables, levels and times from a catalog entry, a store or an open
Dataset without loading it (everything stays dask-backed) and returns them in the
canonical form of :func:`~xensf.era5.normalise`, ready for ``ds.ensf.assimilate`` and
:func:`xensf.train_latent`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..checks import is_integer
from ..errors import OptionError
from .canonical import ERA5_VARIABLES, normalise
from .entries import catalog
from .stores import looks_like_path, open_store, url_protocol

__all__ = ["RESOLUTIONS", "open", "open_era5"]

#: Catalog entries of WeatherBench2 ERA5, by the resolution names :func:`open` takes.
RESOLUTIONS: dict[str, str] = {
    "64x32": "wb2_era5_64x32",
    "5.625": "wb2_era5_64x32",
    "240x121": "wb2_era5_240x121",
    "1.5": "wb2_era5_240x121",
    "1440x721": "wb2_era5_1440x721",
    "0.25": "wb2_era5_1440x721",
}

_LEVEL_SUFFIX = re.compile(r"^(?P<base>.*?[A-Za-z_])(?P<level>\d+(?:\.\d+)?)$")


def _catalog_entry(name: str) -> tuple[str, dict | None, dict, dict]:
    """``(url, storage_options, reader kwargs, metadata)`` of a catalog entry."""
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


def _check_chunks(chunks) -> None:
    """Refuse chunks dask would fail on, or that would be ignored (a string other than
    "auto"), before anything is opened."""
    if chunks is None or chunks == "auto":
        return
    if not isinstance(chunks, Mapping):
        raise OptionError(
            f"chunks must be a mapping {{dim: size}} or 'auto', got {chunks!r} (e.g. "
            "chunks={'member': -1, 'time': 4})"
        )
    for dim, size in chunks.items():
        sizes = size if isinstance(size, tuple | list) else [size]
        whole = size is None or size == "auto" or (is_integer(size) and size == -1)
        if not (whole or (sizes and all(is_integer(n) and n >= 1 for n in sizes))):
            raise OptionError(
                f"chunks[{dim!r}] must be a positive chunk size (or a tuple of them), -1 "
                f"(the whole dim) or 'auto', got {size!r}"
            )


def _select_variables(ds: xr.Dataset, variables, levels) -> xr.Dataset:
    if levels is not None:
        levels = [float(v) for v in np.atleast_1d(levels)]
        if not levels:
            raise OptionError("levels=[] asks for no level; give some, or None for all")
        twice = sorted({v for v in levels if levels.count(v) > 1})
        if twice:
            raise OptionError(
                f"levels= lists {_fmt_levels(twice)} hPa more than once; give each once"
            )
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
            if start is not None and stop is not None and start > stop:
                raise OptionError(
                    f"time= starts at {time.start} after it stops at {time.stop}; give the "
                    "earlier time first"
                )
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
        try:
            step = pd.Timedelta(every).to_timedelta64().astype("timedelta64[ns]")
        except (TypeError, ValueError):
            raise OptionError(
                f"every= takes a duration such as '6h' or a numpy.timedelta64, got {every!r}"
            ) from None
        if step <= np.timedelta64(0, "ns"):
            raise OptionError(f"every= must be a positive duration, got {every!r}")
        times = ds["time"].values.astype("datetime64[ns]")
        day = np.timedelta64(1, "D").astype("timedelta64[ns]")
        if day % step == np.timedelta64(0, "ns"):  # 1h, 6h, 12h, 1D: the synoptic hours
            start = np.datetime64(0, "ns")
        elif step % day == np.timedelta64(0, "ns"):  # whole days, from the first one
            start = times[:1].astype("datetime64[D]").astype("datetime64[ns]")
        else:  # 5h or 36h: whole multiples from 00 UTC would drift from day to day
            raise OptionError(
                f"every= must divide a day (e.g. '1h', '3h', '6h', '12h') or be a whole "
                f"number of days (e.g. '2D'), got {every!r}"
            )
        offsets = (times - start).astype(np.int64) % step.astype(np.int64)
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
        ``"6h"`` to take 6-hourly states from hourly ARCO-ERA5: a step that divides a
        day, or whole days (``"2D"``: 00 UTC of every other day from the first
        selected day); other steps (``"5h"``) are an ``OptionError``.
    resolution : str, optional
        With ``source=None``: ``"64x32"`` (5.625°), ``"240x121"`` (1.5°) or
        ``"1440x721"`` (0.25°) picks the WeatherBench2 ERA5 store.
    latitude : {"ascending", "descending", None}, default "ascending"
        Latitude order of the result; ``None`` keeps the store's.
    chunks : mapping or "auto", optional
        Dask chunks; default the store's own (for WeatherBench2 and ARCO-ERA5: whole
        globes, a few times per chunk), with the members in one chunk, which every
        analysis needs (the ERA5 sample's file holds one member per chunk). A mapping
        names the dims of the result (``member``, ``time``, ``level``, ``latitude``,
        ``longitude``), whatever the store calls them, each with a size, a tuple of
        sizes, -1 (the whole dim) or ``"auto"``; the data is opened in the store's
        chunks and rechunked lazily.
    storage_options : mapping, optional
        fsspec options for a URL ``source`` (for a catalog entry, they override the
        entry's); refused with an open Dataset, which is not read again.

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
    if source is not None and resolution is not None:
        raise OptionError("give either source= or resolution=, not both")
    if isinstance(source, xr.Dataset) and storage_options is not None:
        raise OptionError(
            "storage_options= apply to a store that is read (a catalog entry, a path or "
            "URL); source is an open Dataset, already read: drop storage_options, or give "
            "them where it was opened"
        )
    if source is not None and not isinstance(source, str | os.PathLike | xr.Dataset):
        raise OptionError(
            "source must be a catalog entry name, a path or URL of a store or file, or an "
            f"open Dataset, got {type(source).__name__}"
        )
    if isinstance(variables, Iterable) and not isinstance(variables, str | Mapping):
        variables = list(variables)  # (a numpy array or a generator of names too)
    if variables is not None and not (
        isinstance(variables, str)
        or (isinstance(variables, list) and all(isinstance(v, str) for v in variables))
    ):
        raise OptionError(
            f"variables must be a name ('z', 'z500') or a list of names, got {variables!r}"
        )
    _check_chunks(chunks)
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
        label = os.fspath(source)
        kwargs: dict[str, Any] = {}
        if (
            isinstance(source, str)
            and url_protocol(source) == "file"
            and not looks_like_path(source)
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
    if not (isinstance(chunks, Mapping) and "member" in chunks):
        ds = _members_in_one_chunk(ds)
    if isinstance(chunks, Mapping):
        # The names of the result (member, latitude, ...), not the store's (number, lat)
        unknown = sorted(set(chunks) - set(ds.dims))
        if unknown:
            raise OptionError(
                f"chunks names {unknown}, which are not dims of the result; its dims are "
                f"{list(ds.dims)} (e.g. chunks={{'member': -1, 'time': 4}})"
            )
        try:
            ds = ds.chunk(dict(chunks))
        except ValueError as err:  # chunk tuples that do not add up to the dim
            sizes = {d: ds.sizes[d] for d in chunks}
            raise OptionError(
                f"chunks={dict(chunks)!r} do not fit the dims {sizes}: {err}"
            ) from None
    call = f"xensf.era5.open({label!r}, variables={variables!r}, levels={levels!r}, time={time!r})"
    from ..bridge.metadata import with_history

    ds.attrs = with_history(ds.attrs, call)
    return ds


def _members_in_one_chunk(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with each dask-backed variable's ``member`` dim in one chunk (lazily), as
    ``assimilate`` needs it; its other chunks and its coordinates as they are."""
    for name, var in ds.data_vars.items():
        if var.chunks is not None and len(var.chunksizes.get("member", ())) > 1:
            axis = var.dims.index("member")
            ds[name] = var.copy(data=var.data.rechunk({axis: -1}))
    return ds


#: :func:`open` under a name that says what it opens (``xensf.open_era5``).
open_era5 = open
