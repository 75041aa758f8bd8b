"""Dynamical models for twin experiments, batched over members.

Two faces:

- tensors, for cycling and speed (torch only, no xarray): :mod:`xensf.models.swe`
  (the planar shallow-water basin: ``ShallowWaterConfig``, ``shallow_water_step``, …)
  and :mod:`xensf.models.l96` (Lorenz-96: ``lorenz96_step``, …);
- xarray simulators that run them and label the result:
  ``xensf.models.shallow_water(...)`` and ``xensf.models.lorenz96(...)`` return Datasets
  with CF-style coordinates and attributes. They live in :mod:`xensf.simulate` (which
  imports xarray) and load on first use.
"""

from __future__ import annotations

from importlib import import_module

_LAZY = {
    "shallow_water": "xensf.simulate",
    "shallow_water_state": "xensf.simulate",
    "lorenz96": "xensf.simulate",
    "ShallowWaterConfig": "xensf.models.swe",
    "initial_state": "xensf.models.swe",
    "shallow_water_step": "xensf.models.swe",
    "shallow_water_run": "xensf.models.swe",
    "lorenz96_step": "xensf.models.l96",
    "lorenz96_run": "xensf.models.l96",
    "lorenz96_tendency": "xensf.models.l96",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xensf.models' has no attribute {name!r}")
