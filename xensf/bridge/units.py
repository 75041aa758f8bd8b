"""Units at the boundary: observations are converted to the state's units on the way in.

Following pint-xarray's practice, quantities exist only here; everything below works on
bare arrays in the state's units.
"""

from __future__ import annotations

import re

import numpy as np
import pint
import pint_xarray  # noqa: F401  (registers the .pint accessor)
import xarray as xr
from cf_xarray.units import units as UNITS  # pint registry that reads CF/UDUNITS strings

from ..checks import is_quantity
from ..errors import UnitsError

__all__ = [
    "convert_units",
    "coordinate_in_units",
    "degrees_per",
    "dequantify",
    "difference_in_units",
    "length",
    "parse_units",
    "requantify",
    "same_units",
]


#: Temperatures as data files spell them: UDUNITS' ``degree_C``, ``degrees_C``,
#: ``deg_K`` and the spaced ``degrees Celsius``, ``deg C``, ``°C``. pint does not know
#: the first; the spaced ones it reads as an angle (dimensionless, 1/57.3) times a
#: temperature difference, so that 300 K became 17189 "degrees Celsius".
_TEMPERATURE = re.compile(
    r"(?:deg(?:ree)?s?|[°º])[\s_]*(?P<scale>c|celsius|k|kelvin|f|fahrenheit)", re.IGNORECASE
)
_TEMPERATURE_UNITS = {"c": "degree_Celsius", "k": "kelvin", "f": "degree_Fahrenheit"}


def _spelt_for_pint(units: str) -> str:
    """``units`` with a temperature spelt as pint reads it (see ``_TEMPERATURE``)."""
    found = _TEMPERATURE.fullmatch(units.strip())
    if found is None:
        return units
    return _TEMPERATURE_UNITS[found["scale"][0].lower()]


def parse_units(units: str, *, where: str) -> pint.Unit:
    """Parse a units string with cf-xarray's pint registry (CF/UDUNITS spellings), or raise :class:`UnitsError`."""
    try:
        return UNITS.parse_units(_spelt_for_pint(units))
    except Exception as err:  # pint raises several unrelated types here
        raise UnitsError(f"cannot parse the units {units!r} of {where}: {err}") from None


def length(value, *, where: str) -> pint.Quantity | None:
    """``value`` given as a length with its units, as text (``"500 km"``) or a pint
    quantity, as a quantity of cf-xarray's registry; None where it is neither (a plain
    number). A :class:`UnitsError` names ``where`` when it is no positive finite length."""
    if isinstance(value, pint.Quantity):
        text = f"{value.magnitude} {value.units}"
    elif isinstance(value, str):
        text = value
    else:
        return None
    example = f"e.g. {where}='500 km', or a plain number in the grid's units"
    try:
        quantity = UNITS.Quantity(text)
    except Exception:  # pint raises several unrelated types here
        raise UnitsError(f"cannot read {where}={value!r} as a length ({example})") from None
    if not isinstance(quantity, pint.Quantity) or quantity.dimensionless:
        raise UnitsError(
            f"{where}={value!r} has no units; give a length with its units ({example})"
        )
    if quantity.dimensionality != UNITS.meter.dimensionality:
        raise UnitsError(f"{where}={value!r} is in {quantity.units}, not a length ({example})")
    magnitude = float(quantity.magnitude)
    if not (np.isfinite(magnitude) and magnitude > 0):
        raise UnitsError(f"{where}={value!r} must be a positive finite length")
    return quantity


#: A number followed by its units, as an error is written in text: "0.5 K", "2e-3 kg/kg".
_NUMBER_AND_UNITS = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([^\d\s.+-].*)")


def number_and_units(text: str) -> tuple[float, str] | None:
    """``(0.5, "K")`` from ``"0.5 K"``; None for text that is no number followed by
    units (a relative ``"10%"`` neither)."""
    found = _NUMBER_AND_UNITS.fullmatch(text)
    if found is None or found[2].strip() == "%":
        return None
    return float(found[1]), found[2].strip()


