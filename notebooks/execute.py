"""Run notebooks top to bottom in a fresh kernel and save them with their outputs.

    python notebooks/execute.py                        # every notebook, full settings
    python notebooks/execute.py --fast 01_quick_start  # XSAM_FAST=1: a quick smoke run

The committed notebooks hold the outputs of a full run, so that they render on the web.
Each notebook runs in a temporary working directory, and the saved file keeps no timing
metadata, so that running it again changes only what the results change. The kernels share
a JAX compilation cache for the duration of the command: runs that differ only in their seed,
within a notebook or across notebooks, compile their programs once. The test suite
(`tests/test_notebooks.py`) uses `execute` with ``fast=True``.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import pathlib
import sys
import tempfile
import time

import nbformat
from nbclient import NotebookClient
from PIL import Image

NOTEBOOKS = pathlib.Path(__file__).resolve().parent
CELL_TIMEOUT = 1800  # seconds; a full run trains for minutes in one cell


def kernel_environment(
    *, fast: bool, compilation_cache: str | os.PathLike | None
) -> dict[str, str]:
    """The kernel's environment: this one, with ``XSAM_FAST=1`` set or removed."""
    env = dict(os.environ)
    env.pop("XSAM_FAST", None)
    if fast:
        env["XSAM_FAST"] = "1"
    if compilation_cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(compilation_cache)
    # Notebooks import the xsam_jax of this checkout, installed or not.
    root = str(NOTEBOOKS.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def execute(
    notebook: nbformat.NotebookNode,
    *,
    fast: bool,
    cwd: str | os.PathLike,
    compilation_cache: str | os.PathLike | None = None,
) -> nbformat.NotebookNode:
    """Executes every cell in order in a new kernel; raises on the first cell error.

    Args:
      notebook: the notebook, executed in place (its outputs are replaced).
      fast: run with ``XSAM_FAST=1`` (the notebooks shrink their work).
      cwd: the kernel's working directory.
      compilation_cache: a directory for JAX's persistent compilation cache, or None.

    Returns:
      The executed notebook.
    """
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute(env=kernel_environment(fast=fast, compilation_cache=compilation_cache))
    return notebook


def compact_images(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Re-encodes every PNG output with a 256-colour palette, in place.

    Line plots use few colours, so the palette loses nothing visible and the file shrinks
    about threefold, which keeps the committed notebooks small.

    Args:
      notebook: an executed notebook.

    Returns:
      The same notebook.
    """
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" not in data:
                continue
            image = Image.open(io.BytesIO(base64.b64decode(data["image/png"])))
            buffer = io.BytesIO()
            image.convert("RGB").quantize(colors=256).save(buffer, "PNG", optimize=True)
            data["image/png"] = base64.b64encode(buffer.getvalue()).decode("ascii")
    return notebook


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="notebook names or paths (default: all)")
    parser.add_argument("--fast", action="store_true", help="run with XSAM_FAST=1")
    args = parser.parse_args(argv)
    paths = [
        pathlib.Path(name) if name.endswith(".ipynb") else NOTEBOOKS / f"{name}.ipynb"
        for name in args.names
    ] or sorted(NOTEBOOKS.glob("*.ipynb"))
    with tempfile.TemporaryDirectory() as cache:
        for path in paths:
            notebook = nbformat.read(path, as_version=4)
            tic = time.perf_counter()
            with tempfile.TemporaryDirectory() as cwd:
                execute(notebook, fast=args.fast, cwd=cwd, compilation_cache=cache)
            nbformat.write(compact_images(notebook), path)
            print(f"{path.name}: {time.perf_counter() - tic:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
