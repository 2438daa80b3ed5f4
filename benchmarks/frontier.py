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
- LookSAM every 5 steps, Friendly-SAM, VaSSO and Fisher SAM at their papers' defaults.

The study's untuned reference, SGD at the learning rate every sharpness-aware run uses
(`spec.RECIPE_SGD`, its cached runs), is shown as a point of comparison, never on the frontier:
the other methods are tuned over ρ at that rate, SGD over its rate.

The frontier: a method is on it when no other is at most as costly and at least as accurate
on average (`pareto_front`), by gradient evaluations (forward-backward passes; XSAM's probes
are forward passes, listed apart) and by wall time. The runs' own training times
(`experiment.run`'s "seconds", evaluation excluded) come from machines under whatever load
they ran with (cached runs keep the study's), so the time axis comes from a separate timing
pass (`time_methods`): each method's chosen configuration trained once per round, one run at
a time in this process, rounds interleaved, after a first round that fills a fresh persistent
compilation cache (as `xsam-train` runs); its median is "seconds", the runs' mean is kept as
"seconds_in_runs". Run it on a quiet machine.

Usage:
  python benchmarks/frontier.py --workers 2 --readme README.md    # the full frontier (CPU hours)
  python benchmarks/frontier.py --time-rounds 2 --readme README.md  # cached: only re-times
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

import numpy as np

from xsam_jax import experiment, plotting, study
from xsam_jax._src.stats import mean_ci95, pareto_front
from xsam_jax.study import spec
from xsam_jax.study.runs import Cache
from xsam_jax.study.stages import Study, config_for, plan_description

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
    spec.Method("looksam", {"optimizer": "looksam", "looksam_every": 5}, RHO_GRID),
    spec.Method("fsam", {"optimizer": "fsam"}, RHO_GRID),
    spec.Method("vasso", {"optimizer": "vasso"}, RHO_GRID),
    spec.Method("fisher-sam", {"optimizer": "fisher-sam"}, RHO_GRID),
)


def frontier_plan(smoke: bool = False) -> spec.Plan:
    """The frontier's plan on the study's setting, seeds and grids.

    Args:
      smoke: the study's smoke version instead (digits, 2 epochs, two grid points, its seeds).

    Returns:
      A `spec.Plan` whose SGD, SAM and XSAM are the study plan's very methods.
    """
    base = spec.smoke_plan() if smoke else spec.full_plan()
    setting = base.settings[0] if smoke else base.setting(SETTING)
    grid_size = len(base.method("sam").grid)
    others = [dataclasses.replace(m, grid=m.grid[:grid_size]) for m in OTHER_METHODS]
    methods = (*(base.method(label) for label in STUDY_METHODS), *others)
    return dataclasses.replace(base, settings=(setting,), methods=methods)


def summarise(
    final: dict[str, Any],
    references: Sequence[str] = (),
    seconds: dict[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per method: the choice, test accuracies with their 95 % interval, costs, the frontiers.

    Args:
      final: one setting's entry of `Study.final` (label -> params and condensed runs).
      references: labels shown for comparison only, never on a frontier.
      seconds: label -> training seconds from `time_methods`; None uses the runs' own.

    Returns:
      label -> {params, reference, test_accuracies, mean_test_accuracy, ci95,
      gradient_evaluations, probe_evaluations, seconds_in_runs (means over seeds), seconds,
      on_gradient_frontier, on_time_frontier}.
    """
    summary = {}
    for label, entry in final.items():
        runs = entry["runs"]
        accuracies = [r["final_test_accuracy"] for r in runs]
        mean, half = mean_ci95(accuracies)
        costs = {
            key: sum(r[key] for r in runs) / len(runs)
            for key in ("gradient_evaluations", "probe_evaluations", "seconds")
        }
        summary[label] = {
            "params": entry["params"],
            "reference": label in references,
            "test_accuracies": accuracies,
            "mean_test_accuracy": mean,
            "ci95": half,
            "gradient_evaluations": costs["gradient_evaluations"],
            "probe_evaluations": costs["probe_evaluations"],
            "seconds_in_runs": costs["seconds"],
            "seconds": costs["seconds"] if seconds is None else seconds[label],
        }
    candidates = [label for label in summary if label not in references]
    means = [summary[label]["mean_test_accuracy"] for label in candidates]
    for label in references:
        summary[label]["on_gradient_frontier"] = summary[label]["on_time_frontier"] = False
    for axis, key in (("gradient", "gradient_evaluations"), ("time", "seconds")):
        front = pareto_front([summary[label][key] for label in candidates], means)
        for label, on_front in zip(candidates, front, strict=True):
            summary[label][f"on_{axis}_frontier"] = bool(on_front)
    return summary


def time_methods(
    plan: spec.Plan, choices: dict[str, dict[str, Any]], *, rounds: int, log=print
) -> dict[str, float]:
    """Training seconds of each method's chosen configuration, timed alike (see the top).

    Args:
      plan: the frontier's plan (one setting).
      choices: label -> the chosen params.
      rounds: timed rounds after the compiling one.
      log: progress output.

    Returns:
      label -> the median training seconds over the timed rounds (seed 0).
    """
    import tempfile

    import jax

    (setting,) = plan.settings
    methods = {m.label: m for m in plan.methods + plan.references}
    configs = {
        label: config_for(setting, methods[label], params, 0) for label, params in choices.items()
    }
    if not jax.config.jax_compilation_cache_dir:  # as xsam-train runs: a persistent cache
        jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="xla-frontier-"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    seconds: dict[str, list[float]] = {label: [] for label in configs}
    for r in range(rounds + 1):
        for label, config in configs.items():
            result = experiment.run(config, progress=False, test=False)
            if r > 0:  # round 0 compiles
                seconds[label].append(result["seconds"])
            log(f"timing round {r} {label}: {result['seconds']:.2f} s")
    return {label: float(np.median(values)) for label, values in seconds.items()}


def table(summary: dict[str, dict[str, Any]]) -> str:
    """The markdown table of `summarise`'s result, by gradient evaluations."""
    sgd = summary.get("sgd", {}).get("gradient_evaluations")
    lines = [
        "| method | chosen on validation | test accuracy (95 % CI) | gradients / run "
        "| × SGD | probes / run | train s / run | frontier: gradients | frontier: time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in sorted(summary.items(), key=lambda item: item[1]["gradient_evaluations"]):
        params = ", ".join(f"{k}={v:g}" for k, v in s["params"].items())
        label = f"{name} (untuned reference)" if s["reference"] else name
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
    workers: int = 1,
    jit_cache: str | None = None,
    time_rounds: int = 0,
    log=print,
) -> dict[str, Any]:
    """Tune and run the plan (or read it from the cache) and write the frontier's results.

    Args:
      plan: what to run (`frontier_plan`).
      out: directory for frontier.json, tables.md and the two PNGs.
      cache: the run cache; the study's makes its SGD, SAM and XSAM runs cache hits.
      workers: training processes at once.
      jit_cache: persistent compilation cache directory for the workers, or None.
      time_rounds: timed rounds of `time_methods` for the time axis; 0 uses the runs' own
        training seconds.
      log: progress output.

    Returns:
      The results written to `out/frontier.json`.
    """
    runner = Study(plan, Cache(cache), workers=workers, jit_cache=jit_cache, log=log)
    (setting,) = plan.settings
    tuning = runner.tune()
    final = runner.final(tuning)[setting.name]
    references = [m.label for m in plan.references]
    seconds = None
    if time_rounds > 0:
        choices = {label: entry["params"] for label, entry in final.items()}
        seconds = time_methods(plan, choices, rounds=time_rounds, log=log)
    summary = summarise(final, references, seconds)
    import jax

    results = {
        "plan": plan_description(plan),
        "methods": summary,
        "timing": {"rounds": time_rounds, "seed": 0} if time_rounds else "the runs' own",
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
            references=references,
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
    p.add_argument(
        "--time-rounds",
        type=int,
        default=1,
        help="timed rounds of each chosen method for the time axis (0: the runs' own seconds)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be an integer >= 1, got {args.workers}")
    from xsam_jax.data import cache_dir

    cache = args.cache or cache_dir() / "study"
    jit_cache = None if args.no_jit_cache else str(cache_dir() / "xla")
    plan = frontier_plan(args.smoke)
    if args.time_rounds < 0:
        parser.error(f"--time-rounds must be an integer >= 0, got {args.time_rounds}")
    results = run_frontier(
        plan,
        args.out,
        cache=cache,
        workers=args.workers,
        jit_cache=jit_cache,
        time_rounds=args.time_rounds,
    )
    if args.readme:
        path = pathlib.Path(args.readme)
        tables = {"table": table(results["methods"])}
        path.write_text(study.readme_with_tables(path.read_text(), tables, prefix="frontier"))
    print(table(results["methods"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
