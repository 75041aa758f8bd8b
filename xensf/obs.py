"""Observation layouts, observation operators and observation-error specifications.

The xarray layer stacks the state of one analysis time into a vector of length ``d``
made of *fields* — one per (variable, level) — each a latitude × longitude grid
flattened in C order (latitude slow, longitude fast). Field ``f`` occupies
``[f * nlat * nlon, (f + 1) * nlat * nlon)``. This module maps observations onto that
vector, on plain numpy arrays and torch tensors:

* point observations (stations, soundings): :func:`bilinear_weights` (rows on one
  field's grid), :func:`field_rows` (the rows moved to fields of the stacked state: the
  bridge builds its observation plan with it) and :func:`point_operator`, which makes
  them a :class:`~xensf.filters.operators.LinearObservationOperator`;
* observations on the state grid with gaps need no operator of their own: the filters
  take a missing observation as NaN (``gridded_operator`` and ``gather_observations``,
  which padded an index instead, are deprecated);
* observation errors: :func:`resolve_obs_error` turns the user's ``obs_error`` (a
  number, a per-variable mapping, or a relative error such as ``"10%"``) into one
  standard deviation per field;
* coordinates for localisation: :func:`grid_locations` and :func:`point_locations`.

Coordinates are geographic degrees. Latitude may run either way; longitude may be
given in 0–360 or −180–180, for the grid and for the points independently.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch

from .checks import as_python, float_array, is_quantity, require_flag
from .errors import ObservationDomainError, ObservationMismatchError, OptionError, warn_user
from .filters.operators import LinearObservationOperator

__all__ = [
    "bilinear_weights",
    "check_longitude",
    "field_rows",
    "gather_observations",
    "grid_locations",
    "gridded_operator",
    "longitude_order",
    "parse_relative",
    "planar_bilinear_weights",
    "point_locations",
    "point_operator",
    "resolve_obs_error",
]

#: Points this close (degrees) beyond the grid's edge are put on the edge: float32
#: coordinates differ from their float64 spelling by up to a few 1e-6 degrees.
EDGE_TOLERANCE = 1e-5

# Interpolation fractions this close to 0 or 1 are snapped, so that a point on a node
# gets weight exactly 1 even after a longitude shift by 360 rounded its last bit.
_SNAP = 1e-9

# Offending points listed in an ObservationDomainError.
_MAX_LISTED = 5


# --------------------------------------------------------------------------------------
# grid axes
# --------------------------------------------------------------------------------------
def _numbers(values, what: str) -> np.ndarray:
    """``values`` as float64, or an ObservationMismatchError naming ``what`` ('45N'
    crashed numpy; '45' was read as a number, as the accessor no longer does)."""
    return float_array(values, what, ObservationMismatchError, "degrees, or the grid's units")


def _as_coordinate(values, name: str) -> np.ndarray:
    arr = _numbers(values, f"grid {name}")
    if arr.ndim != 1:
        raise ObservationMismatchError(
            f"grid {name} must be a 1-D coordinate, got an array of shape {arr.shape}"
        )
    if arr.size < 2:
        raise ObservationMismatchError(
            f"grid {name} needs at least 2 points to interpolate between, got {arr.size}"
        )
    if not np.all(np.isfinite(arr)):
        raise ObservationMismatchError(f"grid {name} contains NaN or infinite values")
    return arr


class _LatitudeAxis:
    """A strictly monotonic latitude coordinate, ascending or descending."""

    def __init__(self, values) -> None:
        lat = _as_coordinate(values, "latitude")
        step = np.diff(lat)
        if np.all(step > 0):
            self.descending = False
        elif np.all(step < 0):
            self.descending = True
            lat = lat[::-1]
        else:
            raise ObservationMismatchError(
                "grid latitude must be strictly monotonic (ascending or descending), "
                f"got {_preview(values)}"
            )
        self.ascending_values = lat
        self.size = lat.size

    @property
    def extent(self) -> str:
        order = "descending" if self.descending else "ascending"
        lo, hi = self.ascending_values[0], self.ascending_values[-1]
        return f"latitude [{lo:g}, {hi:g}] ({order})"

    def inside(self, lat: np.ndarray) -> np.ndarray:
        lo, hi = self.ascending_values[0], self.ascending_values[-1]
        return (lat >= lo - EDGE_TOLERANCE) & (lat <= hi + EDGE_TOLERANCE)

    def in_polar_cap(self, lat: np.ndarray) -> np.ndarray:
        """Points between the last row and a pole no further from it than the spacing of
        the last two rows (a global grid without pole rows: equiangular or Gaussian
        grids end half a spacing short). Meaningful on a grid that wraps round."""
        grid = self.ascending_values
        caps = []
        for edge, inner, sign in ((grid[-1], grid[-2], 1.0), (grid[0], grid[1], -1.0)):
            width = 90.0 - sign * edge
            near = 0 < width <= abs(edge - inner) * (1 + 1e-3) + EDGE_TOLERANCE
            caps.append(near & (sign * lat > sign * edge) & (sign * lat <= 90.0 + EDGE_TOLERANCE))
        return caps[0] | caps[1]

    def bracket(self, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Grid indices ``(i0, i1)`` around each (in-domain) point and the fraction ``t``."""
        grid = self.ascending_values
        p = np.clip(lat, grid[0], grid[-1])
        i0 = np.clip(np.searchsorted(grid, p, side="right") - 1, 0, self.size - 2)
        t = _snap((p - grid[i0]) / (grid[i0 + 1] - grid[i0]))
        i1 = i0 + 1
        if self.descending:
            i0, i1 = self.size - 1 - i0, self.size - 1 - i1
        return i0, i1, t


