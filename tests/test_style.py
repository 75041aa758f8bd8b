"""The style and packaging gate: ruff lint and format are clean, the wheel is complete."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["xensf", "tests", "benchmarks", "scripts", "docs/examples"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *PATHS], cwd=ROOT, capture_output=True, text=True
    )


def test_ruff_lint_is_clean():
    out = _ruff("check")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]


def test_ruff_format_is_clean():
    out = _ruff("format", "--check")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]


def test_the_package_says_it_is_typed():
    assert (ROOT / "xensf" / "py.typed").is_file()
    assert '"py.typed"' in (ROOT / "pyproject.toml").read_text()


def test_every_subpackage_ships_in_the_wheel():
    """pyproject lists packages one by one: a new subpackage must be listed too."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "xensf").rglob("__init__.py")
    }
    assert found - listed == set()
