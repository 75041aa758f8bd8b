"""CF metadata of an analysis: what xensf writes on the Datasets it returns.

An analysis keeps the prior's attributes and adds what CF and provenance ask for:
``Conventions``, a ``history`` line, ``standard_name: realization`` on the member
coordinate, and the method with its parameters. It also mends the flaws that real
input files carry and that would make the written output fail the CF checker
(``compliance-checker --test cf:1.11``); the ERA5 files cfgrib writes have two of
them, a ``_FillValue`` on coordinate variables and a ``time`` dimension coordinate
labelled ``forecast_reference_time``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from .._version import VERSION
from ..errors import warn_user

CF_CONVENTIONS = "CF-1.11"
ATTR_PREFIX = "xensf_"

# Encoding keys that pack numbers into smaller integers. On a variable stored as
# floats they are meaningless, and CF (section 8.1) forbids them there.
PACKING_KEYS = ("scale_factor", "add_offset")

# Attributes that decoding (xarray.decode_cf) applies and moves into the encoding: found
# among a variable's attributes, they are still to be applied to its numbers.
UNDECODED_KEYS = (*PACKING_KEYS, "_FillValue", "missing_value")


def check_decoded(da: xr.DataArray, what: str, error: type[Exception]) -> None:
    """Raise ``error`` where ``da`` (``what``: "state variable 't'") holds numbers as a
    file stores them, not what they mean: packing (``scale_factor``, ``add_offset``) or
    a fill value (``_FillValue``, ``missing_value``, not NaN) among its attributes, as
    ``open_dataset(..., decode_cf=False)`` or ``mask_and_scale=False`` leaves them. Its
    fill values would be analysed as numbers of 1e36 and its counts as values."""
    found = {}
    for key in UNDECODED_KEYS:
        if key in da.attrs:
            value = da.attrs[key]
            if key in PACKING_KEYS or not np.all(np.isnan(np.asarray(value, np.float64))):
                found[key] = value.item() if hasattr(value, "item") else value
    if found:
        raise error(
            f"{what} is not decoded: its attributes {found} are still to be applied to its "
            "numbers (a file read with decode_cf=False or mask_and_scale=False). Decode it "
            "first: xarray.decode_cf(ds), or open the file with its defaults"
        )


# Dimension coordinates the CF checker expects to carry a given standard_name
# (section 5.1), with the units CF prescribes for them. Only filled in when absent.
AXIS_NAMES = {
    "lat": ("latitude", "degrees_north"),
    "latitude": ("latitude", "degrees_north"),
    "lon": ("longitude", "degrees_east"),
    "longitude": ("longitude", "degrees_east"),
}


class CFMetadataWarning(UserWarning):
    """Input metadata that xensf cannot make CF-conformant without losing information."""


def xensf_version() -> str:
    """The installed xensf version (``"0+unknown"`` from an uninstalled source tree)."""
    return VERSION


def drop_stale_coordinates(ds: xr.Dataset) -> xr.Dataset:
    """Prune ``coordinates`` in each variable's encoding and attributes to variables
    that exist (in place; returns ``ds``).

    A reader (cfgrib) records the coordinates it found; after a rename or a drop the
    stale names would be written back and fail the CF checker.
    """
    names = set(map(str, ds.variables))
    for var in ds.variables.values():
        for holder in (var.encoding, var.attrs):
            if "coordinates" in holder:
                kept = [c for c in str(holder["coordinates"]).split() if c in names]
                if kept:
                    holder["coordinates"] = " ".join(kept)
                else:
                    del holder["coordinates"]
    return ds


def history_line(call: str, now: dt.datetime | None = None) -> str:
    """``"<UTC time> xensf <version>: <call>"``, the line xensf adds to ``history``."""
    stamp = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    return f"{stamp.strftime('%Y-%m-%dT%H:%M:%SZ')} xensf {VERSION}: {call}"


def with_history(attrs: Mapping[str, Any], call: str, now: dt.datetime | None = None) -> dict:
    """``attrs`` with :func:`history_line` prepended to its ``history`` (newest first)."""
    out = dict(attrs)
    line = history_line(call, now)
    old = str(out.get("history", "")).strip()
    out["history"] = f"{line}\n{old}" if old else line
    return out


def analysis_metadata(
    result: xr.Dataset,
    prior: xr.Dataset,
    *,
    member_dim: str,
    time_dim: str | None,
    call: str,
    method: str,
    parameters: Mapping[str, Any],
    now: dt.datetime | None = None,
) -> xr.Dataset:
    """Give an analysis the CF and provenance metadata xensf promises.

    Returns a new Dataset; neither ``result`` nor ``prior`` is modified (their data
    is shared, not copied, and nothing is computed: dask-backed data stays lazy).

    Parameters
    ----------
    result
        The analysis: the prior's dims, coords and variable names with new data. Its
        attributes may have been lost on the way; the prior's are restored.
    prior
        The forecast ensemble the analysis was made from. Its global, variable and
        coordinate attributes are kept (where ``result`` has an attribute of the
        same name, ``result``'s wins), except earlier ``xensf_*`` attributes, which
        describe an earlier analysis and are replaced.
    member_dim
        The ensemble member dimension. Its coordinate gets ``standard_name =
        "realization"`` (and a ``long_name`` if it has none); a member dimension
        without a coordinate gets one, numbered from 0.
    time_dim
        The analysis time dimension, or None when there is none. If its coordinate
        has no ``standard_name``, it gets ``"time"``. If it is labelled
        ``forecast_reference_time`` (as cfgrib labels ERA5's ``time``) and the
        lead time is zero -- another coordinate with ``standard_name = "time"``
        holds the same values, or the ``forecast_period`` coordinate is zero -- it
        is relabelled ``"time"``, which is then true of it, and a ``comment`` says
        it is also the forecast reference time. With a non-zero lead time it is
        left alone and a :class:`CFMetadataWarning` is issued: relabelling would be
        false, and the CF checker will report it.
    call
        The call that made the analysis, as the user would type it, for the
        ``history`` line, e.g. ``'ds.ensf.assimilate(obs, obs_error=0.1)'``.
    method
        The analysis method, recorded as ``xensf_method``.
    parameters
        The method's parameters, each recorded as ``xensf_<name>`` (characters
        that netCDF does not allow in a name become ``_``). Values are made
        netCDF-serialisable: booleans become 0/1, None becomes ``"none"``,
        mappings and mixed sequences become JSON strings, numeric sequences
        arrays, anything else its ``str``.
    now
        The time written in the ``history`` line; the current UTC time by default.

    Returns
    -------
    xarray.Dataset
        ``result`` with:

        - the prior's attributes, then ``Conventions`` set to ``"CF-1.11"`` (an
          older ``CF-x.y`` in the list is replaced, other conventions kept), a
          ``title`` if there was none;
        - ``"<UTC time> xensf <version>: <call>"`` prepended to ``history``,
          newest line first;
        - ``xensf_method``, ``xensf_version`` and ``xensf_<parameter>`` attributes;
        - mended encodings: no ``_FillValue``/``missing_value`` on dimension
          coordinates (CF 2.5.1), no ``scale_factor``/``add_offset`` on variables
          stored as floats (CF 8.1), and the coordinate ``standard_name`` fixes
          above (CF 5.1).

    Examples
    --------
    >>> import xensf
    >>> from xensf.bridge.metadata import analysis_metadata
    >>> prior = xensf.open_era5_sample()
    >>> out = analysis_metadata(
    ...     prior, prior, member_dim="number", time_dim="time",
    ...     call="ds.ensf.assimilate(obs)", method="ensf", parameters={"steps": 100},
    ... )
    >>> out.attrs["Conventions"], out.attrs["xensf_steps"]
    ('CF-1.11', 100)
    >>> out.number.attrs["standard_name"], out.time.attrs["standard_name"]
    ('realization', 'time')
    """
    if member_dim not in result.dims:
        raise ValueError(
            f"member_dim {member_dim!r} is not a dimension of the result; "
            f"its dimensions are {list(result.dims)}"
        )
    if time_dim is not None and time_dim not in result.dims:
        raise ValueError(
            f"time_dim {time_dim!r} is not a dimension of the result; "
            f"its dimensions are {list(result.dims)}; pass time_dim=None if it has none"
        )

    ds = result.copy(deep=False)
    if member_dim not in ds.coords:
        ds = ds.assign_coords({member_dim: np.arange(ds.sizes[member_dim])})

    # Fresh attrs and encoding dicts on every variable, so that nothing below can
    # reach the inputs' dicts.
    for name, var in ds.variables.items():
        kept = dict(prior.variables[name].attrs) if name in prior.variables else {}
        kept.update(var.attrs)
        var.attrs = kept
        var.encoding = dict(var.encoding)

    ds.attrs = _global_attrs(ds.attrs, prior.attrs, call, method, parameters, now)
    mark_realization(ds.variables[member_dim])
    _mend_coordinates(ds, time_dim)
    for var in ds.variables.values():
        _drop_float_packing(var)
    drop_stale_coordinates(ds)
    return ds


def cf_coordinates(ds: xr.Dataset, time_dim: str | None = None) -> xr.Dataset:
    """A product derived from an ensemble (its mean, spread, scores, innovations, latent
    encoding) with the coordinate mending :func:`analysis_metadata` gives an analysis,
    so that it too writes to a file the CF checker passes: no ``_FillValue`` on
    dimension coordinates, the time coordinate's ``standard_name`` (a
    ``forecast_reference_time`` at zero lead time relabelled ``time``), ``Conventions``
    of ``CF-1.11``. ``time_dim``: default the dim found as time, if any. Returns a new
    Dataset; ``ds`` and its attribute and encoding dicts are untouched."""
    if time_dim is None:
        from .dims import find_role

        time_dim = find_role(ds, "time", required=False)
    out = ds.copy(deep=False)
    for var in out.variables.values():
        var.attrs = dict(var.attrs)
        var.encoding = dict(var.encoding)
    out.attrs = {**out.attrs, "Conventions": _conventions(out.attrs.get("Conventions"))}
    _mend_coordinates(out, time_dim if time_dim in out.dims else None)
    return out


def _mend_coordinates(ds: xr.Dataset, time_dim: str | None) -> None:
    """The time and dimension coordinates of ``ds`` mended for CF, in place."""
    if time_dim is not None and time_dim in ds.coords:
        _mend_time(ds, time_dim)
    for dim in ds.dims:
        if dim in ds.coords:
            _mend_coordinate_variable(ds.variables[dim], str(dim))


def netcdf_attr_value(value: Any) -> Any:
    """Turn ``value`` into something netCDF and zarr can store as an attribute.

    Strings and numbers pass; booleans become 0/1 and None ``"none"`` (netCDF has
    neither); numeric sequences become arrays (zarr stores them as lists); mappings and
    other sequences JSON strings (:func:`json_text`); anything else its ``str``. The one
    attribute serialiser of xensf's outputs: analyses, cycling runs and ERA5 reads.

    Examples
    --------
    >>> netcdf_attr_value(True), netcdf_attr_value(None), netcdf_attr_value({"z": 2.0})
    (1, 'none', '{"z": 2.0}')
    """
    if isinstance(value, bool | np.bool_):
        return int(value)
    if value is None:
        return "none"
    if isinstance(value, str | int | float | np.integer | np.floating):
        return value
    if isinstance(value, Mapping):
        return json_text(value)
    if isinstance(value, list | tuple | np.ndarray):
        array = np.asarray(value, dtype=object if isinstance(value, list | tuple) else None)
        numeric = all(
            isinstance(v, int | float | np.integer | np.floating)
            and not isinstance(v, bool | np.bool_)
            for v in array.ravel()
        )
        if numeric and array.ndim == 1 and array.size:
            return np.asarray(value)
        return json_text(value)
    return str(value)


def json_text(value: Any) -> str:
    """``value`` as JSON with sorted keys; numpy scalars and arrays as plain numbers."""
    return json.dumps(value, sort_keys=True, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def without_fill_value(var: xr.Variable) -> None:
    """No missing-value marker on a coordinate variable (CF 2.5.1), in place.

    xarray gives float variables a NaN ``_FillValue`` when it writes them unless told
    not to; inputs read from files bring theirs in ``encoding`` or ``attrs``.
    """
    var.encoding["_FillValue"] = None
    var.encoding.pop("missing_value", None)
    var.attrs.pop("_FillValue", None)
    var.attrs.pop("missing_value", None)


def mark_realization(var: xr.Variable) -> None:
    """The member coordinate as CF's ``realization`` axis, in place."""
    var.attrs["standard_name"] = "realization"
    var.attrs.setdefault("long_name", "ensemble member")


