"""xsam_jax.plotting: figures are built and written; matplotlib stays an optional import."""

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from xsam_jax import plotting  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

ALPHAS = np.arange(21) * 0.1
RADII = np.array([0.05, 0.1, 0.2, 0.4])
LAMBDAS = np.linspace(-0.2, 1.2, 29)
XS, YS = np.linspace(-1, 1, 9), np.linspace(-1, 1, 7)

FIGURES = {
    "alpha": lambda path: plotting.plot_alpha_curve(
        ALPHAS, np.sin(ALPHAS), 1.6, title="α curve", path=path
    ),
    "prop1": lambda path: plotting.plot_proposition1(
        RADII, RADII**2, RADII**2 - 0.01, loss=0.0, path=path
    ),
    "interp": lambda path: plotting.plot_interpolation(
        LAMBDAS, {"train loss": LAMBDAS**2, "test accuracy": 1 - LAMBDAS**2 / 4}, path=path
    ),
    "surface": lambda path: plotting.plot_surface_2d(
        XS, YS, 1 + XS[:, None] ** 2 + 2 * YS[None, :] ** 2, log=True, path=path
    ),
    "eigen": lambda path: plotting.plot_eigenvalues(
        np.arange(10),
        np.stack([np.arange(10.0) + 5, np.arange(10.0)], 1),
        markers={"SAM": 4},
        path=path,
    ),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figures_are_written_as_png(name, tmp_path):
    path = tmp_path / f"{name}.png"
    assert isinstance(FIGURES[name](path), Figure)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_svg_output_and_no_file_without_path(tmp_path):
    path = tmp_path / "alpha.svg"
    plotting.plot_alpha_curve(ALPHAS, np.cos(ALPHAS), 0.0, path=str(path))
    assert b"<svg" in path.read_bytes()
    assert isinstance(FIGURES["eigen"](None), Figure)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.svg"]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: plotting.plot_alpha_curve(ALPHAS, np.ones(3)), "losses"),
        (lambda: plotting.plot_proposition1(RADII, RADII, RADII[:2]), "along_v1"),
        (lambda: plotting.plot_interpolation(LAMBDAS, {}), "metrics"),
        (lambda: plotting.plot_surface_2d(XS, YS, np.ones((7, 9))), "values"),
        (lambda: plotting.plot_surface_2d(XS, YS, -np.ones((9, 7)), log=True), "values"),
        (lambda: plotting.plot_eigenvalues(np.arange(3), np.ones(4)), "eigenvalues"),
    ],
)
def test_bad_inputs_raise(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_importing_the_package_does_not_import_matplotlib():
    code = (
        "import sys, xsam_jax, xsam_jax.sharpness, xsam_jax.landscape, xsam_jax.plotting; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
