r"""The measurements of `xsam-analyse`: plain dicts of numbers, ready for JSON.

`sharpness_of_run` measures one saved run (Hessian spectrum and trace, XSAM's Proposition 1
and α curve); `valley_between_runs` evaluates the line between two runs' solutions. Both
restore the runs with `xsam_jax.experiment.load_run` and return what `analysis.json` and
`interpolation.json` hold; they write nothing (see `xsam_jax.analyse.reports`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from xsam_jax import landscape, sharpness
from xsam_jax._src.validation import check_int, check_range
from xsam_jax.data.dataset import Split
from xsam_jax.experiment import TrainConfig, current_alpha, default_radii, load_run
from xsam_jax.experiment.train import _Run

NUM_EIGENVALUES = 3
# Radii of the Proposition-1 figure, as multiples of ρ_max (ρ itself is added).
RADII = (0.25, 0.5, 1.0, 1.5, 2.0)
# ρ for runs without a Euclidean one (SGD, ASAM).
FALLBACK_RHO = 0.05


class Progress:
    """Stage names and wall times on stderr, so the slow parts show they are running.

    Attributes:
      seconds: stage key -> wall time of the stages finished so far.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, key: str, text: str) -> Iterator[None]:
        """Times the block as ``key``, printing ``text ... 1.2 s`` (or ``failed``)."""
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


