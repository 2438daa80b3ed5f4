"""Figures for the sharpness and landscape probes (matplotlib, imported on first use).

Every function builds a standalone `matplotlib.figure.Figure` on the Agg canvas, without
pyplot, so it neither needs a display nor touches pyplot's global figure list or the user's
backend; the figure is returned (Jupyter displays it) and, with ``path``, written to a file
whose format follows the suffix (``.png``, ``.svg``, ``.pdf``). Inputs are array-likes, e.g.
the fields of `xsam_jax.landscape.AlphaCurve`.

matplotlib is an optional dependency (the ``examples`` extra); ``import xsam_jax`` works
without it.

References:
  Chen & Zhou, Revisiting Sharpness-Aware Minimization: A More Faithful and Effective
  Implementation (XSAM), ICLR 2026.
  Zhou et al., Sharpness-Aware Minimization Efficiently Selects Flatter Minima Late in
  Training, ICLR 2025.
  Li et al., Visualizing the Loss Landscape of Neural Nets, NeurIPS 2018.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from xsam_jax._src.validation import InvalidArgumentError, check_grid, check_int, check_range

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "plot_accuracy_bands",
    "plot_accuracy_bars",
    "plot_alpha_curve",
    "plot_alpha_curves",
    "plot_alpha_per_epoch",
    "plot_alpha_star_spread",
    "plot_curve_panels",
    "plot_eigenvalues",
    "plot_frontier",
    "plot_interpolation",
    "plot_proposition1",
    "plot_spectral_density",
    "plot_surface_2d",
    "plot_tradeoff",
    "plot_training_curves",
]

ArrayLike = Any


def _figure(ncols: int = 1, width: float = 5.0, height: float = 3.6):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "xsam_jax.plotting needs matplotlib: pip install 'xsam-jax[examples]'."
        ) from err
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _finish(fig: Figure, title: str | None, path: str | os.PathLike | None) -> Figure:
    if title is not None:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig


def _epoch_axis(ax) -> None:
    """Label the x axis "epoch", with whole-number ticks only."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _vector(name: str, values: ArrayLike) -> np.ndarray:
    # Non-finite values are allowed: they leave gaps in the curves.
    return check_grid(name, values, finite=False)


def _same_length(name: str, values: ArrayLike, reference: np.ndarray) -> np.ndarray:
    array = _vector(name, values)
    if array.size != reference.size:
        raise InvalidArgumentError(name, f"of length {reference.size}", values)
    return array


