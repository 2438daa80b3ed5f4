"""Wall time of whole training runs: late-phase SAM and XSAM against full SAM and SGD.

The late-phase paper's promise (Zhou et al. 2025) is SAM's gain at a fraction of its cost: a
run that switches from SGD to SAM at fraction F of the steps should cost SGD's time plus
(1 - F) of SAM's extra time. This benchmark trains `xsam-train`'s runs (`experiment.run`, the
same code path: the host-side plan picks a statically specialised step, no `lax.cond`) of SGD,
SAM and late-phase SAM in interleaved rounds and checks

    late <= sgd + 1.2 * (1 - F) * (sam - sgd)

on the median training seconds (`run`'s "seconds": the epochs' training steps, evaluation
excluded). XSAM (searching once an epoch, `xsam-train`'s default, with the host-side search
plan) runs alongside: its ratio to SAM is what the search costs a whole run. Like
`xsam-train`, the runs keep compiled programs in a persistent compilation cache
(here a fresh temporary directory): the first round compiles and is reported apart as "cold",
the medians use the later rounds, which load their programs from that cache.

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


def time_runs(*, epochs: int, rounds: int, start: float, model: str) -> dict[str, list[float]]:
    """Training seconds per method and round (round 0 first), methods interleaved."""
    configs = {
        "sgd": experiment.TrainConfig(optimizer="sgd", epochs=epochs, model=model),
        "sam": experiment.TrainConfig(optimizer="sam", epochs=epochs, model=model),
        "late-sam": experiment.TrainConfig(
            optimizer="sam", late_phase_start=start, epochs=epochs, model=model
        ),
        "xsam": experiment.TrainConfig(optimizer="xsam", epochs=epochs, model=model),
    }
    seconds: dict[str, list[float]] = {name: [] for name in METHODS}
    for r in range(rounds + 1):
        for name in METHODS:
            result = experiment.run(configs[name], progress=False, test=False)
            seconds[name].append(result["seconds"])
            print(f"round {r} {name}: {result['seconds']:.2f} s", flush=True)
    return seconds


def report(seconds: dict[str, list[float]], start: float) -> dict:
    warm = {name: statistics.median(values[1:]) for name, values in seconds.items()}
    bound = warm["sgd"] + ALLOWANCE * (1 - start) * (warm["sam"] - warm["sgd"])
    return {
        "cold_seconds": {name: values[0] for name, values in seconds.items()},
        "warm_median_seconds": warm,
        "rounds": seconds,
        "late_phase_start": start,
        "bound_seconds": bound,
        "late_within_bound": warm["late-sam"] <= bound,
        "late_extra_over_sam_extra": (warm["late-sam"] - warm["sgd"]) / (warm["sam"] - warm["sgd"]),
        "xsam_over_sam": warm["xsam"] / warm["sam"],
    }


def table(result: dict) -> str:
    warm, cold = result["warm_median_seconds"], result["cold_seconds"]
    rows = [
        "| run | training s (warm median) | first round (compiles) |",
        "|---|---|---|",
        *(f"| {name} | {warm[name]:.2f} | {cold[name]:.2f} |" for name in METHODS),
    ]
    start = result["late_phase_start"]
    rows.append(
        f"\nlate-sam (switch at {start:.0%}): {warm['late-sam']:.2f} s against the bound "
        f"sgd + {ALLOWANCE} x {1 - start:.2f} x (sam - sgd) = {result['bound_seconds']:.2f} s "
        f"({'within' if result['late_within_bound'] else 'OVER'}); its extra time is "
        f"{result['late_extra_over_sam_extra']:.2f} of SAM's. XSAM / SAM: "
        f"{result['xsam_over_sam']:.3f}."
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
