"""Make the ERA5 sample shipped in the package, ``xensf/data/era5-sample.nc``.

The source is the real ERA5 ensemble file ``era5-levels-members.nc`` (the test
sample of the cfgrib package, see ``../shared/data/README.md``). The copy keeps its
structure exactly as cfgrib wrote it -- dimension and coordinate names, coordinate
dtypes and encodings, every variable and global attribute, descending latitude --
and changes only how the two data variables are stored:

- ``z`` and ``t`` are stored as float32 instead of float64, compressed with zlib
  (with the shuffle filter);
- their ``scale_factor = 0.1`` is dropped: it packed the float64 values of the
  original and has no meaning for plain float32 storage (the values written are the
  physical, unpacked ones).

Two global attributes record what was done: a ``history`` line is prepended and the
Copernicus notice the licence requires is added as ``license``. Nothing else is
"fixed": the sample must look like real ERA5 files, CF flaws included, so that
xensf's readers are tested on what users have.

Usage::

    python scripts/make_era5_sample.py [SOURCE] [DESTINATION]

Defaults: ``../shared/data/era5-levels-members.nc`` (relative to the repository
root) and ``xensf/data/era5-sample.nc``.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import netCDF4
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "era5-levels-members.nc"
DEFAULT_DESTINATION = ROOT / "xensf" / "data" / "era5-sample.nc"

COPERNICUS_NOTICE = "Contains modified Copernicus Climate Change Service information 2017"
DATA_VARIABLES = ("z", "t")
# Attributes that describe the original's storage, not the data.
STORAGE_ATTRS = {"_FillValue", "scale_factor", "add_offset"}
COMPRESSION = {"zlib": True, "complevel": 9, "shuffle": True}


def make_sample(source: Path, destination: Path, *, levels: list[float] | None = None) -> Path:
    """Write the trimmed, float32, compressed copy of ``source`` to ``destination``.

    Parameters
    ----------
    source
        The cfgrib ERA5 sample ``era5-levels-members.nc``.
    destination
        The file to write (overwritten).
    levels
        Pressure levels (hPa) to keep; all of them when None.

    Returns
    -------
    Path
        ``destination``.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    with (
        netCDF4.Dataset(source) as src,
        netCDF4.Dataset(destination, "w", format="NETCDF4") as dst,
    ):
        level_index = np.arange(len(src.dimensions["isobaricInhPa"]))
        if levels is not None:
            all_levels = src.variables["isobaricInhPa"][:]
            level_index = np.flatnonzero(np.isin(all_levels, levels))
            if level_index.size != len(levels):
                raise ValueError(
                    f"levels {levels} not all in {source}: it has {all_levels.tolist()}"
                )

        for name, dim in src.dimensions.items():
            size = len(level_index) if name == "isobaricInhPa" else len(dim)
            dst.createDimension(name, None if dim.isunlimited() else size)

        for name, var in src.variables.items():
            is_data = name in DATA_VARIABLES
            dtype = np.dtype("float32") if is_data else var.dtype
            fill = var.getncattr("_FillValue") if "_FillValue" in var.ncattrs() else None
            if fill is not None:
                fill = dtype.type(fill)
            out = dst.createVariable(
                name,
                dtype,
                var.dimensions,
                fill_value=fill if fill is not None else False,
                **(COMPRESSION if is_data else {}),
                chunksizes=(1, 1, *var.shape[2:]) if is_data else None,
            )
            attrs = {k: var.getncattr(k) for k in var.ncattrs()}
            drop = STORAGE_ATTRS if is_data else {"_FillValue"}
            out.setncatts({k: v for k, v in attrs.items() if k not in drop})

            values = var[...]  # unpacked (scale_factor applied), masked where fill
            if "isobaricInhPa" in var.dimensions:
                axis = var.dimensions.index("isobaricInhPa")
                values = np.take(values, level_index, axis=axis)
            out[...] = values.astype(dtype) if is_data else values

        attrs = {k: src.getncattr(k) for k in src.ncattrs()}
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M")
        kept = "all levels" if levels is None else f"levels {levels} hPa"
        line = (
            f"{now} xensf scripts/make_era5_sample.py: {kept}; z and t stored as "
            "float32 (scale_factor dropped), zlib-compressed"
        )
        history = attrs.get("history")
        attrs["history"] = f"{line}\n{history}" if history else line
        attrs["license"] = COPERNICUS_NOTICE
        dst.setncatts(attrs)
    return destination


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("destination", nargs="?", type=Path, default=DEFAULT_DESTINATION)
    parser.add_argument(
        "--levels", type=float, nargs="+", default=None, help="pressure levels to keep (hPa)"
    )
    args = parser.parse_args(argv)
    path = make_sample(args.source, args.destination, levels=args.levels)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
