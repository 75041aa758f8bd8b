"""The intake catalog shipped with xensf (top-level ``catalogs/`` in the source tree)."""

from __future__ import annotations

from importlib.resources import files

__all__ = ["catalog", "catalog_path"]


def catalog_path() -> str:
    """Path of the catalog YAML file inside the installed package."""
    return str(files("xensf.catalogs") / "xensf.yaml")


def catalog():
    """Open xensf's intake 2 catalog.

    Examples
    --------
    >>> import xensf
    >>> cat = xensf.catalog()
    >>> ds = cat.era5_sample.read()          # the packaged ERA5 ensemble sample
    """
    import intake

    cat = intake.from_yaml_file(catalog_path())
    # Local entries name the package's data folder, wherever the package is installed.
    cat.user_parameters["XENSF_DATA"] = str(files("xensf") / "data")
    return cat
