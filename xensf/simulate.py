"""Deprecated: the xarray simulators now live in :mod:`xensf.models.simulate`.

``from xensf.simulate import shallow_water`` keeps working for this release (with a
``FutureWarning``); use ``xensf.models.shallow_water`` (or ``lorenz96``).
"""

from __future__ import annotations

import warnings

from .models.simulate import (  # noqa: F401  (re-exported)
    __all__,
    lorenz96,
    shallow_water,
    shallow_water_state,
)

warnings.warn(
    "xensf.simulate has moved to xensf.models.simulate (the simulators are also "
    "xensf.models.shallow_water and xensf.models.lorenz96); the old name will be removed "
    "in the next release",
    FutureWarning,
    stacklevel=2,
)
