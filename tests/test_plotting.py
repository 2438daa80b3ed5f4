"""xsam_jax.plotting: figures are built and written; matplotlib stays an optional import."""

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from xsam_jax import plotting  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

ALPHAS = np.arange(21) * 0.1
RADII = np.array([0.05, 0.1, 0.2, 0.4])
LAMBDAS = np.linspace(-0.2, 1.2, 29)
XS, YS = np.linspace(-1, 1, 9), np.linspace(-1, 1, 7)
EPOCHS = np.array([1, 2, 3])


def _history(alphas, scale):
    return [
        {
            "epoch": e,
            "train_loss": 2.0 * scale / e,
            "test_loss": 2.5 * scale / e,
            "train_accuracy": 0.3 * e / scale,
            "test_accuracy": 0.25 * e / scale,
            "alpha": a,
        }
        for e, a in zip(EPOCHS, alphas, strict=True)
    ]


HISTORIES = {"xsam": _history([1.0, 1.5, 0.5], 1.0), "sgd": _history([None] * 3, 1.2)}

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
    "alpha_epochs": lambda path: plotting.plot_alpha_per_epoch(
        EPOCHS, [1.0, 1.2, 0.8], title="α*", path=path
    ),
    "training": lambda path: plotting.plot_training_curves(HISTORIES, path=path),
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
        (lambda: plotting.plot_alpha_per_epoch(EPOCHS, [1.0]), "alphas"),
        (lambda: plotting.plot_training_curves({}), "histories"),
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


# ------------------------------------------------------------------ what each figure shows


def _xy(line):
    return np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)


