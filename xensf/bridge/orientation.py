"""One order for the points of a regular grid, whatever order the data come in.

EnSF's random draws fall on the grid's points in the state's order, and its noise tiles
and ``local-mixture`` windows cut the grid from its first row and column. The same
ensemble with latitude from north to south (ERA5 as the CDS and WeatherBench2 store it)
or from south to north, or a global grid with longitude from -180 or from 0, would
otherwise get other draws for one seed: another analysis of the same data. So a method
whose analysis follows the grid's order (:attr:`Method.follows_grid_order`) analyses a
regular grid in one orientation, latitude (or y) ascending and longitude (or x)
ascending, a global longitude starting from the column nearest 0°, and the analysis is
put back in the order the data came in. A regional grid keeps its own first column (its
natural order across the dateline, ``160 … 180, -170``, is the only one); a curvilinear
grid has no order to choose and is analysed as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..errors import XensfError
from .dims import EnsembleDims
from .grid import GridCoords, same_points

__all__ = ["Orientation", "canonical_orientation"]


@dataclass(frozen=True)
class Orientation:
    """How to put a grid in its canonical order (:meth:`apply`) and back (:meth:`undo`):
    reverse latitude, reverse longitude, then roll longitude left by ``lon_shift``."""

    lat: str
    lon: str
    reverse_lat: bool
    reverse_lon: bool
    lon_shift: int

    def apply(self, obj):
        """``obj`` (a Dataset or DataArray) in the canonical order; dims of the grid
        that ``obj`` lacks (point observations) are left alone."""
        obj = _reversed(obj, self.lat, self.reverse_lat)
        obj = _reversed(obj, self.lon, self.reverse_lon)
        return _roll(obj, self.lon, -self.lon_shift)

    def undo(self, obj):
        """``obj`` in the canonical order put back in the order the data came in."""
        obj = _roll(obj, self.lon, self.lon_shift)
        obj = _reversed(obj, self.lon, self.reverse_lon)
        return _reversed(obj, self.lat, self.reverse_lat)


def canonical_orientation(
    prior: xr.Dataset, obs, dims: EnsembleDims, grid: GridCoords
) -> Orientation | None:
    """The :class:`Orientation` that puts ``prior``'s regular grid in canonical order, or
    None where it is in that order already or has none to choose (a curvilinear grid,
    unknown or non-monotonic coordinates, or gridded observations not on the prior's
    points, which :func:`~xensf.bridge.observations.prepare_observations` refuses in
    the data's own order)."""
    if dims.lat is None or dims.lon is None or not grid.known or grid.curvilinear:
        return None
    lat = np.asarray(grid.lat, np.float64)
    lon = np.asarray(grid.lon, np.float64)
    if lat.ndim != 1 or lon.ndim != 1 or not (_monotonic(lat) and lon.size):
        return None
    reverse_lat = lat.size > 1 and bool(lat[0] > lat[-1])
    if lon.size == 1:
        reverse_lon, shift = False, 0
    elif grid.geographic:
        from ..obs import longitude_order

        try:
            reverse_lon, periodic = longitude_order(lon)
        except XensfError:  # refused later, in the data's own order
            return None
        eastward = lon[::-1] if reverse_lon else lon
        shift = int(np.argmin(np.mod(eastward, 360.0))) if periodic else 0
    else:
        if not _monotonic(lon):
            return None
        reverse_lon = lon.size > 1 and bool(lon[0] > lon[-1])
        shift = 0
    if not (reverse_lat or reverse_lon or shift):
        return None
    if not _on_the_grid(obs, prior, dims):
        return None
    return Orientation(dims.lat, dims.lon, reverse_lat, reverse_lon, shift)


def _monotonic(values: np.ndarray) -> bool:
    step = np.diff(values)
    return bool(np.all(step > 0) or np.all(step < 0))


def _on_the_grid(obs, prior: xr.Dataset, dims: EnsembleDims) -> bool:
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


def _reversed(obj, dim: str, reverse: bool):
    if not reverse or dim not in obj.dims:
        return obj
    return obj.isel({dim: slice(None, None, -1)})


def _roll(obj, dim: str, shift: int):
    """``obj`` rolled along ``dim`` (coordinates too), each dask-backed variable in its
    own chunks again: dask cuts a rolled chunk in two, and a grid in one chunk must
    not turn into spatial blocks."""
    if not shift or dim not in obj.dims:
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


def _rechunked_like(rolled, original, dim: str):
    if original.chunks is None:
        return rolled
    return rolled.chunk({dim: original.chunksizes[dim]})
