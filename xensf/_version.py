"""The xensf version: the one place it is read (from the installed package's metadata)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("xensf")
except PackageNotFoundError:  # running from a source tree that is not installed
    VERSION = "0+unknown"

__all__ = ["VERSION"]
