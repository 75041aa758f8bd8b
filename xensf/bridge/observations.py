"""Observations as xarray gives them -> what the filters need, per analysis time.

Two layouts are recognised:

* **gridded**: the observation variables have the state's latitude and longitude
  dims, on the same grid, with NaN where nothing is observed;
* **point**: the observation variables share one dim (``obs``, ``station``, ...) along
  which latitude and longitude coordinates give each observation's location.

Everything that can be checked is checked here, at graph-build time, without
computing anything: names, dims, grids, domains, units, error specifications. What
reaches the workers is a small :class:`ObservationPlan` (operator rows and locations
as numpy arrays) plus the observation values and errors as (possibly lazy) inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..checks import as_python, is_quantity
from ..errors import (
    DimensionError,
    ObservationErrorWarning,
    ObservationMismatchError,
    OptionError,
    warn_user,
)
from ..obs import (
    error_spec_of,
    field_rows,
    parse_relative,
    resolve_obs_error,
)
from .criteria import CF_CRITERIA, COMMON_NAMES, LEVEL_NAMES, POINT_DIM_NAMES
from .dims import EnsembleDims, check_valid_times, find_role, scalar_levels, scalar_time
from .grid import GridCoords, grid_coords, same_points
from .layout import StateLayout
from .metadata import check_decoded
from .units import convert_units, coordinate_in_units, difference_in_units, number_and_units

__all__ = ["ObservationPlan", "prepare_observations"]

#: Suffixes of ancillary variables holding an observation's error standard deviation.
ERROR_SUFFIXES = ("_error", "_err", "_std", "_sigma", "_uncertainty")
#: Attributes holding an observation's error standard deviation.
ERROR_ATTRS = ("obs_error", "error_std", "uncertainty")


@dataclass(frozen=True)
class ObservationPlan:
    """Static description of the observations, shipped to every task.

    ``indices``/``weights`` ``(M, k)`` are the rows of the linear observation operator
    on the stacked state vector, ``locations`` ``(M, 2)`` where each observation is,
    for localisation. The observation values and errors of each analysis time,
    flattened in the same order, arrive as task inputs.
    """

    kind: str  # "gridded" or "point"
    variables: tuple[str, ...]
    core_dims: tuple[tuple[str, ...], ...]  # per variable, the dims flattened into M
    error_core_dims: tuple[tuple[str, ...], ...]  # per variable, dims of its error input
    indices: np.ndarray
    weights: np.ndarray
    locations: np.ndarray
    #: whether the errors are the user's (False: placeholders of 1, for a method that
    #: takes its error from elsewhere and was given none)
    errors_given: bool = True

    @property
    def size(self) -> int:
        return self.indices.shape[0]

    def flatten(self, values: list[np.ndarray], errors: list[np.ndarray], n_times: int):
        """Per-time observation vectors ``(T, M)`` and their error std ``(T, M)``.

        ``values[i]`` has shape ``([1 or T,] *core_dims[i])`` and ``errors[i]``
        ``([1 or T,] *error_core_dims[i])``; both broadcast to ``(T, *core_dims[i])``.
        """
        ys, es = [], []
        for name, v, e, core, ecore in zip(
            self.variables, values, errors, self.core_dims, self.error_core_dims, strict=True
        ):
            v = np.asarray(v, dtype=np.float64)
            if np.isinf(v).any():
                raise ObservationMismatchError(
                    f"the observations of {name!r} hold {int(np.isinf(v).sum())} infinite "
                    "value(s); an observation is a finite number (NaN where nothing was "
                    "observed): fix them or set them to NaN"
                )
            shape = v.shape[v.ndim - len(core) :]
            lead = v.shape[0] if v.ndim > len(core) else 1  # (not -1: zero stations)
            v = np.broadcast_to(v.reshape(lead, *shape), (n_times, *shape))
            e = np.asarray(e, dtype=np.float64)
            eshape = e.shape[e.ndim - len(ecore) :]
            lead = e.shape[0] if e.ndim > len(ecore) else 1
            # insert singleton axes for the value dims the error does not vary along
            full = [eshape[ecore.index(d)] if d in ecore else 1 for d in core]
            e = np.broadcast_to(e.reshape(lead, *full), (n_times, *shape))
            # NaN, infinite, zero or negative where observed (an infinite error, as 1 / a
            # weight of 0 gives, left the observation out without a word)
            unweighed = np.isfinite(v) & ~(np.isfinite(e) & (e > 0))
            if unweighed.any():
                bad = e[unweighed]
                kind = (
                    "NaN" if np.isnan(bad).any()
                    else "infinite" if np.isinf(bad).any()
                    else "zero or negative"
                )  # fmt: skip
                raise OptionError(
                    f"the observation errors of {name!r} are {kind} at "
                    f"{int(unweighed.sum())} observation(s); give each observation a "
                    "positive, finite error (or set its value to NaN to leave it out)"
                )
            ys.append(v.reshape(n_times, -1))
            es.append(e.reshape(n_times, -1))
        return np.concatenate(ys, axis=-1), np.concatenate(es, axis=-1)


def _state_levels(prior: xr.Dataset, name: str, dims: EnsembleDims) -> tuple[str, ...]:
    skip = {dims.member, dims.lat, dims.lon, dims.time}
    return tuple(d for d in prior[name].dims if d not in skip)


def _find_point_dim(obs: xr.Dataset, names: list[str], time_dim: str | None) -> str:
    candidates = {d for n in names for d in obs[n].dims if d != time_dim}
    with_coords = [d for d in candidates if _point_coords(obs, d, time_dim) is not None]
    if len(with_coords) == 1:
        return with_coords[0]
    if len(with_coords) > 1:
        named = [d for d in with_coords if str(d).lower() in POINT_DIM_NAMES]
        if len(named) == 1:
            return named[0]
        raise DimensionError(
            f"ambiguous observation dimension: {with_coords} all carry latitude/longitude "
            "coordinates; pass obs_dim=..."
        )
    raise ObservationMismatchError(
        "the observations are neither on the state grid (they lack its latitude/longitude "
        "dims) nor point observations (no dim with latitude and longitude coordinates "
        f"along it); their dims are {list(obs.dims)}"
    )


def rows_by_time(obs: xr.Dataset, tc: str | None) -> xr.Dataset:
    """Rows of observations with a time each (a table: the time coordinate ``tc``,
    latitude and longitude along one dim, as ``DataFrame.to_xarray().set_coords(...)``
    gives) laid out by time: a ``tc`` dim and the rows of each time along the row dim,
    padded with NaN (the layout of moving observers). Anything else is returned as it
    is."""
    if tc is None or tc not in obs.coords or tc in obs.dims or obs[tc].ndim != 1:
        return obs
    (row,) = obs[tc].dims
    times = obs[tc].values
    kind = _time_kind(times)
    if kind.startswith(ZONED):  # pandas would lay them out as numbers
        raise ObservationMismatchError(
            f"the observation times are {kind}; give them in UTC without the zone, as CF "
            f"times are, e.g. {_datetime64_fix('obs', tc, kind)}"
        )
    missing = pd.isnull(times)
    if missing.any():
        # pandas would file them under another row's time (NaT is no index label)
        dated = int((_given_at(obs, obs[tc]).values & missing).sum())
        if dated:
            raise ObservationMismatchError(
                f"{dated} observations have no time (NaT or NaN {tc!r} where the value is "
                f"given); give their times, or drop them: obs.isel({row}=obs[{tc!r}].notnull())"
            )
        obs, times = obs.isel({row: ~missing}), times[~missing]
    _, which = np.unique(times, return_inverse=True)
    # each row's place among the rows of its time (in one pass, for tables of millions)
    order = np.argsort(which, kind="stable")
    counts = np.bincount(which)
    slot = np.empty(len(times), np.int64)
    slot[order] = np.arange(len(times)) - np.repeat(np.cumsum(counts) - counts, counts)
    slot_dim = f"{row}_slot"
    table = obs.drop_vars(row, errors="ignore").assign_coords({slot_dim: (row, slot)})
    table = table.set_index({row: [tc, slot_dim]}).unstack(row)
    return table.drop_vars(slot_dim).rename({slot_dim: row})


def _given_at(obs: xr.Dataset, coord: xr.DataArray, names=None) -> xr.DataArray:
    """Where along ``coord``'s dims the observations give a value (in any of their
    variables, or of the variables ``names``, that have those dims, at any of their
    other dims' entries)."""
    given = xr.zeros_like(coord, dtype=bool).drop_vars(list(coord.coords))
    for n, v in obs.data_vars.items():
        if set(coord.dims) <= set(v.dims) and (names is None or n in names):
            other = [d for d in v.dims if d not in coord.dims]
            seen = v.notnull().any(other) if other else v.notnull()
            given = given | seen.drop_vars(list(seen.coords))
    return given


