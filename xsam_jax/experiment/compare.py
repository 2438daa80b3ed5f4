"""Side-by-side runs over seeds: summaries with 95 % intervals and paired differences."""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xsam_jax import plotting
from xsam_jax._src.stats import mean_ci95, paired_difference

Results = Mapping[str, Sequence[Mapping[str, Any]]]


def _by_seed(runs: Sequence[Mapping[str, Any]], key: str) -> dict[int, float]:
    return {int(r["config"]["seed"]): float(r[key]) for r in runs if key in r}


def summarise(results: Results, baseline: str | None = None) -> dict[str, Any]:
    """Per-variant means with Student-t 95 % intervals, and paired differences to a baseline.

    Args:
      results: variant label -> the results of `xsam_jax.experiment.run`, one per seed.
      baseline: the label the others are paired against (the first label if None).

    Returns:
      ``{"baseline": label, "variants": {label: {...}}, "paired": {label: {...}}}``. Each
      variant has mean_test_accuracy, ci95 (the half-width of the Student-t 95 % interval
      over seeds; NaN for one seed), seeds, test_accuracies, mean_train_accuracy,
      mean_seconds and mean_gradient_evaluations, plus the same for validation
      (mean_val_accuracy, val_ci95, val_accuracies) when the runs held a validation split.
      Each paired entry compares a variant with the baseline on the seeds both ran: the
      per-seed differences (variant − baseline), their mean and the half-width of its 95 %
      interval; on validation too when both have it. Accuracies are fractions in [0, 1].
    """
    labels = list(results)
    if not labels:
        raise ValueError("results must hold at least one variant, got none")
    baseline = labels[0] if baseline is None else baseline
    if baseline not in results:
        raise ValueError(f"baseline must be one of {', '.join(labels)}, got {baseline!r}")
    variants = {label: _variant_summary(runs) for label, runs in results.items()}
    paired = {
        label: _paired(results[label], results[baseline]) for label in labels if label != baseline
    }
    return {"baseline": baseline, "variants": variants, "paired": paired}


def _variant_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"seeds": [int(r["config"]["seed"]) for r in runs]}
    for split, prefix in (("test", ""), ("val", "val_")):
        key = f"final_{split}_accuracy"
        if all(key in r for r in runs):
            accuracies = [float(r[key]) for r in runs]
            mean, half = mean_ci95(accuracies)
            summary[f"mean_{split}_accuracy"] = mean
            summary[f"{prefix}ci95"] = half
            summary[f"{split}_accuracies"] = accuracies
    summary["mean_train_accuracy"] = float(np.mean([r["final_train_accuracy"] for r in runs]))
    summary["mean_seconds"] = float(np.mean([r["seconds"] for r in runs]))
    summary["mean_gradient_evaluations"] = float(np.mean([r["gradient_evaluations"] for r in runs]))
    return summary


def _paired(runs: Sequence[Mapping[str, Any]], base: Sequence[Mapping[str, Any]]) -> dict:
    entry: dict[str, Any] = {}
    for split, prefix in (("test", ""), ("val", "val_")):
        mine = _by_seed(runs, f"final_{split}_accuracy")
        theirs = _by_seed(base, f"final_{split}_accuracy")
        seeds = sorted(set(mine) & set(theirs))
        if not seeds:
            continue
        differences = [mine[s] - theirs[s] for s in seeds]
        mean, half = paired_difference([mine[s] for s in seeds], [theirs[s] for s in seeds])
        entry[f"{prefix}seeds"] = seeds
        entry[f"{prefix}differences"] = differences
        entry[f"{prefix}mean_difference"] = mean
        entry[f"{prefix}ci95"] = half
    return entry


def format_table(summary: Mapping[str, Any]) -> str:
    """A markdown table of a `summarise` result (accuracies in percent)."""
    baseline = summary["baseline"]
    lines = [
        f"| variant | test accuracy (mean ± 95 % CI) | paired vs {baseline} | seeds "
        "| train accuracy | s/run |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in summary["variants"].items():
        paired = summary["paired"].get(label)
        diff = "—" if paired is None else _pm(paired.get("mean_difference"), paired.get("ci95"))
        lines.append(
            f"| {label} | {_pm(row.get('mean_test_accuracy'), row.get('ci95'))} | {diff} "
            f"| {len(row['seeds'])} | {100 * row['mean_train_accuracy']:.1f} "
            f"| {row['mean_seconds']:.1f} |"
        )
    return "\n".join(lines)


def _pm(mean: float | None, half: float | None) -> str:
    if mean is None:
        return "—"
    if half is None or not math.isfinite(half):
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * half:.2f}"


def write_comparison(out: str | pathlib.Path, results: Results, summary: Mapping) -> None:
    """`summary.json`, `compare_curves.png` (mean ± band per epoch) and `compare_bars.png`."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    rows = summary["variants"].values()
    split = "test" if any("mean_test_accuracy" in row for row in rows) else "val"
    curves = {
        label: [[h[f"{split}_accuracy"] for h in r["history"]] for r in runs]
        for label, runs in results.items()
    }
    plotting.plot_accuracy_bands(
        curves, ylabel=f"{split} accuracy", path=out / "compare_curves.png"
    )
    plotting.plot_accuracy_bars(
        {label: row[f"mean_{split}_accuracy"] for label, row in summary["variants"].items()},
        {
            label: row["ci95" if split == "test" else "val_ci95"]
            for label, row in summary["variants"].items()
        },
        ylabel=f"final {split} accuracy",
        path=out / "compare_bars.png",
    )