def _legend(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def _vertical_lines(ax):
    """x of the axvline()s: lines whose two x coordinates are equal."""
    return sorted(float(x[0]) for x, _ in map(_xy, ax.lines) if len(x) == 2 and x[0] == x[1])


def test_alpha_curve_shows_the_losses_sam_and_alpha_star():
    (ax,) = FIGURES["alpha"](None).axes
    x, y = _xy(ax.lines[0])
    np.testing.assert_allclose(x, ALPHAS)
    np.testing.assert_allclose(y, np.sin(ALPHAS))
    assert _vertical_lines(ax) == [1.0, 1.6]
    assert _legend(ax)[1:] == [r"SAM ($\alpha = 1$)", r"$\alpha^* = 1.60$"]
    assert ax.get_xlabel() == r"$\alpha$"


def test_proposition1_shows_both_curves_and_their_gap():
    left, right = FIGURES["prop1"](None).axes
    (x0, y0), (x1, y1) = _xy(left.lines[0]), _xy(left.lines[1])
    np.testing.assert_allclose(x0, RADII)
    np.testing.assert_allclose(y0, RADII**2)
    np.testing.assert_allclose(x1, RADII)
    np.testing.assert_allclose(y1, RADII**2 - 0.01)
    assert _legend(left) == [r"along $g_0$", r"along $g_1$ (SAM)", r"$L(\theta)$"]
    heights = [bar.get_height() for bar in right.patches]
    np.testing.assert_allclose(heights, [0.01] * len(RADII))


def test_interpolation_puts_accuracies_dashed_on_a_second_axis():
    ax, accuracy_axis = FIGURES["interp"](None).axes
    x, y = _xy(ax.lines[0])
    np.testing.assert_allclose(x, LAMBDAS)
    np.testing.assert_allclose(y, LAMBDAS**2)
    (accuracy,) = accuracy_axis.lines
    np.testing.assert_allclose(_xy(accuracy)[1], 1 - LAMBDAS**2 / 4)
    assert accuracy.get_linestyle() == "--"
    assert _vertical_lines(ax) == [0.0, 1.0]
    assert _legend(ax) == ["train loss", "test accuracy"]


def test_surface_contours_span_the_log_values_and_mark_the_origin():
    fig = FIGURES["surface"](None)
    ax, colorbar = fig.axes
    z = np.log10(1 + XS[:, None] ** 2 + 2 * YS[None, :] ** 2)
    levels = ax.collections[0].levels
    assert levels[0] <= z.min() and levels[-1] >= z.max()
    assert _xy(ax.lines[-1]) == ([0.0], [0.0])
    assert colorbar.get_ylabel() == r"$\log_{10}$ loss"


def test_eigenvalues_one_curve_per_index_and_the_markers():
    (ax,) = FIGURES["eigen"](None).axes
    np.testing.assert_allclose(_xy(ax.lines[0])[1], np.arange(10.0) + 5)
    np.testing.assert_allclose(_xy(ax.lines[1])[1], np.arange(10.0))
    assert _vertical_lines(ax) == [4.0]
    assert _legend(ax) == [r"$\lambda_{1}$", r"$\lambda_{2}$", "SAM"]


def test_alpha_per_epoch_shows_each_epochs_alpha_and_sam():
    fig = FIGURES["alpha_epochs"](None)
    (ax,) = fig.axes
    x, y = _xy(ax.lines[0])
    np.testing.assert_allclose(x, EPOCHS)
    np.testing.assert_allclose(y, [1.0, 1.2, 0.8])
    assert _xy(ax.lines[1])[1].tolist() == [1.0, 1.0]  # SAM's alpha = 1, horizontal
    assert fig.get_suptitle() == "α*"


def test_training_curves_train_dashed_test_solid_and_alpha_for_xsam_only():
    loss, accuracy, alpha = FIGURES["training"](None).axes
    for ax, key in ((loss, "loss"), (accuracy, "accuracy")):
        # Per run: train (dashed), then test (solid), in the run's color.
        lines = ax.lines
        assert [line.get_linestyle() for line in lines] == ["--", "-", "--", "-"]
        for i, history in enumerate(HISTORIES.values()):
            train, test = lines[2 * i], lines[2 * i + 1]
            np.testing.assert_allclose(_xy(train)[0], EPOCHS)
            np.testing.assert_allclose(_xy(train)[1], [h[f"train_{key}"] for h in history])
            np.testing.assert_allclose(_xy(test)[1], [h[f"test_{key}"] for h in history])
            assert train.get_color() == test.get_color() == f"C{i}"
    assert _legend(accuracy) == ["xsam", "sgd"]
    (xsam_alpha,) = alpha.lines
    np.testing.assert_allclose(_xy(xsam_alpha)[1], [1.0, 1.5, 0.5])
    assert alpha.get_title() == r"XSAM $\alpha^*$"


def test_training_curves_without_alpha_have_two_panels():
    fig = plotting.plot_training_curves({"sgd": HISTORIES["sgd"]})
    assert [ax.get_title() for ax in fig.axes] == ["loss (train dashed, test solid)", "accuracy"]


def test_curve_panels_one_colour_per_label_and_one_legend_below_the_panels():
    curves = {
        "alpha": {"xsam": [[1.0, 1.2], [1.1, 1.3]]},
        "ratio": {"sam": [[1.0, 2.0]], "xsam": [[1.5, 1.0], [1.4, 1.2]]},
    }
    fig = plotting.plot_curve_panels(curves, {"alpha": "α*", "ratio": "ratio"})
    alpha, ratio = fig.axes
    assert alpha.get_legend() is None and ratio.get_legend() is None  # none covers a panel
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["sam (1 seed)", "xsam (2 seeds)"]
    # The same label, the same colour in every panel; the mean of the seeds is drawn.
    xsam_lines = [line for ax in fig.axes for line in ax.lines if "xsam" in line.get_label()]
    assert len({line.get_color() for line in xsam_lines}) == 1
    np.testing.assert_allclose(_xy(xsam_lines[0])[1], [1.05, 1.25])
    fig.canvas.draw()
    below = legend.get_window_extent()
    assert all(below.y1 <= ax.get_window_extent().y0 for ax in fig.axes)


def test_frontier_joins_the_undominated_means():
    costs = {"sgd": 100.0, "sam": 200.0, "every=2": 150.0, "late": 125.0}
    values = {
        "sgd": [0.89, 0.91],
        "sam": [0.92, 0.94],
        "every=2": [0.93, 0.93],
        "late": [0.88, 0.90],
    }
    fig = plotting.plot_frontier(costs, values, xlabel="gradient evaluations")
    (ax,) = fig.axes
    # Means: sgd 0.90, sam 0.93, every=2 0.93, late 0.89. SAM is no better than every-2 at a
    # higher cost and late is beaten by SGD: the frontier is sgd -> every=2, by cost.
    x, y = _xy(ax.lines[-1])
    np.testing.assert_allclose(x, [100.0, 150.0])
    np.testing.assert_allclose(y, [0.90, 0.93])
    bold = {t.get_text() for t in ax.texts if t.get_fontweight() == "bold"}
    assert bold == {"sgd", "every=2"}
    with pytest.raises(ValueError, match="costs and values must have the same labels"):
        plotting.plot_frontier({"sgd": 1.0}, {"sam": [0.9]}, xlabel="x")


def test_frontier_references_are_never_on_it_and_labels_do_not_overlap():
    # The reference is the cheapest and the most accurate: as a method it would be the whole
    # frontier. "a" and "b" sit on the same point, "c" just below them.
    costs = {"ref": 50.0, "a": 100.0, "b": 100.0, "c": 100.0}
    values = {"ref": [0.99, 0.99], "a": [0.9, 0.9], "b": [0.9, 0.9], "c": [0.8995, 0.8995]}
    fig = plotting.plot_frontier(costs, values, xlabel="x", references=["ref"])
    (ax,) = fig.axes
    x, y = _xy(ax.lines[-1])
    np.testing.assert_allclose(x, [100.0, 100.0])  # "a" and "b", equal; not the reference
    texts = {t.get_text(): t for t in ax.texts}
    assert texts["ref"].get_fontstyle() == "italic" and texts["ref"].get_fontweight() != "bold"
    fig.canvas.draw()
    # The text's own box (an annotation's extent also covers its line to the point).
    boxes = [Text.get_window_extent(texts[label]) for label in ("a", "b", "c")]
    for i, first in enumerate(boxes):
        for second in boxes[i + 1 :]:
            assert not first.overlaps(second)
    # Nothing is near the reference: its label stays by its point, with no line. Of three
    # labels on (nearly) one point two at least must move, each with a line back to it.
    assert texts["ref"].arrow_patch is None
    assert sum(texts[label].arrow_patch is not None for label in "abc") >= 2
    with pytest.raises(ValueError, match=r"references must be labels of costs, got \['nope'\]"):
        plotting.plot_frontier(costs, values, xlabel="x", references=["nope"])
