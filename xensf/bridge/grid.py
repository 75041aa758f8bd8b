"""Where a state's grid points are: 1-D axes, or 2-D (curvilinear) coordinates.

A regular grid has a latitude coordinate along its ``lat`` dim and a longitude one
along its ``lon`` dim (or planar y/x coordinates, or none: grid indices). A curvilinear
grid (ocean and regional models) has two 2-D coordinates on the two grid dims,
``lat(y, x)`` and ``lon(y, x)``; the dims then play the latitude and longitude roles
by position (rows, columns) though they are not parallels and meridians.
:func:`grid_coords` reads either into one :class:`GridCoords`, the single place the
bridge asks where a grid point or a station is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import xarray as xr

from ..errors import DimensionError, ObservationDomainError, ObservationMismatchError, UnitsError
from .criteria import CF_CRITERIA, COMMON_NAMES
from .rotated import RotatedPole, in_the_frame, is_in_the_frame, rotated_pole
from .units import convert_units, degrees_per

__all__ = ["GridCoords", "curvilinear_names", "grid_coords"]

#: Usual names of 2-D latitude / longitude coordinates (NEMO, ROMS, MOM, CICE, WRF).
_NAMES_2D = {
    "latitude": ("nav_lat", "lat_rho", "geolat", "tlat", "ulat", "xlat", "lat2d"),
    "longitude": ("nav_lon", "lon_rho", "geolon", "tlon", "ulon", "xlong", "lon2d"),
}


def _role_coords(obj: xr.Dataset | xr.DataArray, role: str, ndim: int = 2) -> list[str]:
    """2-D (``ndim``-D) coordinates that carry the role's CF metadata or a usual name."""
    return [
        str(name)
        for name, coord in obj.coords.items()
        if coord.ndim == ndim and _plays_role(name, coord, role)
    ]


def _plays_role(name, var: xr.DataArray, role: str) -> bool:
    """Whether ``var`` carries the role's CF metadata, or its name is a usual one."""
    cf = any(
        isinstance(var.attrs.get(attr), str) and var.attrs.get(attr) in values
        for attr, values in CF_CRITERIA[role].items()
    )
    lowered = str(name).lower()
    return cf or lowered in _NAMES_2D[role] or lowered in COMMON_NAMES[role]


def _grid_as_data_fix(ds: xr.Dataset | xr.DataArray, dims) -> str | None:
    """How to make the grid's latitude and longitude coordinates where a file gives them
    as data variables on the grid dims (netCDF without a ``coordinates`` attribute), or
    None where it does not."""
    if not isinstance(ds, xr.Dataset):
        return None
    grid = {dims.lat, dims.lon}
    found = [
        next((str(n) for n, v in ds.data_vars.items()
              if v.dims and set(v.dims) <= grid and _plays_role(n, v, role)), None)
        for role in ("latitude", "longitude")
    ]  # fmt: skip
    if None in found:
        return None
    return f"ds.set_coords({found})"


def grid_in_time_fix(obj: xr.Dataset | xr.DataArray) -> str:
    """How to read a grid whose latitude/longitude coordinates also have a time dim
    (WRF's ``XLAT(Time, south_north, west_east)``), or ``""`` where there is none."""
    lats, lons = _role_coords(obj, "latitude", 3), _role_coords(obj, "longitude", 3)
    for a, b in ((a, b) for a in lats for b in lons if obj[a].dims == obj[b].dims and a != b):
        t = next(
            (d for d in obj[a].dims if str(d).lower() in COMMON_NAMES["time"]), obj[a].dims[0]
        )
        return (
            f"; the grid's coordinates {a!r} and {b!r} have the dim {t!r} too (as WRF writes "
            f"them): on a grid that does not move, give them without it, "
            f"ds.assign_coords({a}=ds[{a!r}].isel({t}=0, drop=True), "
            f"{b}=ds[{b!r}].isel({t}=0, drop=True))"
        )
    return ""


def curvilinear_names(obj: xr.Dataset | xr.DataArray) -> tuple[str, str] | None:
    """The names of 2-D latitude and longitude coordinates on the same two dims, or None.

    None too when several candidate pairs exist (name the grid dims then: a curvilinear
    grid is found only when nothing is ambiguous).
    """
    lats, lons = _role_coords(obj, "latitude"), _role_coords(obj, "longitude")
    pairs = [(a, b) for a in lats for b in lons if obj[a].dims == obj[b].dims and a != b]
    return pairs[0] if len(pairs) == 1 else None


