"""Deprecated: the twin experiment's pieces now live in :mod:`xensf.experiments.twin`.

``from xensf.twin import TwinSetup`` keeps working for this release (with a
``FutureWarning``); import from ``xensf.experiments.twin`` instead.
"""

from __future__ import annotations

import warnings

from .experiments.twin import *  # noqa: F403  (re-exported)
from .experiments.twin import __all__  # noqa: F401

warnings.warn(
    "xensf.twin has moved to xensf.experiments.twin; the old name will be removed in the "
    "next release",
    FutureWarning,
    stacklevel=2,
)
