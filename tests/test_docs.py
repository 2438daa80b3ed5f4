"""The documentation covers the public API: every public module has an API page, every public
name is in its module's ``__all__`` (what the pages document), and the built site, with
warnings as errors, holds an entry for each of them.

CI builds the site once (``python -m sphinx -W -b html docs docs/_build/html``) and points
``XSAM_DOCS_HTML`` at it; without that variable the test builds the site itself.
"""

import importlib
import inspect
import os
import pathlib
import pkgutil
import subprocess
import sys
import zlib

import pytest

import xsam_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Public modules documented elsewhere than on an API page: the `xsam-train` program is on
# the "Command line" page (its parser) and its library is `xsam_jax.experiment`.
COMMAND_LINE_ONLY = {"xsam_jax.cli"}


def public_modules() -> list[str]:
    """`xsam_jax` and its submodules whose names do not start with an underscore."""
    children = (
        f"xsam_jax.{info.name}"
        for info in pkgutil.iter_modules(xsam_jax.__path__)
        if not info.name.startswith("_")
    )
    return ["xsam_jax", *sorted(set(children) - COMMAND_LINE_ONLY)]


def own_public_names(module) -> set[str]:
    """Functions and classes that `module` defines or imports from inside itself (its
    submodules; for `xsam_jax`, also the private `_src`), under names without an underscore."""
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_") or not (inspect.isfunction(value) or inspect.isclass(value)):
            continue
        origin = getattr(value, "__module__", "") or ""
        if origin == module.__name__ or origin.startswith(module.__name__ + "."):
            names.add(name)
    return names


def read_inventory(path: pathlib.Path) -> set[str]:
    """The object names of a Sphinx ``objects.inv`` (version 2: four header lines, then
    zlib-compressed lines ``name domain:role priority uri display-name``)."""
    data = path.read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = data.index(b"\n", header_end) + 1
    assert data.startswith(b"# Sphinx inventory version 2"), path
    lines = zlib.decompress(data[header_end:]).decode().splitlines()
    return {line.split(" ", 1)[0] for line in lines if line.strip()}


@pytest.mark.parametrize("name", public_modules())
def test_every_public_module_has_an_api_page(name):
    page = DOCS / "api" / f"{name}.rst"
    assert page.is_file(), f"no API page {page.relative_to(ROOT)} for the public module {name}"
    assert f".. public-api:: {name}" in page.read_text(), f"{page.name} does not document {name}"


@pytest.mark.parametrize("name", public_modules())
def test_public_names_are_in_all(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__, so its API page is empty"
    missing = own_public_names(module) - set(module.__all__)
    assert not missing, f"public in {name} but not in its __all__ (so not documented): {missing}"
    absent = [member for member in module.__all__ if not hasattr(module, member)]
    assert not absent, f"{name}.__all__ names what the module lacks: {absent}"


def built_site(tmp_path: pathlib.Path) -> pathlib.Path:
    """The HTML site CI built, or a fresh build (warnings as errors) in `tmp_path`."""
    if os.environ.get("XSAM_DOCS_HTML"):
        return pathlib.Path(os.environ["XSAM_DOCS_HTML"])
    out = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", "-d"]
    command += [str(tmp_path / "doctrees"), str(DOCS), str(out)]
    build = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, f"docs build failed:\n{build.stdout}\n{build.stderr}"
    return out


@pytest.mark.slow
def test_site_documents_every_public_name(tmp_path):
    site = built_site(tmp_path)
    documented = read_inventory(site / "objects.inv")
    expected = {
        f"{name}.{member}"
        for name in public_modules()
        for member in importlib.import_module(name).__all__
    }
    missing = sorted(expected - documented)
    assert not missing, f"public names without an entry in the docs: {missing}"
    for page in ("getting_started", "guide", "design", "results", "cli", "notebooks/index"):
        assert (site / f"{page}.html").is_file(), f"the site lost its {page} page"
