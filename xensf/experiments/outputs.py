"""The demos' output folders: a rerun replaces the last run's outputs, whole files only.

A demo owns a fixed set of names in its folder (its stores, figures and summary).
Before it writes anything, :func:`clear_previous` removes those of a previous run, so
that the folder never mixes two runs (a figure of a method this run left out, a store
of another noise level); other files there are left alone. :func:`write_whole` writes
one output beside its final name and moves it there when it is complete, so a demo
stopped halfway leaves whole outputs and no half-written one under a final name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["clear_previous", "write_whole"]

_PARTIAL = ".partial"  # before the suffix, which says the format: a.partial.png


def _partial(path: Path) -> Path:
    return path.with_name(path.stem + _PARTIAL + path.suffix)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def clear_previous(folder: Path, patterns: Iterable[str]) -> list[str]:
    """Remove what matches ``patterns`` (glob patterns of names directly in ``folder``)
    and what an interrupted :func:`write_whole` of such a name left; returns the names
    removed. Nothing else in ``folder`` is touched."""
    if not folder.is_dir():
        return []
    names = [n for pattern in patterns for n in (pattern, _partial(Path(pattern)).name)]
    found = {p for name in names for p in folder.glob(name)}
    for path in sorted(found):
        _remove(path)
    return sorted(p.name for p in found)


def write_whole(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` into a name beside ``path``, then move the result to ``path``
    (replacing what is there): a reader finds the old output or the whole new one."""
    tmp = _partial(path)
    if tmp.exists() or tmp.is_symlink():
        _remove(tmp)
    try:
        write(tmp)
    except BaseException:
        if tmp.exists():
            _remove(tmp)
        raise
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)  # os.replace does not replace a folder with contents
    os.replace(tmp, path)
    return path