def rows_by_level(obs: xr.Dataset, levels_of: Mapping[str, Collection[str]]) -> xr.Dataset:
    """Observations with a level each (a coordinate of a level along their rows, as a
    table's pressure column or aircraft reports give it) laid out along that level as a
    dim: one entry per level observed, each row's value at its own level and NaN at the
    others. ``levels_of``: the state's levels (dims and scalar coordinates) of each
    observed variable; only those variables with the level, and their error
    variables, are laid out (a surface variable in the same table keeps its rows).
    Anything else is returned as it is."""
    for lev in sorted({lev for levels in levels_of.values() for lev in levels}, key=str):
        if lev not in obs.coords or lev in obs.dims or obs[lev].ndim == 0:
            continue
        at = obs[lev]
        names = [n for n, levels in levels_of.items() if lev in levels]
        missing = at.isnull()
        if bool(missing.any()):
            unplaced = int((_given_at(obs, at, names) & missing).sum())
            if unplaced:
                raise ObservationMismatchError(
                    f"{unplaced} observations of {names} have no level (NaN {lev!r} where "
                    f"the value is given); give their levels, or drop them: "
                    f"obs.where(obs[{lev!r}].notnull())"
                )
        names += [e for n in names for kind, e in _error_places(obs, n) if kind == "variable"]
        values = np.unique(at.values[~missing.values])
        hit = at.drop_vars(list(at.coords)) == xr.DataArray(values, dims=lev)
        out = obs.drop_vars(lev)
        for n in names:
            if set(at.dims) & set(obs[n].dims):
                out[n] = obs[n].where(hit)
        obs = out.assign_coords({lev: (lev, values, at.attrs)})
    return obs


def _state_names_of(obs, unknown, prior, variables) -> dict:
    """The state variable each of the ``unknown`` observation variables is likely to be:
    its name in another case (``T`` for ``t``) or the same CF ``standard_name``."""
    out = {}
    for n in unknown:
        std = obs[n].attrs.get("standard_name")
        for v in variables:
            same_name = str(n).lower() == str(v).lower()
            if same_name or (std and prior[v].attrs.get("standard_name") == std):
                out[str(n)] = str(v)
                break
    return out


def _point_coords(obs: xr.Dataset, dim: str, time_dim: str | None = None):
    """Names of the latitude and longitude coordinates along ``dim``, if both exist.

    Recognised as the state's dims are (:mod:`xensf.bridge.criteria`): CF attributes
    first, then the usual names. With ``time_dim``, coordinates along
    ``(time_dim, dim)`` (moving observers) count too.
    """
    dims_ok = [{dim}] + ([{dim, time_dim}] if time_dim is not None else [])
    return lat_lon_names({n: c for n, c in obs.coords.items() if set(c.dims) in dims_ok})


def _points_in_grid_units(obs: xr.Dataset, point: str, time_dim, grid: GridCoords):
    """``obs`` with its points' latitude and longitude as the grid's values are
    (:meth:`GridCoords.point_coordinates`: stations in m on a grid in km, or in radians
    on one in degrees, are where their units say, not where their numbers would be; on
    a rotated-pole grid, in its frame)."""
    names = _point_coords(obs, point, time_dim)
    if names is None:
        return obs
    for n in names:
        check_position_numbers(obs[n])
    if not grid.known:
        return obs
    return obs.assign_coords(
        dict(zip(names, grid.point_coordinates(*(obs[n] for n in names)), strict=True))
    )


def check_position_numbers(coord: xr.DataArray) -> None:
    """Refuse positions that are not numbers (text from a table, '45N'), as values that
    are not numbers are refused: read as numbers they would be guessed at."""
    kind = coord.dtype.kind
    if kind in "iuf":
        return
    if kind == "O":
        try:
            np.asarray(coord.values, dtype=np.float64)
            return
        except (TypeError, ValueError):
            pass
    sample = np.asarray(coord.values).ravel()[:2].tolist()
    raise ObservationMismatchError(
        f"the points' position {coord.name!r} has dtype {coord.dtype} ({sample}…); "
        "positions are numbers (degrees, or the grid's units): convert them first, e.g. "
        f"obs.assign_coords({coord.name}=obs[{coord.name!r}].astype(float)) where they are "
        "numbers written as text"
    )


def _without_unplaced_points(obs: xr.Dataset, point: str, grid: GridCoords) -> xr.Dataset:
    """``obs`` with the points that have no position (NaN latitude or longitude) and no
    value put at the grid's first point, where they weigh nothing (their values are
    NaN); a point with no position and a value is an error."""
    names = _point_coords(obs, point)
    if names is None or not grid.known:
        return obs
    lat, lon = obs[names[0]], obs[names[1]]
    missing = lat.isnull() | lon.isnull()
    if not bool(missing.any()):
        return obs
    check_placed(_given_at(obs, lat), missing, names, "")
    first = dict(zip(names, grid.first_point(), strict=True))
    return obs.assign_coords({c: obs[c].where(~missing, first[c]) for c in names})


def check_placed(seen, missing, names, whose: str, where: str = " where the value is given"):
    """An error for observations given (``seen``) where their position is ``missing``."""
    unknown = seen & missing
    if bool(unknown.any()):
        lat, lon = names
        raise ObservationMismatchError(
            f"{int(unknown.sum())} observations{whose} have no position (NaN {lat!r} or "
            f"{lon!r}{where}); give their positions, or drop them: "
            f"obs.where(obs[{lat!r}].notnull() & obs[{lon!r}].notnull(), drop=True)"
        )


#: The point dim of moving observers, one slot per (time, observer).
MOVING_DIM = "_xensf_slot"


