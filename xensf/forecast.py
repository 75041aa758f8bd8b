"""Deprecated: the forecasters now live in :mod:`xensf.cycling.forecast`.

``from xensf.forecast import ShallowWaterForecaster`` keeps working for this release
(with a ``FutureWarning``); import from ``xensf.cycling`` instead.
"""

from __future__ import annotations

import warnings

from .cycling.forecast import (  # noqa: F401  (re-exported)
    Forecaster,
    Persistence,
    ShallowWaterForecaster,
    TorchForecaster,
    __all__,
    check_forecaster,
    forecaster_settings,
)

warnings.warn(
    "xensf.forecast has moved to xensf.cycling.forecast (the forecasters are also in "
    "xensf.cycling); the old name will be removed in the next release",
    FutureWarning,
    stacklevel=2,
)
