"""Curvilinear grids: stations interpolated between 2-D latitude/longitude coordinates.

Ocean and regional models (NEMO, ROMS, MOM, rotated-pole atmospheres) write their grid
as two 2-D coordinates, ``lat(y, x)`` and ``lon(y, x)``: the grid's rows and columns
are not parallels and meridians. A station then lies in a quadrilateral cell whose
corners are four grid nodes, and its observation is the bilinear interpolation in the
cell's own index coordinates: the fractions ``(t, s)`` along the rows and columns
solve ``p(t, s) = station`` for the cell's bilinear map ``p``. This module finds the
cell and the fractions:

1. the nearest grid node (a k-d tree over unit vectors, so the dateline and the poles
   are no special case), and the cells around it;
2. each candidate cell's corners in a plane chart centred on the station: the
   latitude/longitude chart itself (longitudes relative to the station's), in which a
   regular grid's cells are rectangles, so that its weights are the regular grid's;
   within 5° of a pole, where that chart is singular, the gnomonic projection onto
   the plane tangent at the station (great circles become straight lines);
3. Newton's method on the bilinear map, which converges in a few steps on convex
   cells; the first candidate whose fractions lie in [0, 1] holds the station.

The weights follow :func:`xensf.obs.bilinear_weights`'s convention (four corners
``(i, j), (i, j+1), (i+1, j), (i+1, j+1)``, flat indices ``i * nx + j``), so the rest
of xensf takes them as it takes those of a regular grid. On a regular grid given as
2-D coordinates they are the regular grid's weights to rounding (tested). A grid whose last column
neighbours its first (a global ocean grid) wraps round (detected, or ``periodic=``);
the tripolar fold of global ocean grids near the North Pole is not joined: a station
there beyond the last row is outside the grid.
"""

from __future__ import annotations

import numpy as np

from .checks import float_array, require_flag
from .errors import ObservationDomainError, ObservationMismatchError, OptionError

__all__ = ["cell_areas", "curvilinear_weights", "is_periodic_columns", "unit_vectors"]

# A fraction this far outside [0, 1] still counts as inside the cell (rounding of the
# projection; a station on an edge is in both cells and either answer is right).
_INSIDE = 1e-7
_NEWTON_STEPS = 12


def unit_vectors(lat, lon) -> np.ndarray:
    """Points on the unit sphere, ``shape + (3,)``, from degrees."""
    phi, lam = np.deg2rad(np.asarray(lat, np.float64)), np.deg2rad(np.asarray(lon, np.float64))
    c = np.cos(phi)
    return np.stack([c * np.cos(lam), c * np.sin(lam), np.sin(phi)], -1)


def _numbers(values, what: str) -> np.ndarray:
    return float_array(values, what, ObservationMismatchError, "degrees")


def _as_grid(grid_lat, grid_lon) -> tuple[np.ndarray, np.ndarray]:
    glat = _numbers(grid_lat, "the grid's latitude")
    glon = _numbers(grid_lon, "the grid's longitude")
    if glat.ndim != 2 or glat.shape != glon.shape:
        raise ObservationMismatchError(
            f"a curvilinear grid needs 2-D latitude and longitude of the same shape, got "
            f"{glat.shape} and {glon.shape}"
        )
    if min(glat.shape) < 2:
        raise ObservationMismatchError(
            f"a curvilinear grid needs at least 2 x 2 points, got {glat.shape}"
        )
    if not (np.isfinite(glat).all() and np.isfinite(glon).all()):
        raise ObservationMismatchError(
            "the 2-D latitude/longitude coordinates hold NaN: give every grid point a "
            "position (also land points, which a mask on the data handles)"
        )
    if np.abs(glat).max() > 90.0 + 1e-9:
        raise ObservationMismatchError(
            f"2-D latitudes must lie in [-90, 90] degrees, got up to {np.abs(glat).max():g}"
        )
    return glat, glon


def is_periodic_columns(grid_lat, grid_lon) -> bool:
    """Whether the grid's last column neighbours its first (a grid round the globe).

    True when the median distance between the two columns' points is at most 1.5
    times the median distance between neighbouring columns.
    """
    glat, glon = _as_grid(grid_lat, grid_lon)
    if glat.shape[1] < 3:
        return False
    r = unit_vectors(glat, glon)
    step = np.median(np.linalg.norm(np.diff(r, axis=1), axis=-1))
    gap = np.median(np.linalg.norm(r[:, -1] - r[:, 0], axis=-1))
    return bool(step > 0 and gap <= 1.5 * step)