def _global_attrs(
    current: Mapping[str, Any],
    prior: Mapping[str, Any],
    call: str,
    method: str,
    parameters: Mapping[str, Any],
    now: dt.datetime | None,
) -> dict[str, Any]:
    attrs = {**prior, **current}
    # Earlier xensf_* attributes describe another analysis (a cycled prior); the
    # history keeps the record of it.
    attrs = {k: v for k, v in attrs.items() if not k.startswith(ATTR_PREFIX)}
    attrs["Conventions"] = _conventions(attrs.get("Conventions"))
    attrs.setdefault("title", f"Ensemble analysis ({method}) made with xensf")

    attrs = with_history(attrs, call, now)

    attrs[f"{ATTR_PREFIX}method"] = method
    attrs[f"{ATTR_PREFIX}version"] = xensf_version()
    for key, value in parameters.items():
        name = re.sub(r"[^A-Za-z0-9_]", "_", str(key))
        attrs[f"{ATTR_PREFIX}{name}"] = netcdf_attr_value(value)
    return attrs


def _conventions(existing: Any) -> str:
    """``CF-1.11`` in place of any older CF version, other conventions kept."""
    if not existing:
        return CF_CONVENTIONS
    text = str(existing)
    separator = ", " if "," in text else " "
    tokens = [t for t in re.split(r"[,\s]+", text) if t]
    others = [t for t in tokens if not t.upper().startswith("CF-")]
    return separator.join([CF_CONVENTIONS, *others])


