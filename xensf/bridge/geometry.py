"""Where the LETKF's local analyses are and how far apart: its localisation geometry.

By default every grid point is one location, shared by all the fields (variables,
levels) there. Three options change that:

- **vertical localisation** (``vertical_radius``): each (grid point, level) is a
  location. A state variable with a level dim has one field per level
  (:mod:`xensf.bridge.layout`); its vertical coordinate is read from the level
  coordinate's units: pressure levels (``hPa``, ``Pa``, ...) become ``ln p`` — so a
  vertical radius is in units of ``ln p`` (0.5: a factor ``e^0.5 ≈ 1.65`` in pressure)
  — and heights or depths (``m``, ``km``) metres. Fields of variables without levels
  (a surface field) get NaN: they are not localised vertically. The taper is
  Gaspari–Cohn in the ellipsoidal distance of
  :class:`~xensf.filters.localization.with_vertical`.
- **variable localisation** (``cross_variable=False``): each (grid point, variable) is
  a location, and an observation reaches only the fields of its own variable
  (:class:`~xensf.filters.localization.within_variable`); with vertical localisation
  too, each (grid point, level, variable).
- **weight interpolation** (``weight_stride``, Yang et al. 2009): the transforms are
  computed at every ``weight_stride``-th row and column of the grid (and the last) and
  interpolated bilinearly, in grid index space, to the points between.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OptionError
from .units import UNITS, parse_units

__all__ = ["coarse_anchors", "field_heights", "letkf_geometry"]


def field_heights(prior: Any, dims: Any, layout: Any) -> tuple[np.ndarray, str]:
    """The vertical coordinate of every field ``(n_fields,)`` and what it is.

    Returns ``(z, kind)``: ``kind`` is ``"log-pressure"`` (``z = ln p``, ``p`` in Pa) or
    ``"height"`` (metres); NaN for the fields of variables without a level dim.

    Raises
    ------
    OptionError
        No variable has levels, a variable has several level dims, a level coordinate
        is missing, has no units or units of neither pressure nor length, or the
        variables mix pressure and height levels.
    """
    z = np.full(layout.n_fields, np.nan)
    kinds = {}
    for name, level_dims in zip(layout.variables, layout.level_dims, strict=True):
        if not level_dims:
            continue
        if len(level_dims) > 1:
            raise OptionError(
                f"vertical_radius: {name!r} has several level dims {list(level_dims)}; "
                "vertical localisation needs one vertical dim per variable"
            )
        values, kind = _vertical_values(prior, level_dims[0])
        first = layout.first_field(name)
        z[first : first + values.size] = values
        kinds[kind] = name
    if not kinds:
        raise OptionError(
            "vertical_radius is given, but no state variable has a level dim to localise "
            "along; leave vertical_radius out"
        )
    if len(kinds) > 1:
        raise OptionError(
            f"vertical_radius: {kinds['log-pressure']!r} is on pressure levels and "
            f"{kinds['height']!r} on height levels; one radius cannot serve both. Analyse "
            "them in separate calls (variables=...)"
        )
    return z, next(iter(kinds))


def _vertical_values(prior: Any, dim: str) -> tuple[np.ndarray, str]:
    """``ln p`` (Pa) or metres of the level coordinate ``dim``, and which."""
    advice = (
        "give it a units attribute: a pressure (hPa, Pa) for pressure levels, a length "
        "(m, km) for heights or depths"
    )
    if dim not in prior.coords:
        raise OptionError(
            f"vertical_radius: the level dim {dim!r} has no coordinate values; assign its "
            f"levels (prior.assign_coords({dim}=...)) and {advice}"
        )
    units = prior[dim].attrs.get("units")
    if not units:
        raise OptionError(f"vertical_radius: the level coordinate {dim!r} has no units; {advice}")
    values = UNITS.Quantity(
        np.asarray(prior[dim].values, dtype=np.float64),
        parse_units(str(units), where=f"the level coordinate {dim!r}"),
    )
    if values.check("[pressure]"):
        pressure = values.to("Pa").magnitude
        if np.any(pressure <= 0) or not np.all(np.isfinite(pressure)):
            raise OptionError(
                f"vertical_radius: the pressure levels {dim!r} must be positive and finite, "
                f"got {prior[dim].values.tolist()}"
            )
        return np.log(pressure), "log-pressure"
    if values.check("[length]"):
        return values.to("m").magnitude, "height"
    raise OptionError(
        f"vertical_radius: the level coordinate {dim!r} is in {units!r}, neither a pressure "
        f"nor a length (model levels?); {advice}"
    )


def letkf_geometry(
    points: np.ndarray,
    n_fields: int,
    obs_locations: np.ndarray,
    obs_rows: np.ndarray,
    grid_size: int,
    distance: str,
    loc_radius: float | None,
    vertical_radius: float | None = None,
    heights: np.ndarray | None = None,
    weight_stride: int = 1,
    grid_shape: tuple[int, int] | None = None,
    anchors: tuple[np.ndarray, ...] | None = None,
    variables: np.ndarray | None = None,
) -> dict[str, Any]:
    """The localisation arguments of :func:`~xensf.filters.letkf_analysis`.

    ``points`` ``(G, k)``: the locations of the analysed grid points (all of the grid or
    one block); ``obs_locations`` ``(M, k)`` and ``obs_rows`` ``(M, s)`` (the operator's
    indices into the whole state, of ``grid_size`` points per field) of the observations
    used. By default all fields of a grid point share one location. With
    ``vertical_radius`` (and ``heights``, one per field) the fields of each level have
    their own copy of the points and the distance is
    :class:`~xensf.filters.localization.with_vertical`; with ``variables`` (the variable
    id of each field: variable localisation) those of each variable have their own copy
    and the distance is :class:`~xensf.filters.localization.within_variable`. With
    ``weight_stride > 1`` (``grid_shape`` the ``(nlat, nlon)`` of ``points``) the
    transforms are interpolated from :func:`coarse_anchors` on every copy; or, for a
    spatial block, from ``anchors`` = :func:`block_anchors`'s ``(extra points,
    anchors, neighbours, weights)``, whose extra points (anchors outside the block) are
    locations without state components.
    """
    n_points = points.shape[0]
    if loc_radius is None:
        return {"loc_radius": None}
    if anchors is not None:
        extra, one_level = anchors[0], anchors[1:]
        points = np.concatenate([points, extra]).astype(np.float64)
    else:
        one_level = _interpolation(weight_stride, grid_shape)
    n_locations = points.shape[0]  # the state's points, then any extra anchors
    vertical = vertical_radius is not None and heights is not None
    if not vertical and variables is None:
        return {
            "loc_radius": loc_radius,
            "state_coords": points,
            "state_location": np.tile(np.arange(n_points), n_fields),
            "obs_coords": obs_locations,
            "distance": distance,
            **_levels(one_level, n_locations, 1),
        }
    from ..filters.localization import with_vertical, within_variable

    # the columns each field adds to its points' coordinates: its height, its variable
    columns = []
    if vertical:
        levels, which = np.unique(heights, return_inverse=True)  # NaNs (no levels) as one
        columns.append((levels[which], which))
        distance = with_vertical(distance, loc_radius / vertical_radius)
    if variables is not None:
        ids = np.asarray(variables, dtype=np.int64)
        columns.append((ids.astype(np.float64), ids))
        distance = within_variable(distance)
    key = np.zeros(n_fields, dtype=np.int64)  # one copy of the points per distinct key
    for _, code in columns:
        key = key * (int(code.max()) + 1) + code
    copies, first, copy_of_field = np.unique(key, return_index=True, return_inverse=True)
    coords = np.concatenate(
        [
            np.column_stack([points, *(np.full(n_locations, v[f]) for v, _ in columns)])
            for f in first
        ]
    ).astype(np.float64)
    location = np.repeat(copy_of_field, n_points) * n_locations + np.tile(
        np.arange(n_points), n_fields
    )
    obs_field = np.asarray(obs_rows)[:, 0] // grid_size
    return {
        "loc_radius": loc_radius,
        "state_coords": coords,
        "state_location": location,
        "obs_coords": np.column_stack([obs_locations, *(v[obs_field] for v, _ in columns)]),
        "distance": distance,
        **_levels(one_level, n_locations, copies.size),
    }


def _interpolation(stride: int, grid_shape) -> tuple[np.ndarray, ...] | None:
    """``(anchors, neighbours, weights)`` of the whole grid for ``stride``, or None."""
    return None if stride == 1 else coarse_anchors(grid_shape, stride)


def _levels(one_level, n_locations: int, n_levels: int) -> dict[str, Any]:
    """``interpolate_from`` for ``n_levels`` copies of ``n_locations`` locations, or
    nothing; ``one_level`` is ``(anchors, neighbours, weights)`` for one copy."""
    if one_level is None:
        return {}
    anchors, neighbours, weights = one_level
    level = np.arange(n_levels)[:, None]
    return {
        "interpolate_from": (
            (level * n_locations + anchors).ravel(),
            (level[:, :, None] * anchors.size + neighbours[None]).reshape(-1, 4),
            np.tile(weights, (n_levels, 1)),
        )
    }


def block_anchors(
    grid_locations: np.ndarray, grid_shape, stride: int, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Weight interpolation for the block ``rows × cols`` of the grid, as the whole grid's.

    The block's points interpolate from the whole grid's anchors (:func:`coarse_anchors`)
    around them, some of which lie outside the block: those become extra locations
    (their coordinates from ``grid_locations``), where a transform is computed (it needs
    only the observations) though there is no state. Returns ``(extra points (E, k),
    anchors, neighbours, weights)`` over the block's points, then the extra ones (each
    its own anchor).
    """
    anchors, neighbours, weights = coarse_anchors(grid_shape, stride)
    nlon = grid_shape[1]
    points = (rows[:, None] * nlon + cols[None, :]).ravel()
    need = np.unique(neighbours[points])  # ids into `anchors` the block interpolates from
    flat = anchors[need]
    i, j = np.divmod(flat, nlon)
    inside = np.isin(i, rows) & np.isin(j, cols)
    local = np.searchsorted(rows, i) * cols.size + np.searchsorted(cols, j)
    extra = flat[~inside]
    location = np.where(inside, local, 0)
    location[~inside] = points.size + np.arange(extra.size)
    own = np.flatnonzero(~inside)  # each extra location: its own anchor, weight 1
    around = np.searchsorted(need, neighbours[points])
    own_rows = np.repeat(own[:, None], 4, axis=1)
    own_weights = np.tile([1.0, 0.0, 0.0, 0.0], (own.size, 1))
    return (
        grid_locations[extra],
        location,
        np.concatenate([around, own_rows]),
        np.concatenate([weights[points], own_weights]),
    )


