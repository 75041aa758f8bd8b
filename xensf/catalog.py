"""Deprecated: xensf's intake catalog now lives in :mod:`xensf.era5.entries`.

``xensf.catalog()`` is the function :func:`xensf.era5.catalog` and needs no import of
this module. Importing it (``import xensf.catalog``, ``from xensf.catalog import
era5_entries``) keeps working for this release, with a ``FutureWarning``: it makes
``xensf.catalog`` this module, which is callable so that ``xensf.catalog()`` still
opens the catalog. Use ``xensf.era5.catalog_entries()`` for ``era5_entries()``.
"""

from __future__ import annotations

import sys
import types
import warnings

from .era5.entries import ERA5StoreReader, catalog, catalog_path
from .era5.entries import catalog_entries as era5_entries

__all__ = ["ERA5StoreReader", "catalog", "catalog_path", "era5_entries"]


class _CatalogModule(types.ModuleType):
    """This module, callable, because importing it rebinds ``xensf.catalog`` to it."""

    def __call__(self):
        return catalog()


sys.modules[__name__].__class__ = _CatalogModule

warnings.warn(
    "the module xensf.catalog has moved to xensf.era5.entries: call xensf.catalog() or "
    "xensf.era5.catalog() without importing it, and use xensf.era5.catalog_entries() "
    "for era5_entries(); the old module will be removed in the next release",
    FutureWarning,
    stacklevel=2,
)
