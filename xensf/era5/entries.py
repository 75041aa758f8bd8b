"""The intake catalog shipped with xensf (top-level ``catalogs/`` in the source tree).

Entries: the public ERA5 zarr stores (WeatherBench2 at 64x32, 240x121 and 1440x721;
ARCO-ERA5), read anonymously from Google Cloud Storage with gcsfs (``pip install
"xensf[gcs]"``), and the ERA5 sample the package ships. Reading an entry opens it
lazily as the store has it; :func:`xensf.era5.open` opens an entry selected and
normalised; :func:`catalog_entries` tabulates them.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from intake.readers.readers import XArrayDatasetReader

__all__ = ["ERA5StoreReader", "catalog", "catalog_entries", "catalog_path"]


def catalog_path() -> str:
    """Path of the catalog YAML file inside the installed package."""
    return str(files("xensf.catalogs") / "xensf.yaml")


class ERA5StoreReader(XArrayDatasetReader):
    """Opens a zarr store or netCDF file lazily, with errors that name the store.

    The catalog's entries use it in place of intake's xarray reader, so that
    ``cat.arco_era5.read()`` without gcsfs or network fails with a
    :class:`~xensf.errors.StoreError` that says what is missing, not a traceback from
    deep inside fsspec.
    """

    def _read(self, data, open_local: bool = False, **kw: Any):
        from .stores import open_store

        return open_store(data.url, data.storage_options, **kw)


def catalog():
    """Open xensf's intake 2 catalog.

    Returns
    -------
    intake.readers.entry.Catalog
        Entries ``era5_sample`` (local), ``wb2_era5_64x32``, ``wb2_era5_240x121``,
        ``wb2_era5_1440x721`` and ``arco_era5`` (remote). Each entry's ``metadata``
        gives its resolution, grid, time span and step, variables, levels, latitude
        order and storage dims.

    Examples
    --------
    >>> import xensf
    >>> cat = xensf.catalog()
    >>> sorted(cat.entries)
    ['arco_era5', 'era5_sample', 'wb2_era5_1440x721', 'wb2_era5_240x121', 'wb2_era5_64x32']
    >>> cat.entries["wb2_era5_64x32"].metadata["latitude_order"]
    'ascending'
    >>> ds = cat.era5_sample.read()          # the packaged ERA5 ensemble sample, lazily
    >>> # needs gcsfs and the network:
    >>> remote = cat.wb2_era5_64x32.read()  # doctest: +SKIP
    """
    import intake

    cat = intake.from_yaml_file(catalog_path())
    # Local entries name the package's data folder, wherever the package is installed.
    cat.user_parameters["XENSF_DATA"] = str(files("xensf") / "data")
    # Named, so that list(cat), print(cat) and tab completion show the entries.
    for name in cat.entries:
        cat.aliases[name] = name
    return cat


def catalog_entries() -> dict[str, dict[str, Any]]:
    """The catalog's entries with their URL, storage options and metadata, for a table.

    Returns
    -------
    dict
        ``{name: {"url": ..., "storage_options": ..., **metadata}}``.
    """
    cat = catalog()
    out = {}
    for name in cat.entries:
        data = cat[name].kwargs["args"][0]
        out[name] = {
            "url": str(data.url),
            "storage_options": data.storage_options,
            **cat.entries[name].metadata,
        }
    return out