def coarse_anchors(
    grid_shape: tuple[int, int], stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The anchor points of weight interpolation on a ``(nlat, nlon)`` grid.

    Anchors are the points on every ``stride``-th row and column, and on the last row
    and column. Returns ``(anchors, neighbours, weights)``: the anchors' flat indices
    ``(Pc,)``; for every point (C order) its four surrounding anchors ``(G, 4)``, as
    indices into ``anchors``, and bilinear weights in grid index space ``(G, 4)``
    (exactly 1 on an anchor's own point).
    """
    nlat, nlon = grid_shape

    def axis(n: int):
        marks = np.unique(np.append(np.arange(0, n, stride), n - 1))
        i = np.arange(n)
        lower = np.searchsorted(marks, i, side="right") - 1  # the anchor at or below
        upper = np.minimum(lower + 1, marks.size - 1)
        span = np.maximum(marks[upper] - marks[lower], 1)
        frac = np.where(upper > lower, (i - marks[lower]) / span, 0.0)
        return marks, lower, upper, frac

    rows, r0, r1, fr = axis(nlat)
    cols, c0, c1, fc = axis(nlon)
    anchors = (rows[:, None] * nlon + cols[None, :]).ravel()
    ncols = cols.size

    def at(r, c):  # (nlat, nlon) anchor indices into `anchors`
        return r[:, None] * ncols + c[None, :]

    neighbours = np.stack([at(r0, c0), at(r0, c1), at(r1, c0), at(r1, c1)], -1)
    wr, wc = fr[:, None], fc[None, :]
    weights = np.stack([(1 - wr) * (1 - wc), (1 - wr) * wc, wr * (1 - wc), wr * wc], -1)
    return anchors, neighbours.reshape(-1, 4), weights.reshape(-1, 4)
