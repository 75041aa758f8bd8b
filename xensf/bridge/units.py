"""Units at the boundary: observations are converted to the state's units on the way in.

Following pint-xarray's practice, quantities exist only here; everything below works on
bare arrays in the state's units.
"""

from __future__ import annotations

import pint
import pint_xarray  # noqa: F401  (registers the .pint accessor)
import xarray as xr
from cf_xarray.units import units as UNITS  # pint registry that reads CF/UDUNITS strings

from ..errors import UnitsError

__all__ = ["convert_units", "parse_units"]


def parse_units(units: str, *, where: str) -> pint.Unit:
    """Parse a units string with cf-xarray's pint registry (CF/UDUNITS spellings), or raise :class:`UnitsError`."""
    try:
        return UNITS.parse_units(units)
    except Exception as err:  # pint raises several unrelated types here
        raise UnitsError(f"cannot parse the units {units!r} of {where}: {err}") from None


def convert_units(
    da: xr.DataArray, units: str | None, *, name: str, what: str = "observations"
) -> xr.DataArray:
    """Return ``da`` expressed in ``units`` (lazily if dask-backed).

    Parameters
    ----------
    da : DataArray
        Values whose ``units`` attribute says what they are in. Without a ``units``
        attribute they are taken to be in ``units`` already.
    units : str or None
        The state's units. ``None`` (a state without units) accepts only ``da``
        without units.
    name : str
        The variable's name, for error messages.
    what : str
        What ``da`` is ("observations", "observation errors"), for error messages.

    Raises
    ------
    UnitsError
        The units cannot be parsed, or do not convert (different dimensionality,
        e.g. geopotential height in m for a geopotential state in m**2 s**-2).
    """
    given = da.attrs.get("units")
    if given is None or given == units:
        return da
    if units is None:
        raise UnitsError(
            f"{what} of {name!r} are in {given!r} but the state variable {name!r} has no "
            "units attribute; give the state a units attribute or drop it from the "
            f"{what}"
        )
    source = parse_units(given, where=f"{what} {name!r}")
    target = parse_units(units, where=f"state variable {name!r}")
    if source == target:
        return da.assign_attrs(units=units)
    if source.dimensionality != target.dimensionality:
        raise UnitsError(
            f"{what} of {name!r} are in {given!r} ({source.dimensionality}), which cannot be "
            f"converted to the state's {units!r} ({target.dimensionality}); observe the "
            "same quantity as the state (e.g. multiply geopotential height by g0 = "
            "9.80665 m s**-2 to get geopotential)"
        )
    # Convert the data alone: coordinates keep their own units (degrees_north, hPa).
    bare = xr.DataArray(da.variable.data, dims=da.dims)
    converted = bare.pint.quantify(source, unit_registry=UNITS).pint.to(target).pint.dequantify()
    return da.copy(data=converted.data).assign_attrs(units=units)
