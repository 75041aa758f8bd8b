"""The state vector: how variables and levels of one analysis time become ``(N, d)``.

Every state variable has dims ``(member, *levels, lat, lon)`` once the time dim is
peeled off. Each combination of variable and level values is a *field*, a lat × lon
grid; the state vector is the fields one after another, each flattened in C order
(latitude slow, longitude fast). Field ``f`` occupies ``[f * G, (f + 1) * G)`` with
``G = nlat * nlon``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

__all__ = ["StateLayout"]


@dataclass(frozen=True)
class StateLayout:
    """Variables, their level dims and the grid shape of the stacked state vector."""

    variables: tuple[str, ...]
    level_dims: tuple[tuple[str, ...], ...]  # per variable
    level_shapes: tuple[tuple[int, ...], ...]  # per variable
    grid_shape: tuple[int, int]

    @property
    def grid_size(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    def n_fields_of(self, variable: str) -> int:
        return prod(self.level_shapes[self.variables.index(variable)])

    @property
    def n_fields(self) -> int:
        return sum(prod(s) for s in self.level_shapes)

    @property
    def size(self) -> int:
        return self.n_fields * self.grid_size

    def first_field(self, variable: str) -> int:
        """Index of the variable's first field (its level combinations follow in C order)."""
        i = self.variables.index(variable)
        return sum(prod(s) for s in self.level_shapes[:i])

    def field_of_variable(self) -> np.ndarray:
        """``(n_fields,)`` index of the variable each field belongs to."""
        return np.repeat(np.arange(len(self.variables)), [prod(s) for s in self.level_shapes])

    def stack(self, blocks: list[np.ndarray]) -> np.ndarray:
        """``(T, N, *levels, lat, lon)`` arrays, one per variable -> ``(T, N, d)``."""
        flat = [b.reshape(*b.shape[:2], -1) for b in blocks]
        return np.concatenate(flat, axis=-1)

    def unstack(self, x: np.ndarray) -> list[np.ndarray]:
        """Inverse of :meth:`stack`."""
        out = []
        start = 0
        for shape in self.level_shapes:
            size = prod(shape) * self.grid_size
            out.append(
                x[..., start : start + size].reshape(*x.shape[:2], *shape, *self.grid_shape)
            )
            start += size
        return out


def grid_field(value, prior, dims, layout: StateLayout, what: str) -> np.ndarray | float:
    """An option given on the horizontal grid, as ``(G,)`` float64 in the layout's order.

    ``value`` is a number (returned as a float) or a DataArray with the prior's latitude
    and longitude dims (and at most a length-1 time dim), on the prior's coordinates;
    ``what`` names the option in the errors.
    """
    from ..errors import OptionError
    from .grid import same_points
    from .orientation import in_the_state_order
    from .seam import folded

    grid = (dims.lat, dims.lon)
    if not hasattr(value, "dims"):
        if np.ndim(value) != 0:
            raise OptionError(
                f"{what} must be a number or a DataArray on the state's {list(grid)} grid, "
                f"got an array of shape {np.shape(value)}"
            )
        return float(value)
    if dims.time is not None and dims.time in value.dims and value.sizes[dims.time] == 1:
        value = value.isel({dims.time: 0}, drop=True)
    value = folded(value, dims)  # a closing column is its first (the state's is folded)
    value = in_the_state_order(value, prior, dims)  # read by its labels, as data are
    if set(value.dims) != set(grid):
        raise OptionError(
            f"{what} has dims {list(value.dims)}; it must have the state's grid dims "
            f"{list(grid)} (and at most a length-1 {dims.time!r})"
        )
    for dim in grid:
        if dim in value.coords and dim in prior.coords:
            ours, theirs = np.asarray(prior[dim].values), np.asarray(value[dim].values)
            if not same_points(theirs, ours):
                raise OptionError(
                    f"{what} is on other {dim!r} coordinates than the state; interpolate it "
                    f"to the state's grid first (e.g. .interp_like(prior))"
                )
    values = np.asarray(value.transpose(*grid).values, dtype=np.float64)
    if values.shape != layout.grid_shape:
        raise OptionError(
            f"{what} has the grid shape {values.shape}, the state {layout.grid_shape}"
        )
    return values.ravel()
