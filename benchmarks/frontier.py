"""What each point of accuracy costs: test accuracy against gradients and wall time per run.

Every method is tuned as the study tunes (`xsam_jax.study`): a grid of `spec.GRID_SIZE` points
on the study's validation split with its tuning seeds, then a rerun at the chosen point on its
five final seeds, the only runs that read the test set. SGD, SAM and XSAM are the study's own
methods and grids on its setting (MNIST-1D, 1-D CNN), so with the study's run cache (the
default) their runs are read, not retrained. The others, each tuned over the study's SAM radii
with its own parameter fixed:

- late-phase SAM (SGD for the first 75 % of the steps, Zhou et al. 2025);
- SAM on every 2nd / 5th step (`xs.periodic`), on a random half / fifth of the steps
  (`xs.randomized`, Zhao et al. 2022);
- LookSAM every 5 steps, Friendly-SAM, VaSSO and Fisher SAM at their papers' defaults. These
  come with the methods of branch g-methods: a method whose optimizer `experiment.METHODS`
  does not know, or whose fields `TrainConfig` lacks, is skipped with a notice (and listed
  under "skipped" in the JSON) until that branch is merged.

The frontier: a method is on it when no other is at most as costly and at least as accurate
on average (`pareto_front`), by gradient evaluations (forward-backward passes; XSAM's probes
are forward passes, listed apart) and by wall time. Wall time is a run's training time
(`experiment.run`'s "seconds": compilation included, evaluation excluded) on the machine and
under the load it ran with: cached runs keep the study's. Compare seconds only between runs
made alike.

Usage:
  python benchmarks/frontier.py --workers 2 --readme README.md    # the full frontier (CPU hours)
  python benchmarks/frontier.py --smoke --cache /tmp/fc --out /tmp/frontier  # digits, 2 epochs

Writes frontier.json, tables.md, frontier-gradients.png and frontier-seconds.png to --out
(benchmarks/results/frontier), and with --readme the README's <!-- frontier:table --> block.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from xsam_jax import experiment, plotting, study
from xsam_jax._src.stats import mean_ci95, pareto_front
from xsam_jax.study import spec
from xsam_jax.study.runs import Cache
from xsam_jax.study.stages import Study, plan_description

RESULTS = pathlib.Path(__file__).parent / "results" / "frontier"
SETTING = "mnist1d/cnn1d"
STUDY_METHODS = ("sgd", "sam", "xsam")
RHO_GRID = tuple({"rho": rho} for rho in spec.SAM_RHOS)
# The cheaper variants and the other methods, as the issue lists them.
OTHER_METHODS = (
    spec.Method("sam+late=0.75", {"optimizer": "sam", "late_phase_start": 0.75}, RHO_GRID),
    spec.Method("sam+every=2", {"optimizer": "sam", "perturb_every": 2}, RHO_GRID),
    spec.Method("sam+every=5", {"optimizer": "sam", "perturb_every": 5}, RHO_GRID),
    spec.Method("sam+random=0.5", {"optimizer": "sam", "perturb_probability": 0.5}, RHO_GRID),
    spec.Method("sam+random=0.2", {"optimizer": "sam", "perturb_probability": 0.2}, RHO_GRID),
    # Branch g-methods (names as it spells them).
    spec.Method("looksam", {"optimizer": "looksam", "looksam_every": 5}, RHO_GRID),
    spec.Method("fsam", {"optimizer": "fsam"}, RHO_GRID),
    spec.Method("vasso", {"optimizer": "vasso"}, RHO_GRID),
    spec.Method("fisher-sam", {"optimizer": "fisher-sam"}, RHO_GRID),
)


def _available(method: spec.Method) -> bool:
    """Whether this version can run the method: its optimizer and fields exist."""
    fields = {f.name for f in dataclasses.fields(experiment.TrainConfig)}
    return method.fields["optimizer"] in experiment.METHODS and set(method.fields) <= fields


def frontier_plan(smoke: bool = False) -> tuple[spec.Plan, list[str]]:
    """The frontier's plan on the study's setting, seeds and grids, and the labels skipped.

    Args:
      smoke: the study's smoke version instead (digits, 2 epochs, two grid points, its seeds).

    Returns:
      `(plan, skipped)`: a `spec.Plan` whose SGD, SAM and XSAM are the study plan's very
      methods, and the labels of methods this version cannot run yet.
    """
    base = spec.smoke_plan() if smoke else spec.full_plan()
    setting = base.settings[0] if smoke else base.setting(SETTING)
    grid_size = len(base.method("sam").grid)
    others = [dataclasses.replace(m, grid=m.grid[:grid_size]) for m in OTHER_METHODS]
    candidates = [base.method(label) for label in STUDY_METHODS] + others
    methods = tuple(m for m in candidates if _available(m))
    skipped = [m.label for m in candidates if not _available(m)]
    # The study's untuned reference (SGD at the recipe's rate) is not one of the frontier's
    # tuned methods.
    plan = dataclasses.replace(base, settings=(setting,), methods=methods, references=())
    return plan, skipped


def summarise(final: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method: the choice, test accuracies with their 95 % interval, costs, the frontiers.

    Args:
      final: one setting's entry of `Study.final` (label -> params and condensed runs).

    Returns:
      label -> {params, test_accuracies, mean_test_accuracy, ci95, gradient_evaluations,
      probe_evaluations, seconds (means over seeds), on_gradient_frontier, on_time_frontier}.
    """
    summary = {}
    for label, entry in final.items():
        runs = entry["runs"]
        accuracies = [r["final_test_accuracy"] for r in runs]
        mean, half = mean_ci95(accuracies)
        summary[label] = {
            "params": entry["params"],
            "test_accuracies": accuracies,
            "mean_test_accuracy": mean,
            "ci95": half,
            **{
                key: sum(r[key] for r in runs) / len(runs)
                for key in ("gradient_evaluations", "probe_evaluations", "seconds")
            },
        }
    labels = list(summary)
    means = [summary[label]["mean_test_accuracy"] for label in labels]
    for axis, key in (("gradient", "gradient_evaluations"), ("time", "seconds")):
        front = pareto_front([summary[label][key] for label in labels], means)
        for label, on_front in zip(labels, front, strict=True):
            summary[label][f"on_{axis}_frontier"] = bool(on_front)
    return summary


