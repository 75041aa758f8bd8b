"""Deprecated: the ERA5 sample now lives in :mod:`xensf.era5.sample`.

``from xensf.sample import open_era5_sample`` keeps working for this release (with a
``FutureWarning``); use ``xensf.open_era5_sample`` or ``xensf.era5.open_era5_sample``.
"""

from __future__ import annotations

import warnings

from .era5.sample import (  # noqa: F401  (re-exported)
    COPERNICUS_NOTICE,
    ERA5_SAMPLE,
    __all__,
    open_era5_sample,
)

warnings.warn(
    "xensf.sample has moved to xensf.era5.sample (the function is also "
    "xensf.open_era5_sample); the old name will be removed in the next release",
    FutureWarning,
    stacklevel=2,
)
