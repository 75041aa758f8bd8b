"""What a latent model was trained on, and the check that data matches it.

A latent model only makes sense on the grid, variables, levels and units it was
trained on. Training records a *data signature* of the training Dataset in the model
bundle; applying the model compares the forecast's signature with it and refuses,
naming what differs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import xarray as xr

from ..errors import ObservationMismatchError, UnitsError
from .dims import EnsembleDims, is_level, scalar_levels
from .grid import grid_coords, reorder_fix, same_points
from .layout import StateLayout
from .orientation import Orientation, on_the_grid
from .units import UNITS, degrees_per, parse_units, same_units

__all__ = [
    "check_signature",
    "data_signature",
    "fields_of",
    "model_orientation",
    "signature_levels",
]


def _grid_hash(lat: np.ndarray, lon: np.ndarray) -> str:
    h = hashlib.sha256()
    for values in (lat, lon):
        h.update(np.ascontiguousarray(np.round(np.asarray(values, np.float64), 6)).tobytes())
    return h.hexdigest()


def _plain(values) -> list:
    return [v.item() if hasattr(v, "item") else v for v in np.asarray(values).tolist()]


def fields_of(ds: xr.Dataset, layout: StateLayout) -> list[list]:
    """The channel list: ``[variable, {level_dim: value}]`` per field, in state order."""
    fields = []
    for name, dims_, shape in zip(
        layout.variables, layout.level_dims, layout.level_shapes, strict=True
    ):
        for index in np.ndindex(*shape):
            levels = {
                d: (_plain(ds[d].values)[i] if d in ds.coords else i)
                for d, i in zip(dims_, index, strict=True)
            }
            fields.append([name, levels])
    return fields


def data_signature(ds: xr.Dataset, dims: EnsembleDims, layout: StateLayout) -> dict[str, Any]:
    """A JSON-serialisable description of the state: variables, levels, units and grid."""
    grid = grid_coords(ds, dims)  # 1-D axes, grid indices, or a curvilinear grid's 2-D
    lat, lon = grid.lat, grid.lon
    if grid.known:  # as given (radians stay radians), with their units beside them
        lat, lon = (np.asarray(ds[n].transpose(*(d for d in dims.grid if d in ds[n].dims))
                               .values) for n in grid.names)  # fmt: skip
    lat, lon = lat.ravel(), lon.ravel()
    return {
        "variables": list(layout.variables),
        "fields": fields_of(ds, layout),
        "level_units": {
            d: ds[d].attrs.get("units")
            for d in dict.fromkeys(d for dims_ in layout.level_dims for d in dims_)
            if d in ds.coords
        },
        "scalar_levels": _scalar_levels(ds),
        "units": {v: ds[v].attrs.get("units") for v in layout.variables},
        "lat_dim": dims.lat,
        "lon_dim": dims.lon,
        "grid_shape": list(layout.grid_shape),
        "lat": [float(v) for v in np.asarray(lat, np.float64)],
        "lon": [float(v) for v in np.asarray(lon, np.float64)],
        "grid_hash": _grid_hash(lat, lon),
        "grid_units": list(grid.units) if grid.known else [None, None],
    }


def _scalar_levels(ds: xr.Dataset) -> dict[str, list]:
    """The one level of data without a level dim (``ds.sel(level=500)``): ``{name:
    [value, units]}`` per scalar vertical coordinate with a number or a name."""
    out = {}
    for name in scalar_levels(ds):
        value = np.asarray(ds[name].values)
        if value.dtype.kind in "iuf" or value.dtype.kind == "U":
            out[name] = [value.item(), ds[name].attrs.get("units")]
    return out


def signature_levels(expected: dict[str, Any]) -> dict[str, list]:
    """Each level dim of a data signature with its values, in the model's order."""
    levels: dict[str, list] = {}
    for _, at in expected["fields"]:
        for dim, value in at.items():
            if value not in levels.setdefault(dim, []):
                levels[dim].append(value)
    return levels


def model_orientation(
    expected: dict[str, Any], ds: xr.Dataset, dims: EnsembleDims, obs=None
) -> Orientation | None:
    """The :class:`Orientation` that puts ``ds`` in the order of the data a latent model
    was trained on (``expected``, the model's data signature): each grid axis and level
    dim reversed where the model's runs the other way. The same data in the other order
    (latitude north to south, as ERA5 is stored, for a model trained south to north;
    levels 850, 500 for one trained on 500, 850) is analysed in the model's order and
    put back. Gridded observations ``obs`` must be on ``ds``'s points in its order for
    the grid to be turned (they are refused in the data's own order otherwise). None
    where nothing is reversed; where no reversal makes the data the model's,
    :func:`check_signature` names the difference."""
    reverse = []
    grid = grid_coords(ds, dims)
    if grid.known and not grid.curvilinear and (obs is None or on_the_grid(obs, ds, dims)):
        for dim, name, key in zip((dims.lat, dims.lon), grid.names, ("lat", "lon"), strict=True):
            values = np.asarray(ds[name].values, np.float64)
            model = expected.get(key)
            if (
                ds[name].dims == (dim,)
                and values.size > 1
                and model is not None
                and not same_points(values, model)
                and same_points(values[::-1], model)
            ):
                reverse.append(dim)
    for dim, wanted in signature_levels(expected).items():
        if dim in ds.dims and dim in ds.coords:
            have = _plain(ds[dim].values)
            if have != wanted and have[::-1] == wanted:
                reverse.append(dim)
    return Orientation(tuple(reverse), dims.lon, 0) if reverse else None


