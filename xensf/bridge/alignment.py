"""A second Dataset (a truth, an analysis) on a reference's points and in its units.

Scores and diagnostics compare two Datasets point by point; xarray would align them by
label and silently keep the overlap, and would subtract degC from kelvin. Here the
other Dataset must hold the reference's points (float32 spellings of the same
coordinates allowed) and is converted to the reference's units, or the caller gets an
:class:`~xensf.errors.XensfError` that says what to fix.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import DimensionError, OptionError
from .dims import find_role
from .grid import axis_order, same_points
from .observations import check_time_kinds
from .units import convert_units, coordinate_in_units, degrees_per

__all__ = ["aligned_like", "on_points_of"]


def aligned_like(
    reference: xr.Dataset,
    other: xr.Dataset,
    names: list[str],
    *,
    what: str,
    partial: tuple[str, ...] = (),
) -> xr.Dataset:
    """``other[names]`` on ``reference``'s points, in ``reference``'s units.

    Each dim of ``other`` that both index must hold ``reference``'s values (as
    :func:`~xensf.bridge.grid.same_points` compares them, then takes ``reference``'s
    labels, or the same labels in another order, longitudes in the other convention
    too, then put in ``reference``'s); a dim in
    ``partial`` (time, for a truth) need only share one value, and xarray keeps the
    shared ones. ``what`` names ``other`` in the messages.
    """
    for n in names:
        extra = [d for d in other[n].dims if d not in reference[n].dims]
        if extra:
            raise DimensionError(
                f"the {what}'s {n!r} has the dims {extra}, which the ensemble's {n!r} "
                f"{list(reference[n].dims)} lacks (it would be broadcast against them): "
                f"give it on the ensemble's dims ({_extra_dims_fix(reference, other, extra, what)})"
            )
    other = on_points_of(reference, other, what=what, partial=partial)
    for n in names:
        if n in other.data_vars and other[n].dtype.kind not in "iuf":
            raise OptionError(
                f"the {what}'s {n!r} has dtype {other[n].dtype}; it must hold numbers, the "
                "values on the ensemble's points"
            )
    converted = {
        n: convert_units(other[n], reference[n].attrs.get("units"), name=n, what=f"the {what}")
        for n in names
    }
    return other.assign(converted)[names]


def on_points_of(
    reference: xr.Dataset, other: xr.Dataset, *, what: str, partial: tuple[str, ...] = ()
) -> xr.Dataset:
    """``other`` with every dim that both index on ``reference``'s points, as
    :func:`aligned_like` takes them (its coordinates in the reference's units); a
    :class:`~xensf.errors.DimensionError` naming ``what`` where they differ."""
    for d in other.dims:
        if d not in reference.dims:
            continue
        if (d not in other.indexes or d not in reference.indexes) and (
            other.sizes[d] != reference.sizes[d]
        ):  # xarray pairs the entries of an unlabelled dim by position, if it can
            name = "ds" if d not in reference.indexes else what
            whose = "the ensemble's" if name == "ds" else f"the {what}'s"
            raise DimensionError(
                f"the {what} has {other.sizes[d]} entries along {d!r} and the ensemble "
                f"{reference.sizes[d]}, and {whose} {d!r} has no coordinate to tell which "
                f"are the same: label it ({name}.assign_coords({d}=[...])) or give the "
                f"{what} on the ensemble's {d!r}"
            )
        if d not in other.indexes or d not in reference.indexes:
            continue
        if other.sizes[d] and other[d].variable.identical(reference[d].variable):
            continue  # the very points, labels and units (an analysis of this ensemble)
        other = coordinate_in_units(reference, other, d, whose=f"the {what}'s")
        ours, theirs = reference.indexes[d], other.indexes[d]
        check_time_kinds(np.asarray(theirs), np.asarray(ours), str(d), what, what, DimensionError)
        if d in partial:
            if not ours.intersection(theirs).size:
                raise DimensionError(f"the {what}'s {d!r} shares no value with the ensemble's")
            continue
        numeric = ours.dtype.kind in "fiu" and theirs.dtype.kind in "fiu"
        longitude = (
            numeric
            and d == find_role(reference, "longitude", required=False)
            and _in_degrees(reference[d])
        )
        if numeric and same_points(theirs, ours):
            other = other.assign_coords({d: reference[d]})  # float32 coordinates, say
        elif len(ours) == len(theirs) and theirs.is_unique and set(ours) == set(theirs):
            other = other.sel({d: ours})  # the same labels in another order
        elif numeric and (order := axis_order(ours, theirs, longitude)) is not None:
            # the same points in another order, in float32 or from -180: by their labels
            other = other.isel({d: order}).assign_coords({d: reference[d]})
        elif not ours.equals(theirs):
            raise DimensionError(
                f"the {what}'s {d!r} coordinate differs from the ensemble's ({_head(theirs)} "
                f"against {_head(ours)}): give it on the same points (select or interpolate "
                f"it, e.g. {what}.interp({d}=ds.{d}))"
            )
    return other


def _in_degrees(coord: xr.DataArray) -> bool:
    """Whether a longitude coordinate is in degrees (so that -180..180 and 0..360 are
    one), not planar ``x`` in km or an angle in radians."""
    units = coord.attrs.get("units")
    if units:
        return degrees_per(str(units)) == 1.0
    return coord.attrs.get("standard_name") == "longitude" or str(coord.name).lower() in (
        "lon",
        "longitude",
    )


def _extra_dims_fix(reference: xr.Dataset, other: xr.Dataset, extra: list, what: str) -> str:
    """How to drop the dims ``extra`` of ``other`` that ``reference`` lacks."""
    d = extra[0]
    if d in reference.coords and reference[d].ndim == 0:  # the ensemble at one level
        value = reference[d].values[()]
        shown = repr(value.item() if np.asarray(value).dtype.kind in "iuf" else str(value))
        return f"{what}.sel({d}={shown}), the ensemble's {d}"
    if isinstance(other.indexes.get(d), pd.MultiIndex):  # a stacked grid
        return f"{what}.unstack({d!r})"
    if other.sizes[d] == 1:
        return f"{what}.isel({d}=0, drop=True)"
    return f"select one {d} of it, or stack the ensemble the same way"


def _head(index) -> str:
    """The first labels of a coordinate, for messages."""
    values = np.asarray(index)
    shown = ", ".join(str(v) for v in values[:3])
    return f"[{shown}{', ...' if values.size > 3 else ''}]"
