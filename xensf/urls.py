"""Telling a URL from a local path.

ERA5 stores may be remote (``gs://``, ``s3://``), while model bundles and cycling stores
are local directories; each asks here which kind of place it was given.
"""

from __future__ import annotations

import re

__all__ = ["url_protocol", "url_scheme"]

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def url_scheme(text: str) -> str | None:
    """The scheme of a URL, lower-case (``"gs"``, ``"https"``, ``"file"``), or None for
    a plain path."""
    match = _SCHEME.match(text)
    return match.group(1).lower() if match else None


def url_protocol(url: str) -> str:
    """The fsspec protocol of a URL (``"gs"``, ``"memory"``; ``"file"`` for a plain path)."""
    return url_scheme(url) or "file"
