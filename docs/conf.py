"""Sphinx configuration of the xsam_jax documentation.

Build (warnings are errors, as in CI)::

    python -m sphinx -W -b html docs docs/_build/html

Three things are generated at each build, so that nothing is listed by hand:

- the API pages document each public module's ``__all__`` (the ``public-api`` directive
  below), so a name added to ``__all__`` appears without editing the docs;
- ``notebooks/``: the repository's ``notebooks/*.ipynb`` are copied here with an index page,
  rendered with the outputs they were saved with (myst-nb, never re-executed);
- ``_generated/``: the ``--help`` text of the command-line programs.

No intersphinx: the build must work offline.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import pathlib
import re
import shutil
import sys

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout, whatever else is installed

import xsam_jax  # noqa: E402

project = "xsam_jax"
author = "the xsam_jax authors"
copyright = "the xsam_jax authors"  # noqa: A001 (Sphinx's name)
release = xsam_jax.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "_generated", "**.ipynb_checkpoints"]
html_theme = "alabaster"
html_title = f"xsam_jax {release}"

# Docstrings write `name` for a Python object: link it when Sphinx knows it, else show code.
default_role = "py:obj"

# Google-style docstrings (Args/Returns/Attributes/Examples).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # Attributes: as fields, so NamedTuple fields are not described twice
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Keep the aliases' names in signatures rather than their long expansions.
autodoc_type_aliases = {"optax.Schedule": "optax.Schedule", "PyTree": "PyTree"}
autodoc_default_options = {"members": True, "show-inheritance": False}
autosummary_generate = False

# MyST: $...$ math in Markdown, anchors for the README's headings, notebooks as saved.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
nb_execution_mode = "off"

# The command-line programs whose --help the "Command line" page shows.
CLI_PARSERS = {
    "xsam-train": "xsam_jax.cli",
    "xsam-analyse": "xsam_jax.analyse",
    "xsam-study": "xsam_jax.study",
}


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """NamedTuple fields are documented by the class's Attributes section, not as members."""
    doc = getattr(obj, "__doc__", None) or ""
    if what == "class" and doc.startswith("Alias for field number"):
        return True
    return None


def _drop_type_docstring(app, what, name, obj, options, lines):
    """A constant (a dict, a tuple, a type alias) has no docstring of its own: autodoc would
    show its type's ("dict() -> new empty dictionary ..."); show only its value. A ``#:``
    comment on the constant still shows."""
    if what in ("data", "attribute") and lines:
        own = (inspect.getdoc(obj) or "").splitlines()
        if [line for line in lines if line.strip()] == [line for line in own if line.strip()]:
            lines.clear()


def _alias_names(app, what, name, obj, options, signature, return_annotation):
    """Sphinx prints an alias inside a union as ``TypeAliasForwardRef('name')``: print name."""

    def clean(text):
        return None if text is None else re.sub(r"TypeAliasForwardRef\('([^']*)'\)", r"\1", text)

    return clean(signature), clean(return_annotation)


class PublicAPI(Directive):
    """``.. public-api:: module``: the module's docstring, then a summary table and the
    reference of every name in its ``__all__``, each with the autodoc directive of its kind."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        module = importlib.import_module(name)
        public = list(module.__all__)
        lines = [f".. automodule:: {name}", "   :no-members:", ""]
        lines += [".. rubric:: Summary", "", ".. autosummary::", "   :nosignatures:", ""]
        lines += [f"   {member}" for member in public] + ["", ".. rubric:: Reference", ""]
        for member in public:
            lines += [f".. {_autodoc_directive(getattr(module, member))}:: {name}.{member}", ""]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=f"<public-api {name}>"), 0, container)
        return container.children


def _autodoc_directive(obj: object) -> str:
    """The autodoc directive that documents `obj`."""
    if isinstance(obj, type):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    # A type alias such as dict[str, np.ndarray] is callable, yet data.
    return "autofunction" if inspect.isroutine(obj) else "autodata"


def _copy_notebooks(app) -> None:
    """Copy ../notebooks/*.ipynb into notebooks/ with an index; zero notebooks is fine."""
    target = DOCS / "notebooks"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    found = sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in found:
        notebook = json.loads(path.read_text())
        (target / path.name).write_text(json.dumps(_ready_to_render(notebook, path.stem)))
    body = (
        "```{toctree}\n:maxdepth: 1\n\n" + "\n".join(path.stem for path in found) + "\n```\n"
        if found
        else "No notebooks yet.\n"
    )
    (target / "index.md").write_text(
        "# Notebooks\n\n"
        "The notebooks of the repository's `notebooks/` folder, shown with the outputs they "
        "were saved with (the docs build does not run them; the test suite does, on small "
        "settings).\n\n" + body
    )


def _copy_figures(app) -> None:
    """The README's figures where its included text points: docs/benchmarks/results/..."""
    target = DOCS / "benchmarks"
    shutil.rmtree(target, ignore_errors=True)
    for path in (ROOT / "benchmarks" / "results").rglob("*.png"):
        copy = target / path.relative_to(ROOT / "benchmarks")
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)


def _ready_to_render(notebook: dict, name: str) -> dict:
    """The notebook with what the build needs and a notebook may lack: a title (its name, if
    no Markdown cell starts with one) and its language (Python) for the code highlighting."""
    cells = notebook["cells"]
    first_markdown = next((c for c in cells if c["cell_type"] == "markdown"), None)
    if first_markdown is None or not "".join(first_markdown["source"]).lstrip().startswith("# "):
        title = {"cell_type": "markdown", "metadata": {}, "source": [f"# {name}"]}
        if (notebook["nbformat"], notebook["nbformat_minor"]) >= (4, 5):
            title["id"] = "xsam-docs-title"  # cell ids exist from nbformat 4.5 on
        cells.insert(0, title)
    notebook["metadata"].setdefault("language_info", {"name": "python"})
    return notebook


def _subcommands(parser: argparse.ArgumentParser):
    """The parser and, recursively, the parsers of its subcommands."""
    yield parser
    for action in parser._actions:  # argparse offers no public way to reach subparsers
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _subcommands(sub)


def _write_cli_help(app) -> None:
    """``_generated/<program>.txt``: the --help of each program and subcommand."""
    target = DOCS / "_generated"
    target.mkdir(exist_ok=True)
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal width: fix it
    try:
        for program, module in CLI_PARSERS.items():
            parser = importlib.import_module(module).build_parser()
            text = "\n\n".join(p.format_help() for p in _subcommands(parser))
            (target / f"{program}.txt").write_text(text)
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def setup(app):
    directives.register_directive("public-api", PublicAPI)
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
    app.connect("autodoc-process-docstring", _drop_type_docstring)
    app.connect("autodoc-process-signature", _alias_names)
    app.connect("builder-inited", _copy_notebooks)
    app.connect("builder-inited", _copy_figures)
    app.connect("builder-inited", _write_cli_help)
