"""Wall time of whole training runs: late-phase SAM and XSAM against full SAM and SGD.

The late-phase paper's promise (Zhou et al. 2025) is SAM's gain at a fraction of its cost: a
run that switches from SGD to SAM at fraction F of the steps should cost SGD's time plus
(1 - F) of SAM's extra time. This benchmark trains `xsam-train`'s runs (`experiment.run`, the
same code path: the host-side plan picks a statically specialised step, no `lax.cond`) of SGD,
SAM and late-phase SAM in interleaved rounds and checks

    late <= sgd + 1.2 * (1 - F) * (sam - sgd)

on the median seconds of the training steps (`run`'s "seconds" less its "compile_seconds":
the epochs' steps, evaluation excluded) and, reported alongside, on the steps and the
compilation of the step's programs before them (a late phase compiles two programs, SGD's
and SAM's, so on short runs this fixed cost shows). XSAM (searching once an epoch,
`xsam-train`'s default, with the host-side search plan) runs alongside: its ratio to SAM is
what the search costs a whole run. Like `xsam-train`, the runs keep compiled programs in a
persistent compilation cache (here a fresh temporary directory): the first round compiles
and is reported apart as "cold", the medians use the later rounds, which load their programs
from that cache.

Usage:
  python benchmarks/late_phase_time.py             # 3 warm rounds, about 3 minutes on 2 cores
  python benchmarks/late_phase_time.py --rounds 1 --epochs 2

Writes benchmarks/results/late_phase_time.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import statistics
import tempfile

import jax

from xsam_jax import experiment

RESULTS = pathlib.Path(__file__).parent / "results" / "late_phase_time.json"
METHODS = ("sgd", "sam", "late-sam", "xsam")
ALLOWANCE = 1.2


def time_runs(
    *, epochs: int, rounds: int, start: float, model: str
) -> dict[str, dict[str, list[float]]]:
    """Per method and round (round 0 first, methods interleaved): the seconds of the training
    steps and of compiling the step's programs before them (`run`'s "compile_seconds")."""
    configs = {
        "sgd": experiment.TrainConfig(optimizer="sgd", epochs=epochs, model=model),
        "sam": experiment.TrainConfig(optimizer="sam", epochs=epochs, model=model),
        "late-sam": experiment.TrainConfig(
            optimizer="sam", late_phase_start=start, epochs=epochs, model=model
        ),
        "xsam": experiment.TrainConfig(optimizer="xsam", epochs=epochs, model=model),
    }
    seconds: dict[str, dict[str, list[float]]] = {
        part: {name: [] for name in METHODS} for part in ("steps", "compile")
    }
    for r in range(rounds + 1):
        for name in METHODS:
            result = experiment.run(configs[name], progress=False, test=False)
            compile_seconds = result["compile_seconds"]
            seconds["steps"][name].append(result["seconds"] - compile_seconds)
            seconds["compile"][name].append(compile_seconds)
            print(
                f"round {r} {name}: steps {result['seconds'] - compile_seconds:.2f} s, "
                f"compiling {compile_seconds:.2f} s",
                flush=True,
            )
    return seconds


def check(seconds: dict[str, float], start: float) -> dict:
    """The late phase's bound on one kind of median seconds (steps, or steps and compiling)."""
    bound = seconds["sgd"] + ALLOWANCE * (1 - start) * (seconds["sam"] - seconds["sgd"])
    return {
        "median_seconds": seconds,
        "bound_seconds": bound,
        "late_within_bound": seconds["late-sam"] <= bound,
        "late_extra_over_sam_extra": (seconds["late-sam"] - seconds["sgd"])
        / (seconds["sam"] - seconds["sgd"]),
        "xsam_over_sam": seconds["xsam"] / seconds["sam"],
    }


def report(seconds: dict[str, dict[str, list[float]]], start: float) -> dict:
    """The checks on the warm rounds (the first fills the compilation cache)."""
    steps, compiling = seconds["steps"], seconds["compile"]
    warm_steps = {name: statistics.median(steps[name][1:]) for name in METHODS}
    warm_total = {}
    for name in METHODS:
        totals = [s + c for s, c in zip(steps[name][1:], compiling[name][1:], strict=True)]
        warm_total[name] = statistics.median(totals)
    return {
        "late_phase_start": start,
        "steps": check(warm_steps, start),
        "steps_and_compiling": check(warm_total, start),
        "warm_median_compile_seconds": {
            name: statistics.median(compiling[name][1:]) for name in METHODS
        },
        "cold_seconds": {name: steps[name][0] + compiling[name][0] for name in METHODS},
        "rounds": seconds,
    }


def table(result: dict) -> str:
    steps, total = result["steps"], result["steps_and_compiling"]
    compiling, cold = result["warm_median_compile_seconds"], result["cold_seconds"]
    rows = [
        "| run | training steps s | compiling s | both s | first round, both (cold cache) s |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {steps['median_seconds'][name]:.2f} | {compiling[name]:.2f} | "
            f"{total['median_seconds'][name]:.2f} | {cold[name]:.2f} |"
            for name in METHODS
        ),
        "",
    ]
    start = result["late_phase_start"]
    for label, part in (("training steps", steps), ("steps and compiling", total)):
        rows.append(
            f"{label}: late-sam (switch at {start:.0%}) {part['median_seconds']['late-sam']:.2f} s "
            f"against the bound sgd + {ALLOWANCE} x {1 - start:.2f} x (sam - sgd) = "
            f"{part['bound_seconds']:.2f} s ({'within' if part['late_within_bound'] else 'OVER'}); "
            f"its extra time is {part['late_extra_over_sam_extra']:.2f} of SAM's. "
            f"XSAM / SAM: {part['xsam_over_sam']:.3f}."
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3, help="warm rounds after the cold one")
    parser.add_argument("--start", type=float, default=0.8, help="late phase switch fraction")
    parser.add_argument("--model", default="cnn1d")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="xla-"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    seconds = time_runs(epochs=args.epochs, rounds=args.rounds, start=args.start, model=args.model)
    result = report(seconds, args.start)
    result["setup"] = {
        "dataset": "mnist1d",
        "model": args.model,
        "epochs": args.epochs,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "machine": platform.processor() or platform.machine(),
        "date": datetime.date.today().isoformat(),
    }
    print(table(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
