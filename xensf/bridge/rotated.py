"""Rotated-pole grids: latitude and longitude in a frame whose pole is not the Earth's.

Regional climate models (the CORDEX domains, COSMO-CLM, HIRHAM, RACMO) write their
grid as ``rlat``/``rlon``, with ``standard_name`` ``grid_latitude``/``grid_longitude``:
a regular latitude/longitude grid of a sphere turned so that the domain sits on the
frame's equator. The CF ``grid_mapping`` variable (``grid_mapping_name:
rotated_latitude_longitude``) says where the frame's north pole lies
(``grid_north_pole_latitude``, ``grid_north_pole_longitude``) and, optionally, the
Earth's north pole's longitude in the frame (``north_pole_grid_longitude``, default 0).

A station's position is geographic; read as a position in the frame it would land
somewhere else altogether (Paris would sit off West Africa on the EURO-CORDEX grid).
So point observations are turned into the frame (:meth:`RotatedPole.to_frame`), and
everything else stays in it: the turn keeps great-circle distances and areas, so the
LETKF's localisation and the scores' cos(latitude) weights are the same in either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..checks import is_real
from ..curvilinear import unit_vectors
from ..errors import ObservationMismatchError

__all__ = ["FRAME_NAMES", "RotatedPole", "in_the_frame", "is_in_the_frame", "rotated_pole"]

#: The CF grid mapping of a rotated-pole grid.
ROTATED = "rotated_latitude_longitude"

#: ``standard_name`` of latitude and longitude in the rotated frame.
FRAME_NAMES = ("grid_latitude", "grid_longitude")


@dataclass(frozen=True)
class RotatedPole:
    """Where the frame's north pole lies on the Earth (degrees), and the longitude of
    the Earth's north pole in the frame."""

    lat: float
    lon: float
    grid_lon: float = 0.0

    def _axes(self) -> np.ndarray:
        """The frame's x (its origin), y and z (its pole) axes as rows, geographic."""
        z = unit_vectors(self.lat, self.lon)
        x = unit_vectors(90.0 - self.lat, self.lon + 180.0)
        return np.stack([x, np.cross(z, x), z])

    def to_frame(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        """Geographic latitude and longitude (degrees) in the frame; longitude in
        [-180, 180)."""
        v = unit_vectors(lat, lon) @ self._axes().T
        rlat = np.rad2deg(np.arcsin(np.clip(v[..., 2], -1.0, 1.0)))
        rlon = np.rad2deg(np.arctan2(v[..., 1], v[..., 0])) + self.grid_lon
        return rlat, np.mod(rlon + 180.0, 360.0) - 180.0

    def to_earth(self, rlat, rlon) -> tuple[np.ndarray, np.ndarray]:
        """The frame's latitude and longitude (degrees) on the Earth; longitude in
        [-180, 180)."""
        v = unit_vectors(rlat, np.asarray(rlon, np.float64) - self.grid_lon) @ self._axes()
        lat = np.rad2deg(np.arcsin(np.clip(v[..., 2], -1.0, 1.0)))
        lon = np.rad2deg(np.arctan2(v[..., 1], v[..., 0]))
        return lat, np.mod(lon + 180.0, 360.0) - 180.0


def is_in_the_frame(coord: xr.DataArray) -> bool:
    """Whether a latitude or longitude coordinate is one of a rotated frame."""
    return coord.attrs.get("standard_name") in FRAME_NAMES


def rotated_pole(ds: xr.Dataset | xr.DataArray) -> RotatedPole | None:
    """The rotated pole of ``ds``'s grid mapping (a variable or coordinate with
    ``grid_mapping_name: rotated_latitude_longitude``), or None where there is none.

    Raises :class:`~xensf.errors.ObservationMismatchError` for two different ones, or
    one whose pole is not given as numbers.
    """
    variables = ds.variables if isinstance(ds, xr.Dataset) else ds.coords
    found = {}
    for name, v in variables.items():
        if v.attrs.get("grid_mapping_name") != ROTATED:
            continue
        a = v.attrs
        values = [a.get("grid_north_pole_latitude"), a.get("grid_north_pole_longitude")]
        values.append(a.get("north_pole_grid_longitude", 0.0))
        if not all(is_real(x) and np.isfinite(x) for x in values) or abs(values[0]) > 90:
            raise ObservationMismatchError(
                f"the grid mapping {name!r} is a rotated pole without a pole: "
                "grid_north_pole_latitude (within ±90) and grid_north_pole_longitude must "
                f"be numbers (north_pole_grid_longitude too, if given), got {values}"
            )
        found[name] = RotatedPole(*(float(x) for x in values))
    if len(set(found.values())) > 1:
        raise ObservationMismatchError(
            f"the data has several rotated poles, {found}: give one grid's variables"
        )
    return next(iter(found.values()), None)


def in_the_frame(
    lat: xr.DataArray, lon: xr.DataArray, pole: RotatedPole | None, names: tuple
) -> tuple[xr.DataArray, xr.DataArray]:
    """Point positions (degrees) in a rotated grid's frame: geographic ones turned into
    it; as they are, those already in it (``standard_name``
    ``grid_latitude``/``grid_longitude``, or the grid's own coordinate ``names`` without
    a ``standard_name``). An :class:`~xensf.errors.ObservationMismatchError` where
    the pole that would turn them is unknown."""
    if is_in_the_frame(lat) and is_in_the_frame(lon):
        return lat, lon
    unnamed = not any("standard_name" in c.attrs for c in (lat, lon))
    if unnamed and (lat.name, lon.name) == tuple(names):
        return lat, lon
    if pole is None:
        raise ObservationMismatchError(
            "the state's grid is rotated (its coordinates' standard_name is "
            "grid_latitude/grid_longitude) and no rotated_latitude_longitude grid mapping "
            "says where its pole is, so geographic positions cannot be put on it; keep "
            "the grid mapping variable in the state (ds['rotated_pole'], as the file has "
            "it), or give the points' positions in the rotated frame (standard_name "
            "grid_latitude and grid_longitude on their coordinates)"
        )
    rlat, rlon = pole.to_frame(lat.values, lon.values)
    frame = [
        {**c.attrs, "standard_name": s, "units": "degrees"}
        for c, s in zip((lat, lon), FRAME_NAMES, strict=True)
    ]
    return lat.copy(data=rlat).assign_attrs(frame[0]), lon.copy(data=rlon).assign_attrs(frame[1])
