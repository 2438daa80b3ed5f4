"""The study's tables (markdown) and figures, computed from its results JSON alone.

`tables(results)` is what the README shows between its ``<!-- study:NAME -->`` markers; a
test regenerates it from the committed JSON, so the README cannot drift from the data.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xsam_jax import plotting
from xsam_jax._src.stats import mean_ci95, paired_difference

Runs = Sequence[Mapping[str, Any]]


def _pm(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "—"
    mean, half = mean_ci95(values)
    if not math.isfinite(half):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * half:.{digits}f}"


def _by_seed(runs: Runs, key: str) -> dict[int, float]:
    return {r["config"]["seed"]: r[key] for r in runs if r.get(key) is not None}


def paired(runs: Runs, base: Runs, key: str) -> tuple[float, float, int] | None:
    """Mean per-seed difference runs − base of `key`, its 95 % half-width, the seed count."""
    mine, theirs = _by_seed(runs, key), _by_seed(base, key)
    seeds = sorted(set(mine) & set(theirs))
    if len(seeds) < 2:
        return None
    mean, half = paired_difference([mine[s] for s in seeds], [theirs[s] for s in seeds])
    return mean, half, len(seeds)


def _delta(runs: Runs, base: Runs | None, key: str) -> str:
    found = None if base is None else paired(runs, base, key)
    if found is None:
        return "—"
    mean, half, _ = found
    mark = " *" if abs(mean) > half else ""
    return f"{100 * mean:+.2f} ± {100 * half:.2f}{mark}"


def _values(runs: Runs, key: str) -> list[float]:
    return [r[key] for r in runs if r.get(key) is not None]


def baseline_sgd(final: Mapping[str, Any]) -> Runs | None:
    """SGD at the common recipe's learning rate (that of every sharpness-aware run), else SGD."""
    entry = final.get("sgd@0.05") or final.get("sgd")
    return None if entry is None else entry["runs"]


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in params.items()) or "—"


