"""Finding the member, latitude, longitude and time dimensions of a Dataset.

CF metadata first (through cf-xarray's view of ``standard_name``/``axis``/``units``),
then the common names of :mod:`xensf.bridge.criteria`; explicit arguments override
both. A coordinate found by its attributes counts for the dimension it lies along, so
ERA5's ``valid_time`` (standard_name ``time``, along dim ``time``) identifies ``time``.
On a curvilinear grid (2-D latitude and longitude coordinates, see
:mod:`xensf.bridge.grid`) the coordinates' two dims are the latitude (rows) and
longitude (columns) dims unless 1-D metadata or names say otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import cf_xarray  # noqa: F401  (registers the .cf accessor)
import numpy as np
import pandas as pd
import xarray as xr

from ..errors import ChunkingError, DimensionError, EnsembleError, OptionError
from .criteria import CF_CRITERIA, COMMON_NAMES, LEVEL_NAMES, REQUIRED_ROLES
from .grid import curvilinear_names, grid_in_time_fix
from .metadata import check_decoded

__all__ = [
    "EnsembleDims",
    "check_valid_times",
    "find_dims",
    "find_role",
    "flat_indexes",
    "require_whole",
    "scalar_time",
    "scalar_times",
    "state_variables",
]

_ARG = {"member": "member_dim", "latitude": "lat_dim", "longitude": "lon_dim", "time": "time_dim"}


def flat_indexes(data):
    """``data`` without the multi-indexes along its dims, their levels plain coordinates
    along them: ``grid.stack(station=("lat", "lon"))`` makes point observations whose
    latitude and longitude xarray would not let be replaced (it guards the index built
    from them), and ``ds.stack(member=("init", "number"))`` a lagged ensemble whose
    member labels zarr cannot store. Anything else comes back as it is."""
    if not isinstance(data, xr.Dataset | xr.DataArray):
        return data
    stacked = [d for d in data.dims if isinstance(data.indexes.get(d), pd.MultiIndex)]
    return data.reset_index(stacked) if stacked else data


@dataclass(frozen=True)
class EnsembleDims:
    """The dimension names playing each role in a forecast ensemble."""

    member: str
    lat: str
    lon: str
    time: str | None

    @property
    def grid(self) -> tuple[str, str]:
        return (self.lat, self.lon)


def _cf_matches(obj: xr.Dataset | xr.DataArray, role: str) -> set[str]:
    """Dimensions along which a 1-D coordinate carries the role's CF metadata.

    cf-xarray's criteria (``standard_name``, ``units``, ``axis``,
    ``_CoordinateAxisType``) decide for latitude, longitude and time; the table in
    :mod:`xensf.bridge.criteria` adds what cf-xarray does not know (``realization``).
    """
    names: set[str] = set()
    cf = obj.cf
    if role in ("latitude", "longitude", "time"):
        names.update(cf.coordinates.get(role, []))
    if role == "time":
        names.update(cf.axes.get("T", []))
    for attr, values in CF_CRITERIA[role].items():
        for name, coord in obj.coords.items():
            value = coord.attrs.get(attr)
            if isinstance(value, str) and value in values:
                names.add(name)
    return {obj[n].dims[0] for n in names if n in obj.coords and obj[n].ndim == 1}


def check_valid_times(prior: xr.Dataset, time_dim: str, obs_times=None) -> None:
    """Refuse a time dim of forecast reference times whose forecasts are valid later
    (cfgrib's ``time`` of ensemble forecasts): observations are matched by the time
    they are valid at, and the state's labels would match them hours off. Likewise a
    time dim of lead times (cfgrib's ``step`` of one forecast) against ``obs_times``
    that are dates."""
    from .metadata import zero_lead_time

    if time_dim not in prior.coords:
        return
    coord = prior[time_dim]
    valid = [n for n, c in prior.coords.items()
             if n != time_dim and c.dims == (time_dim,) and c.attrs.get("standard_name") == "time"]  # fmt: skip
    fix = (
        f"ds.swap_dims({{{time_dim!r}: {valid[0]!r}}})"
        if valid
        else "make the time the forecasts are valid at the coordinate of the time dim"
    )
    dated = obs_times is not None and np.asarray(obs_times).dtype.kind == "M"
    if coord.dtype.kind == "m" and dated:
        raise DimensionError(
            f"the state's time dim {time_dim!r} holds lead times ({coord.dtype}) and the "
            "observations' times are dates; observations are matched by the time they are "
            f"valid at, so label the state with it first: {fix}"
        )
    if coord.attrs.get("standard_name") != "forecast_reference_time":
        return
    if zero_lead_time(prior, time_dim):
        return
    raise DimensionError(
        f"the state's {time_dim!r} holds forecast reference times (standard_name "
        "'forecast_reference_time') and its forecasts are valid later; observations are "
        f"matched by the time they are valid at, so label the state with it first: {fix}"
    )


def scalar_times(obj: xr.Dataset | xr.DataArray) -> list[str]:
    """The names of ``obj``'s scalar time coordinates (by CF attributes or the usual
    names), where it has no time dim: ``ds.isel(time=0)`` of cfgrib's ERA5 leaves two,
    ``time`` (the forecast reference time) and ``valid_time``."""
    if find_role(obj, "time", required=False) is not None:
        return []
    out = []
    for name, coord in obj.coords.items():
        cf = any(coord.attrs.get(a) in v for a, v in CF_CRITERIA["time"].items())
        if coord.ndim == 0 and (cf or str(name).lower() in COMMON_NAMES["time"]):
            out.append(str(name))
    return out


def scalar_time(obj: xr.Dataset | xr.DataArray) -> str | None:
    """The name of the time a state or truth at one time is valid at (a scalar
    coordinate, as ``forecast.isel(time=0)`` leaves it), or None.

    Of several (:func:`scalar_times`), a forecast reference time is not it; the others
    must agree, or a :class:`~xensf.errors.DimensionError` says which to drop."""
    names = scalar_times(obj)
    valid = [n for n in names if obj[n].attrs.get("standard_name") != "forecast_reference_time"]
    valid = valid or names
    if not valid:
        return None
    first = obj[valid[0]].values[()]
    differ = [n for n in valid[1:] if not bool(np.all(obj[n].values[()] == first))]
    if differ:
        raise DimensionError(
            f"the state is at one time but its scalar time coordinates {[valid[0], *differ]} "
            f"differ ({[str(obj[n].values[()]) for n in (valid[0], *differ)]}): keep the "
            f"one it is valid at, e.g. .drop_vars({differ[0]!r})"
        )
    return valid[0]


def _vertical_names(ds: xr.Dataset | xr.DataArray) -> set:
    """The coordinates that are vertical levels: CF metadata says so (``axis: Z``,
    ``positive``, a pressure or height standard_name), or their name is a usual one for
    levels (:data:`~xensf.bridge.criteria.LEVEL_NAMES`)."""
    vertical = set(ds.cf.axes.get("Z", [])) | set(ds.cf.coordinates.get("vertical", []))
    return vertical | {n for n in ds.coords if str(n).lower() in LEVEL_NAMES}


def is_level(ds: xr.Dataset | xr.DataArray, dim) -> bool:
    """Whether ``dim`` is a vertical level dim (training stacks its values into
    channels, not samples)."""
    if any(ds[n].dims == (dim,) for n in _vertical_names(ds) if n in ds.coords):
        return True
    return str(dim).lower() in LEVEL_NAMES


def scalar_levels(ds: xr.Dataset | xr.DataArray) -> list[str]:
    """The vertical coordinates that are scalars: a state at one level without a level
    dim, as ``ds.sel(level=500)`` leaves it."""
    vertical = _vertical_names(ds)
    return [str(n) for n, c in ds.coords.items() if n in vertical and c.ndim == 0]


def find_role(
    obj: xr.Dataset | xr.DataArray,
    role: str,
    *,
    override: str | None = None,
    dims: tuple[str, ...] | None = None,
    required: bool = True,
) -> str | None:
    """Return the dimension of ``obj`` playing ``role`` (member/latitude/longitude/time).

    Parameters
    ----------
    obj : Dataset or DataArray
    role : str
        One of the keys of :data:`xensf.bridge.criteria.COMMON_NAMES`.
    override : str, optional
        A dimension name given by the user; it must exist.
    dims : tuple of str, optional
        The dimensions to choose among (default: all of ``obj``'s).
    required : bool
        Raise :class:`~xensf.errors.DimensionError` if nothing is found.
    """
    dims = tuple(obj.dims) if dims is None else dims
    arg = _ARG.get(role, role)
    if override is not None:
        if override not in dims:
            raise DimensionError(
                f"{arg}={override!r} is not a dimension of the data; its dimensions are {list(dims)}"
            )
        return override
    cf = sorted(d for d in _cf_matches(obj, role) if d in dims)
    if len(cf) == 1:
        return cf[0]
    if len(cf) > 1:
        raise DimensionError(
            f"ambiguous {role} dimension: {cf} all carry {role} CF metadata; "
            f"say which with {arg}=..."
        )
    lowered = {d.lower() if isinstance(d, str) else d: d for d in dims}
    named = [lowered[n] for n in COMMON_NAMES[role] if n in lowered]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise DimensionError(
            f"ambiguous {role} dimension: {named} are all usual names for it; "
            f"say which with {arg}=..."
        )
    if required:
        raise DimensionError(
            f"no {role} dimension found among {list(dims)}: none has CF metadata for it "
            f"(e.g. standard_name {CF_CRITERIA[role]['standard_name'][0]!r}) nor a usual name "
            f"({', '.join(COMMON_NAMES[role])}); name it with {arg}=..."
        )
    return None


def find_dims(
    ds: xr.Dataset | xr.DataArray,
    *,
    member_dim: str | None = None,
    lat_dim: str | None = None,
    lon_dim: str | None = None,
    time_dim: str | None = None,
) -> EnsembleDims:
    """Identify the ensemble's dimensions; time is optional, the others are required."""
    overrides = {"member": member_dim, "latitude": lat_dim, "longitude": lon_dim, "time": time_dim}
    found = {
        role: find_role(ds, role, override=overrides[role], required=False)
        for role in ("member", "latitude", "longitude", "time")
    }
    pair = curvilinear_names(ds)
    if pair is not None:
        # a curvilinear grid: its 2-D latitude/longitude coordinates name the grid dims
        # (rows, columns) where nothing else does
        for role, d in zip(("latitude", "longitude"), ds[pair[0]].dims, strict=True):
            if found[role] is None:
                found[role] = d
    for role in REQUIRED_ROLES:
        if found[role] is None:
            try:
                find_role(ds, role, override=overrides[role])  # raises the role's error
            except DimensionError as e:
                fix = grid_in_time_fix(ds) if role != "member" else ""
                raise DimensionError(f"{e}{fix}") from None
    chosen = [d for d in found.values() if d is not None]
    if len(set(chosen)) != len(chosen):
        raise DimensionError(
            f"one dimension plays two roles: {found}; name them with member_dim=, lat_dim=, "
            "lon_dim=, time_dim="
        )
    return EnsembleDims(found["member"], found["latitude"], found["longitude"], found["time"])


def state_variables(
    ds: xr.Dataset, required: tuple[str, ...], variables=None, *, purpose: str
) -> list[str]:
    """The state variables: ``variables`` checked, or every data variable with ``required`` dims.

    Each must be a floating-point data variable having all the ``required`` dims;
    ``purpose`` ("to assimilate into", "to train on") completes the error messages.
    """
    wanted = ", ".join(repr(d) for d in required)
    if variables is not None:
        names = [variables] if isinstance(variables, str) else list(variables)
        if not names:
            raise OptionError("variables is empty: name at least one state variable")
        unknown = [v for v in names if v not in ds.data_vars]
        if unknown:
            raise OptionError(
                f"variables: {unknown} are not data variables of the data; it has "
                f"{[str(v) for v in ds.data_vars]}"
            )
        for v in names:
            if not set(required) <= set(ds[v].dims):
                raise DimensionError(
                    f"state variable {v!r} has dims {list(ds[v].dims)}; it needs {wanted}"
                )
    else:
        names = [str(v) for v in ds.data_vars if set(required) <= set(ds[v].dims)]
        if not names:
            raise DimensionError(
                f"no data variable has all of the dims {wanted}: nothing {purpose}"
            )
    for v in names:
        check_decoded(ds[v], f"state variable {v!r}", EnsembleError)
        if ds[v].dtype.kind != "f":
            others = [n for n in names if n != v]
            leave = f" or leave it out with variables={others}" if others else ""
            raise OptionError(
                f"state variable {v!r} has dtype {ds[v].dtype}; expected floats: cast it "
                f"(ds[{v!r}].astype('float64')){leave}"
            )
    return names


def require_whole(da: xr.DataArray, dims, purpose: str, instead: str = "time", hints=None) -> None:
    """A :class:`~xensf.errors.ChunkingError` where the dask-backed ``da`` is split into
    several chunks along one of ``dims``, which ``purpose`` (``"this analysis"``,
    ``"encoding"``) reads whole, with the rechunk to do; ``hints`` (dim: text) ends the
    message where that dim is the one split."""
    for dim, sizes in zip(da.dims, da.chunks or (), strict=False):
        if dim in dims and len(sizes) > 1:
            raise ChunkingError(
                f"{da.name!r} is split into {len(sizes)} chunks along {dim!r}; {purpose} "
                f"needs the whole {dim!r} dim in one chunk. Rechunk first: "
                f"ds.chunk({{{dim!r}: -1}}) (chunk along {instead} instead)"
                f"{(hints or {}).get(dim, '')}"
            )