def _same_grid(expected: dict[str, Any], found: dict[str, Any]) -> bool:
    """Whether two signatures' grids hold the same points: the same coordinates, or the
    same once the data's are converted to the model's units (a grid in km against
    one in m, radians against degrees). Signatures from before ``grid_units`` was
    recorded compare as given."""
    if expected["grid_shape"] != found["grid_shape"]:
        return False
    if expected["grid_hash"] == found["grid_hash"] or (
        same_points(found["lat"], expected["lat"]) and same_points(found["lon"], expected["lon"])
    ):
        return True
    ours, theirs = expected.get("grid_units"), found.get("grid_units")
    if not ours or not theirs:
        return False
    for k, axis in enumerate(("lat", "lon")):
        factor = _factor(theirs[k], ours[k])
        if factor is None or not same_points(np.asarray(found[axis]) * factor, expected[axis]):
            return False
    return True


def _same_fields(expected: dict[str, Any], found: dict[str, Any]) -> bool:
    """Whether the data's fields are the model's with their levels in other units (Pa
    against hPa), by the level units the model's signature records (models from before
    that record compare the levels as given)."""
    ours, theirs = expected.get("level_units") or {}, found.get("level_units") or {}
    if len(expected["fields"]) != len(found["fields"]):
        return False
    for (name, at), (their_name, their_at) in zip(
        expected["fields"], found["fields"], strict=True
    ):
        if name != their_name or at.keys() != their_at.keys():
            return False
        for dim, value in at.items():
            factor = _factor(theirs.get(dim), ours.get(dim)) if dim in ours else None
            other = their_at[dim]
            if other == value:
                continue
            numbers = all(isinstance(v, (int, float)) for v in (value, other))
            if factor is None or not numbers or not same_points([other * factor], [value]):
                return False
    return True


def _same_level(given: list, wanted: list) -> bool:
    """Whether the level ``given`` (``[value, units]``) is ``wanted``: the same value, or
    the same in other units (Pa against hPa)."""
    if given[0] == wanted[0]:
        return True
    factor = _factor(given[1], wanted[1])
    numbers = all(isinstance(v, (int, float)) for v in (given[0], wanted[0]))
    return factor is not None and numbers and same_points([given[0] * factor], [wanted[0]])


def _units_text(units: str | None) -> str:
    return f" {units}" if units else ""


def _fields_fix(expected: dict[str, Any], found: dict[str, Any], data) -> str:
    """What makes the data's fields the model's, where the difference is in its level
    dims: named otherwise, more levels than the model's, or a level dim where the model
    was trained at one level."""
    if data is None:
        return ""
    want, have = signature_levels(expected), signature_levels(found)
    ours = {d for d in data.dims if is_level(data, d)}
    unknown = sorted(ours - set(want), key=str)
    missing = [d for d in want if d not in data.dims]
    if missing and len(missing) == len(unknown):
        renames = dict(zip(unknown, missing, strict=True))
        return f"; the same levels under another name? ds.rename({renames!r})"
    picks = {
        d: values
        for d, values in want.items()
        if d in have and have[d] != values and set(values) <= set(have[d])
    }
    if picks and not missing:
        return f"; select the model's levels: ds.sel({picks!r})"
    one = {
        d: value
        for d, (value, _) in (expected.get("scalar_levels") or {}).items()
        if d in data.dims and value in data[d].values
    }
    if one and not want:
        return f"; the model was trained at one level: ds.sel({one!r})"
    if missing and all(d in data.coords and data[d].ndim == 0 for d in missing):
        wanted = {d: want[d] for d in missing}
        return f"; the model takes the levels {wanted} together, and the data holds one"
    once = sorted((d for d in set(have) - set(want) if data.sizes.get(d) == 1), key=str)
    if once and not missing:  # (a CMIP6 store's dcpp_init_year: a sample dim in training)
        return f"; the model has no {once}, of length 1 in the data: ds.squeeze({once!r})"
    return ""


def _factor(given: str | None, wanted: str | None) -> float | None:
    """The factor that takes coordinates in ``given`` units to ``wanted``; 1 where
    both are the same (or neither is known), None where they do not convert."""
    if given == wanted:
        return 1.0
    if given is None or wanted is None:
        return None
    a, b = degrees_per(given), degrees_per(wanted)
    if a is not None or b is not None:  # angles: dimensionless to pint, so by name
        return a / b if a is not None and b is not None else None
    try:
        return float(UNITS.Quantity(1.0, given).to(wanted).magnitude)
    except Exception:  # pint raises several unrelated types here
        return None


