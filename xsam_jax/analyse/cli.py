"""The `xsam-analyse` command: ``run DIR`` and ``valley DIR_A DIR_B``, each with its own flags.

``xsam-analyse run DIR`` is `xsam_jax.analyse.analyse`, ``xsam-analyse valley DIR_A DIR_B``
is `xsam_jax.analyse.compare`; the flags are their keyword arguments with dashes. The old
forms ``xsam-analyse DIR`` and ``xsam-analyse --compare DIR_A DIR_B`` are rewritten to these,
with a one-line deprecation notice on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from xsam_jax._src.validation import InvalidArgumentError
from xsam_jax.data import DatasetNotPreparedError

PROG = "xsam-analyse"
# The positional arguments of each subcommand (the other arguments are API keywords).
POSITIONAL = {"run": ("run_dir",), "valley": ("dir_a", "dir_b")}


class _Parser(argparse.ArgumentParser):
    def __init__(self, **kwargs: Any):
        # No abbreviations: `run --num 5` must not pass for `--num-iters 5`.
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_shared(
    p: argparse.ArgumentParser, *, examples_help: str, out_help: str, seed_help: str
) -> None:
    """The flags both subcommands have."""
    p.add_argument("--out", default=None, metavar="DIR", help=f"output directory ({out_help})")
    p.add_argument(
        "--examples",
        type=int,
        default=1000,
        metavar="N",
        help=f"{examples_help} (default: %(default)s)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=8,
        metavar="N",
        help="loss evaluations vmapped at once, bounds memory (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help=f"seeds {seed_help} (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no stage timings on stderr")


def _add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="sharpness of one run: top Hessian eigenvalues, trace, XSAM's "
        "Proposition 1 and alpha curve",
        description="Sharpness report of one run: top Hessian eigenvalues (Lanczos), "
        "Hutchinson's trace, XSAM's Proposition 1 and alpha curve; writes analysis.json and "
        "figures.",
    )
    run.add_argument("run_dir", metavar="RUN_DIR", help="directory written by xsam-train --out")
    _add_shared(
        run,
        examples_help="training examples to measure on",
        out_help="default: RUN_DIR/analysis",
        seed_help="the examples, the Lanczos start and the probes",
    )
    run.add_argument(
        "--trace-samples",
        type=int,
        default=50,
        metavar="N",
        help="Hutchinson probes (default: %(default)s)",
    )
    run.add_argument(
        "--num-iters",
        type=int,
        default=20,
        metavar="N",
        help="Lanczos steps (default: %(default)s)",
    )
    run.add_argument(
        "--rho",
        type=float,
        default=None,
        help="ascent radius (default: the run's; 0.05 for sgd and asam)",
    )
    run.add_argument(
        "--rho-max",
        type=float,
        default=None,
        help="probe radius rho_m (default: the run's XSAM rho_max, else 2*rho)",
    )


def _add_valley(commands: Any) -> None:
    valley = commands.add_parser(
        "valley",
        help="the line (1-lambda)*A + lambda*B between two runs (valley test)",
        description="Loss and accuracy along (1-lambda)*A + lambda*B, lambda in [-0.2, 1.2], "
        "with the barrier and the curvature at both ends; writes interpolation.json and .png.",
    )
    valley.add_argument("dir_a", metavar="DIR_A", help="run A (lambda = 0)")
    valley.add_argument("dir_b", metavar="DIR_B", help="run B (lambda = 1)")
    _add_shared(
        valley,
        examples_help="train and test examples each",
        out_help="default: DIR_A/analysis/interpolation_<name of DIR_B>",
        seed_help="the examples",
    )
    valley.add_argument(
        "--num",
        type=int,
        default=29,
        metavar="N",
        help="points on [-0.2, 1.2] (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of `xsam-analyse` with its subcommands ``run`` and ``valley``."""
    parser = _Parser(
        prog=PROG,
        description="Sharpness and landscape reports of runs saved by `xsam-train --out DIR`.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,valley}")
    _add_run(commands)
    _add_valley(commands)
    return parser


def _modernised(argv: list[str]) -> list[str]:
    """The deprecated forms ``DIR ...`` and ``--compare A B ...`` as subcommands, with a notice."""
    if not argv or argv[0] in (*POSITIONAL, "-h", "--help"):
        return argv
    if "--compare" in argv:
        i = argv.index("--compare")
        new = ["valley", *argv[i + 1 : i + 3], *argv[:i], *argv[i + 3 :]]
        old, use = "--compare DIR_A DIR_B", "valley DIR_A DIR_B"
    else:
        new = ["run", *argv]
        old, use = "RUN_DIR", "run RUN_DIR"
    print(f"{PROG}: `{PROG} {old}` is deprecated, use `{PROG} {use}`", file=sys.stderr)
    return new


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def main(argv: list[str] | None = None) -> int:
    """Console entry point of `xsam-analyse`; returns the exit status."""
    from xsam_jax.analyse import analyse, compare, format_comparison, format_report

    parser = build_parser()
    args = parser.parse_args(_modernised(sys.argv[1:] if argv is None else list(argv)))
    options = vars(args)
    command = options.pop("command")
    directories = [options.pop(name) for name in POSITIONAL[command]]
    options["progress"] = not options.pop("no_progress")
    try:
        if command == "run":
            report = format_report(analyse(*directories, **options))
        else:
            report = format_comparison(compare(*directories, **options))
    except InvalidArgumentError as err:
        # Name the flag, not the keyword argument, when the user set it with one.
        message = err.message(_flag(err.name)) if err.name in options else str(err)
        parser.exit(2, f"{PROG}: error: {message}\n")
    except (ValueError, FileNotFoundError, DatasetNotPreparedError) as err:
        parser.exit(2, f"{PROG}: error: {err}\n")
    print(report)
    return 0