def _moving_to_slots(obs: xr.Dataset, point: str, dims: EnsembleDims, grid: GridCoords):
    """Observers that move (latitude and longitude along (time, point)) as fixed slots.

    Each (time, observer) pair becomes a point of its own, observed at its time only
    (NaN at the others), so the plan's rows stay fixed while the positions change; the
    observation arrays grow to (times × times × observers) values. Returns the
    observations and their point dim (unchanged when the observers do not move).
    """
    if dims.time is None or dims.time not in obs.dims:
        return obs, point
    both = {dims.time, point}
    names = _point_coords(obs, point, dims.time)
    if names is None or set(obs[names[0]].dims) != both or set(obs[names[1]].dims) != both:
        return obs, point
    lat_name, lon_name = names
    where = xr.DataArray(np.eye(obs.sizes[dims.time], dtype=bool), dims=(dims.time, "_slot"))
    values = {n: v for n, v in obs.data_vars.items() if point in v.dims}
    seen = _given_at(obs, obs[lat_name])
    lat, lon = obs[lat_name], obs[lon_name]
    check_placed(seen, lat.isnull() | lon.isnull(), names, " of moving observers")
    # unobserved slots get the grid's first point: a position inside the domain
    first = dict(zip((lat_name, lon_name), grid.first_point(), strict=True))
    out = obs.drop_vars([lat_name, lon_name])
    for n, v in values.items():
        out[n] = (
            v.where(where) if dims.time in v.dims else v.expand_dims(_slot=where.sizes["_slot"])
        )
    out = out.assign_coords(
        {c: obs[c].where(seen, first[c]).rename({dims.time: "_slot"}) for c in first}
    )
    out = out.stack({MOVING_DIM: ("_slot", point)}, create_index=False)
    return out, MOVING_DIM


def lat_lon_names(along: dict) -> tuple[str, str] | None:
    """The one latitude and the one longitude among the coordinates ``along``, or None."""
    found = []
    for role in ("latitude", "longitude"):
        by_cf = [
            name
            for name, c in along.items()
            if any(c.attrs.get(attr) in values for attr, values in CF_CRITERIA[role].items())
        ]
        by_name = [name for name in along if str(name).lower() in COMMON_NAMES[role]]
        match = by_cf if by_cf else by_name
        if len(match) != 1:
            return None
        found.append(match[0])
    return found[0], found[1]


def _error_places(obs: xr.Dataset, name: str) -> list[tuple[str, str]]:
    """Where the observations carry an error std for ``name``, in the order they are
    taken: ``("variable", its name)`` (listed in ``ancillary_variables``, then by suffix)
    and ``("attribute", its name)``."""
    da = obs[name]
    places = [
        ("variable", anc)
        for anc in str(da.attrs.get("ancillary_variables", "")).split()
        if anc in obs and "error" in str(obs[anc].attrs.get("standard_name", "")) + anc
    ]
    places += [
        ("variable", f"{name}{suffix}")
        for suffix in ERROR_SUFFIXES
        if f"{name}{suffix}" in obs.data_vars and ("variable", f"{name}{suffix}") not in places
    ]
    return places + [("attribute", attr) for attr in ERROR_ATTRS if attr in da.attrs]


def _describe_places(places: list[tuple[str, str]]) -> str:
    return ", ".join(f"the {kind} {where!r}" for kind, where in places)


def _error_source(obs: xr.Dataset, name: str) -> xr.DataArray | None:
    """The error std attached to observation variable ``name``, if any.

    An error attribute (``obs_error``, ...) is a number in the units of the variable
    it is attached to, or text of a number with its own units (``"0.5 K"``): a 0-d
    DataArray with those units.
    """
    da = obs[name]
    places = _error_places(obs, name)
    if not places:
        return None
    kind, where = places[0]
    if kind == "variable":
        return obs[where]
    text = da.attrs[where]
    parsed = number_and_units(text) if isinstance(text, str) else None
    if parsed is not None:  # "0.5 K": a number with its own units
        return xr.DataArray(parsed[0], attrs={"units": parsed[1]})
    value = np.asarray(text)  # netCDF attributes may be 1-element arrays
    if value.dtype.kind not in "iuf" or value.size != 1:
        raise OptionError(
            f"the attribute {where}={da.attrs[where]!r} of the observations {name!r} must be a "
            "number (the error standard deviation in the observations' units) or a number "
            "with its units, such as '0.5 K'"
        )
    units = {"units": da.attrs["units"]} if "units" in da.attrs else {}
    return xr.DataArray(float(value.reshape(())), attrs=units)


def _warn_unused_errors(obs: xr.Dataset, name: str, given: bool) -> None:
    """An :class:`~xensf.errors.ObservationErrorWarning` where observation errors for
    ``name`` are given in more than one place: ``obs_error=`` (``given``) over the
    observations' own, a variable over an attribute. Which is used was silent."""
    places = _error_places(obs, name)
    if given and places:
        warn_user(
            f"obs_error= sets the error of the observations {name!r}; their own error "
            f"({_describe_places(places)}) is not used. Leave out obs_error= to use it, or "
            "drop it from the observations",
            ObservationErrorWarning,
        )
    elif len(places) > 1:
        warn_user(
            f"the observations {name!r} carry their error in {len(places)} places "
            f"({_describe_places(places)}); {_describe_places(places[:1])} is used. Drop "
            "the others",
            ObservationErrorWarning,
        )


def _field_key(name: str, level_dims: tuple[str, ...], level_values: tuple):
    if not level_dims:
        return name
    return (name, level_values[0] if len(level_values) == 1 else level_values)


