"""ERA5 access: the intake catalog, stores, the canonical form and the shipped sample.

- :func:`open` (:mod:`~xensf.era5.loader`): ERA5 from a catalog entry, a store or a
  Dataset, selected and normalised, lazily;
- :func:`normalise` (:mod:`~xensf.era5.canonical`): one canonical form whichever store
  the data came from; :func:`cf_units` for GRIB unit strings;
- :func:`catalog`, :func:`catalog_entries` (:mod:`~xensf.era5.entries`): xensf's intake 2
  catalog of public ERA5 stores and the sample;
- :func:`open_store` (:mod:`~xensf.era5.stores`): a zarr store or netCDF file as it is,
  with errors that name it;
- :func:`open_era5_sample` (:mod:`~xensf.era5.sample`): the real ERA5 ensemble sample
  that ships with xensf.

``xensf.catalog``, ``xensf.open_era5`` and ``xensf.open_era5_sample`` are the same
functions at the package top.
"""

from __future__ import annotations

from .canonical import CANONICAL_DIMS, ERA5_VARIABLES, cf_units, normalise
from .entries import ERA5StoreReader, catalog, catalog_entries, catalog_path
from .loader import RESOLUTIONS, open, open_era5
from .sample import COPERNICUS_NOTICE, open_era5_sample
from .stores import open_store

__all__ = [
    "CANONICAL_DIMS",
    "COPERNICUS_NOTICE",
    "ERA5_VARIABLES",
    "RESOLUTIONS",
    "ERA5StoreReader",
    "catalog",
    "catalog_entries",
    "catalog_path",
    "cf_units",
    "normalise",
    "open",
    "open_era5",
    "open_era5_sample",
    "open_store",
]
