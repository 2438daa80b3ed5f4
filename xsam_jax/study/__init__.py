"""The seeded, validated study of the SAM family and XSAM (`xsam-study`).

`xsam-study` (or `python -m xsam_jax.study`) tunes every method on a validation split
carved from the training set (a grid of six points per method, two tuning seeds), reruns each
at its chosen point with five other seeds on the test set (with λ_max, the Hessian trace and
the geometry of XSAM's search over training), and adds multi-step ascents and late-phase
switches on MNIST-1D. Every run is cached under a hash of its configuration (`runs.Cache`), so
the study resumes where it stopped and can be run in parts (``--parts tune,final``). It writes
`results.json`, the tables (`tables.md`) and the figures; `--readme` also refreshes the
README's tables.

Modules: `spec` (settings, methods, grids, seeds), `runs` (jobs, cache, worker processes),
`stages` (tune, final, multi-step, late phase), `geometry` (why XSAM fails where it fails:
per-step angles, search curves, batch noise), `report` (tables and figures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import re
import sys
import time
from typing import Any

from xsam_jax.study import report
from xsam_jax.study.runs import Cache
from xsam_jax.study.spec import Plan, full_plan, smoke_plan
from xsam_jax.study.stages import Study, plan_description

__all__ = [
    "Cache",
    "Plan",
    "Study",
    "build_parser",
    "full_plan",
    "main",
    "plan_description",
    "readme_with_tables",
    "run_study",
    "smoke_plan",
    "write_report",
]

PARTS = ("tune", "final", "multistep", "late", "geometry")
RESULTS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "study"


def run_study(
    plan: Plan,
    out: str | pathlib.Path,
    *,
    cache: str | pathlib.Path,
    parts: tuple[str, ...] = PARTS,
    workers: int = 1,
    jit_cache: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Run (or read from the cache) the study's stages and write its results and report.

    Args:
      plan: what to run (`spec.full_plan()` or `spec.smoke_plan()`).
      out: directory for `results.json`, `tables.md` and the PNG figures.
      cache: directory of the per-run cache.
      parts: the stages to run; later stages need the tuning (run or cached) of earlier ones.
      workers: training processes at once.
      jit_cache: persistent compilation cache directory for the workers, or None.
      log: progress output.

    Returns:
      The results (also written to `out/results.json`).
    """
    study = Study(plan, Cache(cache), workers=workers, jit_cache=jit_cache, log=log)
    tic = time.perf_counter()
    results: dict[str, Any] = {"plan": plan_description(plan)}
    results["tuning"] = study.tune()
    if {"final", "multistep", "late"} & set(parts):
        results["final"] = study.final(results["tuning"])
    if "multistep" in parts:
        results["multistep"] = study.multistep(results["tuning"], results["final"])
    if "late" in parts:
        results["late_phase"] = study.late_phase(results["tuning"], results["final"])
    if "geometry" in parts:
        from xsam_jax.study import geometry

        results["geometry"] = geometry.measure(plan.geometry, log)
    import jax

    results["environment"] = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "date": datetime.date.today().isoformat(),
        "seconds_this_invocation": time.perf_counter() - tic,
    }
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if "final" in results:
        write_report(results, out)
    return results


def write_report(results: dict[str, Any], out: str | pathlib.Path) -> None:
    """`tables.md` and the figures of a results dict."""
    out = pathlib.Path(out)
    sections = [f"## {name}\n\n{table}\n" for name, table in report.tables(results).items()]
    (out / "tables.md").write_text("\n".join(sections))
    report.figures(results, out)


def readme_with_tables(readme: str, tables: dict[str, str], prefix: str = "study") -> str:
    """The README text with each ``<!-- PREFIX:NAME -->`` block replaced by table NAME.

    Other benchmarks keep their own blocks under another prefix (``frontier``).
    """

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in tables:
            raise KeyError(f"README block {prefix}:{name} names no table of the results")
        return f"<!-- {prefix}:{name} -->\n{tables[name]}\n<!-- /{prefix}:{name} -->"

    pattern = rf"<!-- {prefix}:([\w-]+) -->\n.*?<!-- /{prefix}:\1 -->"
    return re.sub(pattern, replace, readme, flags=re.S)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xsam-study", description="The seeded, validated study of the SAM family and XSAM."
    )
    p.add_argument(
        "--out",
        default=str(RESULTS),
        metavar="DIR",
        help="where results.json, tables.md and the figures go",
    )
    p.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="per-run cache (default: $XSAM_JAX_CACHE/study or ~/.cache/xsam_jax/study)",
    )
    p.add_argument(
        "--parts",
        default=",".join(PARTS),
        metavar="PART,...",
        help=f"stages to run, of {', '.join(PARTS)} (tuning always runs or is read)",
    )
    p.add_argument("--workers", type=int, default=1, help="training processes at once")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny version of every stage (digits, 2 epochs): what CI runs",
    )
    p.add_argument(
        "--readme",
        default=None,
        metavar="README.md",
        help="also rewrite this README's <!-- study:NAME --> tables",
    )
    p.add_argument("--no-jit-cache", action="store_true", help="compile afresh in every run")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    parts = tuple(p for p in args.parts.split(",") if p)
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"--parts must be some of {', '.join(PARTS)}, got {', '.join(unknown)}")
    if args.workers < 1:
        parser.error(f"--workers must be an integer >= 1, got {args.workers}")
    from xsam_jax.data import cache_dir

    cache = args.cache or cache_dir() / "study"
    jit_cache = None if args.no_jit_cache else str(cache_dir() / "xla")
    plan = smoke_plan() if args.smoke else full_plan()
    results = run_study(
        plan, args.out, cache=cache, parts=parts, workers=args.workers, jit_cache=jit_cache
    )
    if args.readme and "final" in results:
        path = pathlib.Path(args.readme)
        path.write_text(readme_with_tables(path.read_text(), report.tables(results)))
    print(f"wrote {pathlib.Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