def prepare_observations(
    obs: xr.Dataset,
    prior: xr.Dataset,
    layout: StateLayout,
    dims: EnsembleDims,
    obs_error,
    grid: GridCoords,
    *,
    obs_dim: str | None = None,
    errors: str = "required",
    obs_time_tolerance: Any = None,
) -> tuple[ObservationPlan, list[xr.DataArray], list[xr.DataArray]]:
    """Check ``obs`` against the prior and turn it into a plan and aligned inputs.

    ``grid`` is where the grid points are (:func:`xensf.bridge.grid.grid_coords`): the
    locations of gridded observations, the interpolation of point observations. Returns the plan, the observation values (one DataArray per observed variable, in
    state units, aligned to the prior's times and levels) and their error standard
    deviations (DataArrays that broadcast against the values). ``errors``:
    ``"required"`` (an error for every variable, or an OptionError), ``"if-given"``
    (the user's errors if there are any — for every variable, or an OptionError naming
    those without — else placeholders of 1 and ``plan.errors_given`` False), or
    ``"ignored"`` (placeholders of 1). ``obs_time_tolerance``: see :func:`_on_state_times`.
    """
    if errors not in ("required", "if-given", "ignored"):
        raise ValueError(f"errors must be 'required', 'if-given' or 'ignored', got {errors!r}")
    if isinstance(obs, xr.DataArray):
        # the name a DataArray must carry: the state variable it observes
        state = list(layout.variables)
        if obs.name is None or obs.name not in [*state, *prior.data_vars]:
            given = (
                "an unnamed DataArray" if obs.name is None else f"a DataArray named {obs.name!r}"
            )
            raise ObservationMismatchError(
                f"observations given as {given}: name it after the state variable it "
                f"observes, one of {state} (obs.rename({state[0]!r})), or pass a Dataset"
            )
        obs = obs.to_dataset()
    if not isinstance(obs, xr.Dataset):
        table = type(obs).__name__ == "DataFrame"
        hint = (
            "; a table of rows: df.to_xarray().set_coords([...]) with its time and "
            "position columns (docs/howto-point-observations.md, 'A table of observations')"
            if table
            else ""
        )
        raise ObservationMismatchError(
            f"observations must be an xarray Dataset (or named DataArray), got "
            f"{type(obs).__name__}{hint}"
        )
    error_vars = set()
    for name in obs.data_vars:
        src = _error_source(obs, name)
        if isinstance(src, xr.DataArray):
            error_vars.add(src.name)
    names = [n for n in obs.data_vars if n not in error_vars]
    if not names:
        raise ObservationMismatchError("the observation Dataset has no data variables")
    unknown = [n for n in names if n not in layout.variables]
    if unknown:
        left_out = [n for n in unknown if n in prior.data_vars]
        roles = ("latitude", "longitude", "time")
        coord_like = [n for n in unknown if any(str(n).lower() in COMMON_NAMES[r] for r in roles)]
        renames = _state_names_of(obs, unknown, prior, layout.variables)
        if renames:
            fix = f"they look like state variables under other names: obs.rename({renames})"
        elif left_out:
            fix = (
                f"{left_out} are variables of the prior left out of variables=: add them, or "
                "drop those observations"
            )
        # a table from pandas: DataFrame.to_xarray() makes every column a variable
        elif coord_like:
            fix = (
                f"{coord_like} look like the observations' positions and times: make them "
                f"coordinates, obs.set_coords({[str(n) for n in coord_like]})"
            )
        else:
            fix = (
                "rename the observations to the state's names; what is not an observation "
                "of the state (a station name, a quality flag, an elevation) goes into the "
                f"coordinates, obs.set_coords({[str(n) for n in unknown]}), or out, "
                f"obs.drop_vars({[str(n) for n in unknown]})"
            )
        raise ObservationMismatchError(
            f"observation variables {unknown} are not state variables; the state has "
            f"{list(layout.variables)} ({fix})"
        )
    if isinstance(obs_error, Mapping):
        # one mapping for the whole state serves observations of some of its variables;
        # a name that is no state variable (a typo) is refused
        strangers = [k for k in obs_error if k not in layout.variables]
        if strangers:
            raise OptionError(
                f"the obs_error mapping names {strangers}, which are not state variables "
                f"(the state has {list(layout.variables)}); give an entry for every "
                f"observed variable ({names})"
            )
        obs_error = {k: v for k, v in obs_error.items() if k in names}
    obs_error = _errors_in_state_units(obs_error, prior, names)

    for name in [*names, *sorted((v for v in error_vars if v in obs.data_vars), key=str)]:
        kind = obs[name].dtype.kind
        role = "error variable" if name in error_vars else "observation variable"
        check_decoded(obs[name], f"{role} {name!r}", ObservationMismatchError)
        if kind not in "iuf":
            hint = (
                "; a boolean is a mask: give the observed values, e.g. obs.where(mask)"
                if kind == "b"
                else ""
            )
            raise ObservationMismatchError(
                f"{role} {name!r} has dtype {obs[name].dtype}; observations and their "
                f"errors are numbers (floats, NaN where nothing was observed){hint}"
            )

    obs = rows_by_time(obs, dims.time)
    at_one_level = scalar_levels(prior)
    levels_of = {name: {*_state_levels(prior, name, dims), *at_one_level} for name in names}
    level_names = {lev for levels in levels_of.values() for lev in levels}
    # levels given row by row, not as a dim (for the hint of _at_the_state_levels)
    by_row = {n for n in level_names if n in obs.coords and n not in obs.dims and obs[n].ndim}
    obs = rows_by_level(obs, levels_of)
    # Time: the observations' time dim is the state's (renamed if it goes by another name).
    obs_time = find_role(obs, "time", required=False)
    if (
        obs_time is None
        and dims.time is not None
        and dims.time in obs.coords
        and obs[dims.time].ndim == 0
    ):
        # A scalar time coordinate is one observation time, not every time.
        obs = obs.expand_dims(dims.time)
        obs_time = dims.time
    if dims.time is None:
        obs, obs_time = _at_the_state_time(obs, obs_time, prior, dims, obs_time_tolerance,
                                           names, obs_dim)  # fmt: skip
    if obs_time is not None and dims.time is None:
        if obs.sizes[obs_time] != 1:
            raise ObservationMismatchError(
                f"the observations have a time dim {obs_time!r} of size {obs.sizes[obs_time]} "
                "but the state has no time dim"
            )
        obs = obs.squeeze(obs_time, drop=True)
        obs_time = None
    if obs_time is not None:
        _check_times_labelled(obs, obs_time, prior, dims.time)
        check_valid_times(prior, dims.time, obs[obs_time].values)
        if obs_time != dims.time:
            obs = obs.rename({obs_time: dims.time})
        state_times = prior[dims.time].values
        times, counts = np.unique(obs[dims.time].values, return_counts=True)
        if (counts > 1).any():
            raise ObservationMismatchError(
                f"observation time {time_text(times[counts > 1][0])} appears "
                f"{counts.max()} times along {dims.time!r}; give each time once, with all "
                "of its observations (concatenate stations along the station dim, or "
                "average repeated observations first)"
            )
        obs = _on_state_times(obs, dims, state_times, obs_time_tolerance, names, obs_dim)
        obs = obs.reindex({dims.time: state_times})

    gridded = all(dims.lat in obs[n].dims and dims.lon in obs[n].dims for n in names)
    if gridded and obs_dim is not None:
        raise DimensionError(
            f"obs_dim={obs_dim!r} names the dim of point observations, and these are "
            f"gridded (on {dims.lat!r} and {dims.lon!r}"
            + (
                f"; they have no {obs_dim!r} dim)"
                if obs_dim not in obs.dims
                else f", and along {obs_dim!r} too)"
            )
            + ": leave obs_dim out"
        )
    if gridded:
        on_obs = grid_coords(obs, dims)
        unlike = [d for d in (dims.lat, dims.lon) if obs.sizes[d] != prior.sizes[d]]
        if unlike and not (on_obs.known and grid.known):  # (else told by their values)
            raise ObservationMismatchError(
                f"gridded observations must be on the state's grid, but they have "
                f"{[obs.sizes[d] for d in unlike]} points along {unlike} and the state "
                f"{[prior.sizes[d] for d in unlike]}, without coordinates on "
                f"{'both' if not (on_obs.known or grid.known) else 'one'} to say where: "
                "give the observations the state's grid"
            )
        for role, d, a, b in (
            ("latitude", on_obs.names and on_obs.names[0], on_obs.lat, grid.lat),
            ("longitude", on_obs.names and on_obs.names[1], on_obs.lon, grid.lon),
        ):
            if not (on_obs.known and grid.known):
                continue
            a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
            if not same_points(a, b):  # (the same points in another order are put in
                # the state's by in_the_state_order before this)
                fix = None
                if not (on_obs.curvilinear or grid.curvilinear):
                    fix = _subset_fix(a, b)
                raise ObservationMismatchError(
                    f"gridded observations must be on the state's grid, but their {role} "
                    f"({d}: {a.size} values, {a[:1]}..{a[-1:]}) differs from the state's "
                    f"({b.size} values, {b[:1]}..{b[-1:]}); "
                    + (
                        fix
                        or "interpolate them to the state grid, or assimilate them at their "
                        "own positions as point observations: "
                        f"obs.stack(obs=({dims.lat!r}, {dims.lon!r}))"
                    )
                )
        kind = "gridded"
        point = None
        grid_loc = grid.locations
    else:
        kind = "point"
        point = obs_dim or _find_point_dim(obs, names, dims.time)
        if point not in obs.dims:
            raise DimensionError(
                f"obs_dim={point!r} is not a dimension of the observations; they have "
                f"{list(obs.dims)}"
            )
        obs = _points_in_grid_units(obs, point, dims.time, grid)
        obs, point = _moving_to_slots(obs, point, dims, grid)
        obs = _without_unplaced_points(obs, point, grid)

    values, core_dims, error_core_dims = [], [], []
    rows_idx, rows_w, rows_loc = [], [], []
    if point is not None:
        lat_name, lon_name = _point_coords(obs, point) or (None, None)
        p_lat, p_lon = obs[lat_name].values, obs[lon_name].values  # read once if lazy
        p_idx, p_w = grid.station_weights(p_lat, p_lon)
        p_loc = grid.locations_of(p_lat, p_lon)

    obs = _levels_in_state_units(obs, prior, level_names)
    obs = _at_the_state_levels(obs, prior, at_one_level, by_row)
    fields, field_levels = [], {}
    for name in names:
        da = obs[name]
        levels = _state_levels(prior, name, dims)
        allowed = {dims.time, *levels, *((dims.lat, dims.lon) if gridded else (point,))}
        stray = [d for d in da.dims if d not in allowed]
        if stray:
            if dims.member in stray:
                raise ObservationMismatchError(
                    f"observation variable {name!r} has the member dim {dims.member!r}: "
                    "observations are one set for every member (the filters perturb them "
                    "as they need); drop it, e.g. "
                    f"obs.isel({dims.member}=0, drop=True) if every member holds the same values"
                )
            single = [d for d in stray if da.sizes[d] == 1]
            hint = (
                f"; drop the length-1 ones with obs.squeeze({single}, drop=True)" if single else ""
            )
            several = tuple(d for d in stray if d not in single)
            if several:  # two instruments at one place: observations of their own
                places = (dims.lat, dims.lon) if gridded else (point,)
                into = next(n for n in ("obs", "points", "observation") if n not in obs.dims)
                hint += (
                    f"; several observations at each place are points of their own: "
                    f"obs.stack({into}={(*several, *places)!r})"
                )
            raise ObservationMismatchError(
                f"observation variable {name!r} has dims {stray} that the state variable "
                f"{name!r} does not have (its level dims are {list(levels)}){hint}"
            )
        missing = [lev for lev in levels if lev not in da.dims]
        for lev in [lev for lev in missing if prior.sizes[lev] == 1]:
            # the state's one entry along it (a CMIP6 store's dcpp_init_year): the
            # observations are of it, as those of a state at one level without the dim
            given = lev in da.coords or lev not in prior.coords
            da = da.expand_dims(lev if given else {lev: prior[lev].values})
            missing.remove(lev)
        for lev in [lev for lev in missing if lev in da.coords and da[lev].ndim == 0]:
            # one level as a scalar coordinate, as obs.sel(level=500) leaves it: the
            # observations are at that level, not at none (nor at every one)
            da = da.expand_dims(lev)
            missing.remove(lev)
        if missing:
            raise ObservationMismatchError(
                f"observation variable {name!r} lacks the level dims {missing} of the state "
                f"variable; give the observations a {missing[0]!r} dim (e.g. "
                f"obs[{name!r}].expand_dims({missing[0]}=[value])) or, for reports with a "
                f"level each, a {missing[0]!r} coordinate along them in the state's levels"
                + _other_level_hint(obs, missing[0])
            )
        for lev in levels:
            if lev not in prior.coords and (
                lev in by_row or (lev in da.dims and da.sizes[lev] != prior.sizes[lev])
            ):
                given = (
                    f"are at {lev} values {np.unique(obs[lev].values).tolist()[:5]}"
                    if lev in obs.coords
                    else f"have {da.sizes[lev]} entries along {lev!r}, the state "
                    f"{prior.sizes[lev]}"
                )
                raise ObservationMismatchError(
                    f"the observations of {name!r} {given}, and the state's level dim "
                    f"{lev!r} has no coordinate to find them in (xarray numbers it 0, 1, …); "
                    f"label the state's levels, prior.assign_coords({lev}=[...]), and the "
                    "observations' alike"
                )
            if lev in obs.coords and lev in prior.coords:
                theirs = np.unique(obs[lev].values)  # (pandas' isin takes NaN for NaN)
                bad = theirs[~pd.Index(theirs).isin(prior[lev].values)]
                if bad.size:
                    units = f" {prior[lev].attrs['units']}" if "units" in prior[lev].attrs else ""
                    raise ObservationMismatchError(
                        f"observation variable {name!r} has {lev} values {bad.tolist()}{units} "
                        f"that the state does not have ({prior[lev].values.tolist()}{units})"
                        + _off_level_fix(lev, bad, prior[lev].values, lev in by_row, point)
                    )
        # only the levels the observations have (in the state's order): rows for levels
        # never observed would only be NaN, and with many levels they multiply the plan
        # and the prior gathered at the observations
        positions = _observed_level_positions(da, prior, levels)
        da = da.reindex(
            {
                lev: prior[lev].values[positions[i]]
                for i, lev in enumerate(levels)
                if lev in prior.coords
            }
        )
        da = convert_units(da, prior[name].attrs.get("units"), name=name)
        grid_dims = (dims.lat, dims.lon) if gridded else (point,)
        core = (*levels, *grid_dims)
        values.append(da.transpose(*([dims.time] if dims.time in da.dims else []), *core))
        core_dims.append(core)

        level_shape = tuple(p.size for p in positions)  # the observed levels
        first = layout.first_field(name)
        if levels:
            grids = np.meshgrid(*positions, indexing="ij")
            field_ids = first + np.ravel_multi_index(grids, [prior.sizes[v] for v in levels])
        else:
            field_ids = np.array(first)
        level_values = [
            tuple(
                prior[lev].values[p[i]] if lev in prior.coords else p[i]
                for lev, p, i in zip(levels, positions, ix, strict=True)
            )
            for ix in np.ndindex(*level_shape)
        ]
        keys = [_field_key(name, levels, lv) for lv in level_values]
        fields.extend(keys)
        field_levels[name] = (levels, keys)
        G = layout.grid_size
        if gridded:
            idx = (field_ids[..., None] * G + np.arange(G)).reshape(-1, 1)
            rows_idx.append(idx)
            rows_w.append(np.ones_like(idx, dtype=np.float64))
            rows_loc.append(np.tile(grid_loc, (prod(level_shape), 1)))
        else:
            idx, w = field_rows(p_idx, p_w, field_ids[..., None], G)
            rows_idx.append(idx.reshape(-1, p_idx.shape[-1]))
            rows_w.append(w.reshape(-1, p_w.shape[-1]))
            rows_loc.append(np.tile(p_loc, (prod(level_shape), 1)))

    errors_given = errors == "required" or (
        errors == "if-given" and _errors_given(obs, names, obs_error)
    )
    error_values = []
    empty = _empty_fields(names, values, field_levels, by_row)
    for name, value in zip(names, values, strict=True):
        if not errors_given:
            error_values.append(xr.DataArray(1.0))
            error_core_dims.append(())
            continue
        levels, keys = field_levels[name]
        err, err_dims = _resolve_error(
            obs, name, value, levels, keys, obs_error, prior, dims, fields, empty
        )
        error_values.append(err)
        error_core_dims.append(err_dims)

    plan = ObservationPlan(
        kind=kind,
        variables=tuple(names),
        core_dims=tuple(core_dims),
        error_core_dims=tuple(error_core_dims),
        indices=np.concatenate(rows_idx).astype(np.int64),
        weights=np.concatenate(rows_w).astype(np.float64),
        locations=np.concatenate(rows_loc).astype(np.float64),
        errors_given=errors_given,
    )
    return plan, values, error_values