def check_run_dir(path: pathlib.Path) -> None:
    """FileNotFoundError unless ``path`` holds a checkpoint, raised before any progress output.

    A directory of several runs (``xsam-train --compare ... --out DIR``) gets their names.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory")
    if not (path / "checkpoint").is_dir():
        runs = sorted(p.name for p in path.iterdir() if (p / "checkpoint").is_dir())
        hint = (
            f"; it holds runs, pass one of {', '.join(str(path / r) for r in runs)}"
            if runs
            else " (written by xsam-train --out DIR)"
        )
        raise FileNotFoundError(f"{path} has no checkpoint/{hint}")


def read_history(run_dir: pathlib.Path) -> list[dict[str, Any]] | None:
    """The per-epoch metrics of ``run_dir/metrics.json``; None for an interrupted run."""
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
    batches = {
        "x": jnp.asarray(x[indices].reshape(num_batches, size, *x.shape[1:])),
        "y": jnp.asarray(y[indices].reshape(num_batches, size)),
    }
    return batches, indices


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _floats(x: Any) -> Any:
    """Arrays to (nested lists of) Python floats for JSON."""
    return np.asarray(x, np.float64).tolist()


def choose_radii(
    config: TrainConfig, rho: float | None, rho_max: float | None
) -> tuple[float, float, dict[str, str]]:
    """ρ and ρ_max with where each came from: the flag, the run, or the fallback.

    The run's radii are `xsam_jax.experiment.default_radii`, except that an adaptive (ASAM)
    ascent's ρ is a radius in its parameter-scaled space, not a Euclidean one, so those runs
    have no ρ here (XSAM's probe radius ρ_max stays Euclidean).
    """
    run_rho, run_rho_max = default_radii(config)
    if config.adaptive:
        run_rho = None
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


# --------------------------------------------------------------------------- one run


def _hessian(loss_fn, params, batches, settings, stages) -> dict[str, Any]:
    """Top-k eigenvalues (Lanczos) and Hutchinson's trace of the subset loss's Hessian."""
    key = jax.random.key(settings["seed"])
    k, num_iters, probes = settings["k"], settings["num_iters"], settings["trace_samples"]
    with stages.stage(
        "eigenvalues",
        f"top-{k} Hessian eigenvalues ({num_iters} Lanczos steps, {settings['examples']} examples)",
    ):
        eigenvalues = _floats(
            sharpness.hessian_eigenvalues(
                loss_fn,
                params,
                key=jax.random.fold_in(key, 0),
                k=k,
                num_iters=num_iters,
                batches=batches,
            )
        )
    with stages.stage("trace", f"Hutchinson trace ({probes} probes)"):
        trace = sharpness.hessian_trace(
            loss_fn, params, key=jax.random.fold_in(key, 1), num_samples=probes, batches=batches
        )
    return {
        "eigenvalues": eigenvalues,
        "lambda_max": eigenvalues[0],
        "trace": float(trace.mean),
        "trace_stderr": float(trace.stderr),
        "trace_samples": _floats(trace.samples),
    }


def _proposition1(loss, params, settings, chunk, stages) -> tuple[dict[str, Any], float]:
    """Losses along g0 and g1 at ρ_max and over the figure's radii; and L(θ)."""
    rho, rho_max = settings["rho"], settings["rho_max"]
    radii = np.unique(np.append(rho_max * np.asarray(RADII), rho))
    with stages.stage("proposition1", "Proposition 1"):
        prop = landscape.proposition1(
            loss, params, radii, rho=rho, ascent_steps=settings["ascent_steps"], chunk=chunk
        )
    at = int(np.argmin(np.abs(radii - rho_max)))
    along_g0, along_g1 = float(prop.along_v0[at]), float(prop.along_v1[at])
    summary = {
        "rho_m": rho_max,
        "loss_along_g0": along_g0,
        "loss_along_g1": along_g1,
        "ratio": along_g1 / along_g0,
        "difference": along_g1 - along_g0,
        "cos_psi": float(prop.cos_psi),
        "radii": _floats(prop.radii),
        "along_g0": _floats(prop.along_v0),
        "along_g1": _floats(prop.along_v1),
    }
    return summary, float(prop.loss)


def _alpha_curve(loss, params, settings, chunk, stages) -> dict[str, Any]:
    """XSAM's α curve at ρ_max, its argmax α* and the SAM point α = 1."""
    with stages.stage("alpha_curve", "alpha curve"):
        curve = landscape.alpha_curve(
            loss,
            params,
            rho=settings["rho"],
            rho_max=settings["rho_max"],
            ascent_steps=settings["ascent_steps"],
            chunk=chunk,
        )
    alphas, losses = np.asarray(curve.alphas), np.asarray(curve.losses)
    star = float(curve.alpha_star)
    return {
        "alphas": _floats(alphas),
        "losses": _floats(losses),
        "alpha_star": star,
        "loss_at_alpha_star": float(np.max(losses[np.isfinite(losses)]))
        if math.isfinite(star)
        else None,
        "loss_at_sam": float(losses[int(np.argmin(np.abs(alphas - 1.0)))]),
        "cos_psi": float(curve.cos_psi),
    }


def _check_sharpness_arguments(
    examples, trace_samples, num_iters, k, rho, rho_max, seed, chunk
) -> None:
    check_int("examples", examples, low=1)
    check_int("trace_samples", trace_samples, low=2)
    check_int("k", k, low=1)
    check_int("num_iters", num_iters, low=k)
    # Unlike the transformations (ρ >= 0), a probe needs a radius > 0. None (the run's
    # radius, all at once) is left out of the messages: they also serve the flags.
    for name, radius in (("rho", rho), ("rho_max", rho_max)):
        if radius is not None:
            check_range(name, radius, low=0.0, low_open=True)
    check_int("seed", seed, low=0)
    _check_chunk(chunk)


def _check_chunk(chunk: int | None) -> None:
    if chunk is not None:
        check_int("chunk", chunk, low=1)


def sharpness_of_run(
    run_dir: pathlib.Path,
    *,
    examples: int,
    trace_samples: int,
    num_iters: int,
    k: int,
    rho: float | None,
    rho_max: float | None,
    seed: int,
    chunk: int | None,
    stages: Progress,
) -> dict[str, Any]:
    """The measurements of `xsam_jax.analyse.analyse` (see there), as ``analysis.json`` holds.

    Raises:
      InvalidArgumentError: a bad argument (ρ and ρ_max must be > 0 here, unlike for the
        transformations, which allow ρ = 0).
      FileNotFoundError: no run in ``run_dir``.
    """
    _check_sharpness_arguments(examples, trace_samples, num_iters, k, rho, rho_max, seed, chunk)
    check_run_dir(run_dir)
    with stages.stage("restore", f"restoring {run_dir}"):
        config, built = load_run(run_dir)
    rho, rho_max, sources = choose_radii(config, rho, rho_max)
    batches, indices = _subset(
        *built.dataset.arrays("train"), examples, config.batch_size, np.random.default_rng(seed)
    )
    settings = {
        "examples": int(indices.size),
        "examples_requested": examples,
        "batches": int(batches["y"].shape[0]),
        "batch_size": int(batches["y"].shape[1]),
        "batchnorm": "train mode, batch statistics, running statistics untouched",
        "k": k,
        "num_iters": num_iters,
        "method": "lanczos",
        "trace_samples": trace_samples,
        "rho": rho,
        "rho_max": rho_max,
        "rho_source": sources["rho"],
        "rho_max_source": sources["rho_max"],
        "ascent_steps": config.ascent_steps,
        "seed": seed,
    }
    loss_fn, params = sharpness.nnx_loss_fn(
        built.state.to_model(), lambda m, batch: _cross_entropy(m(batch["x"]), batch["y"])
    )
    hessian = _hessian(loss_fn, params, batches, settings, stages)
    probe = (sharpness.mean_over_batches(loss_fn, batches), params, settings, chunk, stages)
    proposition1, loss = _proposition1(*probe)
    alpha_curve = _alpha_curve(*probe)
    history = read_history(run_dir)
    return {
        "run_dir": str(run_dir),
        "config": dataclasses.asdict(config),
        "step": int(built.state.step),
        "final_test_accuracy": history[-1]["test_accuracy"] if history else None,
        "run_alpha_star": current_alpha(built.state.opt_state),
        "settings": settings,
        "train_indices": indices.tolist(),
        "loss": loss,
        "hessian": hessian,
        "proposition1": proposition1,
        "alpha_curve": alpha_curve,
        "seconds": stages.seconds,
    }


# --------------------------------------------------------------------------- two runs


def split_floating(model_state: Any) -> tuple[list[jax.Array], Callable[[list], Any]]:
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


def _restore_pair(
    dir_a: pathlib.Path, dir_b: pathlib.Path, stages: Progress
) -> tuple[tuple[TrainConfig, _Run], tuple[TrainConfig, _Run]]:
    """Both runs, restored; ValueError unless they share the model and the dataset."""
    with stages.stage("restore", f"restoring {dir_a} and {dir_b}"):
        config_a, built_a = load_run(dir_a)
        config_b, built_b = load_run(dir_b)
    if (config_a.model_name, config_a.dataset) != (config_b.model_name, config_b.dataset):
        raise ValueError(
            f"cannot interpolate {config_a.model_name} on {config_a.dataset} "
            f"({dir_a}) and {config_b.model_name} on {config_b.dataset} ({dir_b}): "
            "the runs need the same model and dataset"
        )
    return (config_a, built_a), (config_b, built_b)


def _eval_metrics(graphdef, rebuild, data):
    """point -> {"<split>_loss", "<split>_accuracy"} in eval mode, each the mean over batches."""

    def on_batch(point: dict[str, Any], batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        model = nnx.merge(graphdef, point["params"], rebuild(point["stats"]))
        logits = nnx.view(
            model, use_running_average=True, deterministic=True, raise_if_not_found=False
        )(batch["x"])
        return {
            "loss": _cross_entropy(logits, batch["y"]),
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"]),
        }

    per_split = {
        split: sharpness.mean_over_batches(on_batch, batches)
        for split, (batches, _) in data.items()
    }

    def metrics(point: dict[str, Any]) -> dict[str, jax.Array]:
        return {
            f"{split}_{name}": value
            for split, fn in per_split.items()
            for name, value in fn(point).items()
        }

    return metrics


def _valley_summary(lambdas, values, second) -> dict[str, Any]:
    """Endpoints, barrier and curvatures at the grid points nearest to λ = 0 and 1."""
    ends = {name: int(np.argmin(np.abs(lambdas - lam))) for name, lam in (("a", 0.0), ("b", 1.0))}
    interior = lambdas[1:-1]
    curv = {name: int(np.argmin(np.abs(interior - lam))) for name, lam in (("a", 0.0), ("b", 1.0))}
    inside = (lambdas >= lambdas[ends["a"]]) & (lambdas <= lambdas[ends["b"]])
    train_loss = values["train_loss"]
    return {
        "at_a": {name: float(v[ends["a"]]) for name, v in values.items()},
        "at_b": {name: float(v[ends["b"]]) for name, v in values.items()},
        "train_loss_barrier": float(
            train_loss[inside].max() - max(train_loss[ends["a"]], train_loss[ends["b"]])
        ),
        "curvature_at_a": float(second["train_loss"][curv["a"]]),
        "curvature_at_b": float(second["train_loss"][curv["b"]]),
        "curvature_lambdas": [float(interior[curv["a"]]), float(interior[curv["b"]])],
    }


def _interpolate_states(state_a, state_b, data, num, chunk):
    """(λ grid, metrics at each λ, their second differences) as float64 NumPy arrays."""
    stats_a, rebuild = split_floating(state_a.model_state)
    stats_b, _ = split_floating(state_b.model_state)
    path = landscape.interpolate(
        _eval_metrics(state_a.graphdef, rebuild, data),
        {"params": state_a.params, "stats": stats_a},
        {"params": state_b.params, "stats": stats_b},
        num=num,
        chunk=chunk,
    )
    values = {name: np.asarray(v, np.float64) for name, v in path.values.items()}
    second = {name: np.asarray(v, np.float64) for name, v in path.second_differences.items()}
    return np.asarray(path.lambdas, np.float64), values, second


def valley_between_runs(
    dir_a: pathlib.Path,
    dir_b: pathlib.Path,
    *,
    examples: int,
    num: int,
    seed: int,
    chunk: int | None,
    stages: Progress,
) -> dict[str, Any]:
    """The measurements of `xsam_jax.analyse.compare` (see there), as ``interpolation.json``.

    Raises:
      InvalidArgumentError: a bad argument.
      FileNotFoundError: no run in a directory.
      ValueError: runs of different models or datasets.
    """
    check_int("examples", examples, low=1)
    check_int("num", num, low=3)
    check_int("seed", seed, low=0)
    _check_chunk(chunk)
    check_run_dir(dir_a)
    check_run_dir(dir_b)
    (config_a, built_a), (config_b, built_b) = _restore_pair(dir_a, dir_b, stages)
    notes = []
    if config_a.seed != config_b.seed:
        notes.append(
            f"the runs have different seeds ({config_a.seed}, {config_b.seed}); the "
            "examples are run A's (for digits the train/test split follows the seed)"
        )
    rng = np.random.default_rng(seed)
    splits: tuple[Split, ...] = ("train", "test")
    data = {
        split: _subset(*built_a.dataset.arrays(split), examples, config_a.batch_size, rng)
        for split in splits
    }
    state_a, state_b = built_a.state, built_b.state
    with stages.stage(
        "interpolation",
        f"interpolating ({num} points, "
        f"{data['train'][1].size} train / {data['test'][1].size} test examples)",
    ):
        lambdas, values, second = _interpolate_states(state_a, state_b, data, num, chunk)
    return {
        "run_a": {"dir": str(dir_a), "config": dataclasses.asdict(config_a)},
        "run_b": {"dir": str(dir_b), "config": dataclasses.asdict(config_b)},
        "settings": {
            "num": num,
            "lo": float(lambdas[0]),
            "hi": float(lambdas[-1]),
            "examples_requested": examples,
            "train_examples": int(data["train"][1].size),
            "test_examples": int(data["test"][1].size),
            "seed": seed,
            "mode": "eval (interpolated BatchNorm running statistics)",
        },
        "notes": notes,
        "train_indices": data["train"][1].tolist(),
        "test_indices": data["test"][1].tolist(),
        "lambdas": _floats(lambdas),
        "values": {name: _floats(v) for name, v in values.items()},
        "second_difference_lambdas": _floats(lambdas[1:-1]),
        "second_differences": {name: _floats(v) for name, v in second.items()},
        **_valley_summary(lambdas, values, second),
        "distance": float(optax.tree.norm(optax.tree.sub(state_b.params, state_a.params))),
        "seconds": stages.seconds,
    }
