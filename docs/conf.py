"""Sphinx configuration for the flask-towersess documentation.

Build the HTML docs (warnings are errors) and run every example in them::

    .venv/bin/sphinx-build -W -b html docs docs/_build/html
    .venv/bin/sphinx-build -W -b doctest docs docs/_build/doctest
"""

from __future__ import annotations

import importlib.util
import os
import sys

import flask_towersess

# The example store of extending.rst, imported by its examples.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples"))

# -- Project -------------------------------------------------------------------

project = "Flask-TowerSess"
copyright = "the flask-towersess authors"  # noqa: A001 - Sphinx's name
author = "the flask-towersess authors"
release = flask_towersess.__version__
version = ".".join(release.split(".")[:2])

# -- General -------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
]
# No intersphinx: the docs build without network access. References to
# Flask, Werkzeug and SQLAlchemy objects render as plain literals.

root_doc = "index"
exclude_patterns = ["_build"]
# The default role (`text`) is a literal, never a dangling reference.
default_role = "code"
# Unresolved :class: references to other projects are not warnings.
nitpicky = False

# -- autodoc -------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autoclass_content = "class"
autodoc_default_options: dict[str, object] = {}

# -- doctest -------------------------------------------------------------------

# Every page's examples are run by ``sphinx-build -b doctest``. Each page
# imports what its examples need, in the examples themselves or in its own
# ``testsetup`` block. The global set-up only gives every group a fresh
# working directory (the zero-config SQLite store writes to the instance
# folder), a module name for ``Flask(__name__)``, and the imports of the
# ``>>>`` example in the MsgPackSerializer docstring (autodoc shows it in
# api.rst, where it runs in this namespace, not in its module's).
doctest_global_setup = """
import os as _os
import tempfile as _tempfile
from datetime import date
from flask_towersess.serializers import MsgPackSerializer

__name__ = "hello"
_docs_cwd = _os.getcwd()
_docs_tmp = _tempfile.TemporaryDirectory()
_os.chdir(_docs_tmp.name)
"""
doctest_global_cleanup = """
_os.chdir(_docs_cwd)
_docs_tmp.cleanup()
"""

# -- HTML ----------------------------------------------------------------------

if importlib.util.find_spec("pallets_sphinx_themes") is not None:
    extensions.append("pallets_sphinx_themes")
    html_theme = "flask"
    html_theme_options = {"index_sidebar_logo": False}
    html_sidebars = {
        "**": ["localtoc.html", "relations.html", "searchbox.html"],
    }
    # The banner compares with the latest release on PyPI, from the reader's
    # browser; there is no release to compare with yet.
    version_banner = False
else:  # pragma: no cover - the docs extra installs the theme
    html_theme = "alabaster"

html_title = f"Flask-TowerSess Documentation ({version})"
html_show_sourcelink = False