def difference_in_units(value, units: str | None, *, name: str, where: str) -> float | None:
    """An error given with its units, as text (``"0.5 K"``) or a pint quantity, as a
    number in ``units``, the state variable ``name``'s; None where ``value`` has no
    units (a plain number, a relative ``"10%"``, text that is no number with units).

    An error is a difference: only the scale of the conversion applies, so that
    ``"0.5 degC"`` is 0.5 K, not 273.65 K. A :class:`UnitsError` names ``where`` when
    the units do not convert to ``units``.
    """
    if is_quantity(value):
        magnitude, given = value.magnitude, str(value.units)
        if np.ndim(magnitude) != 0:
            raise UnitsError(
                f"{where} is a quantity of shape {np.shape(magnitude)}; give one number "
                "with its units (errors that vary from point to point go into the "
                "observations, as a variable <name>_error)"
            )
    elif isinstance(value, str):
        parsed = number_and_units(value)
        if parsed is None:
            return None
        magnitude, given = parsed
    else:
        return None
    if units is None:
        raise UnitsError(
            f"{where} has units and the state variable {name!r} has none (no units "
            "attribute): give a plain number, or give the state its units"
        )
    source = parse_units(given, where=where)
    target = parse_units(units, where=f"state variable {name!r}")
    if source.dimensionality != target.dimensionality:
        raise UnitsError(
            f"{where} is in {given!r}, which does not convert to the units of {name!r}, "
            f"{units!r}: give its error in those (a mapping {{variable: error}} gives "
            "each variable its own)"
        )
    error = xr.DataArray(float(magnitude), attrs={"units": given})
    return float(convert_units(error, units, name=name, what=where, difference=True))


def same_units(given: str | None, wanted: str | None) -> bool:
    """Whether two units strings name the same unit: ``"K"``, ``"kelvin"`` and
    ``"degK"`` do (pint-xarray's ``dequantify`` writes the long names), ``"degC"`` and
    ``"K"`` do not. Strings that do not parse are the same only when equal."""
    if given == wanted:
        return True
    if given is None or wanted is None:
        return False
    try:
        return parse_units(given, where="") == parse_units(wanted, where="")
    except UnitsError:
        return False


def _angles_in(unit: pint.Unit) -> bool:
    """Whether ``unit`` has an angle among its factors (``degree * coulomb``)."""
    return any(str(UNITS.Unit(name)) in _ANGLES for name in unit._units)