def _at_the_state_levels(
    obs: xr.Dataset, prior: xr.Dataset, levels: list[str], by_row=frozenset()
) -> xr.Dataset:
    """``obs`` at the one level of a state without a level dim (the ``levels``, scalar
    coordinates of ``prior``, in whose units :func:`_levels_in_state_units` has put the
    observations'), or an error: observations of another level were applied to it.
    ``by_row``: the levels the user gave row by row (laid out by :func:`rows_by_level`)."""
    for lev in levels:
        if lev not in obs.coords or obs[lev].ndim > 1:
            continue
        ours = prior[lev].values[()]
        theirs = np.atleast_1d(obs[lev].values)
        if theirs.dtype.kind in "fiu" and np.asarray(ours).dtype.kind in "fiu":
            hit = np.isclose(theirs, ours, rtol=1e-6, atol=0)
        else:
            hit = theirs == ours
        units = f" {prior[lev].attrs['units']}" if "units" in prior[lev].attrs else ""
        ours = as_python(ours)
        if not hit.any():
            raise ObservationMismatchError(
                f"the state is at {lev}={ours}{units} (a scalar coordinate, no {lev!r} dim) "
                f"and the observations are at {lev} {theirs.tolist()}; give the "
                + (
                    f"observations of that level (obs.where(obs[{lev!r}] == {ours!r}, drop=True))"
                    if lev in by_row
                    else f"observations of that level (obs.sel({lev}={ours!r}))"
                    if lev in obs.dims
                    else f"observations of that level, or, if they observe it, say so "
                    f"(obs.assign_coords({lev}={ours!r}))"
                )
            )
        if lev in obs.dims:
            obs = obs.isel({lev: int(np.flatnonzero(hit)[0])})
    return obs