def results_table(results: Mapping[str, Any], setting: str) -> str:
    """Final runs of one setting: accuracy with 95 % intervals, paired differences, sharpness."""
    final = results["final"][setting]
    sgd, sam = baseline_sgd(final), final.get("sam", {}).get("runs")
    lines = [
        "| method | chosen on validation | val accuracy | test accuracy | vs SGD lr 0.05 (paired) "
        "| vs SAM (paired) | λ_max | Hessian trace | gradients / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, entry in final.items():
        runs = entry["runs"]
        lines.append(
            f"| {label} | {_params(entry['params'])} | {_pm(_values(runs, 'final_val_accuracy'))} "
            f"| {_pm(_values(runs, 'final_test_accuracy'))} "
            f"| {_delta(runs, None if runs is sgd else sgd, 'final_test_accuracy')} "
            f"| {_delta(runs, None if label == 'sam' else sam, 'final_test_accuracy')} "
            f"| {_pm(_values(runs, 'lambda_max'), 1, 1)} "
            f"| {_pm(_values(runs, 'hessian_trace'), 1, 0)} "
            f"| {np.mean(_values(runs, 'gradient_evaluations')):,.0f} |"
        )
    return "\n".join(lines)


def xsam_table(results: Mapping[str, Any]) -> str:
    """Each XSAM variant against the paper's XSAM and against SAM, on validation and test."""
    lines = [
        "| setting | variant | vs XSAM, val | vs SAM, val | vs XSAM, test | vs SAM, test |",
        "|---|---|---|---|---|---|",
    ]
    for setting, final in results["final"].items():
        xsam, sam = final.get("xsam", {}).get("runs"), final.get("sam", {}).get("runs")
        for label, entry in final.items():
            if not label.startswith("xsam+") or label == "xsam+adaptive":
                continue
            runs = entry["runs"]
            lines.append(
                f"| {setting} | {label} | {_delta(runs, xsam, 'final_val_accuracy')} "
                f"| {_delta(runs, sam, 'final_val_accuracy')} "
                f"| {_delta(runs, xsam, 'final_test_accuracy')} "
                f"| {_delta(runs, sam, 'final_test_accuracy')} |"
            )
    return "\n".join(lines)


def multistep_table(results: Mapping[str, Any]) -> str:
    multistep = results["multistep"]
    steps = list(next(iter(multistep.values())))
    lines = [
        "| method | " + " | ".join(f"k = {k}" for k in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for label, by_k in multistep.items():
        cells = [_pm(_values(by_k[k], "final_test_accuracy")) for k in steps]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def late_phase_table(results: Mapping[str, Any]) -> str:
    late = results["late_phase"]
    sgd = baseline_sgd(results["final"][results["plan"]["late_phase"]["setting"]])
    lines = [
        "| method | SGD until | test accuracy | vs the method throughout (paired) "
        "| vs SGD lr 0.05 (paired) | gradients / run | train seconds / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, by_start in late.items():
        full = by_start["0.0"]
        for start, runs in by_start.items():
            share = "—" if float(start) == 0 else f"{100 * float(start):.0f} %"
            lines.append(
                f"| {label} | {share} | {_pm(_values(runs, 'final_test_accuracy'))} "
                f"| {'—' if runs is full else _delta(runs, full, 'final_test_accuracy')} "
                f"| {_delta(runs, sgd, 'final_test_accuracy')} "
                f"| {np.mean(_values(runs, 'gradient_evaluations')):,.0f} "
                f"| {np.mean(_values(runs, 'seconds')):.1f} |"
            )
    return "\n".join(lines)


def tuning_table(results: Mapping[str, Any], setting: str) -> str:
    lines = ["| method | grid point: mean validation accuracy (chosen in bold) |", "|---|---|"]
    for label, entry in results["tuning"][setting].items():
        cells = []
        for point in entry["points"]:
            text = f"{_params(point['params'])}: {100 * point['mean_val_accuracy']:.2f}"
            cells.append(f"**{text}**" if point["params"] == entry["choice"] else text)
        lines.append(f"| {label} | " + "; ".join(cells) + " |")
    return "\n".join(lines)


def geometry_table(results: Mapping[str, Any]) -> str:
    """The first epochs of the failing setting: how far each variant turns and how it trains."""
    geometry = results["geometry"]
    epochs = geometry["settings"]["traced_epochs"]
    lines = [
        f"| variant | largest turn α·ψ (°) | steps turned past 90° | clean loss after epoch 1 "
        f"| after epoch {epochs} |",
        "|---|---|---|---|---|",
    ]
    for label, runs in geometry["steps"].items():
        per_epoch = len(runs[0]["loss"]) // epochs
        largest = [max(r["rotation_degrees"]) for r in runs]
        past = [np.mean(np.asarray(r["rotation_degrees"]) > 90) for r in runs]
        first = [np.mean(r["loss"][per_epoch - 5 : per_epoch]) for r in runs]
        last = [np.mean(r["loss"][-5:]) for r in runs]
        lines.append(
            f"| {label} | {np.mean(largest):.0f} | {100 * np.mean(past):.0f} % "
            f"| {np.mean(first):.3f} | {np.mean(last):.3f} |"
        )
    return "\n".join(lines)


def equivalence_table(results: Mapping[str, Any]) -> str:
    """XSAM's direction at α (radius ρ) against SAM's gradient at radius α·ρ."""
    lines = ["| weights | α | cos(XSAM at ρ, SAM at αρ) | norm ratio |", "|---|---|---|---|"]
    for label, rows in results["geometry"]["equivalence"].items():
        for row in rows:
            lines.append(
                f"| {label} | {row['alpha']:g} | {row['cos']:.3f} | {row['norm_ratio']:.2f} |"
            )
    return "\n".join(lines)


# Study labels whose choice `xsam-train` takes as its default radii, by `default_radii`'s key.
DEFAULT_RADII_LABELS = {
    "sam": "sam",
    "asam": "sam+adaptive",
    "gsam": "gsam",
    "wsam": "wsam",
    "xsam": "xsam",
    "xsam+adaptive": "xsam+adaptive",
}


def tuned_radii(results: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """The radii chosen on validation per (dataset, model), as `experiment.TUNED_RADII` holds
    them: `xsam-train`'s defaults come from the study, and a test holds them to it."""
    settings = {s["name"]: (s["dataset"], s["model"]) for s in results["plan"]["settings"]}
    return {
        settings[name]: {
            key: dict(by_label[label]["choice"])
            for label, key in DEFAULT_RADII_LABELS.items()
            if label in by_label
        }
        for name, by_label in results["tuning"].items()
    }


def tables(results: Mapping[str, Any]) -> dict[str, str]:
    """Every table of the study by name (the README's ``<!-- study:NAME -->`` blocks)."""
    out = {}
    for setting in results["final"]:
        key = setting.replace("/", "-")
        out[f"results-{key}"] = results_table(results, setting)
        out[f"tuning-{key}"] = tuning_table(results, setting)
    out["xsam-variants"] = xsam_table(results)
    if results.get("multistep"):
        out["multistep"] = multistep_table(results)
    if results.get("late_phase"):
        out["late-phase"] = late_phase_table(results)
    if results.get("geometry"):
        out["xsam-geometry"] = geometry_table(results)
        out["xsam-equivalence"] = equivalence_table(results)
    return out


def figures(results: Mapping[str, Any], out: str | pathlib.Path) -> list[pathlib.Path]:
    """The study's PNGs in `out`: accuracies, XSAM's geometry, multi-step and late phase."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for setting, final in results["final"].items():
        key = setting.replace("/", "-")
        means, halves = {}, {}
        for label, entry in final.items():
            means[label], halves[label] = mean_ci95(_values(entry["runs"], "final_test_accuracy"))
        path = out / f"accuracy-{key}.png"
        plotting.plot_accuracy_bars(
            means, halves, title=f"{setting}: final test accuracy (mean, 95 % CI)", path=path
        )
        written.append(path)
        xsams = {label: e for label, e in final.items() if label.startswith("xsam")}
        panels = {
            "alpha": r"$\alpha^*$",
            "rotation_degrees": r"rotation $\alpha^*\psi$ (degrees)",
            "cos_psi": r"$\cos\psi$",
            "proposition1_ratio": "Proposition 1 ratio",
        }
        curves = {
            name: {
                label: [r["curves"][name] for r in e["runs"]]
                for label, e in (xsams if name != "proposition1_ratio" else final).items()
            }
            for name in panels
        }
        path = out / f"geometry-{key}.png"
        plotting.plot_curve_panels(
            curves, panels, title=f"{setting}: over training (mean ± sd over seeds)", path=path
        )
        written.append(path)
    series: dict[str, list[tuple[float, list[float]]]]
    if results.get("multistep"):
        series = {
            label: [(int(k), _values(runs, "final_test_accuracy")) for k, runs in by_k.items()]
            for label, by_k in results["multistep"].items()
        }
        path = out / "multistep.png"
        plotting.plot_tradeoff(
            series, xlabel="ascent steps k", ylabel="final test accuracy", log_x=True, path=path
        )
        written.append(path)
    if results.get("late_phase"):
        series = {}
        for label, by_start in results["late_phase"].items():
            series[label] = [
                (
                    float(np.mean(_values(runs, "gradient_evaluations"))),
                    _values(runs, "final_test_accuracy"),
                )
                for runs in by_start.values()
            ]
        setting = results["plan"]["late_phase"]["setting"]
        sgd = baseline_sgd(results["final"][setting])
        if sgd is not None:
            series["sgd, lr 0.05"] = [
                (
                    float(np.mean(_values(sgd, "gradient_evaluations"))),
                    _values(sgd, "final_test_accuracy"),
                )
            ]
        path = out / "late-phase.png"
        plotting.plot_tradeoff(
            series,
            xlabel="gradient evaluations per run (a later switch: fewer)",
            ylabel="final test accuracy",
            path=path,
            title=f"{setting}: SGD, then the method",
        )
        written.append(path)
    if results.get("geometry"):
        written.extend(_geometry_figures(results["geometry"], out))
    return written


def _geometry_figures(geometry: Mapping[str, Any], out: pathlib.Path) -> list[pathlib.Path]:
    settings = geometry["settings"]
    name = f"{settings['dataset']}/{settings['model']}"
    panels = {
        "rotation_degrees": r"turn $\alpha\psi$ from $v_0$ (degrees)",
        "psi_degrees": r"$\psi$ (degrees)",
        "loss": "clean training loss",
    }
    curves = {
        panel: {label: [r[panel] for r in runs] for label, runs in geometry["steps"].items()}
        for panel in panels
    }
    steps_path = out / "geometry-steps.png"
    plotting.plot_curve_panels(
        curves,
        panels,
        xlabel="step",
        hlines={"rotation_degrees": 90.0},
        title=f"{name}, rho 0.15, rho_max 0.3: the first {settings['traced_epochs']} epochs",
        path=steps_path,
    )
    searches = geometry["searches"]
    alphas = geometry["noise"]["alphas"]
    epochs = len(searches["alpha_losses"])
    shown = sorted({0, 1, 4, epochs // 4, epochs // 2, epochs - 1} & set(range(epochs)))
    curves_path = out / "geometry-searches.png"
    plotting.plot_alpha_curves(
        alphas,
        {f"epoch {e + 1}": searches["alpha_losses"][e] for e in shown},
        title=f"{name}: the paper's XSAM, one search an epoch",
        path=curves_path,
    )
    noise = geometry["noise"]
    noise_path = out / "geometry-noise.png"
    plotting.plot_alpha_star_spread(
        alphas,
        [b["alpha_star"] for b in noise["per_batch"]],
        noise["whole"]["alpha_star"],
        title=f"{name}: alpha* after {noise['epochs']} SAM epochs\n"
        f"(batches of {noise['batch_size']})",
        path=noise_path,
    )
    return [steps_path, curves_path, noise_path]
