"""The how-to guides' code and the docstrings' examples run as written (a guide or an
example that fails is a bug)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
import warnings
from pathlib import Path

import pytest
import xarray as xr

DOCS = Path(__file__).resolve().parents[1] / "docs"
GUIDES = sorted(DOCS.glob("howto-*.md"))
MODULES = sorted(  # (__main__ runs the command line when imported)
    m.name
    for m in pkgutil.walk_packages([str(DOCS.parent / "xensf")], prefix="xensf.")
    if not m.name.endswith("__main__")
)


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("guide", GUIDES, ids=[g.stem for g in GUIDES])
def test_guide_code_runs(guide):
    from xensf.errors import XensfWarning

    blocks = python_blocks(guide)
    assert blocks, f"{guide.name} has no python code block"
    namespace: dict = {}
    with warnings.catch_warnings():
        # a guide that warns teaches a mistake: the cycling guide's one noise for
        # height and velocities was ten times the velocities' spread
        warnings.simplefilter("error", XensfWarning)
        for block in blocks:
            exec(compile(block, str(guide), "exec"), namespace)
    # every guide ends with an `analysis` that is a Dataset with the forecast's dims
    assert isinstance(namespace["analysis"], xr.Dataset)
    assert namespace["analysis"].sizes == namespace["forecast"].sizes


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    # examples in help() that no test ran had drifted: a cycle without the loc_radius
    # the LETKF needs, a latent shape of an older architecture
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the modules that have moved
        module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    report: list[str] = []
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