def _off_level_fix(lev: str, bad, ours, by_row: bool, point: str | None) -> str:
    """How to bring observations at levels the state lacks to its levels: the
    observation operator reads the state at its own levels and does not interpolate
    between them."""
    ours = np.asarray(ours)
    if ours.dtype.kind not in "fiu" or np.asarray(bad).dtype.kind not in "fiu":
        return ": give observations at the state's levels, or drop the others"
    outside = (bad < np.nanmin(ours)) | (bad > np.nanmax(ours))
    if outside.all():
        low, high = as_python(np.nanmin(ours)), as_python(np.nanmax(ours))
        return (
            f": they lie beyond its levels; drop them, obs.where((obs[{lev!r}] >= {low!r}) "
            f"& (obs[{lev!r}] <= {high!r}), drop=True) (in the state's units)"
        )
    if by_row:
        how = "interpolate each profile to the state's levels"
        if point is not None and point != MOVING_DIM:  # (moving observers: their slots)
            nearest = (
                f"obs.assign_coords({lev}=({point!r}, prior[{lev!r}].sel({lev}="
                f"obs[{lev!r}].values, method='nearest').values))"
            )
            how += (
                f", or take each report at the nearest state level, {nearest} (its levels "
                "in the state's units), adding the error that makes to its error"
            )
    else:
        how = f"obs.interp({lev}=prior[{lev!r}].values) interpolates them linearly"
    return (
        ". The observation operator reads the state at its levels and does not "
        f"interpolate between them: bring the observations to them first ({how})"
    )


def _other_level_hint(obs: xr.Dataset, lev: str) -> str:
    """A hint where the observations carry a level under another name than ``lev``."""
    others = [str(n) for n in obs.coords if n != lev and str(n).lower() in LEVEL_NAMES]
    if not others:
        return ""
    return f" (their {others[0]!r} is not the state's {lev!r}: obs.rename({{{others[0]!r}: {lev!r}}})?)"


def _levels_in_state_units(obs: xr.Dataset, prior: xr.Dataset, level_dims) -> xr.Dataset:
    """``obs`` with each level coordinate in the state's units (pressure levels in Pa
    against the state's hPa; :func:`~xensf.bridge.units.coordinate_in_units`); a level
    without units is in the state's already."""
    for lev in sorted(level_dims, key=str):
        if lev in obs.coords and lev in prior.coords:
            obs = coordinate_in_units(prior, obs, lev, whose="the observations'")
    return obs


def _observed_level_positions(da, prior, levels) -> list[np.ndarray]:
    """Per level dim, the positions in the state of the levels ``da`` has (all of
    them where ``da`` has no coordinate for the dim)."""
    out = []
    for lev in levels:
        state = np.arange(prior.sizes[lev])
        if lev in da.coords and lev in prior.coords:
            state = state[pd.Index(prior[lev].values).isin(da[lev].values)]  # NaN too
        out.append(state)
    return out


