"""The how-to guides' code runs as written (a guide that fails is a bug)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import xarray as xr

DOCS = Path(__file__).resolve().parents[1] / "docs"
GUIDES = sorted(DOCS.glob("howto-*.md"))


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("guide", GUIDES, ids=[g.stem for g in GUIDES])
def test_guide_code_runs(guide):
    blocks = python_blocks(guide)
    assert blocks, f"{guide.name} has no python code block"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(guide), "exec"), namespace)
    # every guide ends with an `analysis` that is a Dataset with the forecast's dims
    assert isinstance(namespace["analysis"], xr.Dataset)
    assert namespace["analysis"].sizes == namespace["forecast"].sizes
