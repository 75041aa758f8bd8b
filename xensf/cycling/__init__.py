"""Cycling: forecasters, the forecast → analysis loop, and its crash-safe zarr run.

- :mod:`~xensf.cycling.forecast`: the :class:`Forecaster` protocol and the built-in
  forecasters;
- :mod:`~xensf.cycling.schedule`: when the cycles are and which observations go with each;
- :mod:`~xensf.cycling.context`: one cycle's forecast and analysis around the run's
  fixed context;
- :mod:`~xensf.cycling.record`: what a cycle records, with CF attributes;
- :mod:`~xensf.cycling.settings`: what makes two runs the same run;
- :mod:`~xensf.cycling.store`: the run format on disk (commits, restart, resume, locks);
- :mod:`~xensf.cycling.run`: :func:`cycle`, which is ``xensf.cycle``.
"""

from __future__ import annotations

from .forecast import (
    Forecaster,
    Persistence,
    ShallowWaterForecaster,
    TorchForecaster,
    forecaster_settings,
)
from .run import cycle

__all__ = [
    "Forecaster",
    "Persistence",
    "ShallowWaterForecaster",
    "TorchForecaster",
    "cycle",
    "forecaster_settings",
]
