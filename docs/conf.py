"""Sphinx configuration of the xensf documentation site.

Build: ``pip install -e ".[docs]"`` then ``sphinx-build -W -b html docs docs/_build/html``
(``-W``: a warning fails the build; tests/test_docs_site.py runs it).
"""

from __future__ import annotations

import sphinx_autosummary_accessors
from pygments.lexers import PythonLexer
from sphinx.highlighting import lexers

import xensf

# Guides mark code that needs a cloud bucket or a cluster as `python-cloud`, so that
# tests/test_docs.py (which runs every `python` block) leaves it out; it is Python.
lexers["python-cloud"] = PythonLexer()

project = "xensf"
author = "the xensf developers"
copyright = "2026, the xensf developers"
version = release = xensf.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx_autosummary_accessors",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]
exclude_patterns = ["_build", "examples"]
root_doc = "index"

autosummary_generate = True
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_validation_checks: set[str] = set()
myst_heading_anchors = 3

# The example gallery: every docs/examples/plot_*.py runs when the site is built, and
# its figures and printed output become the page (so the examples cannot rot).
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "gallery",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "write_computation_times": False,
    "abort_on_example_error": True,
    "reference_url": {"xensf": None},
}

html_theme = "pydata_sphinx_theme"
html_title = f"xensf {version}"
html_theme_options = {"navigation_with_keys": False}
