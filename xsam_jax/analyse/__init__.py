r"""`xsam-analyse`: sharpness and landscape report of a run saved by `xsam-train --out DIR`.

``xsam-analyse DIR`` restores the final state of the run in ``DIR`` (``DIR/checkpoint``, its
config rebuilds the data and the model) and measures, on a seeded random subset of the
training set (no augmentation), with the train-mode loss that training minimised (BatchNorm
normalises with the statistics of each batch; its running statistics are left untouched,
`xsam_jax.sharpness.nnx_loss_fn`):

- the top-3 Hessian eigenvalues :math:`\lambda_1 \ge \lambda_2 \ge \lambda_3` by Lanczos on
  Hessian-vector products (Ghorbani et al. 2019; PyHessian, Yao et al. 2020), the sharpness
  measure of the late-phase SAM paper (Zhou et al., ICLR 2025), and Hutchinson's estimate of
  :math:`\operatorname{tr} H` with its standard error;
- Proposition 1 of XSAM (Chen & Zhou, ICLR 2026): with :math:`g_0 = \nabla L(\theta)` and
  SAM's :math:`g_1 = \nabla L(\theta + \rho\, g_0/\|g_0\|)`, the ratio and the difference of
  :math:`L(\theta + \rho_m g_1/\|g_1\|)` and :math:`L(\theta + \rho_m g_0/\|g_0\|)` at
  :math:`\rho_m = \rho_{\max}` (and the two curves over a few radii);
- XSAM's α curve :math:`\alpha \mapsto L(\theta + \rho_{\max} v(\alpha))` and its argmax α*.

It writes ``analysis.json`` (every number, the settings and the run's config),
``alpha_curve.png``, ``proposition1.png`` and, for XSAM runs, ``alpha_per_epoch.png`` (the α*
the run selected each epoch).

``xsam-analyse --compare DIR_A DIR_B`` evaluates the linear path
:math:`\theta(\lambda) = (1-\lambda)\theta_A + \lambda\theta_B`, λ ∈ [−0.2, 1.2], in eval mode
with interpolated BatchNorm running statistics (as the late-phase paper's ``LMC.py`` does): train
and test loss and accuracy on seeded random train and test examples, and the second
differences of the train loss, :math:`[L(\lambda+h) - 2L(\lambda) + L(\lambda-h)]/h^2
\approx d^\top \nabla^2 L\, d` with :math:`d = \theta_B - \theta_A`: no barrier between the
endpoints and a smaller curvature at one end is Zhou et al.'s valley picture (the SGD and the
late-SAM solutions lie in one valley, SAM's end the flatter). It writes ``interpolation.json``
and ``interpolation.png``.

Both are functions too (`analyse`, `compare`) returning the JSON-ready dicts.

References:
  Chen & Zhou, Revisiting Sharpness-Aware Minimization: A More Faithful and Effective
  Implementation, ICLR 2026.
  Zhou, Wang, Mao, Li, Yan, Sharpness-Aware Minimization Efficiently Selects Flatter Minima
  Late in Training, ICLR 2025.
  Ghorbani, Krishnan, Xiao, An Investigation into Neural Net Optimization via Hessian
  Eigenvalue Density, ICML 2019.
  Yao, Gholami, Keutzer, Mahoney, PyHessian: Neural Networks Through the Lens of the
  Hessian, IEEE BigData 2020.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from xsam_jax import landscape, plotting, sharpness
from xsam_jax.data import DatasetNotPreparedError
from xsam_jax.experiment import DEFAULT_RHO, TrainConfig, current_alpha, load_run

NUM_EIGENVALUES = 3
# Radii of the Proposition-1 figure, as multiples of ρ_max (ρ itself is added).
RADII = (0.25, 0.5, 1.0, 1.5, 2.0)
FALLBACK_RHO = 0.05


# --------------------------------------------------------------------------- helpers


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_radius(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


class _Progress:
    """Stage names and wall times on stderr, so the slow parts show they are running."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, key: str, text: str) -> Iterator[None]:
        if self.enabled:
            print(f"{text} ...", end="", file=sys.stderr, flush=True)
        tic = time.perf_counter()
        try:
            yield
        except BaseException:
            if self.enabled:
                print(" failed", file=sys.stderr)
            raise
        self.seconds[key] = round(time.perf_counter() - tic, 3)
        if self.enabled:
            print(f" {self.seconds[key]:.1f} s", file=sys.stderr)


