"""Sphinx configuration of the sklearn-roll documentation.

Build (from the repository root, with the ``docs`` extra installed)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Nothing is fetched at build time: no intersphinx inventories, no remote images.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from sphinx.pycode import ModuleAnalyzer, PycodeError

import sklearn_roll

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))  # gallery_conf, for sphinx-gallery's callables

# autosummary writes a page per listed name but never removes one: start afresh, so
# a name dropped from api.rst leaves no orphan page behind.
shutil.rmtree(DOCS / "generated", ignore_errors=True)

project = "sklearn-roll"
author = "the sklearn-roll developers"
copyright = "the sklearn-roll developers"
release = sklearn_roll.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",  # the benchmark results are Markdown files
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build"]
default_role = "literal"
# Literal blocks (formulas, shell commands) stay plain; code says its language.
highlight_language = "none"

# -- autodoc / autosummary ---------------------------------------------------

autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"member-order": "bysource"}
# Signatures as written; the types are in the numpydoc sections.
autodoc_typehints = "none"
# Defaults as written in the source (torch.optim.Adam, not <class ...>).
autodoc_preserve_defaults = True
add_module_names = False
# An undocumented override (forward) would otherwise show torch's docstring.
autodoc_inherit_docstrings = False

# Every reference to the package must resolve; other projects have no inventory here
# (nothing is fetched at build time), so references to them stay plain text.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|sklearn|skorch|scipy|pandas|dask|matplotlib|joblib)(\..*)?"),
]

# -- numpydoc ----------------------------------------------------------------

# The class templates list the methods that matter; numpydoc would otherwise list
# every member inherited from skorch and torch.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = True

# -- sphinx-gallery ----------------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    # Run every example, not only files named plot_*.
    "filename_pattern": r".*\.py$",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "gallery_conf.ExampleOrder",
    # Reduced training budgets (gallery_conf.EPOCHS), set before each example.
    "reset_modules": ("matplotlib", "gallery_conf.set_budget"),
    "image_scrapers": ("matplotlib",),
    "abort_on_example_error": True,
    "download_all_examples": False,
    "remove_config_comments": True,
    "min_reported_time": 0,
    "show_memory": False,
    "show_signature": False,
}

# -- HTML --------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"sklearn-roll {release}"
html_static_path = []
html_show_sourcelink = False
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
    "navbar_end": ["navbar-icon-links"],
    "icon_links": [],
}
html_context = {"default_mode": "light"}
# Pages without sub-pages need no navigation column; the result tables need the width.
html_sidebars = {"index": [], "results": []}


# -- docstrings of constants -------------------------------------------------


def _constant_docstring(app, what, name, obj, options, lines):
    """The docstring written under a constant, wherever the package defines it.

    autodoc reads a constant's docstring from the module it is documented in; for
    a constant imported there (``sklearn_roll.regions.FLOAT32_RTOL``) it finds none
    and shows the docstring of the value's type (float, tuple) instead.
    """
    if what != "data" or not name.startswith("sklearn_roll."):
        return
    attr = name.rsplit(".", 1)[1]
    for modname, module in sorted(sys.modules.items()):
        if not modname.startswith("sklearn_roll") or getattr(module, attr, None) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except PycodeError:
            continue
        if ("", attr) in docs:
            lines[:] = list(docs[("", attr)])
            return
    lines[:] = []


def setup(app):
    app.connect("autodoc-process-docstring", _constant_docstring)