def check_longitude(values) -> None:
    """Raise :class:`ObservationMismatchError` unless ``values`` is a longitude axis that
    :func:`bilinear_weights` reads (monotonic round the circle, at most one turn, no
    regional grid sorted across its seam)."""
    _LongitudeAxis(values, None)


def longitude_order(values) -> tuple[bool, bool]:
    """``(descending, global)`` of a longitude axis that :func:`check_longitude` accepts
    (global: its last column neighbours its first round the circle); raises as it."""
    axis = _LongitudeAxis(values, None)
    return axis.descending, axis.periodic


class _LongitudeAxis:
    """A longitude coordinate, monotonic around the circle, global or regional.

    The coordinate is *unwrapped*: a regional grid that crosses the seam of its own
    convention (``350, 355, 0, 5``) is read as ``350, 355, 360, 365``. It must go
    round less than once (a closing duplicate column, ``-180 … 180``, is allowed).
    """

    def __init__(self, values, periodic: bool | None) -> None:
        require_flag(periodic, "periodic", OptionError, optional=True)
        lon = _as_coordinate(values, "longitude")
        for descending in (False, True):
            candidate = lon[::-1] if descending else lon
            step = np.mod(np.diff(candidate), 360.0)
            span = float(step.sum())
            if np.all(step > 0) and span <= 360.0 + EDGE_TOLERANCE:
                self.descending = descending
                break
        else:
            raise ObservationMismatchError(
                "grid longitude must be strictly monotonic (ascending or descending, "
                f"at most one turn round the globe), got {_preview(values)}"
            )
        if step.size >= 2:
            # A regional grid sorted across the seam (-170, -160, 160, 170, 180) hides
            # its outside inside the coordinate: one step far wider than the others
            # and than the way round. Read as a grid, it would be global.
            wide = int(np.argmax(step))
            others = np.delete(step, wide)
            if step[wide] > 2.0 * others.max() and step[wide] > 360.0 - span:
                raise ObservationMismatchError(
                    f"grid longitude jumps {step[wide]:g} degrees between "
                    f"{candidate[wide]:g} and {candidate[wide + 1]:g}, far more than its other "
                    f"steps ({others.max():g} at most): a regional grid that crosses the "
                    "dateline (or 0 meridian) put in sorted order. Keep it in its natural "
                    "order round the globe (e.g. 160 ... 180, -170, -160), or use one "
                    "longitude convention in which it is contiguous (e.g. lon % 360)"
                )
        self.size = lon.size
        self.start = float(candidate[0])
        self.ascending_values = self.start + np.concatenate([[0.0], np.cumsum(step)])
        self.span = span
        # The seam cell joins the last longitude to the first, one turn later.
        self.gap = max(360.0 - span, 0.0)
        detected = self.gap <= float(step.max()) * (1 + 1e-3) + EDGE_TOLERANCE
        self.periodic = detected if periodic is None else bool(periodic)
        self.first, self.last = float(lon[0]), float(lon[-1])

    @property
    def extent(self) -> str:
        kind = "global, wraps at the seam" if self.periodic else "regional"
        order = "descending" if self.descending else "ascending"
        return f"longitude {self.first:g} to {self.last:g} ({order}, {kind})"

    def shift(self, lon: np.ndarray) -> np.ndarray:
        """Each point's longitude moved by a multiple of 360 into ``[start, start + 360)``."""
        p = self.start + np.mod(lon - self.start, 360.0)
        return np.where(p >= self.start + 360.0, self.start, p)

    def inside(self, lon: np.ndarray) -> np.ndarray:
        if self.periodic:
            return np.isfinite(lon)
        p = self.shift(lon)
        last = self.ascending_values[-1]
        # Just below the first node the shift lands one turn later: still on the edge.
        return (p <= last + EDGE_TOLERANCE) | (p >= self.start + 360.0 - EDGE_TOLERANCE)

    def bracket(self, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        grid = self.ascending_values
        last = grid[-1]
        p = self.shift(lon)
        in_seam = p > last
        if not self.periodic:
            p = np.where(p >= self.start + 360.0 - EDGE_TOLERANCE, self.start, p)
            p = np.minimum(p, last)
            in_seam = np.zeros_like(in_seam)
        inner = np.where(in_seam, last, p)
        i0 = np.clip(np.searchsorted(grid, inner, side="right") - 1, 0, self.size - 2)
        i1 = i0 + 1
        t = (inner - grid[i0]) / (grid[i1] - grid[i0])
        # Across the seam: from the last node to the first, ``gap`` degrees further on.
        gap = self.gap if self.gap > 0 else 1.0
        t = np.where(in_seam, (p - last) / gap, t)
        i0 = np.where(in_seam, self.size - 1, i0)
        i1 = np.where(in_seam, 0, i1)
        t = _snap(t)
        if self.descending:
            i0, i1 = self.size - 1 - i0, self.size - 1 - i1
        return i0, i1, t


def _snap(t: np.ndarray) -> np.ndarray:
    t = np.where(np.abs(t) < _SNAP, 0.0, t)
    return np.where(np.abs(1.0 - t) < _SNAP, 1.0, t)


def _preview(values, n: int = 6) -> str:
    arr = np.ravel(np.asarray(values))
    head = ", ".join(f"{v:g}" for v in arr[:n])
    return f"[{head}{', ...' if arr.size > n else ''}] ({arr.size} values)"


def _as_points(lat, lon) -> tuple[np.ndarray, np.ndarray]:
    lat = _numbers(lat, "point latitudes (or y)")
    lon = _numbers(lon, "point longitudes (or x)")
    if lat.shape != lon.shape:
        raise ObservationMismatchError(
            f"point latitudes {lat.shape} and longitudes {lon.shape} must have the same shape"
        )
    return lat, lon


# --------------------------------------------------------------------------------------
# point observations
# --------------------------------------------------------------------------------------
def bilinear_weights(
    grid_lat,
    grid_lon,
    lat,
    lon,
    *,
    periodic: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear interpolation weights from a lat × lon grid to point locations.

    Parameters
    ----------
    grid_lat : array_like, shape (nlat,)
        Latitude of the grid rows, in degrees, strictly ascending or descending
        (regular or not).
    grid_lon : array_like, shape (nlon,)
        Longitude of the grid columns, in degrees, 0–360 or −180–180, strictly
        monotonic round the circle (a regional grid may cross the seam of its
        convention, e.g. ``350, 355, 0, 5``).
    lat, lon : array_like, same shape ``S``
        Point locations in degrees; longitude in either convention.
    periodic : bool, optional
        Whether the grid wraps round the globe, so that a point between the last and
        the first longitude interpolates between those two columns. By default
        detected: the grid is global when the gap from its last longitude round to its
        first is no wider than its widest spacing (to 0.1 %), i.e. spacing × nlon ≈ 360
        for a regular grid.

    Returns
    -------
    indices : numpy.ndarray of int64, shape ``S + (4,)``
        Positions in the grid of one field flattened in C order
        (``ilat * nlon + ilon``), in the order (lat0, lon0), (lat0, lon1),
        (lat1, lon0), (lat1, lon1) of the cell around each point. A point in a polar
        cap (see Notes) has the two columns around its longitude in the last row, then
        the two around the opposite longitude in the same row.
    weights : numpy.ndarray of float64, shape ``S + (4,)``
        Their weights, non-negative and summing to 1. A point on a grid node has
        weight 1 on that node (and 0 on the other three entries).

    Raises
    ------
    ObservationDomainError
        If points lie outside the grid: latitude beyond the grid's first or last row
        (but in a polar cap), longitude outside a regional grid's span, or a NaN
        coordinate. The message
        gives how many, the first few as ``#index (lat, lon)``, and the grid's extent.
        Points within ``EDGE_TOLERANCE`` (1e-5 degrees) of an edge count as on it.
    ObservationMismatchError
        If a grid coordinate is not 1-D, has fewer than 2 values, is not strictly
        monotonic, or if ``lat`` and ``lon`` differ in shape.
    OptionError
        If ``periodic`` is not True, False or None.

    Notes
    -----
    *Polar caps.* A grid that wraps round the globe and whose last row (first row) lies
    no further from the North (South) Pole than the spacing of its last two rows ends
    short of the pole by design (equiangular grids without pole rows, Gaussian grids):
    the cap beyond that row is inside the grid. A point there is interpolated along
    its meridian's great circle across the pole, between the last row at its longitude
    and the last row at the opposite longitude (half and half at the pole itself), so
    a field smooth on the sphere is read as accurately as between two rows. A
    latitude band (a cap wider than a row) or a regional grid has no caps.

    Examples
    --------
    >>> idx, w = bilinear_weights([0.0, 1.0], [0.0, 1.0, 2.0], [0.5], [1.0])
    >>> idx.tolist(), w.tolist()
    ([[1, 2, 4, 5]], [[0.5, 0.0, 0.5, 0.0]])
    """
    lat_axis = _LatitudeAxis(grid_lat)
    lon_axis = _LongitudeAxis(grid_lon, periodic)
    plat, plon = _as_points(lat, lon)
    shape = plat.shape
    plat, plon = plat.ravel(), plon.ravel()

    rows = lat_axis.inside(plat)
    cap = ~rows & lat_axis.in_polar_cap(plat) if lon_axis.periodic else np.zeros_like(rows)
    _check_inside(
        (rows | cap) & lon_axis.inside(plon),
        plat,
        plon,
        f"{lat_axis.extent}, {lon_axis.extent}",
    )

    indices, weights = _cell_corners(
        lat_axis.bracket(plat), lon_axis.bracket(plon), lon_axis.size, plat.shape
    )
    if cap.any():
        indices[cap], weights[cap] = _across_the_pole(lat_axis, lon_axis, plat[cap], plon[cap])
    return indices.reshape(*shape, 4), weights.reshape(*shape, 4)


def _across_the_pole(lat_axis, lon_axis, lat, lon) -> tuple[np.ndarray, np.ndarray]:
    """Rows for points in a polar cap: along their meridian's great circle, between the
    last row at their longitude and the last row at the opposite longitude (half and
    half at the pole), each interpolated between its two columns."""
    north = lat > 0
    edge = np.where(north, lat_axis.ascending_values[-1], lat_axis.ascending_values[0])
    row = np.where(north, lat_axis.size - 1, 0)
    if lat_axis.descending:
        row = lat_axis.size - 1 - row
    beyond = np.clip(np.abs(lat), None, 90.0) - np.abs(edge)
    far = _snap(beyond / (2.0 * (90.0 - np.abs(edge))))  # the share of the opposite side
    k0, k1, s = lon_axis.bracket(lon)
    m0, m1, r = lon_axis.bracket(lon + 180.0)
    base = row * lon_axis.size
    indices = np.stack([base + k0, base + k1, base + m0, base + m1], -1)
    weights = np.stack([(1 - far) * (1 - s), (1 - far) * s, far * (1 - r), far * r], -1)
    return indices.astype(np.int64), weights


def _check_inside(inside: np.ndarray, a: np.ndarray, b: np.ndarray, extent: str) -> None:
    """ObservationDomainError listing the points (coordinates ``a, b``) not ``inside``."""
    if not np.all(inside):
        raise ObservationDomainError.for_points(np.flatnonzero(~inside), a, b, f"grid ({extent})")


def _cell_corners(rows, cols, ncol: int, shape) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and bilinear weights of the four corners around each point."""
    (j0, j1, t), (k0, k1, s) = rows, cols
    indices = np.stack([j0 * ncol + k0, j0 * ncol + k1, j1 * ncol + k0, j1 * ncol + k1], -1)
    weights = np.stack([(1 - t) * (1 - s), (1 - t) * s, t * (1 - s), t * s], -1)
    return indices.astype(np.int64).reshape(*shape, 4), weights.reshape(*shape, 4)


def planar_bilinear_weights(grid_y, grid_x, y, x) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear interpolation weights from a planar ``y × x`` grid to point locations.

    The planar counterpart of :func:`bilinear_weights` (projected coordinates, no
    wrap-around); same return values, indices ``iy * nx + ix``.

    Raises
    ------
    ObservationDomainError
        Points outside the grid's rectangle (or NaN).

    Examples
    --------
    >>> idx, w = planar_bilinear_weights([0.0, 10.0], [0.0, 10.0, 20.0], [5.0], [10.0])
    >>> idx.tolist(), w.tolist()
    ([[1, 2, 4, 5]], [[0.5, 0.0, 0.5, 0.0]])
    """
    y_axis, x_axis = _LatitudeAxis(grid_y), _LatitudeAxis(grid_x)
    py, px = _as_points(y, x)
    shape = py.shape
    py, px = py.ravel(), px.ravel()
    (lo_y, hi_y), (lo_x, hi_x) = (a.ascending_values[[0, -1]] for a in (y_axis, x_axis))
    _check_inside(
        y_axis.inside(py) & x_axis.inside(px),
        py,
        px,
        f"y [{lo_y:g}, {hi_y:g}], x [{lo_x:g}, {hi_x:g}]",
    )
    return _cell_corners(y_axis.bracket(py), x_axis.bracket(px), x_axis.size, shape)


def point_operator(
    grid_lat,
    grid_lon,
    lat,
    lon,
    field_index=0,
    n_fields: int | None = None,
    *,
    periodic: bool | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LinearObservationOperator:
    """Observation operator for point observations of the stacked state.

    Each observation is the bilinear interpolation (:func:`bilinear_weights`) of one
    field of the state vector to its location; field ``f`` occupies
    ``[f * nlat * nlon, (f + 1) * nlat * nlon)``.

    Parameters
    ----------
    grid_lat, grid_lon, lat, lon, periodic
        As for :func:`bilinear_weights`; ``lat``/``lon`` have shape ``S`` (``(m,)``
        for one station list, ``(T, m)`` for one per analysis time).
    field_index : int or array_like of int, broadcastable to ``S``
        The field each observation belongs to (one number: all the same field).
    n_fields : int, optional
        Number of fields in the state; when given, ``field_index`` is checked
        against it.
    transform : callable, optional
        Elementwise map applied after interpolation (e.g. ``torch.arctan``).

    Returns
    -------
    LinearObservationOperator
        ``indices`` int64 and ``weights`` float64 of shape ``S + (4,)`` (the weights
        are cast to the state's dtype when applied).

    Raises
    ------
    ObservationDomainError, ObservationMismatchError
        As for :func:`bilinear_weights`; also a ``field_index`` outside
        ``[0, n_fields)`` or of a shape that does not broadcast to ``S``.
    """
    indices, weights = bilinear_weights(grid_lat, grid_lon, lat, lon, periodic=periodic)
    field_size = np.size(grid_lat) * np.size(grid_lon)
    field = np.asarray(field_index)
    if field.dtype == bool or not np.issubdtype(field.dtype, np.integer):
        raise ObservationMismatchError(f"field_index must be integers, got dtype {field.dtype}")
    try:
        field = np.broadcast_to(field, indices.shape[:-1])
    except ValueError:
        raise ObservationMismatchError(
            f"field_index of shape {field.shape} does not match the {indices.shape[:-1]} "
            "observation points"
        ) from None
    upper = n_fields if n_fields is not None else np.inf
    bad = (field < 0) | (field >= upper)
    if np.any(bad):
        raise ObservationMismatchError(
            f"field_index must lie in [0, {n_fields if n_fields is not None else 'n_fields'}), "
            f"got {np.unique(field[bad])[:_MAX_LISTED].tolist()}"
        )
    indices, weights = field_rows(indices, weights, field, field_size)
    return LinearObservationOperator(
        torch.from_numpy(indices), torch.from_numpy(weights), transform
    )


def field_rows(
    indices: np.ndarray, weights: np.ndarray, field_index, field_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Operator rows of points on one field grid, moved to fields of the stacked state.

    Parameters
    ----------
    indices, weights : ndarray, shape ``S + (k,)``
        Rows on a single field's grid (e.g. from :func:`bilinear_weights`).
    field_index : int or array_like of int
        The field of each row; broadcast against ``S`` with numpy's rules, so a
        ``(F, 1)`` array puts every point on each of ``F`` fields.
    field_size : int
        Grid points per field (``nlat * nlon``).

    Returns
    -------
    indices, weights : ndarray, shape ``broadcast(field_index, S) + (k,)``
        int64 indices into the stacked state and a copy of the weights.
    """
    field = np.asarray(field_index).astype(np.int64)
    shape = np.broadcast_shapes(field.shape, indices.shape[:-1])
    k = indices.shape[-1]
    rows = np.broadcast_to(indices, (*shape, k)) + np.broadcast_to(field, shape)[..., None] * (
        field_size
    )
    return rows.astype(np.int64), np.broadcast_to(weights, (*shape, k)).copy()


# --------------------------------------------------------------------------------------
# gridded observations with gaps
# --------------------------------------------------------------------------------------
def _superseded(name: str) -> None:
    warn_user(
        f"xensf.obs.{name} is deprecated and will be removed in the next release: the "
        "filters take missing observations as NaN in y (or obs_std = inf), so observe every "
        "grid point with an index operator and leave the gaps NaN",
        FutureWarning,
    )


def gridded_operator(mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Index observation operator for observations on the state grid with gaps.

    Deprecated (removed in the next release): the filters take missing observations as
    NaN in ``y``, which needs no padded index.

    Parameters
    ----------
    mask : array_like or torch.Tensor of bool, shape ``(..., n_fields, nlat, nlon)``
        True where a value is observed — typically ``~np.isnan(obs)`` — for one
        analysis (``(n_fields, nlat, nlon)``) or several (``(T, n_fields, nlat, nlon)``,
        any leading dims).

    Returns
    -------
    index : torch.Tensor of int64, shape ``(..., m)``
        Positions of the observed points in the stacked state vector, in increasing
        order. ``m`` is the largest number of observed points over the leading dims;
        analyses with fewer are padded at the end with index 0.
    valid : torch.Tensor of bool, shape ``(..., m)``
        False at the padding. Put NaN in ``y`` there (the filters treat NaN as
        missing); :func:`gather_observations` does it.

    Examples
    --------
    >>> mask = np.zeros((2, 1, 2, 2), bool)
    >>> mask[0, 0, 0, 1] = mask[0, 0, 1, 1] = mask[1, 0, 1, 0] = True
    >>> index, valid = gridded_operator(mask)
    >>> index.tolist(), valid.tolist()
    ([[1, 3], [2, 0]], [[True, True], [True, False]])
    """
    _superseded("gridded_operator")
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise ObservationMismatchError(
            f"the observation mask must be boolean (e.g. ~np.isnan(obs)), got {mask.dtype}"
        )
    if mask.ndim < 3:
        raise ObservationMismatchError(
            "the observation mask must have shape (..., n_fields, nlat, nlon), "
            f"got {tuple(mask.shape)}"
        )
    flat = mask.reshape(*mask.shape[:-3], -1)
    count = flat.sum(-1)
    m = int(count.max()) if count.numel() else 0
    # A stable sort of "unobserved" puts the observed positions first, in order.
    order = torch.argsort((~flat).to(torch.uint8), dim=-1, stable=True)[..., :m]
    valid = torch.arange(m, device=flat.device) < count[..., None]
    index = torch.where(valid, order, torch.zeros((), dtype=order.dtype, device=order.device))
    return index, valid


def gather_observations(obs, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The observation vector matching :func:`gridded_operator`.

    Deprecated with it (removed in the next release).

    Parameters
    ----------
    obs : array_like or torch.Tensor, shape ``(..., n_fields, nlat, nlon)``
        Gridded observations (NaN where unobserved), with the leading dims of the mask.
    index, valid : torch.Tensor, shape ``(..., m)``
        As returned by :func:`gridded_operator`.

    Returns
    -------
    torch.Tensor, shape ``(..., m)``
        ``obs`` at the observed positions, NaN at the padding; floating dtype of
        ``obs`` (float32 for integer input).
    """
    _superseded("gather_observations")
    obs = torch.as_tensor(obs)
    if not obs.is_floating_point():
        obs = obs.to(torch.float32)
    flat = obs.reshape(*obs.shape[:-3], -1)
    if flat.shape[:-1] != index.shape[:-1]:
        raise ObservationMismatchError(
            f"observations of shape {tuple(obs.shape)} do not match an index of shape "
            f"{tuple(index.shape)}: their leading dims must agree"
        )
    y = torch.gather(flat, -1, index.to(flat.device))
    return torch.where(valid.to(flat.device), y, torch.full_like(y, math.nan))


# --------------------------------------------------------------------------------------
# observation errors
# --------------------------------------------------------------------------------------
FieldKey = Hashable
"""A field: a variable name, or a ``(variable, level)`` tuple."""

_ACCEPTED = (
    "obs_error must be a positive number (one standard deviation for every variable, in "
    "the state's units; through the accessor also with its units, '0.5 K'), a relative "
    "error string such as '10%' (that fraction of the "
    "spatial standard deviation of each field's observations), or a mapping "
    "{variable: number or 'P%'} naming every observed variable, whose values may "
    "themselves be mappings {level: number or 'P%'}"
)

_RELATIVE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*%\s*$")


def parse_relative(spec, *, zero: bool = False) -> float | None:
    """The fraction a relative error string stands for, or None if ``spec`` is no string.

    ``"10%"`` gives ``0.1``; spaces around the number and before ``%`` are allowed.
    ``"0%"`` is taken only with ``zero=True`` (a training noise may be nil; an
    observation error may not).

    Raises
    ------
    OptionError
        If ``spec`` is a string but not a positive (or, with ``zero``, nil) percentage.

    Examples
    --------
    >>> parse_relative("10%"), parse_relative(0.5)
    (0.1, None)
    """
    if not isinstance(spec, str):
        return None
    match = _RELATIVE.match(spec)
    if match is None:
        raise OptionError(f"cannot read obs_error {spec!r} as a relative error. {_ACCEPTED}")
    fraction = float(match.group(1)) / 100.0
    if not (math.isfinite(fraction) and (fraction > 0 or (zero and fraction == 0))):
        raise OptionError(f"relative obs_error {spec!r} must be positive. {_ACCEPTED}")
    return fraction


def _variable(field: FieldKey) -> Hashable:
    return field[0] if isinstance(field, tuple) else field


def _level(field: FieldKey):
    return field[1] if isinstance(field, tuple) and len(field) > 1 else None


def _same_level(a, b) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _one_std(value, field: FieldKey, obs_spread, where: str) -> float:
    """A single standard deviation from a number or a relative string."""
    fraction = parse_relative(value)
    if fraction is not None:
        if obs_spread is None or field not in obs_spread:
            raise OptionError(
                f"relative obs_error {value!r}{where} needs the spread of the observations "
                f"of field {field!r}, which was not given"
            )
        spread = float(obs_spread[field])
        if not (math.isfinite(spread) and spread > 0):
            raise OptionError(
                f"relative obs_error {value!r}{where}: the observations of field {field!r} "
                f"have spatial standard deviation {spread:g}, so the error would not be "
                "positive; give an absolute error for it"
            )
        return fraction * spread
    if hasattr(value, "dims") and np.ndim(value) == 0:
        raise OptionError(
            f"obs_error{where} is a 0-d {type(value).__name__}; give a plain number in the "
            "state's units (float(...)), or the error in the observations' attributes"
        )
    if hasattr(value, "dims") or (isinstance(value, np.ndarray) and value.ndim > 0):
        # a field of errors: its home is the observations, not this argument
        shape = dict(value.sizes) if hasattr(value, "sizes") else value.shape
        raise OptionError(
            f"obs_error{where} is a {type(value).__name__} of shape {shape}. Errors that "
            "vary from point to point or time to time go into the observations: a "
            "variable named after the observed one with '_error' (e.g. obs['t_error'] "
            f"beside obs['t']). {_ACCEPTED}"
        )
    if is_quantity(value):
        raise OptionError(
            f"obs_error{where} is the quantity {value!r}; give its magnitude in the state "
            f"variable's units (e.g. q.m_as('K'); for an error, a difference, in degC: "
            f"q.m_as('delta_degC')) or put the error in the observations' attributes"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Real | np.ndarray):
        raise OptionError(f"obs_error{where} is {value!r}. {_ACCEPTED}")
    try:
        std = float(value)
    except OverflowError:  # an integer beyond float range (10**400)
        std = math.inf
    except (TypeError, ValueError):
        raise OptionError(f"obs_error{where} is {value!r}. {_ACCEPTED}") from None
    if not (math.isfinite(std) and std > 0):
        huge = isinstance(value, int) and std == math.inf
        # (str() of an int past 4300 digits raises: count them from its bits)
        digits = int(abs(value).bit_length() * math.log10(2)) + 1 if huge else 0
        shown = f"an integer of about {digits} digits" if huge else repr(value)
        raise OptionError(
            f"obs_error{where} is {shown}, it must be positive and finite. {_ACCEPTED}"
        )
    return std


def resolve_obs_error(
    spec,
    fields: Sequence[FieldKey],
    *,
    obs_spread: Mapping[FieldKey, float] | None = None,
    empty: Callable[[FieldKey], str | None] | None = None,
) -> dict[FieldKey, float]:
    """One observation-error standard deviation per observed field.

    Parameters
    ----------
    spec : float, str or mapping
        The ``obs_error`` the user gave, in one of these forms:

        * a positive number: the same standard deviation for every field, in the
          state's units;
        * a relative error ``"P%"``: for each field, ``P / 100`` times the spatial
          standard deviation of the observations of that field (that variable at that
          level) at the analysis time, as passed in ``obs_spread``;
        * a mapping ``{variable: value}`` naming every observed variable and nothing
          else, each value a positive number or ``"P%"`` — the same at every level —
          or, for a variable with levels, a mapping ``{level: number or "P%"}`` naming
          each observed level.
    fields : sequence of hashable
        The observed fields: a variable name for a variable without levels, or a
        ``(variable, level)`` tuple.
    obs_spread : mapping, optional
        ``{field: spatial standard deviation of its observations}``, needed only for
        relative errors.
    empty : callable, optional
        Asked, only for what a mapping leaves out (a variable, or a field of a variable
        with levels), whether it holds no observation (only NaN): it returns how to
        leave it out of the observations, or None; the error then says so.

    Returns
    -------
    dict
        ``{field: standard deviation}``, in the order of ``fields``.

    Raises
    ------
    OptionError
        For a zero, negative, NaN or unreadable value, a mapping that misses an
        observed variable (or level) or names an unknown one — the message names
        them and lists the accepted forms — or a relative error whose field's
        observations have no positive spread.

    Examples
    --------
    >>> resolve_obs_error({"t": 0.5, "z": "10%"}, [("t", 500), ("z", 500)],
    ...                   obs_spread={("z", 500): 30.0})
    {('t', 500): 0.5, ('z', 500): 3.0}
    """
    fields = list(fields)
    if not isinstance(spec, Mapping):
        return {f: _one_std(spec, f, obs_spread, "") for f in fields}

    variables = list(dict.fromkeys(_variable(f) for f in fields))
    unknown = [k for k in spec if k not in variables]
    missing = [v for v in variables if v not in spec]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"names variables that are not observed: {unknown}")
        if missing:
            parts.append(f"has no entry for the observed variables {missing}")
        raise OptionError(
            f"the obs_error mapping {' and '.join(parts)} (observed: {variables})"
            f"{_empty_hint(missing, empty) if not unknown else ''}. {_ACCEPTED}"
        )

    result = {}
    for field in fields:
        value = spec[_variable(field)]
        where = f" for {_variable(field)!r}"
        if isinstance(value, Mapping):
            result[field] = _level_std(value, field, fields, obs_spread, where, empty)
        else:
            result[field] = _one_std(value, field, obs_spread, where)
    return result


def error_spec_of(spec, field: FieldKey):
    """The part of an ``obs_error`` spec that applies to ``field``: the spec itself, the
    variable's entry of a mapping, or the level's entry of a per-level mapping (levels
    matched as :func:`resolve_obs_error` matches them: ``"500"`` is 500.0); None where
    the mapping has none."""
    if not isinstance(spec, Mapping):
        return spec
    value = spec.get(_variable(field))
    if not isinstance(value, Mapping):
        return value
    return next((v for k, v in value.items() if _same_level(k, _level(field))), None)


def _empty_hint(keys: list, empty) -> str:
    """Where every one of ``keys`` (variables or fields) holds no observation: that they
    hold only NaN, and how to leave them out (``empty``'s answers), else nothing."""
    if empty is None or not keys:
        return ""
    fixes = [empty(k) for k in keys]
    if any(fix is None for fix in fixes):
        return ""
    return f"; they hold no observation, only NaN: leave them out, {' and '.join(dict.fromkeys(fixes))}"


def _level_std(value: Mapping, field, fields, obs_spread, where: str, empty=None) -> float:
    var = _variable(field)
    if not isinstance(field, tuple) or len(field) < 2:
        raise OptionError(
            f"obs_error{where} is a per-level mapping, but {var!r} has no levels. {_ACCEPTED}"
        )
    levels = [_level(f) for f in fields if _variable(f) == var]
    unknown = [k for k in value if not any(_same_level(k, lv) for lv in levels)]
    missing = [lv for lv in levels if not any(_same_level(k, lv) for k in value)]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"names levels that are not observed: {list(map(as_python, unknown))}")
        if missing:
            parts.append(f"has no entry for the observed levels {list(map(as_python, missing))}")
        hint = _empty_hint([(var, lv) for lv in missing], empty) if not unknown else ""
        raise OptionError(f"obs_error{where} {' and '.join(parts)}{hint}. {_ACCEPTED}")
    return _one_std(
        error_spec_of({var: value}, field),
        field,
        obs_spread,
        f"{where} at level {as_python(_level(field))!r}",
    )


# --------------------------------------------------------------------------------------
# locations for localisation
# --------------------------------------------------------------------------------------
def _normalise_longitude(lon: np.ndarray) -> np.ndarray:
    out = np.mod(lon + 180.0, 360.0) - 180.0
    return np.where(out >= 180.0, out - 360.0, out)


def grid_locations(grid_lat, grid_lon, n_fields: int = 1) -> np.ndarray:
    """Latitude and longitude of every component of the stacked state vector.

    Parameters
    ----------
    grid_lat, grid_lon : array_like, shapes (nlat,) and (nlon,)
        The grid's coordinates in degrees.
    n_fields : int, default 1
        Number of fields stacked in the state; the grid's locations are repeated
        for each, so the result lines up with a state vector of length
        ``n_fields * nlat * nlon``.

    Returns
    -------
    numpy.ndarray of float64, shape (n_fields * nlat * nlon, 2)
        Columns latitude, longitude, in the state's flattened order (field slowest,
        then latitude, longitude fastest); longitude in [-180, 180).
    """
    lat = _numbers(grid_lat, "grid latitudes")
    lon = _numbers(grid_lon, "grid longitudes")
    if lat.ndim != 1 or lon.ndim != 1:
        raise ObservationMismatchError(
            f"grid coordinates must be 1-D, got shapes {lat.shape} and {lon.shape}"
        )
    glat, glon = np.meshgrid(lat, _normalise_longitude(lon), indexing="ij")
    one = np.stack([glat.ravel(), glon.ravel()], -1)
    return np.tile(one, (n_fields, 1))


def point_locations(lat, lon) -> np.ndarray:
    """Latitude and longitude of point observations, longitude in [-180, 180).

    Parameters
    ----------
    lat, lon : array_like, same shape ``S``

    Returns
    -------
    numpy.ndarray of float64, shape ``S + (2,)``
    """
    lat, lon = _as_points(lat, lon)
    return np.stack([lat, _normalise_longitude(lon)], -1)