def _check_run_dir(path: pathlib.Path) -> None:
    """FileNotFoundError unless ``path`` holds a checkpoint, raised before any progress output.

    A directory of several runs (``xsam-train --compare ... --out DIR``) gets their names.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory")
    if not (path / "checkpoint").is_dir():
        runs = sorted(p.name for p in path.iterdir() if (p / "checkpoint").is_dir())
        hint = (f"; it holds runs, pass one of {', '.join(str(path / r) for r in runs)}" if runs
                else " (written by xsam-train --out DIR)")
        raise FileNotFoundError(f"{path} has no checkpoint/{hint}")


def _history(run_dir: pathlib.Path) -> list[dict[str, Any]] | None:
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        return None  # an interrupted run: the checkpoint is there, the final metrics are not
    return json.loads(metrics.read_text()).get("history")


def _subset(
    x: np.ndarray, y: np.ndarray, examples: int, batch_size: int, rng: np.random.Generator
) -> tuple[dict[str, jax.Array], np.ndarray]:
    """A random subset as equal-sized batches of at most ``batch_size``, stacked.

    Equal sizes make the mean of the batch means the subset mean (`sharpness.stack_batches`);
    with B = ⌈n / batch_size⌉ batches of ⌊n / B⌋ examples at most B − 1 examples are dropped.

    Returns:
      ``({"x": (B, b, ...), "y": (B, b)}, indices)``, the indices in batch order.
    """
    n = min(examples, len(y))
    num_batches = -(-n // batch_size)
    size = n // num_batches
    indices = rng.choice(len(y), num_batches * size, replace=False)
    batches = {"x": jnp.asarray(x[indices].reshape(num_batches, size, *x.shape[1:])),
               "y": jnp.asarray(y[indices].reshape(num_batches, size))}
    return batches, indices


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _run_radii(config: TrainConfig) -> tuple[float | None, float | None]:
    """The run's Euclidean ascent radius ρ and probe radius ρ_max, None if it had none."""
    # ASAM's ρ is a radius in its parameter-scaled space, not a Euclidean one.
    if config.optimizer in ("sgd", "asam"):
        return None, None
    rho = DEFAULT_RHO[config.optimizer] if config.rho is None else config.rho
    if config.optimizer == "xsam":
        return rho, 2 * rho if config.rho_max is None else config.rho_max
    return rho, None


def _radii(
    config: TrainConfig, rho: float | None, rho_max: float | None
) -> tuple[float, float, dict[str, str]]:
    """ρ and ρ_max with where each came from: the flag, the run, or the fallback."""
    run_rho, run_rho_max = _run_radii(config)
    sources = {}
    if rho is not None:
        sources["rho"] = "flag"
    elif run_rho is not None:
        rho, sources["rho"] = run_rho, "run"
    else:
        rho, sources["rho"] = FALLBACK_RHO, "fallback"
    if rho_max is not None:
        sources["rho_max"] = "flag"
    elif run_rho_max is not None:
        rho_max, sources["rho_max"] = run_rho_max, "run"
    else:
        # XSAM's default, ρ_max = 2ρ (the authors' 0.15 / 0.3).
        rho_max, sources["rho_max"] = 2 * rho, "2 rho"
    return float(rho), float(rho_max), sources


def _floats(x: Any) -> Any:
    """Arrays to (nested lists of) Python floats for JSON."""
    return np.asarray(x, np.float64).tolist()


def _run_summary(config: TrainConfig) -> str:
    return f"{config.optimizer}, {config.model_name} on {config.dataset}, seed {config.seed}"