def _units_fix(var: str, given: str | None, wanted: str | None) -> str:
    """What to do about data in other units than the model's."""
    if given is None:
        return f"give ds[{var!r}] the units attribute {wanted!r} if that is what it holds"
    if wanted is None:
        return (
            "the model was trained on data without units: drop the attribute "
            f"(del ds[{var!r}].attrs['units']) if the data is in the training data's units"
        )
    try:
        convertible = (
            parse_units(given, where="").dimensionality
            == parse_units(wanted, where="").dimensionality
        )
    except UnitsError:
        convertible = False
    if not convertible:
        return "the model was trained on another quantity: train one on this variable"
    return (
        f"convert the data first: ds[{var!r}] = "
        f"ds[{var!r}].pint.quantify().pint.to({wanted!r}).pint.dequantify()"
    )


def _longitude_fix(expected: dict[str, Any], found: dict[str, Any]) -> str | None:
    """The relabelling that gives the data the model's longitudes, where the two differ
    by whole turns point by point (a regional grid across the dateline as 160 … 180, -170
    against 160 … 190), else None."""
    ours, theirs = np.asarray(expected["lon"]), np.asarray(found["lon"])
    units = (found.get("grid_units") or [None, None])[1]
    if ours.shape != theirs.shape or degrees_per(units or "degrees_east") != 1.0:
        return None
    if not same_points(found["lat"], expected["lat"]):
        return None
    turns = (ours - theirs) / 360.0
    if not np.allclose(turns, np.round(turns), atol=1e-9) or not np.any(np.round(turns)):
        return None
    lon = f"ds[{found['lon_dim']!r}]"
    candidates = (  # each checked on the data's longitudes before it is advised
        (np.mod(theirs, 360.0), f"{lon} % 360"),
        (np.where(theirs > 180, theirs - 360, theirs), f"xr.where({lon} > 180, {lon} - 360, {lon})"),
    )  # fmt: skip
    for relabelled, relabel in candidates:
        if same_points(relabelled, ours):
            return (
                "the same points with the longitudes in another convention: "
                f"ds.assign_coords({{{found['lon_dim']!r}: {relabel}}}) gives the model's"
            )
    return None


def check_signature(
    expected: dict[str, Any], found: dict[str, Any], *, model: str, data: xr.Dataset | None = None
) -> None:
    """Raise :class:`ObservationMismatchError` naming the first difference (with the fix
    for ``data``, the Dataset ``found`` describes, where there is one)."""
    if expected["variables"] != found["variables"]:
        raise ObservationMismatchError(
            f"the model {model} was trained on the variables {expected['variables']}, the "
            f"data has {found['variables']}; the model takes all of its variables, in any order "
            f"(variables={expected['variables']!r} selects them from a Dataset with more)"
        )
    if expected["fields"] != found["fields"] and not _same_fields(expected, found):
        raise ObservationMismatchError(
            f"the model {model} was trained on the fields (variable, levels) "
            f"{expected['fields']}, the data has {found['fields']}"
            f"{_fields_fix(expected, found, data)}"
        )
    for name, (value, units) in (expected.get("scalar_levels") or {}).items():
        theirs = (found.get("scalar_levels") or {}).get(name)
        if theirs is not None and not _same_level(theirs, [value, units]):
            raise ObservationMismatchError(
                f"the model {model} was trained at one level, {name}={value!r}"
                f"{_units_text(units)}, and the data is at {name}={theirs[0]!r}"
                f"{_units_text(theirs[1])}: a model of one level does not represent another; "
                "train a model at this level (or on both levels, with a level dim)"
            )
    for var, units in expected["units"].items():
        given = found["units"].get(var)
        if not same_units(given, units):
            raise ObservationMismatchError(
                f"the model {model} was trained on {var!r} in {units!r}, the data has "
                f"{given!r}; {_units_fix(var, given, units)}"
            )
    if not _same_grid(expected, found):

        def extent(sig):
            return (
                f"{sig['grid_shape'][0]}x{sig['grid_shape'][1]} ({sig['lat_dim']} "
                f"{sig['lat'][0]:g}..{sig['lat'][-1]:g}, {sig['lon_dim']} "
                f"{sig['lon'][0]:g}..{sig['lon'][-1]:g})"
            )

        # reversals only: the signature does not say whether x is a longitude
        axes = [(found[f"{a}_dim"], expected[a], found[a], False) for a in ("lat", "lon")]
        fix = None
        if [len(found["lat"]), len(found["lon"])] == found["grid_shape"]:  # 1-D axes
            fix = reorder_fix("ds", axes) or _longitude_fix(expected, found)
        fix = fix or "regrid the data or train a model on this grid"
        raise ObservationMismatchError(
            f"the model {model} was trained on a {extent(expected)} grid; the data's grid is "
            f"{extent(found)}; {fix}"
        )
