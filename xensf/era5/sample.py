"""The real ERA5 ensemble sample shipped with xensf."""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path
from typing import Any

import xarray as xr

__all__ = ["COPERNICUS_NOTICE", "ERA5_SAMPLE", "open_era5_sample"]

ERA5_SAMPLE = "era5-sample.nc"
COPERNICUS_NOTICE = "Contains modified Copernicus Climate Change Service information 2017"


def open_era5_sample(**kwargs: Any) -> xr.Dataset:
    """Open the small real ERA5 ensemble sample that ships with xensf.

    Ten members of the ERA5 ensemble of data assimilations (dimension ``number``),
    four analysis times (2017-01-01 00/12 UTC, 2017-01-02 00/12 UTC), two pressure
    levels (``isobaricInhPa``: 850 and 500 hPa) on a regular 3-degree global grid
    (``latitude`` 61, descending from 90 to -90; ``longitude`` 120, from 0 to 357),
    with geopotential ``z`` (m**2 s**-2) and air temperature ``t`` (K) as float32.
    Coordinates also include ``valid_time`` along ``time`` and the scalar ``step``.

    The file is kept as cfgrib wrote it, GRIB attributes and CF flaws included (see
    ``xensf/data/README.md`` for provenance and what was trimmed), so that code is
    exercised on ERA5 data as it really comes.

    **Licence**: Contains modified Copernicus Climate Change Service information
    2017. Neither the European Commission nor ECMWF is responsible for any use that
    may be made of the Copernicus information or data it contains. Any copy or file
    derived from it must carry this notice.

    Parameters
    ----------
    **kwargs
        Passed on to :func:`xarray.open_dataset`. For instance ``chunks={}`` or
        ``chunks={"time": 1}`` opens it lazily with dask, the members (``number``)
        in one chunk, as an analysis needs them, unless ``chunks`` names ``number``
        (the file stores one member per chunk, which xarray would otherwise follow);
        without ``chunks`` the variables are loaded on first access as numpy arrays.
        ``engine`` is left to xarray's choice (netCDF4 or h5netcdf, whichever is
        installed).

    Returns
    -------
    xarray.Dataset
        The sample, with attributes and encodings as stored in the file.

    Examples
    --------
    >>> import xensf
    >>> ds = xensf.open_era5_sample()
    >>> dict(ds.sizes)
    {'number': 10, 'time': 4, 'isobaricInhPa': 2, 'latitude': 61, 'longitude': 120}
    >>> lazy = xensf.open_era5_sample(chunks={"time": 1})
    >>> lazy.t.chunks[:2]
    ((10,), (1, 1, 1, 1))
    """
    chunks = kwargs.get("chunks")
    if isinstance(chunks, dict) and "number" not in chunks:
        # one member per chunk, as stored, is a ChunkingError in every analysis
        kwargs["chunks"] = {**chunks, "number": -1}
    try:
        resource = resources.files("xensf").joinpath("data", ERA5_SAMPLE)
    except (NotADirectoryError, TypeError):
        # xensf seen as a namespace package (a checkout without xensf/__init__.py).
        resource = Path(__file__).parent.parent / "data" / ERA5_SAMPLE
    if isinstance(resource, Path):
        # An installed or editable package: a real file, which xarray (and dask
        # workers) can reopen lazily by its path.
        return xr.open_dataset(resource, **kwargs)
    # A zipped package: there is no path, read the 2 MB into memory instead.
    return xr.open_dataset(io.BytesIO(resource.read_bytes()), **kwargs)
