"""Opening a zarr store or a netCDF file, local or remote, lazily and as it is.

The one place where xensf reaches a store: :func:`open_store` turns a missing fsspec
package, a missing path or an unreachable bucket into a :class:`~xensf.errors.StoreError`
that names the URL and says what to do.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xarray as xr

from ..errors import StoreError
from ..urls import url_protocol

__all__ = ["looks_like_path", "open_store", "url_protocol"]

_REMOTE_PACKAGES = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "az": "adlfs", "abfs": "adlfs"}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _is_zarr(url: str) -> bool:
    stripped = url.rstrip("/")
    return not stripped.endswith((".nc", ".nc4", ".h5", ".hdf5", ".grib", ".grib2", ".grb"))


def open_store(
    url: str | os.PathLike,
    storage_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> xr.Dataset:
    """Open a zarr store or a netCDF file lazily, as it is, with errors that say why not.

    Parameters
    ----------
    url : str or path
        A local path or an fsspec URL (``gs://...``, ``https://...``, ``memory://...``).
        Names ending in ``.nc``/``.nc4``/``.h5`` are opened as netCDF files,
        anything else as a zarr store.
    storage_options : mapping, optional
        Passed to fsspec, e.g. ``{"token": "anon"}`` for public Google Cloud buckets.
    **kwargs
        Passed to :func:`xarray.open_dataset`; ``chunks`` defaults to ``{}`` (the
        store's own chunks), so nothing is read but metadata and coordinates.

    Returns
    -------
    xarray.Dataset
        Dask-backed.

    Raises
    ------
    StoreError
        The package needed for the URL's protocol is missing (``gcsfs`` for
        ``gs://``: ``pip install "xensf[gcs]"``), or the store cannot be reached or
        read; the message names the URL and the underlying error.
    """
    url = os.fspath(url)
    protocol = url_protocol(url)
    if protocol == "file" and "://" not in url:
        url = os.path.expanduser(url)  # as xarray reads a path from home
    package = _REMOTE_PACKAGES.get(protocol)
    if package is not None:
        try:
            __import__(package)
        except ImportError:
            extra = ' (pip install "xensf[gcs]")' if package == "gcsfs" else ""
            raise StoreError(
                f"cannot open {url}: reading {protocol}:// stores needs the {package} "
                f"package{extra} and network access"
            ) from None
    if protocol == "file" and not Path(url.removeprefix("file://")).exists():
        raise StoreError(f"cannot open {url}: no such file or directory")
    kwargs.setdefault("chunks", {})
    if _is_zarr(url):
        kwargs.setdefault("engine", "zarr")
        if storage_options:
            kwargs.setdefault("backend_kwargs", {})
            kwargs["backend_kwargs"] = {
                **kwargs["backend_kwargs"],
                "storage_options": dict(storage_options),
            }
        target: Any = url
    else:
        target = url
        if protocol != "file":
            import fsspec

            try:
                target = fsspec.open(url, **dict(storage_options or {})).open()
            except Exception as err:
                raise StoreError(_unreachable(url, protocol, err)) from None
    try:
        with warnings.catch_warnings():
            # zarr warns about unconsolidated metadata and v2 stores read by zarr 3.
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="xarray")
            return xr.open_dataset(target, **kwargs)
    except Exception as err:
        raise StoreError(_unreachable(url, protocol, err)) from None


def _unreachable(url: str, protocol: str, err: BaseException) -> str:
    hint = (
        "check the path"
        if protocol in ("file", "memory")
        else "it needs network access to the store (anonymous access for public buckets: "
        "storage_options={'token': 'anon'})"
    )
    return f"cannot open {url} ({_first_line(err)}); {hint}"


def looks_like_path(source: str) -> bool:
    """Whether ``source`` names a file or store (not a catalog entry)."""
    return (
        os.sep in source
        or "/" in source
        or source.endswith((".zarr", ".nc", ".nc4"))
        or Path(source).exists()
    )
