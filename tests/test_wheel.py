"""The built wheel, installed (not editable) into a fresh virtual environment, runs the
README's quick start from outside the source tree, ships its type marker and its programs.

CI builds the sdist and the wheel once (``python -m build``, then ``twine check``) and points
``XSAM_WHEEL`` at the wheel; without that variable the test builds one itself. The new
environment sees the running one's packages (jax, optax, flax: nothing is downloaded), but
not its editable install of this checkout: the wheel's copy is what gets imported.
"""

import os
import pathlib
import re
import subprocess
import sys
import sysconfig

import pytest

import xsam_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def quick_start() -> str:
    """The first Python block of the README's "Quick start" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def wheel(tmp_path: pathlib.Path) -> pathlib.Path:
    """The wheel CI built, or one built now into `tmp_path`."""
    if os.environ.get("XSAM_WHEEL"):
        return pathlib.Path(os.environ["XSAM_WHEEL"])
    out = tmp_path / "dist"
    command = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, f"wheel build failed:\n{built.stdout}\n{built.stderr}"
    (path,) = out.glob("xsam_jax-*.whl")
    return path


def fresh_venv(directory: pathlib.Path) -> pathlib.Path:
    """A new virtual environment that sees this interpreter's packages; returns its python."""
    command = [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip"]
    subprocess.run([*command, str(directory)], check=True, timeout=120)
    python = directory / "bin" / "python"
    if sys.prefix != sys.base_prefix:
        # Running in a virtual environment: --system-site-packages reaches the base
        # interpreter's packages, not this environment's. A plain path line (processed
        # without this environment's own .pth files, so without its editable install)
        # adds them after the new environment's own site-packages.
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        (pathlib.Path(site) / "parent_env.pth").write_text(sysconfig.get_paths()["purelib"])
    return python


def run_isolated(command: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """Runs `command` in `cwd` without PYTHONPATH, so this checkout is not importable."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_installed_wheel_runs_the_quick_start(tmp_path):
    path = wheel(tmp_path)
    assert path.name.startswith(f"xsam_jax-{xsam_jax.__version__}-"), path.name
    python = fresh_venv(tmp_path / "venv")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    run_isolated([*pip, "--no-deps", "--no-index", str(path)], cwd=tmp_path)

    work = tmp_path / "user"  # outside the source tree
    work.mkdir()
    where = "import xsam_jax\nprint(xsam_jax.__file__, xsam_jax.__version__)\n"
    (work / "quick_start.py").write_text(quick_start() + where)
    printed = run_isolated([str(python), "quick_start.py"], cwd=work).stdout.splitlines()
    loss, alpha = map(float, printed[-2].split())  # the quick start's print(value, state[0].alpha)
    assert 0.0 < loss < 10.0 and 0.0 <= alpha <= 2.0, printed
    file, version = printed[-1].split()
    site = pathlib.Path(file).resolve()
    assert site.is_relative_to((tmp_path / "venv").resolve()), f"imported {site}, not the wheel"
    assert version == xsam_jax.__version__
    assert (site.parent / "py.typed").is_file(), "the wheel lost its py.typed marker"

    usage = run_isolated([str(tmp_path / "venv" / "bin" / "xsam-train"), "--help"], cwd=work)
    assert usage.stdout.startswith("usage: xsam-train"), usage.stdout[:200]
