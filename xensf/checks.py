"""What counts as a whole number, a real number or an on/off flag in an option.

An option that takes a count (``steps``, ``epochs``, a seed) takes a Python or numpy
integer, never a bool (``True`` is an ``int`` to Python, and ``steps=True`` is a
mistake, not one step); one that takes a number takes those or a float; an on/off
option takes True or False only (``"no"`` is true to Python). Every layer's option
checks ask here, so they agree on it.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "as_number",
    "as_python",
    "float_array",
    "is_flag",
    "is_integer",
    "is_quantity",
    "is_real",
    "require_flag",
]


def is_integer(value) -> bool:
    """Whether ``value`` is a Python or numpy integer, and not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def is_real(value) -> bool:
    """Whether ``value`` is a Python or numpy integer or float, and not a bool (it may be
    infinite or NaN: the caller says which values it takes)."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool
    )


def is_flag(value) -> bool:
    """Whether ``value`` is True or False (a Python or numpy bool): an on/off option takes
    nothing else, as ``"no"`` is true to Python."""
    return isinstance(value, bool | np.bool_)


def require_flag(value, name: str, error: type[Exception], *, optional: bool = False) -> None:
    """``error`` naming the option ``name`` unless ``value`` is True or False (or None,
    where ``optional``): see :func:`is_flag`."""
    if (optional and value is None) or is_flag(value):
        return
    allowed = "True, False or None" if optional else "True or False"
    raise error(f"{name} must be {allowed}, got {value!r}")


def is_quantity(value) -> bool:
    """Whether ``value`` is a number with its units (a pint quantity, of any registry),
    told without importing pint."""
    return hasattr(value, "magnitude") and hasattr(value, "units")


def as_python(value):
    """A numpy scalar as the Python number it holds, for messages (``500.0``, not numpy
    2's ``np.float64(500.0)``); anything else as it is."""
    return value.item() if isinstance(value, np.integer | np.floating) else value


def as_number(value):
    """A 0-d numpy array or torch tensor as the Python number (or bool) it holds, as
    ``cv.loc_radius[i].values`` or a tensor's ``x.std()`` give one; anything else as it
    is, for :func:`is_real` and :func:`is_integer` to judge."""
    if isinstance(value, np.ndarray | np.generic) or type(value).__module__ == "torch":
        if getattr(value, "ndim", None) == 0:
            number = value.item()
            if isinstance(number, int | float):  # (bool is an int)
                return number
    return value


def float_array(values, what: str, error: type[Exception], units: str):
    """``values`` (coordinates, positions) as a float64 array where they are numbers;
    ``error`` naming ``what`` and the ``units`` they are numbers in for text
    (``"45N"``, and ``"45"``, which numpy would read), bools or objects that are not
    numbers."""
    array = np.asarray(values)
    converted = None
    if array.dtype.kind in "iufO":
        try:
            converted = array.astype(np.float64)
        except (TypeError, ValueError):
            pass
    if converted is None:
        sample = np.ravel(np.asarray(values, dtype=object))[:2].tolist()
        raise error(
            f"{what} must be numbers ({units}), got {sample}…; convert text first (.astype(float))"
        )
    return converted