@dataclass(frozen=True)
class GridCoords:
    """The grid's coordinates: ``lat`` and ``lon`` 1-D (per dim) or 2-D, or None.

    ``geographic``: degrees on the sphere (else planar units or grid indices); a
    geographic grid given in another angle (radians) holds its values in degrees here.
    ``units``: the units of the coordinates as given (their ``units`` attributes), in
    which a point's coordinates without units of their own are read. ``rotated``: the
    coordinates are those of a rotated-pole frame (``grid_latitude``), whose ``pole``
    (:mod:`xensf.bridge.rotated`; None where no grid mapping gives it) turns
    geographic points into it.
    """

    lat: np.ndarray | None
    lon: np.ndarray | None
    geographic: bool
    names: tuple[str, str] | None = None
    units: tuple[str | None, str | None] = (None, None)
    rotated: bool = False
    pole: RotatedPole | None = None

    @property
    def curvilinear(self) -> bool:
        return self.lat is not None and self.lat.ndim == 2

    @property
    def known(self) -> bool:
        """Whether the coordinates are given (not grid indices made up here)."""
        return self.names is not None

    def in_own_longitudes(self, lon: np.ndarray) -> np.ndarray:
        """Longitudes in [-180, 180) (as :attr:`locations` holds them) in this grid's own
        convention, to report positions beside the state: in [0, 360) where the grid's
        longitudes run from 0 past 180, as they are otherwise."""
        if not self.geographic or self.rotated or self.lon is None:
            return lon
        own = np.asarray(self.lon, np.float64)
        if np.nanmin(own) >= 0.0 and np.nanmax(own) > 180.0:
            return np.mod(lon, 360.0)
        return lon

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """Latitude (y) and longitude (x) of every grid point, each ``(nlat, nlon)``."""
        if self.curvilinear:
            return self.lat, self.lon
        return np.meshgrid(self.lat, self.lon, indexing="ij")

    def point_coordinate(self, coord: xr.DataArray, axis: int) -> xr.DataArray:
        """A point's coordinate (a station's latitude, ``axis`` 0, or longitude, 1) in
        the units this grid's values are in: degrees on a geographic grid, the grid's
        own units on a planar one (a station in m on a grid in km is divided by 1000).
        A coordinate without units is in the grid's units as given.

        Raises :class:`~xensf.errors.UnitsError` where the units do not convert (a
        station in km on a latitude/longitude grid)."""
        given = coord.attrs.get("units") or self.units[axis]
        if not given:
            return coord
        role = ("latitude", "longitude")[axis] if self.geographic else ("y", "x")[axis]
        if self.geographic:
            factor = degrees_per(given)
            if factor is None and not str(given).lower().startswith("degree"):
                raise UnitsError(
                    f"the point coordinate {coord.name!r} is in {given!r}, not an angle, "
                    f"but the state's grid is {role} in degrees; give the points' positions "
                    "in degrees (or radians)"
                )
            if factor in (None, 1.0):
                return coord
            return (coord * factor).assign_attrs({**coord.attrs, "units": "degree"})
        target = self.units[axis]
        if not target:
            return coord
        what = f"point coordinates ({role} of the state's grid, in {target!r})"
        return convert_units(
            coord.assign_attrs(units=given), target, name=str(coord.name), what=what
        )

    def point_coordinates(
        self, lat: xr.DataArray, lon: xr.DataArray
    ) -> tuple[xr.DataArray, xr.DataArray]:
        """Points' latitude and longitude (y and x) as this grid's values are: in its
        units (:meth:`point_coordinate`) and, on a rotated-pole grid, in its frame."""
        if self.known and not self.geographic:
            geographic = [c for c, own in zip((lat, lon), self.names, strict=True)
                          if _looks_geographic(c, own)]  # fmt: skip
            if geographic:
                raise ObservationMismatchError(
                    f"the state's grid is projected ({self.names[0]!r}, {self.names[1]!r} "
                    f"in {self.units[0] or 'no units'}) and the points' positions "
                    f"{[str(c.name) for c in geographic]} are geographic (latitude, "
                    "longitude); project them onto the grid first, e.g. with pyproj, "
                    "x, y = pyproj.Transformer.from_crs('EPSG:4326', pyproj.CRS.from_cf("
                    "ds[ds[var].attrs['grid_mapping']].attrs), always_xy=True).transform("
                    "lon, lat), or give the state its 2-D latitude and longitude "
                    "coordinates, with which stations are placed as on any curvilinear grid"
                )
        lat, lon = (self.point_coordinate(c, axis) for axis, c in enumerate((lat, lon)))
        if self.rotated:
            lat, lon = in_the_frame(lat, lon, self.pole, self.names)
        return lat, lon

    def station_weights(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        """Bilinear interpolation rows (``S + (4,)`` indices and weights) to points."""
        from ..curvilinear import curvilinear_weights
        from ..obs import bilinear_weights, planar_bilinear_weights

        if not self.known:
            raise ObservationMismatchError(
                "point observations need latitude/longitude coordinate values on the state"
            )
        if self.curvilinear:
            return curvilinear_weights(self.lat, self.lon, lat, lon)
        if self.rotated:
            try:
                return bilinear_weights(self.lat, self.lon, lat, lon)
            except ObservationDomainError as e:
                raise ObservationDomainError(
                    f"{e} (Positions in the grid's rotated frame: pole at {self.pole}.)"
                ) from None
        if self.geographic:
            return bilinear_weights(self.lat, self.lon, lat, lon)
        return planar_bilinear_weights(self.lat, self.lon, lat, lon)

    @cached_property
    def locations(self) -> np.ndarray:
        """``(G, 2)`` (latitude, longitude in [-180, 180)) of every grid point in C order,
        or planar (y, x) when the grid is not geographic (computed once)."""
        return self.locations_of(*self.points()).reshape(-1, 2)

    def locations_of(self, lat, lon) -> np.ndarray:
        """``(..., 2)`` locations of points given by this grid's two coordinates, as
        :attr:`locations` has them: latitude and longitude in [-180, 180) on a
        geographic grid, planar (y, x) as they are otherwise (an x of 330 km is not a
        longitude to wrap)."""
        from ..obs import point_locations

        if self.geographic:
            return point_locations(lat, lon)
        return np.stack(np.broadcast_arrays(lat, lon), -1).astype(np.float64)

    def spacing(self) -> float:
        """The typical distance between neighbouring grid points: √(the grid's area / points).

        In km on a geographic grid (a regular one's rows weighted by cos(latitude), a
        curvilinear one's area from its geometry), else in grid coordinate units. NaN
        for a grid of one point.
        """
        from ..filters.localization import EARTH_RADIUS_KM

        if self.curvilinear:
            from ..curvilinear import cell_areas

            area = cell_areas(self.lat, self.lon, relative=False)
            return float(np.sqrt(area.mean())) * EARTH_RADIUS_KM
        axes = [np.asarray(a, np.float64) for a in (self.lat, self.lon)]
        steps = [float(np.median(np.abs(np.diff(a)))) for a in axes if a.size > 1]
        if not steps:
            return float("nan")
        dy, dx = (steps * 2)[:2]
        if not self.geographic:
            return float(np.sqrt(dy * dx))
        cells = float(np.cos(np.deg2rad(axes[0])).clip(min=0.0).mean())
        area = cells * np.deg2rad(dy) * np.deg2rad(dx) * EARTH_RADIUS_KM**2
        return float(np.sqrt(area))

    def first_point(self) -> tuple[float, float]:
        """The first grid point's latitude and longitude (a position inside the grid)."""
        lat, lon = self.points()
        return float(lat[0, 0]), float(lon[0, 0])

    def cell_area_weights(self, dims: tuple[str, str]) -> xr.DataArray:
        """Relative area of each point of a curvilinear grid, on both grid ``dims``
        (:func:`xensf.curvilinear.cell_areas`); a regular grid's is cos(latitude)
        (:func:`xensf.metrics.area_weights`)."""
        from ..curvilinear import cell_areas

        return xr.DataArray(cell_areas(self.lat, self.lon), dims=dims)


def grid_coords(ds: xr.Dataset | xr.DataArray, dims) -> GridCoords:
    """The :class:`GridCoords` of ``ds``'s grid dims ``dims.lat`` × ``dims.lon``."""
    pair = curvilinear_names(ds)
    if pair is not None and set(ds[pair[0]].dims) == {dims.lat, dims.lon}:
        lat, lon = (_in_degrees(ds[n].transpose(dims.lat, dims.lon), np.float64) for n in pair)
        units = tuple(ds[n].attrs.get("units") for n in pair)
        return GridCoords(lat, lon, geographic=True, names=pair, units=units)
    if dims.lat in ds.coords and dims.lon in ds.coords:
        geographic = _is_geographic_axis(ds, dims)
        axes = [ds[dims.lat], ds[dims.lon]]
        lat, lon = (_in_degrees(a) if geographic else np.asarray(a.values) for a in axes)
        rotated = geographic and is_in_the_frame(ds[dims.lat])
        return GridCoords(
            lat,
            lon,
            geographic=geographic,
            names=(dims.lat, dims.lon),
            units=tuple(a.attrs.get("units") for a in axes),
            rotated=rotated,
            pole=rotated_pole(ds) if rotated else None,
        )
    fix = _grid_as_data_fix(ds, dims)
    if fix is not None:
        raise DimensionError(
            f"the grid's latitude and longitude are data variables, not coordinates, so "
            f"the grid ({dims.lat!r}, {dims.lon!r}) would be read as numbered points, with "
            f"distances in grid cells; make them coordinates: {fix}"
        )
    return GridCoords(
        np.arange(ds.sizes[dims.lat], dtype=np.float64),
        np.arange(ds.sizes[dims.lon], dtype=np.float64),
        geographic=False,
    )


def _in_degrees(coord: xr.DataArray, dtype=None) -> np.ndarray:
    """A latitude or longitude coordinate's values in degrees (from radians, say, where
    its units say so; as they are where its units are degrees or not given)."""
    values = np.asarray(coord.values, dtype)
    factor = degrees_per(coord.attrs.get("units"))
    return values if factor in (None, 1.0) else values * factor


def _looks_geographic(coord: xr.DataArray, own: str) -> bool:
    """Whether a point coordinate is a latitude or longitude (by its standard_name, an
    angle's units, or, without either, its name where the grid's is another)."""
    std, units = coord.attrs.get("standard_name"), coord.attrs.get("units")
    if std in ("latitude", "longitude"):
        return True
    if units:
        return degrees_per(units) is not None or str(units).lower().startswith("degree")
    named = str(coord.name).lower() in ("lat", "latitude", "lon", "longitude")
    return not std and coord.name != own and named


def _is_geographic_axis(ds, dims) -> bool:
    """Whether 1-D grid coordinates are latitude/longitude in degrees or another angle
    (else planar x/y)."""
    units = str(ds[dims.lat].attrs.get("units", "")).lower()
    std = ds[dims.lat].attrs.get("standard_name", "")
    if units.startswith("degree") or std == "latitude" or degrees_per(units) is not None:
        return True
    if units or std:
        return False
    return str(dims.lat).lower() in ("lat", "latitude")


def reorder_fix(obj: str, axes: list[tuple[str, object, object, bool]]) -> str | None:
    """How to put a grid given in another order on the expected one, or None.

    ``axes``: one ``(dim, expected, found, longitude)`` per grid axis, the coordinate
    values as the reference and as given. Where every axis holds the expected values,
    some in the other order (or, for a ``longitude`` in degrees, in the other
    convention, -180..180 against 0..360), the returned advice names the one-line fix
    on ``obj`` (the variable name used in it, e.g. ``"ds"`` or ``"obs"``)."""
    reverse, convention = [], []
    for dim, expected, found, longitude in axes:
        a, b = np.asarray(expected, np.float64), np.asarray(found, np.float64)
        if a.shape != b.shape or a.ndim != 1:
            return None
        if same_points(a, b):
            continue
        if a.size > 1 and same_points(a[::-1], b):
            reverse.append(dim)
        elif longitude and same_points(np.sort(np.mod(a, 360.0)), np.sort(np.mod(b, 360.0))):
            convention.append((dim, bool((a < 0).any())))
        else:
            return None
    fixes = []
    if reverse:
        slices = ", ".join(f"{d}=slice(None, None, -1)" for d in reverse)
        fixes.append(f"{obj}.isel({slices}) reverses {' and '.join(map(repr, reverse))}")
    for dim, signed in convention:
        to = f"(({obj}.{dim} + 180) % 360) - 180" if signed else f"{obj}.{dim} % 360"
        fixes.append(f"{obj}.assign_coords({dim}={to}).sortby({dim!r}) converts {dim!r}")
    if not fixes:
        return None
    return "the same grid in another order: " + "; ".join(fixes)


def axis_order(expected, found, longitude: bool = False) -> np.ndarray | None:
    """The index that puts the coordinate values ``found`` in the order of ``expected``
    where they are the same points in another order (for a ``longitude`` in degrees,
    also in the other convention, -180..180 against 0..360); None where they are not."""
    a, b = np.asarray(expected, np.float64), np.asarray(found, np.float64)
    if a.shape != b.shape or a.ndim != 1 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    if longitude:
        a, b = np.mod(a, 360.0), np.mod(b, 360.0)
    index = np.empty(a.size, np.intp)
    index[np.argsort(a, kind="stable")] = np.argsort(b, kind="stable")
    return index if same_points(b[index], a) else None


def same_points(a, b) -> bool:
    """Whether two coordinate arrays hold the same points: equal shapes, values within a
    millionth of the larger magnitude (at least 1e-6), so that a float32 spelling of
    the coordinates (rounded at 6e-8 of a value: 0.03 m at 500 km) matches."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(np.nanmax(np.abs(b)))) if b.size and np.isfinite(b).any() else 1.0
    return bool(np.allclose(a, b, rtol=0, atol=1e-6 * scale))