# --------------------------------------------------------------------------- analyse


def analyse(
    run_dir: str | pathlib.Path,
    *,
    examples: int = 1000,
    trace_samples: int = 50,
    num_iters: int = 20,
    k: int = NUM_EIGENVALUES,
    rho: float | None = None,
    rho_max: float | None = None,
    seed: int = 0,
    chunk: int | None = 8,
    out: str | pathlib.Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    r"""Sharpness report of a saved run; writes ``analysis.json`` and figures into ``out``.

    Every measure uses the same loss, the mean cross-entropy over ``examples`` random training
    examples (seeded, no augmentation) in equal batches of at most the run's batch size, in
    train mode (BatchNorm with the statistics of each batch, running statistics untouched):

    - ``hessian.eigenvalues``: the top-k eigenvalues of :math:`\nabla^2 L(\theta)` by ``num_iters``
      Lanczos steps (`xsam_jax.sharpness.hessian_eigenvalues`); λ_1 is λ_max.
    - ``hessian.trace``: :math:`\frac1N \sum_i z_i^\top H z_i` over N = ``trace_samples``
      Rademacher probes (Hutchinson 1989) and its standard error.
    - ``proposition1``: at :math:`\rho_m = \rho_{\max}`, :math:`L_1 = L(\theta + \rho_m
      g_1/\|g_1\|)` and :math:`L_0 = L(\theta + \rho_m g_0/\|g_0\|)`, their ratio
      :math:`L_1/L_0` and difference :math:`L_1 - L_0` (Chen & Zhou, ICLR 2026, Prop. 1, a
      second-order argument: for large enough ρ_m, L_1 > L_0, and some direction between
      g_0 and g_1 or beyond g_1 climbs higher still, which the α curve probes), and both
      curves over radii ρ_max·{0.25, 0.5, 1, 1.5, 2} and ρ.
    - ``alpha_curve``: :math:`L(\theta + \rho_{\max} v(\alpha))` on XSAM's grid α = 0, 0.1,
      ..., 2 and its argmax α* (α = 1 is SAM's direction), `xsam_jax.landscape.alpha_curve`.

    ρ and ρ_max default to the run's (ρ_max = 2ρ unless an XSAM run set it); runs without a
    Euclidean ρ (SGD, ASAM) fall back to ρ = 0.05.

    Args:
      run_dir: the directory of `xsam-train --out DIR`.
      examples: training examples to measure on (capped at the training set), >= 1.
      trace_samples: Hutchinson probes, >= 2.
      num_iters: Lanczos steps, >= k.
      k: number of top eigenvalues, >= 1.
      rho: ascent radius defining g_1 (None: the run's).
      rho_max: probe radius ρ_m of Proposition 1 and of the α curve (None: the run's or 2ρ).
      seed: seeds the subset, the Lanczos start vector and the probes.
      chunk: loss evaluations vmapped at once in the α curve and Proposition 1 (None: all).
      out: output directory (None: ``run_dir/analysis``).
      progress: print the stages and their wall times on stderr.

    Returns:
      The contents of ``analysis.json``.

    Raises:
      FileNotFoundError: no run in ``run_dir``.
      ValueError: a bad argument.
    """
    for name, value, low in (("examples", examples, 1), ("trace_samples", trace_samples, 2),
                             ("k", k, 1), ("num_iters", num_iters, k), ("seed", seed, 0)):
        _check_int(name, value, low)
    _check_radius("rho", rho)
    _check_radius("rho_max", rho_max)
    if chunk is not None:
        _check_int("chunk", chunk, 1)
    run_dir = pathlib.Path(run_dir)
    out = run_dir / "analysis" if out is None else pathlib.Path(out)
    _check_run_dir(run_dir)
    stages = _Progress(progress)

    with stages.stage("restore", f"restoring {run_dir}"):
        config, built = load_run(run_dir)
    rho, rho_max, sources = _radii(config, rho, rho_max)
    x, y = built.dataset.arrays("train")
    batches, indices = _subset(x, y, examples, config.batch_size,
                               np.random.default_rng(seed))
    model = built.state.to_model()
    loss_fn, params = sharpness.nnx_loss_fn(
        model, lambda m, batch: _cross_entropy(m(batch["x"]), batch["y"]))
    subset_loss = sharpness.mean_over_batches(loss_fn, batches)
    key = jax.random.key(seed)
    num_examples = int(indices.size)

    with stages.stage("eigenvalues", f"top-{k} Hessian eigenvalues ({num_iters} Lanczos steps, "
                      f"{num_examples} examples)"):
        eigenvalues = sharpness.hessian_eigenvalues(
            loss_fn, params, key=jax.random.fold_in(key, 0), k=k, num_iters=num_iters,
            batches=batches)
        eigenvalues = _floats(eigenvalues)
    with stages.stage("trace", f"Hutchinson trace ({trace_samples} probes)"):
        trace = sharpness.hessian_trace(loss_fn, params, key=jax.random.fold_in(key, 1),
                                        num_samples=trace_samples, batches=batches)
    radii = np.unique(np.append(rho_max * np.asarray(RADII), rho))
    with stages.stage("proposition1", "Proposition 1"):
        prop = landscape.proposition1(subset_loss, params, radii, rho=rho,
                                      ascent_steps=config.ascent_steps, chunk=chunk)
        at = int(np.argmin(np.abs(radii - rho_max)))
        along_g0, along_g1 = float(prop.along_v0[at]), float(prop.along_v1[at])
    with stages.stage("alpha_curve", "alpha curve"):
        curve = landscape.alpha_curve(subset_loss, params, rho=rho, rho_max=rho_max,
                                      ascent_steps=config.ascent_steps, chunk=chunk)
        alphas, losses = np.asarray(curve.alphas), np.asarray(curve.losses)
        sam_index = int(np.argmin(np.abs(alphas - 1.0)))
        star = float(curve.alpha_star)

    history = _history(run_dir)
    result = {
        "run_dir": str(run_dir),
        "config": dataclasses.asdict(config),
        "step": int(built.state.step),
        "final_test_accuracy": history[-1]["test_accuracy"] if history else None,
        "run_alpha_star": current_alpha(built.state.opt_state),
        "settings": {
            "examples": num_examples, "examples_requested": examples,
            "batches": int(batches["y"].shape[0]), "batch_size": int(batches["y"].shape[1]),
            "batchnorm": "train mode, batch statistics, running statistics untouched",
            "k": k, "num_iters": num_iters, "method": "lanczos", "trace_samples": trace_samples,
            "rho": rho, "rho_max": rho_max, "rho_source": sources["rho"],
            "rho_max_source": sources["rho_max"], "ascent_steps": config.ascent_steps,
            "seed": seed,
        },
        "train_indices": indices.tolist(),
        "loss": float(prop.loss),
        "hessian": {"eigenvalues": eigenvalues, "lambda_max": eigenvalues[0],
                    "trace": float(trace.mean), "trace_stderr": float(trace.stderr),
                    "trace_samples": _floats(trace.samples)},
        "proposition1": {
            "rho_m": rho_max, "loss_along_g0": along_g0, "loss_along_g1": along_g1,
            "ratio": along_g1 / along_g0, "difference": along_g1 - along_g0,
            "cos_psi": float(prop.cos_psi), "radii": _floats(prop.radii),
            "along_g0": _floats(prop.along_v0), "along_g1": _floats(prop.along_v1),
        },
        "alpha_curve": {
            "alphas": _floats(alphas), "losses": _floats(curve.losses), "alpha_star": star,
            "loss_at_alpha_star": float(np.max(losses[np.isfinite(losses)]))
            if math.isfinite(star) else None,
            "loss_at_sam": float(losses[sam_index]), "cos_psi": float(curve.cos_psi),
        },
        "seconds": stages.seconds,
    }

    with stages.stage("figures", f"writing {out}"):
        out.mkdir(parents=True, exist_ok=True)
        label = f"{config.optimizer} on {config.dataset}, {num_examples} train examples"
        plotting.plot_alpha_curve(alphas, losses, star, path=out / "alpha_curve.png",
                                  title=rf"$\rho$ = {rho:g}, $\rho_m$ = {rho_max:g}; {label}")
        plotting.plot_proposition1(prop.radii, prop.along_v0, prop.along_v1, float(prop.loss),
                                   path=out / "proposition1.png",
                                   title=rf"Proposition 1, $\rho$ = {rho:g}; {label}")
        per_epoch = [(h["epoch"], h["alpha"]) for h in history or []
                     if h.get("alpha") is not None]
        if per_epoch:
            _plot_alpha_per_epoch(per_epoch, out / "alpha_per_epoch.png")
        (out / "analysis.json").write_text(json.dumps(result, indent=2))
    return result


def _plot_alpha_per_epoch(points: list[tuple[int, float]], path: pathlib.Path) -> None:
    """The α* XSAM selected at the end of each epoch (from the run's metrics.json)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    epochs, alphas = zip(*points, strict=True)
    ax.plot(epochs, alphas, marker="o", markersize=3)
    ax.axhline(1.0, color="0.6", linestyle=":", label=r"SAM ($\alpha = 1$)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"XSAM $\alpha^*$")
    ax.legend()
    fig.savefig(path, dpi=150)


def format_report(result: dict[str, Any]) -> str:
    """The short text report of an `analyse` result."""
    s, h, p, a = (result[key] for key in ("settings", "hessian", "proposition1", "alpha_curve"))
    config = TrainConfig(**result["config"])
    accuracy = result["final_test_accuracy"]
    lines = [
        f"run        {result['run_dir']}: {_run_summary(config)}, "
        f"{config.epochs} epoch{'s' * (config.epochs != 1)}, step {result['step']}"
        + ("" if accuracy is None else f", final test accuracy {accuracy:.4f}"),
        f"subset     {s['examples']} training examples ({s['batches']} batches of "
        f"{s['batch_size']}, seed {s['seed']}), train-mode loss L = {result['loss']:.4f}",
        "lambda     " + ", ".join(f"{v:.4g}" for v in h["eigenvalues"])
        + f"  (top {s['k']}, Lanczos {s['num_iters']} steps)",
        f"trace      {h['trace']:.4g} ± {h['trace_stderr']:.2g}  "
        f"(Hutchinson, {s['trace_samples']} probes, ± 1 s.e.)",
        f"Prop. 1    rho = {s['rho']:g} ({s['rho_source']}), rho_m = {s['rho_max']:g} "
        f"({s['rho_max_source']}): L(g1) / L(g0) = {p['ratio']:.4f}, "
        f"L(g1) - L(g0) = {p['difference']:+.4g}",
        f"{'':11}L(theta + rho_m g0/|g0|) = {p['loss_along_g0']:.4f}, "
        f"L(theta + rho_m g1/|g1|) = {p['loss_along_g1']:.4f}, cos psi = {p['cos_psi']:.3f}",
    ]
    star = a["alpha_star"]
    if math.isfinite(star):
        lines.append(f"alpha*     {star:.2f}: L(v(alpha*)) = {a['loss_at_alpha_star']:.4f} vs "
                     f"SAM's L(v(1)) = {a['loss_at_sam']:.4f}")
    else:
        lines.append("alpha*     undefined: every probe loss was non-finite")
    if result["run_alpha_star"] is not None:
        lines[-1] += f"; the run's last alpha* = {result['run_alpha_star']:.2f}"
    return "\n".join(lines)


# --------------------------------------------------------------------------- compare


def _split_floating(model_state: Any) -> tuple[list[jax.Array], Any]:
    """The floating leaves of a model state (BatchNorm statistics) and a rebuild function.

    Only these are interpolated; integer and key leaves (RNG streams) keep run A's values.
    """
    leaves, treedef = jax.tree.flatten(model_state)
    floating = [i for i, leaf in enumerate(leaves) if jnp.issubdtype(leaf.dtype, jnp.inexact)]

    def rebuild(values: list[jax.Array]) -> Any:
        merged = list(leaves)
        for i, value in zip(floating, values, strict=True):
            merged[i] = value
        return jax.tree.unflatten(treedef, merged)

    return [leaves[i] for i in floating], rebuild


def compare(
    dir_a: str | pathlib.Path,
    dir_b: str | pathlib.Path,
    *,
    examples: int = 1000,
    num: int = 29,
    seed: int = 0,
    chunk: int | None = 8,
    out: str | pathlib.Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    r"""Loss and accuracy on the line through two runs' solutions (the valley test).

    Evaluates :math:`\theta(\lambda) = (1-\lambda)\theta_A + \lambda\theta_B` at ``num``
    uniform λ in [−0.2, 1.2] (step 0.05 for the default 29, so λ = 0 and 1 are θ_A and θ_B)
    in eval mode, the BatchNorm running statistics interpolated likewise (Zhou et al., ICLR
    2025, ``LMC.py``): train and test loss and accuracy on ``examples`` random train and test
    examples (seeded, no augmentation, from run A's data), and the second differences
    :math:`\Delta^2 L(\lambda) = [L(\lambda+h) - 2L(\lambda) + L(\lambda-h)]/h^2 \approx
    d^\top \nabla^2 L(\theta(\lambda))\, d`, :math:`d = \theta_B - \theta_A`, at the interior
    points (`xsam_jax.landscape.interpolate`). The barrier is
    :math:`\max_{\lambda \in [0, 1]} L(\lambda) - \max(L(0), L(1))`: about 0 when both
    solutions lie in one valley.

    Args:
      dir_a: run A (λ = 0), the directory of `xsam-train --out DIR`.
      dir_b: run B (λ = 1), with the same model and dataset.
      examples: train and test examples each (capped at the split sizes), >= 1.
      num: grid points, >= 3.
      seed: seeds the examples.
      chunk: λ points evaluated at once (None: all).
      out: output directory (None: ``dir_a/analysis/interpolation_<name of dir_b>``).
      progress: print the stages and their wall times on stderr.

    Returns:
      The contents of ``interpolation.json``.

    Raises:
      FileNotFoundError: no run in a directory.
      ValueError: a bad argument, or runs of different models or datasets.
    """
    for name, value, low in (("examples", examples, 1), ("num", num, 3), ("seed", seed, 0)):
        _check_int(name, value, low)
    if chunk is not None:
        _check_int("chunk", chunk, 1)
    dir_a, dir_b = pathlib.Path(dir_a), pathlib.Path(dir_b)
    out = dir_a / "analysis" / f"interpolation_{dir_b.resolve().name}" if out is None else out
    out = pathlib.Path(out)
    _check_run_dir(dir_a)
    _check_run_dir(dir_b)
    stages = _Progress(progress)
    with stages.stage("restore", f"restoring {dir_a} and {dir_b}"):
        config_a, built_a = load_run(dir_a)
        config_b, built_b = load_run(dir_b)
    if (config_a.model_name, config_a.dataset) != (config_b.model_name, config_b.dataset):
        raise ValueError(f"cannot interpolate {config_a.model_name} on {config_a.dataset} "
                         f"({dir_a}) and {config_b.model_name} on {config_b.dataset} ({dir_b}): "
                         "the runs need the same model and dataset")
    notes = []
    if config_a.seed != config_b.seed:
        notes.append(f"the runs have different seeds ({config_a.seed}, {config_b.seed}); the "
                     "examples are run A's (for digits the train/test split follows the seed)")

    rng = np.random.default_rng(seed)
    data = {}
    for split in ("train", "test"):
        x, y = built_a.dataset.arrays(split)
        data[split] = _subset(x, y, examples, config_a.batch_size, rng)
    state_a, state_b = built_a.state, built_b.state
    stats_a, rebuild = _split_floating(state_a.model_state)
    stats_b, _ = _split_floating(state_b.model_state)
    graphdef = state_a.graphdef

    def on_batch(point: dict[str, Any], batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        model = nnx.merge(graphdef, point["params"], rebuild(point["stats"]))
        logits = nnx.view(model, use_running_average=True, deterministic=True,
                          raise_if_not_found=False)(batch["x"])
        return {"loss": _cross_entropy(logits, batch["y"]),
                "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"])}

    per_split = {split: sharpness.mean_over_batches(on_batch, batches)
                 for split, (batches, _) in data.items()}

    def metrics(point: dict[str, Any]) -> dict[str, jax.Array]:
        return {f"{split}_{name}": value for split, fn in per_split.items()
                for name, value in fn(point).items()}

    with stages.stage("interpolation", f"interpolating ({num} points, "
                      f"{data['train'][1].size} train / {data['test'][1].size} test examples)"):
        path = landscape.interpolate(
            metrics, {"params": state_a.params, "stats": stats_a},
            {"params": state_b.params, "stats": stats_b}, num=num, chunk=chunk)
        lambdas = np.asarray(path.lambdas, np.float64)
        values = {name: np.asarray(v, np.float64) for name, v in path.values.items()}
        second = {name: np.asarray(v, np.float64) for name, v in path.second_differences.items()}

    # Endpoints and curvatures at the grid points nearest to λ = 0 and 1 (exact for num = 29).
    ends = {name: int(np.argmin(np.abs(lambdas - lam))) for name, lam in (("a", 0.0), ("b", 1.0))}
    interior = lambdas[1:-1]
    curv = {name: int(np.argmin(np.abs(interior - lam))) for name, lam in (("a", 0.0), ("b", 1.0))}
    inside = (lambdas >= lambdas[ends["a"]]) & (lambdas <= lambdas[ends["b"]])
    train_loss = values["train_loss"]
    distance = float(optax.tree.norm(optax.tree.sub(state_b.params, state_a.params)))
    result = {
        "run_a": {"dir": str(dir_a), "config": dataclasses.asdict(config_a)},
        "run_b": {"dir": str(dir_b), "config": dataclasses.asdict(config_b)},
        "settings": {"num": num, "lo": float(lambdas[0]), "hi": float(lambdas[-1]),
                     "examples_requested": examples, "train_examples": int(data["train"][1].size),
                     "test_examples": int(data["test"][1].size), "seed": seed,
                     "mode": "eval (interpolated BatchNorm running statistics)"},
        "notes": notes,
        "train_indices": data["train"][1].tolist(),
        "test_indices": data["test"][1].tolist(),
        "lambdas": _floats(lambdas),
        "values": {name: _floats(v) for name, v in values.items()},
        "second_difference_lambdas": _floats(interior),
        "second_differences": {name: _floats(v) for name, v in second.items()},
        "at_a": {name: float(v[ends["a"]]) for name, v in values.items()},
        "at_b": {name: float(v[ends["b"]]) for name, v in values.items()},
        "train_loss_barrier": float(train_loss[inside].max()
                                    - max(train_loss[ends["a"]], train_loss[ends["b"]])),
        "curvature_at_a": float(second["train_loss"][curv["a"]]),
        "curvature_at_b": float(second["train_loss"][curv["b"]]),
        "curvature_lambdas": [float(interior[curv["a"]]), float(interior[curv["b"]])],
        "distance": distance,
        "seconds": stages.seconds,
    }
    with stages.stage("figures", f"writing {out}"):
        out.mkdir(parents=True, exist_ok=True)
        plotting.plot_interpolation(
            lambdas, {name.replace("_", " "): values[name] for name in
                      ("train_loss", "test_loss", "train_accuracy", "test_accuracy")},
            path=out / "interpolation.png",
            title=f"A = {config_a.optimizer} (λ = 0), B = {config_b.optimizer} (λ = 1)")
        (out / "interpolation.json").write_text(json.dumps(result, indent=2))
    return result


def format_comparison(result: dict[str, Any]) -> str:
    """The short text report of a `compare` result."""
    s = result["settings"]
    a, b = result["run_a"], result["run_b"]
    lines = [f"A          {a['dir']}: {_run_summary(TrainConfig(**a['config']))}",
             f"B          {b['dir']}: {_run_summary(TrainConfig(**b['config']))}",
             f"path       (1 - lambda) A + lambda B, lambda in [{s['lo']:g}, {s['hi']:g}], "
             f"{s['num']} points, |B - A| = {result['distance']:.4g}",
             f"{'':11}eval mode, {s['train_examples']} train / {s['test_examples']} test "
             "examples",
             f"{'':11}{'train loss':>11}{'train acc':>11}{'test loss':>11}{'test acc':>11}"]
    for label, row in (("at A", result["at_a"]), ("at B", result["at_b"])):
        lines.append(f"{label:11}{row['train_loss']:11.4f}{row['train_accuracy']:11.4f}"
                     f"{row['test_loss']:11.4f}{row['test_accuracy']:11.4f}")
    curvatures = result["curvature_at_a"], result["curvature_at_b"]
    lines += [f"barrier    max over [0, 1] of the train loss - max(L(A), L(B)) = "
              f"{result['train_loss_barrier']:.4g}",
              f"curvature  second difference of the train loss along B - A: "
              f"{curvatures[0]:.4g} at A, {curvatures[1]:.4g} at B"]
    # "Flatter" compares two local minima along the path; a negative value is no minimum.
    if min(curvatures) > 0:
        lines[-1] += f" ({'A' if curvatures[0] < curvatures[1] else 'B'} is the flatter end)"
    lines += [f"note       {note}" for note in result["notes"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="xsam-analyse",
        description="Sharpness report of a run saved by `xsam-train --out DIR` (top Hessian "
        "eigenvalues, trace, XSAM's Proposition 1 and alpha curve), or with --compare the "
        "linear interpolation between two runs.")
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                   help="directory written by xsam-train --out")
    p.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"),
                   help="interpolate (1-lambda)*A + lambda*B instead of analysing one run")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default: RUN_DIR/analysis, or "
                   "DIR_A/analysis/interpolation_<name of DIR_B>)")
    p.add_argument("--examples", type=int, default=1000, metavar="N",
                   help="training (and, with --compare, test) examples to measure on "
                   "(default: %(default)s)")
    p.add_argument("--trace-samples", type=int, default=50, metavar="N",
                   help="Hutchinson probes (default: %(default)s)")
    p.add_argument("--num-iters", type=int, default=20, metavar="N",
                   help="Lanczos steps (default: %(default)s)")
    p.add_argument("--rho", type=float, default=None,
                   help="ascent radius (default: the run's; 0.05 for sgd and asam)")
    p.add_argument("--rho-max", type=float, default=None,
                   help="probe radius rho_m (default: the run's XSAM rho_max, else 2*rho)")
    p.add_argument("--num", type=int, default=29, metavar="N",
                   help="--compare: points on [-0.2, 1.2] (default: %(default)s)")
    p.add_argument("--chunk", type=int, default=8, metavar="N",
                   help="loss evaluations vmapped at once, bounds memory (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the examples, the Lanczos start and the probes "
                   "(default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no stage timings on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point of `xsam-analyse`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.run_dir is None) == (args.compare is None):
        parser.error("give either RUN_DIR or --compare DIR_A DIR_B")
    shared = {"examples": args.examples, "seed": args.seed, "chunk": args.chunk,
              "out": args.out, "progress": not args.no_progress}
    try:
        if args.compare:
            report = format_comparison(compare(*args.compare, num=args.num, **shared))
        else:
            report = format_report(analyse(
                args.run_dir, trace_samples=args.trace_samples, num_iters=args.num_iters,
                rho=args.rho, rho_max=args.rho_max, **shared))
    except (ValueError, FileNotFoundError, DatasetNotPreparedError) as err:
        parser.exit(2, f"xsam-analyse: error: {err}\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