def convert_units(
    da: xr.DataArray,
    units: str | None,
    *,
    name: str,
    what: str = "observations",
    difference: bool = False,
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
    difference : bool, default False
        ``da`` holds differences (errors, spreads), not values: only the scale of the
        conversion applies, never its offset (an error of 0.5 degC is 0.5 K, not
        273.65 K).

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
    same = source.dimensionality == target.dimensionality
    if same and _angles_in(source) != _angles_in(target):
        # angles are dimensionless in pint: 'degrees m' would have been m / 57.3
        raise UnitsError(
            f"{what} of {name!r} are in {given!r} ({str(source)!r} to pint) and the state's "
            f"in {units!r} ({str(target)!r}): one has an angle and the other not, which "
            "pint would convert by 57.3 per degree; write the units as UDUNITS spells "
            "them (e.g. 'degC' for degrees Celsius, not 'degrees m')"
        )
    if not same:
        if difference and source.dimensionality == UNITS.dimensionless.dimensionality:
            # an error relative to each observation's value (5 %)
            fix = (
                f"a relative error is a share of each value: give it in {units!r}, e.g. "
                f"obs[{name!r}] * share (share = 0.05 for 5 %); obs_error='P%' is P % of "
                "the observations' spread instead"
            )
        else:
            fix = (
                "observe the same quantity as the state (e.g. multiply geopotential height "
                "by g0 = 9.80665 m s**-2 to get geopotential)"
            )
        raise UnitsError(
            f"{what} of {name!r} are in {given!r} ({source.dimensionality}), which cannot be "
            f"converted to the state's {units!r} ({target.dimensionality}); {fix}"
        )
    if difference:
        factor = _difference(source).to(_difference(target).units).magnitude
        return (da * factor).assign_attrs(units=units)
    # Convert the data alone: coordinates keep their own units (degrees_north, hPa).
    bare = xr.DataArray(da.variable.data, dims=da.dims)
    converted = bare.pint.quantify(source, unit_registry=UNITS).pint.to(target).pint.dequantify()
    return da.copy(data=converted.data).assign_attrs(units=units)


#: pint's names of the angle units (angles are dimensionless in pint, so a "percent"
#: would otherwise convert to degrees as readily as a radian does).
_ANGLES = frozenset(
    {"radian", "milliradian", "degree", "degrees", "degrees_north", "degrees_east",
     "arcminute", "arcsecond", "turn", "gradian"}
)  # fmt: skip


def degrees_per(units: str | None) -> float | None:
    """How many degrees one ``units`` is, where ``units`` names an angle (``"radian"``:
    57.3, ``"degrees_north"``: 1); None for anything else, unparsable units included."""
    if not units:
        return None
    try:
        unit = parse_units(str(units), where="")
    except UnitsError:
        return None
    if str(unit) not in _ANGLES:
        return None
    return float(UNITS.Quantity(1.0, unit).to("degree").magnitude)


def coordinate_in_units(reference, other, name: str, *, whose: str):
    """``other`` with its ``name`` coordinate in ``reference``'s units (levels in Pa
    against hPa, a grid in m against km), a converted value that lands on a reference
    value (to a millionth) taking that value; as it is where either has no units.
    ``whose`` names ``other`` in the message ("the observations'", "the truth's").

    Raises :class:`UnitsError` where the units do not convert."""
    ours, theirs = reference[name].attrs.get("units"), other[name].attrs.get("units")
    if not (ours and theirs) or ours == theirs or other[name].dtype.kind not in "fiu":
        return other
    coord = other[name]
    given = xr.DataArray(
        np.asarray(coord.values, np.float64), dims=coord.dims, attrs={"units": theirs}
    )
    try:
        values = convert_units(given, ours, name=str(name), what="coordinates").values
    except UnitsError:
        raise UnitsError(
            f"{whose} {name!r} coordinate is in {theirs!r}, the state's in {ours!r}, and the "
            f"one does not convert to the other; give them on the state's {name!r} values"
        ) from None
    if reference[name].dtype.kind in "fiu":
        target = np.asarray(reference[name].values, np.float64).reshape(-1)
        flat = values.reshape(-1)
        near = np.isclose(flat[:, None], target[None, :], rtol=1e-6, atol=0)
        values = np.where(near.any(axis=1), target[near.argmax(axis=1)], flat).reshape(
            values.shape
        )
    return other.assign_coords({name: (coord.dims, values, {**coord.attrs, "units": ours})})


def _difference(unit: pint.Unit) -> pint.Quantity:
    """One unit of difference in ``unit`` (a delta unit where ``unit`` has an offset)."""
    return UNITS.Quantity(1.0, unit) - UNITS.Quantity(0.0, unit)


def dequantify(data: xr.Dataset | xr.DataArray) -> tuple[xr.Dataset | xr.DataArray, dict]:
    """``data`` with its pint quantities (pint-xarray's ``quantify``) as ``units`` attributes.

    Returns the plain data and, per quantified variable, the registry its units came
    from, for :func:`requantify`. Data without quantities comes back as it is.
    """
    if not isinstance(data, xr.Dataset | xr.DataArray):
        return data, {}
    items = data.variables.items() if isinstance(data, xr.Dataset) else [(data.name, data)]
    registries = {
        name: var.data._REGISTRY for name, var in items if isinstance(var.data, pint.Quantity)
    }
    if isinstance(data, xr.DataArray):
        registries.update(
            (name, c.data._REGISTRY)
            for name, c in data.coords.items()
            if isinstance(c.data, pint.Quantity)
        )
    if not registries:
        return data, {}
    return data.pint.dequantify(), registries


def requantify(ds: xr.Dataset, registries: dict) -> xr.Dataset:
    """The data variables that :func:`dequantify` found quantified, quantities again."""
    for name, registry in registries.items():
        if name in ds.data_vars and "units" in ds[name].attrs:
            da = ds[name]
            attrs = {k: v for k, v in da.attrs.items() if k != "units"}
            data = registry.Quantity(da.data, registry.parse_units(da.attrs["units"]))
            ds[name] = xr.DataArray(data, dims=da.dims, coords=da.coords, attrs=attrs, name=name)
    return ds