def cell_areas(grid_lat, grid_lon, *, relative: bool = True) -> np.ndarray:
    """The area each grid point stands for, ``(ny, nx)``: relative (mean 1), or in
    steradians with ``relative=False``.

    ``|∂r/∂i × ∂r/∂j|`` from centred differences of the points on the unit sphere
    (one-sided at the edges, round the globe for periodic columns): on a regular latitude/longitude grid it is proportional
    to cos(latitude). For area-weighted scores on curvilinear grids.
    """
    glat, glon = _as_grid(grid_lat, grid_lon)
    r = unit_vectors(glat, glon)
    di = np.gradient(r, axis=0)
    if is_periodic_columns(glat, glon):
        dj = (np.roll(r, -1, axis=1) - np.roll(r, 1, axis=1)) / 2
    else:
        dj = np.gradient(r, axis=1)
    area = np.linalg.norm(np.cross(di, dj), axis=-1)
    if not relative:
        return area
    mean = area.mean()
    return area / mean if mean > 0 else np.ones_like(area)


def _tangent_basis(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to each row of ``s`` and to each other."""
    helper = np.where(np.abs(s[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    e1 = np.cross(helper, s)
    e1 /= np.linalg.norm(e1, axis=-1, keepdims=True)
    return e1, np.cross(s, e1)


def _projected(corners, clat, clon, s, slat, slon, e1, e2):
    """The corners ``(m, 4)`` in a plane chart with the station at the origin, ``(m, 4, 2)``.

    Away from the poles the latitude/longitude chart itself (longitude differences
    wrapped to ±180°): in it a regular grid's cells are rectangles, so the fractions
    are a regular grid's. Where a corner or the station lies within 5° of a pole, the
    gnomonic projection onto the plane tangent at the station. Also returns whether
    every corner lies on the station's hemisphere (else the cell is not a candidate).
    """
    dlon = np.mod(clon - slon[:, None] + 180.0, 360.0) - 180.0
    p = np.stack([dlon, clat - slat[:, None]], -1)
    polar = (np.abs(clat) > 85.0).any(axis=1) | (np.abs(slat) > 85.0)
    dot = np.einsum("mkc,mc->mk", corners, s)
    front = (dot > 1e-12).all(axis=1)
    if polar.any():
        q = corners[polar] / np.where(front[polar, None], dot[polar], 1.0)[..., None]
        p[polar] = np.stack(
            [np.einsum("mkc,mc->mk", q, e1[polar]), np.einsum("mkc,mc->mk", q, e2[polar])], -1
        )
    return p, front


def _fractions(p: np.ndarray, front: np.ndarray):
    """(t, u) of the origin in each cell ``p`` ``(m, 4, 2)``, and whether it is inside."""
    p00, p01, p10, p11 = p[:, 0], p[:, 1], p[:, 2], p[:, 3]
    a, b, c, d = p00, p01 - p00, p10 - p00, p11 - p01 - p10 + p00
    m = p.shape[0]
    t = np.full(m, 0.5)
    u = np.full(m, 0.5)
    for _ in range(_NEWTON_STEPS):
        f = a + b * u[:, None] + c * t[:, None] + d * (u * t)[:, None]
        ju = b + d * t[:, None]  # dp/du
        jt = c + d * u[:, None]  # dp/dt
        det = ju[:, 0] * jt[:, 1] - ju[:, 1] * jt[:, 0]
        det = np.where(np.abs(det) > 1e-300, det, 1e-300)
        du = (f[:, 0] * jt[:, 1] - f[:, 1] * jt[:, 0]) / det
        dt = (ju[:, 0] * f[:, 1] - ju[:, 1] * f[:, 0]) / det
        u = np.clip(u - du, -1.0, 2.0)
        t = np.clip(t - dt, -1.0, 2.0)
    f = a + b * u[:, None] + c * t[:, None] + d * (u * t)[:, None]
    size = np.linalg.norm(p11 - p00, axis=-1) + np.linalg.norm(p01 - p10, axis=-1)
    solved = np.linalg.norm(f, axis=-1) <= 1e-9 * np.maximum(size, 1e-300)
    inside = (
        front
        & solved
        & (t >= -_INSIDE)
        & (t <= 1 + _INSIDE)
        & (u >= -_INSIDE)
        & (u <= 1 + _INSIDE)
    )
    return np.clip(t, 0.0, 1.0), np.clip(u, 0.0, 1.0), inside


def curvilinear_weights(
    grid_lat, grid_lon, lat, lon, *, periodic: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear interpolation weights from a curvilinear grid to point locations.

    Parameters
    ----------
    grid_lat, grid_lon : array_like, shape (ny, nx)
        Latitude and longitude of every grid point, in degrees (any longitude
        convention, and it may jump by 360 inside the grid).
    lat, lon : array_like, same shape ``S``
        Point locations in degrees.
    periodic : bool, optional
        Whether the last column neighbours the first, so that points between them are
        inside; default detected (:func:`is_periodic_columns`).

    Returns
    -------
    indices : numpy.ndarray of int64, shape ``S + (4,)``
        Flat positions ``i * nx + j`` of the cell's corners (i, j), (i, j+1),
        (i+1, j), (i+1, j+1).
    weights : numpy.ndarray of float64, shape ``S + (4,)``
        ``(1−t)(1−u), (1−t)u, t(1−u), tu`` with ``t`` the fraction along the rows and
        ``u`` along the columns: non-negative, summing to 1.

    Raises
    ------
    ObservationDomainError
        Points in no cell of the grid (or with NaN coordinates): how many, the first
        few, and the grid's latitude and longitude range.
    ObservationMismatchError
        Grid coordinates that are not two 2-D arrays of the same shape, at least 2 x 2,
        finite, or points whose latitude and longitude differ in shape.
    OptionError
        ``periodic`` that is not True, False or None.

    Examples
    --------
    >>> lat, lon = np.meshgrid([0.0, 1.0], [0.0, 1.0, 2.0], indexing="ij")
    >>> idx, w = curvilinear_weights(lat, lon, [0.5], [1.0])
    >>> idx.tolist(), np.round(w, 6).tolist()
    ([[0, 1, 3, 4]], [[0.0, 0.5, 0.0, 0.5]])
    """
    from scipy.spatial import cKDTree

    require_flag(periodic, "periodic", OptionError, optional=True)
    glat, glon = _as_grid(grid_lat, grid_lon)
    plat = _numbers(lat, "point latitudes")
    plon = _numbers(lon, "point longitudes")
    if plat.shape != plon.shape:
        raise ObservationMismatchError(
            f"point latitudes {plat.shape} and longitudes {plon.shape} must have the same shape"
        )
    shape = plat.shape
    plat, plon = plat.ravel(), plon.ravel()
    ny, nx = glat.shape
    wrap = is_periodic_columns(glat, glon) if periodic is None else bool(periodic)
    nodes = unit_vectors(glat, glon)
    finite = np.isfinite(plat) & np.isfinite(plon) & (np.abs(plat) <= 90.0)
    s = unit_vectors(np.where(finite, plat, 0.0), np.where(finite, plon, 0.0))
    _, nearest = cKDTree(nodes.reshape(-1, 3)).query(s)
    ni, nj = np.divmod(np.asarray(nearest, np.int64), nx)
    e1, e2 = _tangent_basis(s)

    found = np.zeros(s.shape[0], bool)
    cell_i = np.zeros(s.shape[0], np.int64)
    cell_j = np.zeros(s.shape[0], np.int64)
    frac_t = np.zeros(s.shape[0])
    frac_u = np.zeros(s.shape[0])
    # the cells round the nearest node first, then a wider ring (skewed cells)
    offsets = [(di, dj) for di in (-1, 0) for dj in (-1, 0)]
    offsets += [(di, dj) for di in (-2, -1, 0, 1) for dj in (-2, -1, 0, 1)
                if (di, dj) not in offsets]  # fmt: skip
    last_j = nx - 1 if wrap else nx - 2
    for di, dj in offsets:
        todo = np.flatnonzero(finite & ~found)
        if todo.size == 0:
            break
        i = ni[todo] + di
        j = nj[todo] + dj
        if wrap:
            j = np.mod(j, nx)
        ok = (i >= 0) & (i <= ny - 2) & (j >= 0) & (j <= last_j)
        todo, i, j = todo[ok], i[ok], j[ok]
        if todo.size == 0:
            continue
        j1 = (j + 1) % nx
        ci, cj = np.stack([i, i, i + 1, i + 1], 1), np.stack([j, j1, j, j1], 1)
        p, front = _projected(
            nodes[ci, cj], glat[ci, cj], glon[ci, cj],
            s[todo], plat[todo], plon[todo], e1[todo], e2[todo],
        )  # fmt: skip
        t, u, inside = _fractions(p, front)
        hit = todo[inside]
        found[hit] = True
        cell_i[hit], cell_j[hit] = i[inside], j[inside]
        frac_t[hit], frac_u[hit] = t[inside], u[inside]

    if not found.all():
        raise ObservationDomainError.for_points(
            np.flatnonzero(~found), plat, plon,
            f"curvilinear grid (latitude {glat.min():g} to {glat.max():g}, longitude "
            f"{glon.min():g} to {glon.max():g}, {ny} x {nx} points"
            f"{', periodic' if wrap else ''})",
        )  # fmt: skip
    j1 = (cell_j + 1) % nx
    indices = np.stack(
        [
            cell_i * nx + cell_j,
            cell_i * nx + j1,
            (cell_i + 1) * nx + cell_j,
            (cell_i + 1) * nx + j1,
        ],
        -1,
    )
    t, u = frac_t, frac_u
    weights = np.stack([(1 - t) * (1 - u), (1 - t) * u, t * (1 - u), t * u], -1)
    return indices.reshape(*shape, 4), weights.reshape(*shape, 4)
