"""One order for the points of a regular grid and its levels, whatever order the data
come in.

EnSF's random draws fall on the state's components in their order, and its noise tiles
and ``local-mixture`` windows cut the grid from its first row and column. The same
ensemble with latitude from north to south (ERA5 as the CDS and WeatherBench2 store it)
or from south to north, a global grid with longitude from -180 or from 0, or levels
850, 500 hPa against 500, 850 would otherwise get other draws for one seed: another
analysis of the same data. So a method whose analysis follows the state's order
(:attr:`Method.follows_grid_order`) analyses the state in one orientation, latitude (or
y), longitude (or x) and numeric levels ascending, a global longitude starting from the
column nearest 0°, and the analysis is put back in the order the data came in. A
regional grid keeps its own first column (its natural order across the dateline, ``160
… 180, -170``, is the only one); a curvilinear grid has no order to choose and is
analysed as it is (its levels still ascending).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..errors import XensfError
from .dims import EnsembleDims
from .grid import GridCoords, axis_order, grid_coords, same_points

__all__ = ["Orientation", "canonical_orientation", "in_the_state_order", "on_the_grid"]


@dataclass(frozen=True)
class Orientation:
    """How to put a state in its canonical order (:meth:`apply`) and back (:meth:`undo`):
    reverse the dims ``reverse``, then roll ``lon`` left by ``lon_shift``."""

    reverse: tuple[str, ...]
    lon: str
    lon_shift: int

    def apply(self, obj):
        """``obj`` (a Dataset or DataArray) in the canonical order; dims that ``obj``
        lacks (the grid of point observations) are left alone."""
        for dim in self.reverse:
            obj = _reversed(obj, dim)
        return _roll(obj, self.lon, -self.lon_shift)

    def undo(self, obj):
        """``obj`` in the canonical order put back in the order the data came in."""
        obj = _roll(obj, self.lon, self.lon_shift)
        for dim in self.reverse:
            obj = _reversed(obj, dim)
        return obj


def canonical_orientation(
    prior: xr.Dataset, obs, dims: EnsembleDims, grid: GridCoords
) -> Orientation | None:
    """The :class:`Orientation` that puts ``prior`` in canonical order, or None where it
    is in that order already or has none to choose. The grid keeps its order where it
    has none to choose (a curvilinear grid, unknown or non-monotonic coordinates) or
    where gridded observations are not on the prior's points (which
    :func:`~xensf.bridge.observations.prepare_observations` refuses in the data's own
    order); levels (observations are matched to them by value) are put in order
    whatever the grid."""
    reverse, shift = [], 0
    order = _grid_order(dims, grid)
    if order is not None and on_the_grid(obs, prior, dims):
        reverse, shift = order
    reverse += _descending_levels(prior, dims)
    if not (reverse or shift):
        return None
    return Orientation(tuple(reverse), dims.lon, shift)


def _grid_order(dims: EnsembleDims, grid: GridCoords) -> tuple[list[str], int] | None:
    """The grid dims to reverse and the longitude shift, or None (no order to choose)."""
    if dims.lat is None or dims.lon is None or not grid.known or grid.curvilinear:
        return None
    lat = np.asarray(grid.lat, np.float64)
    lon = np.asarray(grid.lon, np.float64)
    if lat.ndim != 1 or lon.ndim != 1 or not (_monotonic(lat) and lon.size):
        return None
    reverse = [dims.lat] if lat.size > 1 and lat[0] > lat[-1] else []
    if lon.size == 1:
        return reverse, 0
    if not grid.geographic:
        if not _monotonic(lon):
            return None
        return reverse + ([dims.lon] if lon[0] > lon[-1] else []), 0
    from ..obs import longitude_order

    try:
        descending, periodic = longitude_order(lon)
    except XensfError:  # refused later, in the data's own order
        return None
    eastward = lon[::-1] if descending else lon
    shift = int(np.argmin(np.mod(eastward, 360.0))) if periodic else 0
    return reverse + ([dims.lon] if descending else []), shift


def _descending_levels(prior: xr.Dataset, dims: EnsembleDims) -> list[str]:
    """The prior's other dims (levels) whose numeric coordinate runs downwards."""
    out = []
    for d in prior.dims:
        if d in (dims.member, dims.lat, dims.lon, dims.time) or d not in prior.indexes:
            continue
        values = np.asarray(prior[d].values)
        if values.dtype.kind in "iuf" and values.size > 1 and bool(np.all(np.diff(values) < 0)):
            out.append(str(d))
    return out