def table(summary: dict[str, dict[str, Any]]) -> str:
    """The markdown table of `summarise`'s result, by gradient evaluations."""
    sgd = summary.get("sgd", {}).get("gradient_evaluations")
    lines = [
        "| method | chosen on validation | test accuracy (95 % CI) | gradients / run "
        "| × SGD | probes / run | train s / run | frontier: gradients | frontier: time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, s in sorted(summary.items(), key=lambda item: item[1]["gradient_evaluations"]):
        params = ", ".join(f"{k}={v:g}" for k, v in s["params"].items())
        accuracy = f"{100 * s['mean_test_accuracy']:.2f}"
        if s["ci95"] == s["ci95"]:  # not NaN (one seed)
            accuracy += f" ± {100 * s['ci95']:.2f}"
        ratio = f"{s['gradient_evaluations'] / sgd:.2f}" if sgd else "—"
        lines.append(
            f"| {label} | {params} | {accuracy} | {s['gradient_evaluations']:,.0f} | {ratio} "
            f"| {s['probe_evaluations']:,.0f} | {s['seconds']:.1f} "
            f"| {'✓' if s['on_gradient_frontier'] else ''} "
            f"| {'✓' if s['on_time_frontier'] else ''} |"
        )
    return "\n".join(lines)


def run_frontier(
    plan: spec.Plan,
    out: str | pathlib.Path,
    *,
    cache: str | pathlib.Path,
    skipped: Sequence[str] = (),
    workers: int = 1,
    jit_cache: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Tune and run the plan (or read it from the cache) and write the frontier's results.

    Args:
      plan: what to run (`frontier_plan`).
      out: directory for frontier.json, tables.md and the two PNGs.
      cache: the run cache; the study's makes its SGD, SAM and XSAM runs cache hits.
      skipped: labels left out of the plan, recorded in the JSON.
      workers: training processes at once.
      jit_cache: persistent compilation cache directory for the workers, or None.
      log: progress output.

    Returns:
      The results written to `out/frontier.json`.
    """
    runner = Study(plan, Cache(cache), workers=workers, jit_cache=jit_cache, log=log)
    (setting,) = plan.settings
    tuning = runner.tune()
    final = runner.final(tuning)[setting.name]
    summary = summarise(final)
    import jax

    results = {
        "plan": plan_description(plan),
        "skipped": list(skipped),
        "methods": summary,
        "environment": {
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "date": datetime.date.today().isoformat(),
        },
    }
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps(results, indent=1))
    (out / "tables.md").write_text(f"## {setting.name}\n\n{table(summary)}\n")
    accuracies = {label: s["test_accuracies"] for label, s in summary.items()}
    for name, key, xlabel in (
        ("gradients", "gradient_evaluations", "gradient evaluations per run"),
        ("seconds", "seconds", "training seconds per run"),
    ):
        plotting.plot_frontier(
            {label: s[key] for label, s in summary.items()},
            accuracies,
            xlabel=xlabel,
            title=f"{setting.name}: test accuracy (mean, 95 % CI) against cost",
            path=out / f"frontier-{name}.png",
        )
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="frontier.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(RESULTS), metavar="DIR")
    p.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="run cache (default: the study's, $XSAM_JAX_CACHE/study or ~/.cache/xsam_jax/study)",
    )
    p.add_argument("--workers", type=int, default=1, help="training processes at once")
    p.add_argument("--smoke", action="store_true", help="digits, 2 epochs: checks the pipeline")
    p.add_argument("--readme", default=None, metavar="README.md", help="refresh its table")
    p.add_argument("--no-jit-cache", action="store_true", help="compile afresh in every run")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be an integer >= 1, got {args.workers}")
    from xsam_jax.data import cache_dir

    cache = args.cache or cache_dir() / "study"
    jit_cache = None if args.no_jit_cache else str(cache_dir() / "xla")
    plan, skipped = frontier_plan(args.smoke)
    for label in skipped:
        print(f"skipping {label}: this version has no such optimizer or field yet")
    results = run_frontier(
        plan, args.out, cache=cache, skipped=skipped, workers=args.workers, jit_cache=jit_cache
    )
    if args.readme:
        path = pathlib.Path(args.readme)
        tables = {"table": table(results["methods"])}
        path.write_text(study.readme_with_tables(path.read_text(), tables, prefix="frontier"))
    print(table(results["methods"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
