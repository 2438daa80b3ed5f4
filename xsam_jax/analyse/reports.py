"""The outputs of `xsam-analyse`: short text reports, the JSON files and the figures.

Each function takes the dict that `xsam_jax.analyse.compute` returned (the JSON contents).
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

from xsam_jax import plotting
from xsam_jax.experiment import TrainConfig


def _run_summary(config: TrainConfig) -> str:
    return f"{config.optimizer}, {config.model_name} on {config.dataset}, seed {config.seed}"


def format_report(result: dict[str, Any]) -> str:
    """The short text report of an `xsam_jax.analyse.analyse` result."""
    s, h, p, a = (result[key] for key in ("settings", "hessian", "proposition1", "alpha_curve"))
    config = TrainConfig(**result["config"])
    accuracy = result["final_test_accuracy"]
    lines = [
        f"run        {result['run_dir']}: {_run_summary(config)}, "
        f"{config.epochs} epoch{'s' * (config.epochs != 1)}, step {result['step']}"
        + ("" if accuracy is None else f", final test accuracy {accuracy:.4f}"),
        f"subset     {s['examples']} training examples ({s['batches']} batches of "
        f"{s['batch_size']}, seed {s['seed']}), train-mode loss L = {result['loss']:.4f}",
        "lambda     "
        + ", ".join(f"{v:.4g}" for v in h["eigenvalues"])
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
        lines.append(
            f"alpha*     {star:.2f}: L(v(alpha*)) = {a['loss_at_alpha_star']:.4f} vs "
            f"SAM's L(v(1)) = {a['loss_at_sam']:.4f}"
        )
    else:
        lines.append("alpha*     undefined: every probe loss was non-finite")
    if result["run_alpha_star"] is not None:
        lines[-1] += f"; the run's last alpha* = {result['run_alpha_star']:.2f}"
    return "\n".join(lines)


def format_comparison(result: dict[str, Any]) -> str:
    """The short text report of an `xsam_jax.analyse.compare` result."""
    s = result["settings"]
    a, b = result["run_a"], result["run_b"]
    lines = [
        f"A          {a['dir']}: {_run_summary(TrainConfig(**a['config']))}",
        f"B          {b['dir']}: {_run_summary(TrainConfig(**b['config']))}",
        f"path       (1 - lambda) A + lambda B, lambda in [{s['lo']:g}, {s['hi']:g}], "
        f"{s['num']} points, |B - A| = {result['distance']:.4g}",
        f"{'':11}eval mode, {s['train_examples']} train / {s['test_examples']} test examples",
        f"{'':11}{'train loss':>11}{'train acc':>11}{'test loss':>11}{'test acc':>11}",
    ]
    for label, row in (("at A", result["at_a"]), ("at B", result["at_b"])):
        lines.append(
            f"{label:11}{row['train_loss']:11.4f}{row['train_accuracy']:11.4f}"
            f"{row['test_loss']:11.4f}{row['test_accuracy']:11.4f}"
        )
    curvatures = result["curvature_at_a"], result["curvature_at_b"]
    lines += [
        f"barrier    max over [0, 1] of the train loss - max(L(A), L(B)) = "
        f"{result['train_loss_barrier']:.4g}",
        f"curvature  second difference of the train loss along B - A: "
        f"{curvatures[0]:.4g} at A, {curvatures[1]:.4g} at B",
    ]
    # "Flatter" compares two local minima along the path; a negative value is no minimum.
    if min(curvatures) > 0:
        lines[-1] += f" ({'A' if curvatures[0] < curvatures[1] else 'B'} is the flatter end)"
    lines += [f"note       {note}" for note in result["notes"]]
    return "\n".join(lines)


def write_analysis(
    result: dict[str, Any], out: pathlib.Path, history: list[dict[str, Any]] | None
) -> None:
    """``analysis.json``, ``alpha_curve.png``, ``proposition1.png`` and, when the run's
    history holds XSAM's α* per epoch, ``alpha_per_epoch.png`` into ``out``.

    Args:
      result: what `xsam_jax.analyse.compute.sharpness_of_run` returned.
      out: the output directory (created if missing).
      history: the run's per-epoch metrics (``metrics.json``), or None.
    """
    out.mkdir(parents=True, exist_ok=True)
    s, p, a = result["settings"], result["proposition1"], result["alpha_curve"]
    config = TrainConfig(**result["config"])
    label = f"{config.optimizer} on {config.dataset}, {s['examples']} train examples"
    plotting.plot_alpha_curve(
        a["alphas"],
        a["losses"],
        a["alpha_star"],
        path=out / "alpha_curve.png",
        title=rf"$\rho$ = {s['rho']:g}, $\rho_m$ = {s['rho_max']:g}; {label}",
    )
    plotting.plot_proposition1(
        p["radii"],
        p["along_g0"],
        p["along_g1"],
        result["loss"],
        path=out / "proposition1.png",
        title=rf"Proposition 1, $\rho$ = {s['rho']:g}; {label}",
    )
    per_epoch = [(h["epoch"], h["alpha"]) for h in history or [] if h.get("alpha") is not None]
    if per_epoch:
        plotting.plot_alpha_per_epoch(
            *zip(*per_epoch, strict=True), path=out / "alpha_per_epoch.png"
        )
    (out / "analysis.json").write_text(json.dumps(result, indent=2))


def write_interpolation(result: dict[str, Any], out: pathlib.Path) -> None:
    """``interpolation.json`` and ``interpolation.png`` into ``out`` (created if missing).

    Args:
      result: what `xsam_jax.analyse.compute.valley_between_runs` returned.
      out: the output directory.
    """
    out.mkdir(parents=True, exist_ok=True)
    optimizers = (result[run]["config"]["optimizer"] for run in ("run_a", "run_b"))
    plotting.plot_interpolation(
        result["lambdas"],
        {
            name.replace("_", " "): result["values"][name]
            for name in ("train_loss", "test_loss", "train_accuracy", "test_accuracy")
        },
        path=out / "interpolation.png",
        title="A = {} (λ = 0), B = {} (λ = 1)".format(*optimizers),
    )
    (out / "interpolation.json").write_text(json.dumps(result, indent=2))
