"""Dynamical models for twin experiments, batched over members.

Two faces, in one package:

- tensors, for cycling and speed (torch only, no xarray): :mod:`xensf.models.swe`
  (the planar shallow-water basin: ``ShallowWaterConfig``, ``shallow_water_step``, …)
  and :mod:`xensf.models.l96` (Lorenz-96: ``lorenz96_step``, …), loaded on first use;
- xarray simulators that run them and label the result (:mod:`xensf.models.simulate`):
  ``xensf.models.shallow_water(...)`` and ``xensf.models.lorenz96(...)`` return Datasets
  with CF-style coordinates and attributes.

The package sits above the bridge (``docs/architecture.md``): the filters, the latent
models and the bridge never import it; the cycling layer and the experiments do.
"""

from __future__ import annotations

from importlib import import_module

from .simulate import lorenz96, shallow_water, shallow_water_state

# The tensor names, loaded on first use so that importing the simulators stays free of torch.
_LAZY = {
    "ShallowWaterConfig": "xensf.models.swe",
    "initial_state": "xensf.models.swe",
    "shallow_water_step": "xensf.models.swe",
    "shallow_water_run": "xensf.models.swe",
    "lorenz96_step": "xensf.models.l96",
    "lorenz96_run": "xensf.models.l96",
    "lorenz96_tendency": "xensf.models.l96",
}

__all__ = ["lorenz96", "shallow_water", "shallow_water_state", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xensf.models' has no attribute {name!r}")
