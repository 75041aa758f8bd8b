"""The documentation site builds without a warning (``sphinx-build -W``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_docs_site_builds_without_warnings(tmp_path):
    source = tmp_path / "docs"  # a copy: autosummary writes its pages into the source
    shutil.copytree(DOCS, source, ignore=shutil.ignore_patterns("_build", "generated"))
    out = subprocess.run(
        [sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html",
         str(source), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    html = tmp_path / "html"
    for page in ("index", "method", "howto-pangeo", "reference", "api"):
        assert (html / f"{page}.html").is_file(), page
    examples = ("plot_vertical_localisation", "plot_adaptive_inflation", "plot_innovations",
                "plot_demo", "plot_cycling", "plot_cross_validation")  # fmt: skip
    for example in examples:
        page = (html / "gallery" / f"{example}.html").read_text()
        assert ".png" in page, example  # the example ran and its figure is on the page
    accessor = (html / "generated" / "xarray.Dataset.ensf.assimilate.html").read_text()
    assert "obs_time_tolerance" in accessor and "loc_radius" in accessor