def _mend_time(ds: xr.Dataset, time_dim: str) -> None:
    var = ds.variables[time_dim]
    standard_name = var.attrs.get("standard_name")
    if standard_name is None:
        if _is_time_like(var):
            var.attrs["standard_name"] = "time"
        return
    if standard_name != "forecast_reference_time":
        return
    if zero_lead_time(ds, time_dim):
        var.attrs["standard_name"] = "time"
        note = (
            "Analysis time. It is also the forecast reference time (the input's "
            "standard_name was forecast_reference_time): the lead time is zero."
        )
        comment = var.attrs.get("comment")
        var.attrs["comment"] = f"{comment}\n{note}" if comment else note
        return
    warn_user(
        f"The time coordinate {time_dim!r} has standard_name 'forecast_reference_time' "
        "and a non-zero lead time, so it is not the time the analysis is valid at; it is "
        "left as it is, and the CF checker will report that the coordinate variable "
        f"{time_dim!r} lacks standard_name 'time'. Make the valid time the time "
        "dimension coordinate (e.g. ds.swap_dims(time='valid_time')) to avoid this.",
        CFMetadataWarning,
    )


def _is_time_like(var: xr.Variable) -> bool:
    if var.dtype.kind == "M" or "since" in str(var.attrs.get("units", "")):
        return True
    # cftime dates (non-standard calendars) are objects with a calendar.
    return var.dtype == object and var.size > 0 and hasattr(var.values.flat[0], "calendar")