def _monotonic(values: np.ndarray) -> bool:
    step = np.diff(values)
    return bool(np.all(step > 0) or np.all(step < 0))


def on_the_grid(obs, prior: xr.Dataset, dims: EnsembleDims) -> bool:
    """Whether ``obs`` can be put in the prior's canonical order with it: point
    observations (no grid dims), or gridded ones on the prior's points in its order."""
    if not isinstance(obs, (xr.Dataset, xr.DataArray)):  # refused later, with the fix
        return False
    if dims.lat not in obs.dims and dims.lon not in obs.dims:
        return True
    for d in (dims.lat, dims.lon):
        if d not in obs.dims or obs.sizes[d] != prior.sizes[d]:
            return False
        if d in obs.coords and d in prior.coords:
            if not same_points(obs[d].values, prior[d].values):
                return False
    return True


def in_the_state_order(obs, prior: xr.Dataset, dims: EnsembleDims):
    """Gridded observations on the prior's points in another order (latitude north to
    south against south to north, longitude from -180 against from 0, or rolled) put in
    the prior's order, labelled with its coordinates: xarray matches data by label, and
    so does an analysis. Anything else is returned as it is (observations off the
    prior's points are refused later, with the fix)."""
    if not isinstance(obs, (xr.Dataset, xr.DataArray)):
        return obs
    if dims.lat not in obs.dims or dims.lon not in obs.dims:
        return obs
    grid, theirs = grid_coords(prior, dims), grid_coords(obs, dims)
    if not (grid.known and theirs.known) or grid.curvilinear or theirs.curvilinear:
        return obs
    index = {}
    for dim, ours, given, longitude in (
        (dims.lat, grid.lat, theirs.lat, False),
        (dims.lon, grid.lon, theirs.lon, grid.geographic),
    ):
        if same_points(given, ours):
            continue
        order = axis_order(ours, given, longitude)
        if order is None:
            return obs
        index[dim] = order
    if not index:
        return obs
    labels = {n: prior[n].variable for n in grid.names if set(prior[n].dims) & set(index)}
    return obs.isel(index).assign_coords(labels)


def _reversed(obj, dim: str):
    if not _has_dim(obj, dim):
        return obj
    return obj.isel({dim: slice(None, None, -1)})


def _roll(obj, dim: str, shift: int):
    """``obj`` rolled along ``dim`` (coordinates too), each dask-backed variable in its
    own chunks again: dask cuts a rolled chunk in two, and a grid in one chunk must
    not turn into spatial blocks."""
    if not shift or not _has_dim(obj, dim):
        return obj
    rolled = obj.roll({dim: shift}, roll_coords=True)
    if isinstance(obj, xr.DataArray):
        return _rechunked_like(rolled, obj, dim)
    for name, var in obj.variables.items():
        if var.chunks is not None and dim in var.dims and name not in obj.indexes:
            again = _rechunked_like(rolled[name], obj[name], dim)
            if name in obj.coords:
                rolled = rolled.assign_coords({name: again})
            else:
                rolled[name] = again
    return rolled


def _has_dim(obj, dim: str) -> bool:
    """Whether ``obj`` is an xarray object along ``dim`` (anything else, such as a
    DataFrame given as observations, is refused later with the fix)."""
    return isinstance(obj, xr.Dataset | xr.DataArray) and dim in obj.dims


def _rechunked_like(rolled, original, dim: str):
    if original.chunks is None:
        return rolled
    return rolled.chunk({dim: original.chunksizes[dim]})
