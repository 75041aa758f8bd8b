"""The closing column of a global grid: a longitude coordinate that ends on the meridian
it starts from (``-180 … 180``, ``0 … 360``), as plotting tools (a cyclic point) and
some model output write it.

The two columns are one place. Analysed as two, they would be observed twice (LETKF
counts a gridded product's seam twice, pulling it twice as far) and drawn apart (EnSF's
noise falls on each, so one place leaves with two values). So a full-space analysis
folds the closing column into its twin, the first column: the state is analysed
without it, and observations with one are read with the closing column's values where
the twin has none (the twin's where both have one: a closing column is a copy). The
twin's analysis is written to both columns; the prior's other variables (bounds, static
fields) come back as given. A latent model's grid is the model's, closing column and
all, so the latent methods analyse the grid as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from ..errors import XensfError
from .dims import EnsembleDims
from .grid import grid_coords

__all__ = ["ClosingColumn", "closing_column", "folded"]


@dataclass(frozen=True)
class ClosingColumn:
    """The last of ``size`` columns along ``lon`` is the first one's meridian again;
    ``original`` is the Dataset it was found in (to :meth:`unfold` an analysis into)."""

    lon: str
    size: int
    original: xr.Dataset | xr.DataArray = field(repr=False, compare=False)

    def fold(self, obj, merge: bool = False):
        """``obj`` without the closing column; with ``merge``, its data variables read
        in the first column the closing column's values where the first has NaN."""
        n = self.size
        body = obj.isel({self.lon: slice(0, n - 1)})
        if not merge:
            return body
        # The closing column where the first was, the others as they are.
        twin = obj.isel({self.lon: np.r_[n - 1, 1 : n - 1]})
        if isinstance(obj, xr.DataArray):
            return _filled(body, twin)
        for name in list(body.data_vars):
            body[name] = _filled(body[name], twin[name])
        return body

    def unfold(self, result: xr.Dataset, names) -> xr.Dataset:
        """The ``original`` Dataset with the variables ``names`` of ``result`` (analysed
        on the folded grid) written to it, the first column's values to the closing
        column too, in the chunks of the original's grid."""
        index = np.r_[0 : self.size - 1, 0]
        out = self.original.copy()
        chunks = next(
            (v.chunksizes[self.lon] for v in self.original.data_vars.values()
             if v.chunks is not None and self.lon in v.dims),
            None,
        )  # fmt: skip
        for name in names:
            var = result[name].variable
            if self.lon in var.dims:
                var = var.isel({self.lon: index})
                if var.chunks is not None:
                    var = var.chunk({self.lon: chunks or self.size})
            out[name] = var
        return out


def _filled(da: xr.DataArray, twin: xr.DataArray) -> xr.DataArray:
    if da.dtype.kind not in "fc":  # a wrong kind of observation is refused later
        return da
    return da.fillna(twin.transpose(*da.dims).data)


def closing_column(obj, dims: EnsembleDims) -> ClosingColumn | None:
    """The :class:`ClosingColumn` of ``obj``'s regular latitude/longitude grid, or None
    where it has none (or no such grid: point observations, a curvilinear or planar
    grid, a longitude that is refused later)."""
    from ..obs import longitude_order

    if not isinstance(obj, xr.Dataset | xr.DataArray) or dims.lat is None or dims.lon is None:
        return None
    if dims.lat not in obj.dims or dims.lon not in obj.dims:
        return None
    grid = grid_coords(obj, dims)
    if not grid.known or grid.curvilinear or not grid.geographic:
        return None
    lon = np.asarray(grid.lon, np.float64)
    if lon.ndim != 1 or lon.size < 3 or not np.all(np.isfinite(lon)):
        return None
    try:
        descending, _ = longitude_order(lon)
    except XensfError:
        return None
    # Round the circle eastwards (the closing column may be written 0 again, not 360).
    steps = np.mod(np.diff(lon[::-1] if descending else lon), 360.0)
    if abs(float(steps.sum()) - 360.0) > 0.01 * float(np.median(steps)):
        return None
    return ClosingColumn(str(dims.lon), int(lon.size), obj)


def folded(obj, dims: EnsembleDims):
    """Observations with their own closing column folded into their first (see the
    module's docstring); anything else as given."""
    seam = closing_column(obj, dims)
    return obj if seam is None else seam.fold(obj, merge=True)