def obs_level_names(levels: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Names for the observations' level dims where they meet the prior's in one
    ``apply_ufunc``: the observations may have fewer levels than the state."""
    return {lev: f"_obs_{lev}" for dims_ in levels.values() for lev in dims_}


def _errors_in_state_units(obs_error, prior: xr.Dataset, names: list[str]):
    """``obs_error`` with each error given with its units (``"0.5 K"``, a pint
    quantity) as a number in its variable's units, for :func:`resolve_obs_error`,
    which takes numbers in the state's units; as it is where no error has units."""

    def one(value, name, *keys):
        if not (isinstance(value, str) or is_quantity(value)):
            return value  # (and no text of it: str() of a huge int raises)
        where = "obs_error" + "".join(f"[{k!r}]" for k in keys) + f"={value!r}"
        units = prior[name].attrs.get("units")
        number = difference_in_units(value, units, name=name, where=where)
        return value if number is None else number

    if isinstance(obs_error, Mapping):
        return {
            k: {lev: one(x, k, k, lev) for lev, x in v.items()}
            if isinstance(v, Mapping)
            else one(v, k, k)
            for k, v in obs_error.items()
        }
    per_name = {n: one(obs_error, n) for n in names}
    return obs_error if all(v is obs_error for v in per_name.values()) else per_name


def _errors_given(obs, names, obs_error) -> bool:
    """Whether the user gave observation errors (``obs_error`` or error variables or
    attributes on ``obs``) for the variables ``names``; refuses some but not all."""
    if obs_error is not None:
        return True
    without = [name for name in names if _error_source(obs, name) is None]
    if len(without) not in (0, len(names)):
        raise OptionError(
            f"observation errors are given for some observed variables but not for "
            f"{without}: give them for all (obs_error=, a variable <name>_error or an "
            "attribute obs_error) or for none"
        )
    return not without


def time_text(value: Any) -> str:
    """A time for a message: a date and time for datetimes (not nanoseconds), else as is."""
    value = np.asarray(value)
    if value.dtype.kind == "M":
        return str(pd.Timestamp(value[()]))
    if value.dtype.kind == "m":
        return str(pd.Timedelta(value[()]))
    return str(value[()])


#: How :func:`_time_kind` begins the kind of times with a time zone.
ZONED = "dates in the time zone"


def _time_kind(values: np.ndarray) -> str:
    """What times are, for comparing the observations' with the state's: numpy
    datetime64, cftime in a calendar, strings, numbers."""
    values = np.asarray(values)
    if values.dtype.kind == "M":
        return "numpy datetime64"
    if values.dtype.kind in "iuf":
        return "numbers"
    if values.dtype.kind == "m":
        return "numpy timedelta64"
    first = values.flat[0] if values.size else None
    if hasattr(first, "calendar"):
        return f"cftime dates in the {first.calendar!r} calendar"
    if isinstance(first, str) or values.dtype.kind == "U":
        return "strings"
    if getattr(first, "tzinfo", None) is not None:  # pandas keeps zoned times as objects
        return f"{ZONED} {first.tzinfo}"
    return type(first).__name__


def _check_times_labelled(obs: xr.Dataset, obs_time: str, prior: xr.Dataset, tdim: str) -> None:
    """Refuse observations and a state of which one labels its time dim with dates and
    the other gives it no coordinate: xarray numbers such a dim 0, 1, …, which are no
    dates. Neither labelled, they are paired entry by entry where their sizes agree; one
    labelled with numbers, by those numbers against 0, 1, … where they match."""
    ours, theirs = obs_time in obs.coords, tdim in prior.coords
    if not (ours or theirs) and obs.sizes[obs_time] != prior.sizes[tdim]:
        raise ObservationMismatchError(
            f"neither the observations' time dim {obs_time!r} ({obs.sizes[obs_time]} "
            f"entries) nor the state's {tdim!r} ({prior.sizes[tdim]}) has a coordinate, "
            "so there is no telling which times are whose; label both with their times, "
            f"obs.assign_coords({obs_time}=[...]) and prior.assign_coords({tdim}=[...])"
        )
    if ours == theirs:
        return
    labelled = obs[obs_time] if ours else prior[tdim]
    numbers = _time_kind(np.asarray(labelled.values)) == "numbers"
    if numbers and (ours or np.array_equal(labelled.values, np.arange(obs.sizes[obs_time]))):
        return  # paired by the numbers: xarray's 0, 1, … against the other's labels
    if not ours:
        same_length = obs.sizes[obs_time] == prior.sizes[tdim]
        raise ObservationMismatchError(
            f"the observations' time dim {obs_time!r} has no coordinate (xarray numbers it "
            f"0, 1, …) and the state's {tdim!r} holds "
            + (f"other numbers, {prior[tdim].values.tolist()[:3]}…" if numbers else "dates")
            + f"; label the observations with their times, obs.assign_coords({obs_time}=[...])"
            + (
                f", or, if they are the state's times in its order, "
                f"obs.assign_coords({obs_time}=prior[{tdim!r}].values)"
                if same_length
                else ""
            )
        )
    raise ObservationMismatchError(
        f"the state's time dim {tdim!r} has no coordinate (xarray numbers it 0, 1, …) and "
        f"the observations' {obs_time!r} holds dates; label the state with the times its "
        f"members are valid at, prior.assign_coords({tdim}=[...])"
    )


def check_time_kinds(
    times,
    state_times,
    tdim: str,
    what: str = "observation",
    name: str = "obs",
    error: type[Exception] = ObservationMismatchError,
) -> None:
    """Refuse (``error``) ``what`` times (``name`` in the fix shown) of another kind
    than the state's (datetime64 against cftime, another calendar, strings): none of
    them could match, and the times would print alike."""
    ours, theirs = _time_kind(times), _time_kind(state_times)
    if not np.size(times) or not np.size(state_times) or ours == theirs:
        return
    if theirs.startswith("cftime"):
        calendar = np.asarray(state_times).flat[0].calendar
        fix = f"{name}.convert_calendar({calendar!r}, dim={tdim!r}, use_cftime=True)"
    elif theirs == "numpy datetime64" and ours != "numbers":
        fix = (
            f"{name}.convert_calendar('standard', dim={tdim!r}, use_cftime=False)"
            if ours.startswith("cftime")
            else _datetime64_fix(name, tdim, ours)
        )
    else:
        fix = "decode both alike (xarray.decode_cf)"
    raise error(
        f"the {what} times are {ours} and the state's {theirs}, so none can match "
        f"however alike they print; convert the {what} times, e.g. {fix}"
    )


def _datetime64_fix(name: str, tdim: str, kind: str) -> str:
    """How to make ``name``'s times of ``kind`` numpy datetime64, along the dims they
    have (a table's times are along its rows, not a dim of their own); zoned times in
    UTC without the zone, as CF times are."""
    utc = ", utc=True).tz_localize(None" if kind.startswith(ZONED) else ""
    return f"{name}.assign_coords({tdim}=({name}.{tdim}.dims, pd.to_datetime({name}.{tdim}.values{utc})))"


def _subset_fix(theirs: np.ndarray, ours: np.ndarray) -> str | None:
    """Where gridded observations cover some of the state's grid lines only (a region,
    every 4th point): the reindex that puts them on the whole grid, NaN elsewhere."""
    if theirs.size == 0 or ours.size < 2 or theirs.size >= ours.size:
        return None
    scale = max(1.0, float(np.nanmax(np.abs(ours))))
    if not (np.abs(theirs[:, None] - ours[None, :]).min(axis=1) <= 1e-6 * scale).all():
        return None
    step = float(np.abs(np.diff(ours)).min())
    return (
        f"they lie on {theirs.size} of the state's {ours.size} grid lines: "
        f"obs.reindex_like(ds, method='nearest', tolerance={step / 10:g}) puts them on "
        "its grid, NaN where nothing is observed"
    )


def _at_the_state_time(obs, obs_time, prior, dims, tolerance, names, obs_dim):
    """For a state without a time dim but at one time (a scalar time coordinate, as
    ``forecast.isel(time=0)`` leaves it): the observations at that time, or an error.

    Observations at another time were applied to it without a word. Returns the
    observations and their time dim (None where they have no time)."""
    name = scalar_time(prior)
    if name is None:
        return obs, obs_time
    if obs_time is None:
        if name not in obs.coords or obs[name].ndim != 0:
            return obs, None  # observations without a time: at the state's
        obs, obs_time = obs.expand_dims(name), name
    one = dataclasses.replace(dims, time=obs_time)
    at = np.asarray([prior[name].values[()]])
    return _on_state_times(obs, one, at, tolerance, names, obs_dim), obs_time


def _on_state_times(obs, dims, state_times, tolerance, names, obs_dim) -> xr.Dataset:
    """``obs`` with every observation time moved to a state time, or an error.

    Without ``tolerance`` an observation time must be a state time. With it (a
    timedelta-like for datetime times, a number otherwise) each goes to the nearest
    state time within the tolerance. Several observation times at one state time are
    merged for point observations (their points side by side along the point dim, padded
    with NaN where a state time has fewer) and refused for gridded ones, which hold one
    field per time.
    """
    tdim = dims.time
    times = obs[tdim].values
    check_time_kinds(times, state_times, tdim)
    if tolerance is None:
        extra = np.setdiff1d(times, state_times)
        if extra.size:
            raise ObservationMismatchError(
                f"{extra.size} observation times are not times of the state, e.g. "
                f"{[time_text(v) for v in extra[:3]]}; select the observations at the state's "
                "times, or give obs_time_tolerance= to assimilate each at the nearest state time"
            )
        return obs
    kind = _time_kind(state_times)
    dated = kind == "numpy datetime64" or kind.startswith("cftime")
    bare = isinstance(tolerance, int | float | np.number) and not isinstance(
        tolerance, bool | np.timedelta64
    )
    if dated and bare:
        raise OptionError(
            f"obs_time_tolerance={tolerance!r} is a bare number, and the state's times are "
            "dates: give a span with its unit, e.g. '30min', '1h' or numpy.timedelta64(1, 'h')"
        )
    try:
        if kind == "numpy datetime64":
            tol = pd.to_timedelta(tolerance).to_timedelta64()
        elif kind.startswith("cftime"):  # their differences are datetime.timedelta
            tol = pd.to_timedelta(tolerance).to_pytimedelta()
        else:
            tol = float(tolerance)
    except (TypeError, ValueError):
        raise OptionError(
            f"obs_time_tolerance must be a time span ('30min', numpy.timedelta64) for datetime "
            f"times, a number for numeric ones; got {tolerance!r}"
        ) from None
    if not tol >= tol * 0:
        raise OptionError(f"obs_time_tolerance must not be negative, got {tolerance!r}")
    order = np.argsort(state_times)
    ordered = np.asarray(state_times)[order]
    right = np.clip(np.searchsorted(ordered, times), 0, ordered.size - 1)
    left = np.clip(right - 1, 0, ordered.size - 1)
    nearest = np.where(abs(times - ordered[left]) <= abs(ordered[right] - times), left, right)
    target = ordered[nearest]
    far = abs(times - target) > tol
    if far.any():
        first = np.flatnonzero(far)[0]
        raise ObservationMismatchError(
            f"{int(far.sum())} observation times are farther than obs_time_tolerance="
            f"{tolerance!r} from every state time, e.g. {time_text(times[first])} (nearest state "
            f"time {time_text(target[first])}); select the observations near the state's times "
            "or give a larger tolerance"
        )
    targets, counts = np.unique(target, return_counts=True)
    if (counts == 1).all():
        return obs.assign_coords({tdim: target})
    if all(dims.lat in obs[n].dims and dims.lon in obs[n].dims for n in names):
        t = targets[counts > 1][0]
        raise ObservationMismatchError(
            f"{int(counts.max())} observation times fall within obs_time_tolerance of the state "
            f"time {time_text(t)}, and gridded observations hold one field per time; average "
            "them first (e.g. obs.resample) or give a smaller tolerance"
        )
    point = obs_dim or _find_point_dim(obs, names, tdim)
    groups = [np.flatnonzero(target == t) for t in targets]
    parts = []
    for j in range(int(counts.max())):
        positions = np.array([g[min(j, g.size - 1)] for g in groups])
        present = xr.DataArray([j < g.size for g in groups], dims=tdim)
        part = obs.isel({tdim: positions}).assign_coords({tdim: targets})
        parts.append(part.where(present))
    return xr.concat(parts, dim=point, data_vars="minimal", coords="minimal", compat="override")


def _empty_fields(names, values, field_levels, by_row) -> Callable[[Any], str | None]:
    """For an ``obs_error`` mapping's error message: whether a variable (by name) or a
    field (``(variable, level)``) holds no observation, only NaN, and if so how to leave
    it out of the observations. Reads the observations when asked, only then."""
    where = {}
    for name, value in zip(names, values, strict=True):
        levels, keys = field_levels[name]
        shape = tuple(value.sizes[lev] for lev in levels)
        for key, index in zip(keys, np.ndindex(*shape), strict=True):
            where[key] = (name, value, dict(zip(levels, index, strict=True)))

    def nothing_at(key) -> bool:
        _, value, index = where[key]
        return not bool(value.isel(index).notnull().any())

    def empty(key) -> str | None:
        if key in names:  # a whole variable
            fields = [k for k, (n, _, _) in where.items() if n == key]
            return f"obs.drop_vars([{key!r}])" if all(map(nothing_at, fields)) else None
        if key not in where or not nothing_at(key):
            return None
        _, value, index = where[key]
        (lev, i), *more = index.items()
        if more or lev not in value.coords:
            return None
        label = as_python(value[lev].values[i])
        if lev in by_row:
            return f"obs.where(obs[{lev!r}] != {label!r}, drop=True)"
        return f"obs.drop_sel({lev}=[{label!r}])"

    return empty


def _resolve_error(obs, name, value, levels, keys, obs_error, prior, dims, fields, empty=None):
    """The error std of one observation variable as a DataArray broadcasting to ``value``."""
    _warn_unused_errors(obs, name, obs_error is not None)
    if obs_error is None:
        src = _error_source(obs, name)
        if src is None:
            named = str(obs[name].attrs.get("ancillary_variables", "")).split()
            missing = [a for a in named if a not in obs.variables]
            lacks = (
                f" (its ancillary_variables name {missing}, which the observations lack)"
                if missing
                else ""
            )
            raise OptionError(
                f"no observation error for {name!r}{lacks}: pass obs_error= (a number in the "
                "state's units, a mapping {variable: number}, or a relative error such as "
                f"'10%'), or give the observations a variable {name}_error or an attribute "
                f"{name}.attrs['obs_error']"
            )
        err = convert_units(
            src,
            prior[name].attrs.get("units"),
            name=name,
            what="observation errors",
            difference=True,
        )
        if err.ndim == 0:  # an attribute
            resolve_obs_error(float(err), [name])  # validates: positive, finite
            return xr.DataArray(float(err)), ()
        if dims.time in err.dims:
            err = err.reindex({dims.time: prior[dims.time].values})
        err = err.reindex(
            {lev: value[lev].values for lev in levels if lev in err.dims and lev in value.coords}
        )
        core = tuple(d for d in value.dims if d in err.dims and d != dims.time)
        return err.transpose(*([dims.time] if dims.time in err.dims else []), *core), core
    # Numbers and relative errors: resolve with unit spread to learn each field's factor.
    per_field = resolve_obs_error(
        obs_error, fields, obs_spread=dict.fromkeys(fields, 1.0), empty=empty
    )
    spec = obs_error[name] if isinstance(obs_error, Mapping) else obs_error
    shape = tuple(value.sizes[lev] for lev in levels)
    factors = np.array([per_field[k] for k in keys]).reshape(shape)
    # which fields' errors are relative (a per-level mapping may mix them with numbers)
    is_rel = np.array(
        [parse_relative(error_spec_of(obs_error, k)) is not None for k in keys]
    ).reshape(shape)
    coords = {lev: value[lev].values for lev in levels if lev in value.coords}
    factor = xr.DataArray(factors, dims=levels, coords=coords)
    if not is_rel.any():
        return factor, tuple(levels)
    is_rel = xr.DataArray(is_rel, dims=levels, coords=coords)
    spread_dims = [d for d in value.dims if d not in levels]
    # Computed now (observations are small), in numpy and float64 whatever the
    # chunking (dask's std sums otherwise, and the error would depend on the chunks),
    # from one memory layout, C order with the reduced dims last (numpy sums in another
    # order over another layout, and a numpy-backed input arrives in its own); a
    # relative error that comes out zero or undefined is refused here, naming the
    # variable, not as NaN deep in a task.
    loaded = value.astype(np.float64).compute()
    loaded = loaded.transpose(*[d for d in loaded.dims if d not in spread_dims], *spread_dims)
    loaded = loaded.copy(data=np.ascontiguousarray(loaded.values))
    spread, count = loaded.std(dim=spread_dims, skipna=True), loaded.count(spread_dims)
    unusable = (count > 0) & ~(spread > 0) & is_rel
    if bool(unusable.any()):
        where = {d: as_python(unusable[d].values[unusable.values.nonzero()[i][0]]) for i, d in
                 enumerate(unusable.dims) if d in unusable.coords}  # fmt: skip
        at = f" at {where}" if where else ""
        n = int(count.values[unusable.values][0])
        raise OptionError(
            f"obs_error={spec!r} for {name!r}{at} is relative to the spatial standard "
            f"deviation of its observations, which is {float(spread.values[unusable.values][0]):g} "
            f"({n} observation{'s' if n != 1 else ''}): the error would not be positive. "
            "Give an absolute error for it (e.g. obs_error={" + repr(name) + ": 0.5})"
        )
    spread = spread.where(count > 0, 1.0)  # no observations there: any placeholder
    spread = xr.where(is_rel, spread, 1.0)  # only the fields given as "P%" scale with it
    return (factor * spread).transpose(*levels), tuple(levels)