def zero_lead_time(ds: xr.Dataset, time_dim: str) -> bool:
    """Whether the values of ``time_dim`` are also the valid times."""
    reference = ds[time_dim]
    for name, coord in ds.coords.items():
        if name == time_dim or set(coord.dims) - {time_dim}:
            continue
        standard_name = coord.attrs.get("standard_name")
        if standard_name == "time" and coord.dtype.kind == reference.dtype.kind:
            if bool((coord == reference).all()):
                return True
        if standard_name == "forecast_period":
            values = coord.values
            zero = np.timedelta64(0, "ns") if values.dtype.kind == "m" else 0
            if values.size and bool(np.all(values == zero)):
                return True
    return False


def _mend_coordinate_variable(var: xr.Variable, name: str) -> None:
    without_fill_value(var)
    if name in AXIS_NAMES and "standard_name" not in var.attrs:
        standard_name, units = AXIS_NAMES[name]
        var.attrs["standard_name"] = standard_name
        var.attrs.setdefault("units", units)


def unpacked(var: xr.Variable) -> None:
    """No integer packing in ``var``'s encoding, in place: new values (an analysis) can
    lie outside the range the input's ``scale_factor``/``add_offset`` fit into its
    integers, and xarray would write them wrapped round without a word. The variable
    is then written in its own float dtype; compression and chunks stay."""
    stored = np.dtype(var.encoding.get("dtype", var.dtype))
    if stored.kind in "iu" or any(key in var.encoding for key in PACKING_KEYS):
        for key in (*PACKING_KEYS, "dtype", "_FillValue", "missing_value", "_Unsigned"):
            var.encoding.pop(key, None)


def _drop_float_packing(var: xr.Variable) -> None:
    stored = np.dtype(var.encoding.get("dtype", var.dtype))
    if stored.kind == "f":
        for key in PACKING_KEYS:
            var.encoding.pop(key, None)