def plot_alpha_curve(
    alphas: ArrayLike,
    losses: ArrayLike,
    alpha_star: float | None = None,
    *,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """XSAM's search curve L(θ + ρ_max·v(α)) against α, with α* and the SAM point α = 1.

    Args:
      alphas: the grid, 1-D.
      losses: the probe losses, same length (non-finite values are left as gaps).
      alpha_star: the selected α*, marked with a vertical line; None to omit.
      title: optional figure title.
      path: optional output file (.png, .svg, .pdf).

    Returns:
      The figure.
    """
    alphas = _vector("alphas", alphas)
    losses = _same_length("losses", losses, alphas)
    fig, (ax,) = _figure()
    ax.plot(alphas, losses, marker="o", markersize=3, label=r"$L(\theta + \rho_m v(\alpha))$")
    ax.axvline(1.0, color="0.6", linestyle=":", label=r"SAM ($\alpha = 1$)")
    if alpha_star is not None and np.isfinite(float(alpha_star)):
        alpha_star = float(alpha_star)
        ax.axvline(alpha_star, color="C3", linestyle="--", label=rf"$\alpha^* = {alpha_star:.2f}$")
    ax.set_xlabel(r"$\alpha$")
    ax.set_ylabel("loss")
    ax.legend()
    return _finish(fig, title, path)


def plot_proposition1(
    radii: ArrayLike,
    along_v0: ArrayLike,
    along_v1: ArrayLike,
    loss: float | None = None,
    *,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """XSAM's Proposition 1: the loss along g0 and along SAM's g1 against the radius.

    Left: both curves (and L(θ) as a horizontal line). Right: bars of
    L(θ + r·v0) − L(θ + r·v1); positive bars are radii where the SAM gradient points to a
    lower loss than the plain gradient does.

    Args:
      radii: the radii, 1-D.
      along_v0: L(θ + r·g0/‖g0‖), same length.
      along_v1: L(θ + r·g1/‖g1‖), same length.
      loss: optional L(θ).
      title: optional figure title.
      path: optional output file (.png, .svg, .pdf).

    Returns:
      The figure.
    """
    radii = _vector("radii", radii)
    v0 = _same_length("along_v0", along_v0, radii)
    v1 = _same_length("along_v1", along_v1, radii)
    fig, (left, right) = _figure(ncols=2)
    left.plot(radii, v0, marker="o", markersize=3, label=r"along $g_0$")
    left.plot(radii, v1, marker="s", markersize=3, label=r"along $g_1$ (SAM)")
    if loss is not None:
        left.axhline(float(loss), color="0.6", linestyle=":", label=r"$L(\theta)$")
    left.set_xlabel("radius")
    left.set_ylabel("loss")
    left.legend()
    labels = [f"{r:g}" for r in radii]
    gap = v0 - v1
    right.bar(labels, gap, color=np.where(gap > 0, "C3", "C0"))
    right.axhline(0.0, color="0.3", linewidth=0.8)
    right.set_xlabel("radius")
    right.set_ylabel(r"$L(\theta + r v_0) - L(\theta + r v_1)$")
    return _finish(fig, title, path)


def plot_interpolation(
    lambdas: ArrayLike,
    metrics: Mapping[str, ArrayLike],
    *,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Metrics along (1 − λ)θ_A + λθ_B (Zhou et al., ICLR 2025), endpoints marked.

    Metrics whose name contains "acc" are drawn dashed on a right-hand axis, the others
    (losses) on the left, so ``{"train loss": ..., "test accuracy": ...}`` shares one panel.

    Args:
      lambdas: the grid, 1-D.
      metrics: name -> values of the same length (e.g. `Interpolation.values` as a dict).
      title: optional figure title.
      path: optional output file (.png, .svg, .pdf).

    Returns:
      The figure.
    """
    lambdas = _vector("lambdas", lambdas)
    if not metrics:
        raise ValueError("metrics must hold at least one named curve, got none")
    fig, (ax,) = _figure()
    accuracy_axis = None
    handles = []
    for i, (name, values) in enumerate(metrics.items()):
        values = _same_length(f"metrics[{name!r}]", values, lambdas)
        if "acc" in name.lower():
            if accuracy_axis is None:
                accuracy_axis = ax.twinx()
            (line,) = accuracy_axis.plot(lambdas, values, linestyle="--", color=f"C{i}", label=name)
            accuracy_axis.set_ylabel("accuracy")
        else:
            (line,) = ax.plot(lambdas, values, color=f"C{i}", label=name)
            ax.set_ylabel("loss")
        handles.append(line)
    for endpoint in (0.0, 1.0):
        ax.axvline(endpoint, color="0.7", linestyle=":")
    ax.set_xlabel(r"$\lambda$")
    ax.legend(handles=handles)
    return _finish(fig, title, path)


def plot_surface_2d(
    x: ArrayLike,
    y: ArrayLike,
    values: ArrayLike,
    *,
    levels: int = 30,
    log: bool = False,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Contour plot of a 2-D loss surface (Li et al., NeurIPS 2018), θ marked at the origin.

    Args:
      x: coordinates along the first direction, length X.
      y: coordinates along the second direction, length Y.
      values: shape (X, Y), entry [i, j] at (x[i], y[j]) (as `loss_surface_2d` returns).
      levels: number of contour levels, >= 2.
      log: contour log10 of the values (for losses spanning decades; values must be > 0).
      title: optional figure title.
      path: optional output file (.png, .svg, .pdf).

    Returns:
      The figure.
    """
    xs, ys = _vector("x", x), _vector("y", y)
    z = np.asarray(values, np.float64)
    if z.shape != (xs.size, ys.size):
        raise ValueError(
            f"values must have shape (len(x), len(y)) = {(xs.size, ys.size)}, got {z.shape}."
        )
    check_int("levels", levels, low=2)
    if log:
        if not (z[np.isfinite(z)] > 0).all():
            raise ValueError("values must all be > 0 with log=True")
        z = np.log10(z)
    fig, (ax,) = _figure(width=4.6, height=4.0)
    contour = ax.contourf(xs, ys, z.T, levels=levels, cmap="viridis")
    ax.contour(xs, ys, z.T, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
    fig.colorbar(contour, ax=ax, label=r"$\log_{10}$ loss" if log else "loss")
    ax.plot([0.0], [0.0], marker="*", color="w", markersize=10, markeredgecolor="k")
    ax.set_xlabel(r"$\delta_1$")
    ax.set_ylabel(r"$\delta_2$")
    return _finish(fig, title, path)


def plot_eigenvalues(
    epochs: ArrayLike,
    eigenvalues: ArrayLike,
    *,
    markers: Mapping[str, float] | None = None,
    log: bool = False,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Top Hessian eigenvalue(s) against the epoch, e.g. around a late-phase SAM switch.

    Args:
      epochs: the epochs, 1-D of length E.
      eigenvalues: shape (E,) or (E, k) (one curve per eigenvalue index).
      markers: optional label -> epoch of vertical lines (e.g. {"SAM on": 150}).
      log: logarithmic y axis.
      title: optional figure title.
      path: optional output file (.png, .svg, .pdf).

    Returns:
      The figure.
    """
    epochs = _vector("epochs", epochs)
    lam = np.asarray(eigenvalues, np.float64)
    if lam.ndim == 1:
        lam = lam[:, None]
    if lam.ndim != 2 or lam.shape[0] != epochs.size:
        raise ValueError(
            f"eigenvalues must have shape ({epochs.size},) or ({epochs.size}, k), "
            f"got {np.shape(eigenvalues)}."
        )
    fig, (ax,) = _figure()
    for i in range(lam.shape[1]):
        ax.plot(epochs, lam[:, i], marker="o", markersize=3, label=rf"$\lambda_{{{i + 1}}}$")
    for j, (label, epoch) in enumerate((markers or {}).items()):
        ax.axvline(float(epoch), color=f"C{lam.shape[1] + j}", linestyle="--", label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Hessian eigenvalue")
    ax.legend()
    return _finish(fig, title, path)


def plot_spectral_density(
    nodes: ArrayLike,
    weights: ArrayLike,
    *,
    width: float | None = None,
    num_points: int = 1000,
    log: bool = True,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """The Hessian's eigenvalue density from stochastic Lanczos quadrature, Gaussian-smoothed.

    Plots `xsam_jax.sharpness.smoothed_density` of the quadrature on an even grid spanning the
    nodes with a margin of 5 widths, on a logarithmic y axis by default (as Ghorbani et al.
    2019 show it: the outliers carry about 1/n of the mass, the bulk near 0 the rest).

    Args:
      nodes: the ``nodes`` of `xsam_jax.sharpness.spectral_density`, shape (L, m).
      weights: its ``weights``, the same shape.
      width: the standard deviation σ > 0 of each node's Gaussian; None means 1 % of the
        range of the nodes.
      num_points: grid points, >= 2.
      log: logarithmic y axis (cut at 1e-6 of the peak).
      title: optional figure title.
      path: optional output file (.png, .svg, .pdf).

    Returns:
      The figure.
    """
    from xsam_jax.sharpness import SpectralDensity, smoothed_density

    nodes = np.asarray(nodes, np.float64)
    weights = np.asarray(weights, np.float64)
    if nodes.ndim != 2 or weights.shape != nodes.shape:
        raise ValueError(
            "nodes and weights must be arrays of one shape (num_probes, m), got "
            f"{nodes.shape} and {weights.shape}"
        )
    check_int("num_points", num_points, low=2)
    span = float(nodes.max() - nodes.min())
    if width is None:
        width = 0.01 * span if span > 0 else 1e-3
    check_range("width", width, low=0.0, low_open=True)
    grid = np.linspace(nodes.min() - 5 * width, nodes.max() + 5 * width, int(num_points))
    density = smoothed_density(SpectralDensity(nodes, weights), grid, width=width)
    fig, (ax,) = _figure()
    ax.plot(grid, density, color="C0")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=1e-6 * density.max())
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel(f"density (σ = {width:.3g})")
    ax.grid(alpha=0.3)
    return _finish(fig, title, path)


def plot_alpha_per_epoch(
    epochs: ArrayLike,
    alphas: ArrayLike,
    *,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """The α* XSAM selected at the end of each epoch, with SAM's α = 1 for reference.

    Args:
      epochs: the epochs, 1-D.
      alphas: α* after each epoch, same length (e.g. the "alpha" entries of a run's history).
      title: optional figure title.
      path: optional output file (.png, .svg, .pdf).

    Returns:
      The figure.
    """
    epochs = _vector("epochs", epochs)
    alphas = _same_length("alphas", alphas, epochs)
    fig, (ax,) = _figure()
    ax.plot(epochs, alphas, marker="o", markersize=3, label=r"$\alpha^*$")
    ax.axhline(1.0, color="0.6", linestyle=":", label=r"SAM ($\alpha = 1$)")
    _epoch_axis(ax)
    ax.set_ylabel(r"XSAM $\alpha^*$")
    ax.legend()
    return _finish(fig, title, path)


def plot_training_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Loss and accuracy per epoch and XSAM's α*, for some runs.

    One color per run: training dashed, the test split solid, the validation split dotted
    (each where the history has it). The α* panel appears when some run recorded α* (XSAM
    runs do).

    Args:
      histories: run label -> its per-epoch history, the entries `xsam_jax.experiment.run`
        returns: dicts with "epoch", "train_loss", "train_accuracy", "alpha" (None for methods
        without α*) and "test_*" and/or "val_*" losses and accuracies.
      title: optional figure title.
      path: optional output file (.png, .svg, .pdf).

    Returns:
      The figure.
    """
    if not histories:
        raise ValueError("histories must hold at least one run, got none")
    with_alpha = any(h and h[0].get("alpha") is not None for h in histories.values())
    fig, axes = _figure(ncols=3 if with_alpha else 2, width=4.4)
    styles = {"train": "--", "test": "-", "val": ":"}
    shown = set()
    for i, (label, history) in enumerate(histories.items()):
        color = f"C{i}"
        epochs = [h["epoch"] for h in history]
        labelled = False  # the run's label goes on its first held-out curve
        for split, style in styles.items():
            if not history or f"{split}_loss" not in history[0]:
                continue
            shown.add(split)
            name = None
            if split != "train" and not labelled:
                name, labelled = label, True
            for ax, key in zip(axes[:2], ("loss", "accuracy"), strict=True):
                values = [h[f"{split}_{key}"] for h in history]
                alpha = 0.7 if split == "train" else 1.0
                ax.plot(epochs, values, style, color=color, alpha=alpha, label=name)
        if with_alpha and history and history[0].get("alpha") is not None:
            alphas = [h["alpha"] for h in history]
            axes[2].plot(epochs, alphas, "-o", markersize=3, color=color, label=label)
    names = {"train": "train dashed", "test": "test solid", "val": "val dotted"}
    legend = ", ".join(names[s] for s in styles if s in shown)
    panel_titles = (f"loss ({legend})", "accuracy", r"XSAM $\alpha^*$")
    for ax, panel_title in zip(axes, panel_titles, strict=False):
        ax.set_title(panel_title)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
    axes[1].legend()
    return _finish(fig, title, path)


def _bands(
    ax,
    curves: Mapping[str, Sequence[Sequence[float | None]]],
    name: str,
    xlabel: str = "epoch",
    colors: Mapping[str, str] | None = None,
) -> None:
    """Mean ± one standard deviation over seeds per label; None entries leave gaps.

    `colors` fixes each label's colour (panels showing different labels); default C0, C1, ...
    """
    for i, (label, runs) in enumerate(curves.items()):
        color = colors[label] if colors is not None else f"C{i}"
        values = np.array([[np.nan if v is None else v for v in run] for run in runs], np.float64)
        if values.ndim != 2 or values.shape[1] == 0:
            raise InvalidArgumentError(
                f"{name}[{label!r}]", "equal-length, non-empty curves", f"shape {values.shape}"
            )
        epochs = np.arange(1, values.shape[1] + 1)
        mean = np.nanmean(values, axis=0) if np.isfinite(values).any() else values[0]
        spread = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
        seeds = f"{len(values)} seed{'s' if len(values) != 1 else ''}"
        ax.plot(epochs, mean, color=color, label=f"{label} ({seeds})")
        ax.fill_between(epochs, mean - spread, mean + spread, color=color, alpha=0.2, linewidth=0)
    _epoch_axis(ax)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)


def plot_accuracy_bands(
    curves: Mapping[str, Sequence[Sequence[float]]],
    *,
    ylabel: str = "test accuracy",
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Accuracy per epoch over seeds: the mean and a band of ± one standard deviation.

    Args:
      curves: variant label -> one accuracy curve per seed (all of one variant's curves of
        equal length).
      ylabel: the y-axis label.
      title: optional figure title.
      path: optional output file.

    Returns:
      The figure.
    """
    if not curves:
        raise ValueError("curves must hold at least one variant, got none")
    fig, (ax,) = _figure()
    _bands(ax, curves, "curves")
    ax.set_ylabel(ylabel)
    ax.legend()
    return _finish(fig, title, path)


def plot_curve_panels(
    curves: Mapping[str, Mapping[str, Sequence[Sequence[float | None]]]],
    ylabels: Mapping[str, str],
    *,
    xlabel: str = "epoch",
    hlines: Mapping[str, float] | None = None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Several quantities over epochs (or steps) side by side, as mean ± sd bands over seeds.

    Args:
      curves: panel name -> variant label -> one curve per seed (None entries are gaps, e.g.
        epochs before a first XSAM search).
      ylabels: panel name -> its y-axis label; the panels appear in this order.
      xlabel: the x-axis label of every panel ("epoch", "step").
      hlines: panel name -> a reference value drawn as a dotted line (e.g. 90 degrees).
      title: optional figure title.
      path: optional output file.

    Returns:
      The figure.
    """
    if not ylabels:
        raise ValueError("ylabels must name at least one panel, got none")
    fig, axes = _figure(ncols=len(ylabels), width=3.8)
    # One colour per label across the panels, which may show different labels.
    labels = list(dict.fromkeys(label for name in ylabels for label in curves[name]))
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    for ax, (name, ylabel) in zip(axes, ylabels.items(), strict=True):
        _bands(ax, curves[name], name, xlabel, colors)
        ax.set_ylabel(ylabel)
        if hlines and name in hlines:
            ax.axhline(hlines[name], color="0.4", linestyle=":", linewidth=1)
    # One legend for all panels, below them: inside a panel it would cover its curves.
    fullest = max(range(len(axes)), key=lambda i: len(curves[list(ylabels)[i]]))
    handles, names = axes[fullest].get_legend_handles_labels()
    fig.legend(
        handles, names, loc="outside lower center", ncols=min(len(names), 5), fontsize="small"
    )
    return _finish(fig, title, path)


def plot_tradeoff(
    series: Mapping[str, Sequence[tuple[float, Sequence[float]]]],
    *,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Accuracy against a cost or a setting: per label, points with 95 % interval bars.

    Args:
      series: label -> points (x, per-seed values); a label's points are joined by a line.
      xlabel: the x-axis label (e.g. "gradient evaluations per run").
      ylabel: the y-axis label.
      log_x: a logarithmic x axis.
      title: optional figure title.
      path: optional output file.

    Returns:
      The figure.
    """
    from xsam_jax._src.stats import mean_ci95

    if not series:
        raise ValueError("series must hold at least one label, got none")
    fig, (ax,) = _figure(width=5.5)
    for i, (label, points) in enumerate(series.items()):
        points = sorted(points, key=lambda p: p[0])
        xs = [x for x, _ in points]
        stats = [mean_ci95(values) for _, values in points]
        means = [m for m, _ in stats]
        halves = [h if np.isfinite(h) else 0.0 for _, h in stats]
        ax.errorbar(
            xs, means, yerr=halves, fmt="-o", markersize=4, capsize=3, color=f"C{i}", label=label
        )
    if log_x:
        ax.set_xscale("log")
        # Ticks at the measured x values, written plainly (k = 1, 2, 5, 10; not 10^0, 10^1).
        ticks = sorted({x for points in series.values() for x, _ in points})
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return _finish(fig, title, path)


def plot_frontier(
    costs: Mapping[str, float],
    values: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str = "final test accuracy",
    log_x: bool = False,
    references: Sequence[str] = (),
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Methods as points (cost, mean with 95 % interval), the Pareto frontier of the means joined.

    A method is on the frontier when no other is both at most as costly and at least as
    accurate on average (`xsam_jax._src.stats.pareto_front`); those are labelled in bold and
    joined by a dashed line, the others are labelled in grey. Reference points (e.g. an
    untuned baseline) are drawn hollow, labelled in italics and never on the frontier. A label
    that would overlap another label, another point or the legend moves to a free spot, with a
    thin line back to its point.

    Args:
      costs: label -> the method's cost (e.g. gradient evaluations or seconds per run).
      values: label -> its per-seed values (e.g. final test accuracies); the same labels.
      xlabel: the x-axis label.
      ylabel: the y-axis label.
      log_x: a logarithmic x axis.
      references: labels shown for comparison only.
      title: optional figure title.
      path: optional output file.

    Returns:
      The figure.
    """
    from xsam_jax._src.stats import mean_ci95, pareto_front

    if not costs or set(costs) != set(values):
        raise ValueError(
            f"costs and values must have the same labels, at least one, got {sorted(costs)} "
            f"and {sorted(values)}"
        )
    unknown = sorted(set(references) - set(costs))
    if unknown:
        raise ValueError(f"references must be labels of costs, got {unknown}")
    labels = list(costs)
    x = np.array([float(costs[label]) for label in labels])
    stats = [mean_ci95(values[label]) for label in labels]
    means = np.array([m for m, _ in stats])
    halves = np.array([h if np.isfinite(h) else 0.0 for _, h in stats])
    reference = np.array([label in references for label in labels])
    front = np.zeros(len(labels), dtype=bool)
    front[~reference] = pareto_front(x[~reference], means[~reference])
    fig, (ax,) = _figure(width=6.5, height=4.5)
    ax.errorbar(x, means, yerr=halves, fmt="none", ecolor="0.6", capsize=3)
    others = ~front & ~reference
    ax.scatter(x[others], means[others], color="0.5", zorder=3)
    ax.scatter(x[front], means[front], color="C3", zorder=4, label="Pareto frontier")
    if reference.any():
        ax.scatter(
            x[reference],
            means[reference],
            facecolors="white",
            edgecolors="0.3",
            zorder=4,
            label="reference",
        )
    order = np.argsort(x[front])
    ax.plot(x[front][order], means[front][order], "--", color="C3")
    if log_x:
        ax.set_xscale("log")
    ax.margins(x=0.08)  # room for the rightmost labels
    ax.autoscale_view()
    styles = [
        {
            "color": "black" if front[i] else "0.4",
            "fontweight": "bold" if front[i] else "normal",
            "fontstyle": "italic" if reference[i] else "normal",
        }
        for i in range(len(labels))
    ]
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title is not None:
        fig.suptitle(title)  # before the labels: it moves the axes
    _annotate_apart(ax, x, means, labels, styles)
    return _finish(fig, None, path)  # the title is set


_LABEL_OFFSET = (4.0, 4.0)  # points right of and above a label's point, where it is free


def _text_box(annotation, renderer):
    """The box of an annotation's text alone, without its line, at its current position."""
    from matplotlib.text import Text

    annotation.update_positions(renderer)
    return Text.get_window_extent(annotation, renderer)


def _fits(text, spot, renderer, frame, others) -> bool:
    """Whether `text` at offset `spot` lies inside `frame` and overlaps none of `others`."""
    text.set_position(spot)
    box = _text_box(text, renderer)
    inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 <= box.y1 <= frame.y1
    return inside and not any(box.overlaps(other) for other in others)


def _annotate_apart(ax, x, y, labels, styles, *, marker: float = 4.0) -> None:
    """Labels each point so that no label overlaps another label, another point or the legend.

    Labels are placed from the top of the plot down, each at the first free spot, judged by
    the rendered text's box: right of its point (`_LABEL_OFFSET`), then left of it, then a
    line further down or up at a time, inside the axes. A label that had to move gets a thin
    line back to its point; one with no free spot keeps the first.
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.draw_without_rendering()  # settle the layout: data-to-pixel positions are final
    renderer = fig.canvas.get_renderer()
    scale = fig.dpi / 72.0  # points to pixels
    frame = ax.get_window_extent(renderer)
    pixels = ax.transData.transform(np.column_stack([x, y]))
    size = marker * scale
    occupied = [Bbox.from_extents(px - size, py - size, px + size, py + size) for px, py in pixels]
    if ax.get_legend() is not None:
        occupied.append(ax.get_legend().get_window_extent(renderer))
    dx, dy = _LABEL_OFFSET
    for i in sorted(range(len(labels)), key=lambda i: -pixels[i][1]):
        options = {"textcoords": "offset points", "fontsize": 8, **styles[i]}
        text = ax.annotate(labels[i], (x[i], y[i]), xytext=_LABEL_OFFSET, **options)
        extent = _text_box(text, renderer)
        width, line = extent.width / scale, extent.height / scale  # in points
        others = [box for j, box in enumerate(occupied) if j != i]  # its own point may touch
        shifts = [0.0, *(sign * k * line for k in range(1, 8) for sign in (-1.0, 1.0))]
        spots = [(ox, dy + shift) for shift in shifts for ox in (dx, -dx - width)]
        chosen = next(
            (spot for spot in spots if _fits(text, spot, renderer, frame, others)), _LABEL_OFFSET
        )
        if chosen != _LABEL_OFFSET:
            text.remove()
            arrow = {"arrowstyle": "-", "color": "0.6", "lw": 0.6}
            text = ax.annotate(labels[i], (x[i], y[i]), xytext=chosen, arrowprops=arrow, **options)
        else:
            text.set_position(chosen)
        occupied.append(_text_box(text, renderer))


def plot_accuracy_bars(
    means: Mapping[str, float],
    half_widths: Mapping[str, float],
    *,
    ylabel: str = "final test accuracy",
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """One bar per variant with its 95 % confidence interval as an error bar.

    The y axis starts near the lowest interval, not at 0, so differences of a point show.

    Args:
      means: variant label -> mean accuracy.
      half_widths: variant label -> half-width of its 95 % interval (NaN: no bar).
      ylabel: the y-axis label.
      title: optional figure title.
      path: optional output file.

    Returns:
      The figure.
    """
    labels = list(means)
    if not labels:
        raise ValueError("means must hold at least one variant, got none")
    values = np.array([means[k] for k in labels], np.float64)
    errors = np.array([half_widths.get(k, np.nan) for k in labels], np.float64)
    shown = np.where(np.isfinite(errors), errors, 0.0)
    fig, (ax,) = _figure(width=max(4.0, 0.9 * len(labels) + 1.5))
    ax.bar(
        range(len(labels)),
        values,
        yerr=shown,
        capsize=4,
        color=[f"C{i}" for i in range(len(labels))],
    )
    ax.set_xticks(
        range(len(labels)),
        labels,
        rotation=30 if len(labels) > 4 else 0,
        ha="right" if len(labels) > 4 else "center",
    )
    low, high = float(np.min(values - shown)), float(np.max(values + shown))
    pad = max(0.01, 0.15 * (high - low))
    ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad) if high <= 1.0 else high + pad)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, title, path)


def plot_alpha_curves(
    alphas: ArrayLike,
    curves: Mapping[str, ArrayLike],
    *,
    relative: bool = True,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Several XSAM search curves L(θ + ρ_max·v(α)) against α, each with its α* marked.

    Args:
      alphas: the grid, 1-D.
      curves: label (e.g. "epoch 5") -> the probe losses on the grid.
      relative: plot L(α) − L(α = 0), so curves at different loss levels compare.
      title: optional figure title.
      path: optional output file.

    Returns:
      The figure.
    """
    alphas = _vector("alphas", alphas)
    if not curves:
        raise ValueError("curves must hold at least one curve, got none")
    fig, (ax,) = _figure(width=5.5)
    for i, (label, losses) in enumerate(curves.items()):
        losses = _same_length(f"curves[{label!r}]", losses, alphas)
        values = losses - losses[0] if relative else losses
        ax.plot(alphas, values, color=f"C{i}", label=label)
        if np.isfinite(losses).any():
            best = int(np.nanargmax(np.where(np.isfinite(losses), losses, -np.inf)))
            ax.plot(alphas[best], values[best], "o", color=f"C{i}")
    ax.axvline(1.0, color="0.6", linestyle=":", label=r"SAM ($\alpha = 1$)")
    ax.set_xlabel(r"$\alpha$")
    ax.set_ylabel(
        r"$L(\theta + \rho_m v(\alpha)) - L(\theta + \rho_m v_0)$" if relative else "loss"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _finish(fig, title, path)


def plot_alpha_star_spread(
    grid: ArrayLike,
    per_batch: ArrayLike,
    whole: float,
    *,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """How often each α* wins on single batches, against the α* of the whole data set.

    Args:
      grid: the α grid, 1-D.
      per_batch: α* of each single-batch search.
      whole: α* of the search on the whole training set.
      title: optional figure title.
      path: optional output file.

    Returns:
      The figure.
    """
    grid = _vector("grid", grid)
    per_batch = _vector("per_batch", per_batch)
    counts = [int(np.sum(np.isclose(per_batch, a))) for a in grid]
    step = float(grid[1] - grid[0]) if grid.size > 1 else 1.0
    fig, (ax,) = _figure()
    ax.bar(grid, counts, width=0.8 * step, color="C0", label=f"{per_batch.size} single batches")
    ax.axvline(
        float(whole),
        color="C3",
        linestyle="--",
        label=rf"whole training set: $\alpha^* = {float(whole):.1f}$",
    )
    ax.set_xlabel(r"$\alpha^*$")
    ax.set_ylabel("searches")
    ax.legend()
    return _finish(fig, title, path)
