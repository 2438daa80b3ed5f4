"""`xsam-train` (also `python -m xsam_jax`): train with a sharpness-aware optimizer from the shell.

With no arguments it trains the 1-D CNN on MNIST-1D (generated offline) with XSAM for 60 epochs,
about a minute on a laptop CPU. `--compare sgd,sam,xsam+adaptive --seeds 0-4` runs several
variants and seeds with otherwise equal settings and prints (and with `--out` writes) their mean
accuracies with 95 % intervals and the paired differences to a baseline. Several processes
(hosts) train one model together when started by SLURM, Open MPI or on a TPU pod, or with
`--coordinator HOST:PORT --num-processes N --process-id I` (README, "On a cluster").
`--recipe NAME` starts from a paper's setup (`--recipe list` names them); flags given with it
override the recipe's values.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

from xsam_jax._src.validation import InvalidArgumentError
from xsam_jax.data import DatasetNotPreparedError
from xsam_jax.experiment import (
    OPTIMIZERS,
    PERTURBATION_MASKS,
    TrainConfig,
    launch,
    parse_variant,
    recipes,
)


def _seed_list(text: str) -> list[int]:
    """ "0,1,2" or "0-4" or a mix ("0-2,7")."""
    seeds: list[int] = []
    try:
        for part in filter(None, text.split(",")):
            low, dash, high = part.partition("-")
            seeds.extend(range(int(low), int(high) + 1) if dash else [int(part)])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seeds like 0,1,2 or 0-4, got {text!r}"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds, got {text!r}")
    return seeds


def _variant(text: str) -> str:
    try:
        parse_variant(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _variant_list(text: str) -> list[str]:
    labels = [_variant(part) for part in text.split(",") if part]
    if not labels or len(set(labels)) != len(labels):
        raise argparse.ArgumentTypeError(f"expected distinct variants, got {text!r}")
    return labels


def build_parser(recipe: str | None = None) -> argparse.ArgumentParser:
    """The `xsam-train` parser; with a `recipe` of `recipes.RECIPES`, its values are the
    defaults, so that only the flags given on the command line replace them."""
    defaults = TrainConfig()
    p = argparse.ArgumentParser(
        prog="xsam-train",
        description="Train a model with SGD or a sharpness-aware optimizer (SAM family, XSAM).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--recipe",
        choices=[*recipes.RECIPES, "list"],
        default=None,
        metavar="NAME",
        help="start from a paper's setup (flags given too override it); list: name them all",
    )
    p.add_argument("--list-recipes", action="store_true", help="name the recipes and exit")
    p.add_argument(
        "--optimizer",
        type=_variant,
        default=defaults.optimizer,
        metavar="VARIANT",
        help=f"{' | '.join(OPTIMIZERS)}, optionally with +adaptive (ASAM ascent), "
        "+late=F (SGD until fraction F of training), +every=N (climb on every N-th step) or "
        "+random=P (on a random fraction P of the steps), e.g. xsam+adaptive, sam+every=2",
    )
    p.add_argument(
        "--compare",
        type=_variant_list,
        metavar="VARIANT,VARIANT,...",
        help="run these variants side by side (overrides --optimizer)",
    )
    p.add_argument(
        "--baseline",
        default=None,
        metavar="VARIANT",
        help="the --compare variant the others are paired against (default: first)",
    )
    p.add_argument(
        "--dataset",
        default=defaults.dataset,
        help="mnist1d | digits | cifar10 | cifar100 | svhn | fashion_mnist",
    )
    p.add_argument(
        "--model",
        default=None,
        help="model name (default: cnn1d for mnist1d, mlp for digits, resnet18 for image datasets)",
    )
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr, help="peak of the cosine schedule")
    p.add_argument("--momentum", type=float, default=defaults.momentum)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument(
        "--rho",
        type=float,
        default=None,
        help="ascent radius (default: the study's choice for the dataset and model "
        "where it measured them, else the paper's: sam/gsam/wsam/fsam/vasso/looksam 0.05, "
        "xsam 0.15, fisher-sam 0.1, adaptive 0.5)",
    )
    p.add_argument(
        "--rho-max",
        type=float,
        default=None,
        help="XSAM probe radius (default: the study's choice, else 2*rho)",
    )
    p.add_argument(
        "--adaptive",
        action="store_true",
        help="ASAM ascent (rescaled by |w| + 0.01) for any method",
    )
    p.add_argument("--ascent-steps", type=int, default=defaults.ascent_steps)
    p.add_argument(
        "--search-every",
        type=int,
        default=None,
        help="XSAM: steps between alpha searches (default: once an epoch; 0: never, alpha stays 1)",
    )
    p.add_argument(
        "--xsam-reuse",
        choices=("alpha", "rotation"),
        default=defaults.xsam_reuse,
        help="XSAM: what a search hands to later steps: alpha* (the paper) or the angle alpha*·psi",
    )
    p.add_argument(
        "--max-rotation",
        type=float,
        default=None,
        metavar="DEGREES",
        help="XSAM: turn at most this far from the ascent direction v0",
    )
    p.add_argument("--gsam-alpha", type=float, default=defaults.gsam_alpha)
    p.add_argument("--wsam-gamma", type=float, default=defaults.wsam_gamma)
    p.add_argument(
        "--fsam-sigma",
        type=float,
        default=defaults.fsam_sigma,
        help="fsam: how much of the gradient average is removed from the ascent direction",
    )
    p.add_argument(
        "--fsam-lambda",
        type=float,
        default=defaults.fsam_lambda,
        help="fsam: decay of the gradient average",
    )
    p.add_argument(
        "--vasso-theta",
        type=float,
        default=defaults.vasso_theta,
        help="vasso: weight of the newest gradient in the averaged ascent direction",
    )
    p.add_argument(
        "--fisher-eta",
        type=float,
        default=defaults.fisher_eta,
        help="fisher-sam: weight of the Fisher term in the metric 1 + eta*g^2",
    )
    p.add_argument(
        "--looksam-every",
        type=int,
        default=defaults.looksam_every,
        help="looksam: a full SAM step every this many steps",
    )
    p.add_argument(
        "--looksam-alpha",
        type=float,
        default=defaults.looksam_alpha,
        help="looksam: weight of the reused direction between full steps",
    )
    p.add_argument(
        "--perturbation-mask",
        choices=PERTURBATION_MASKS,
        default=None,
        help="perturb only these parameters: norm = the normalisation layers' (SAM-ON)",
    )
    p.add_argument(
        "--late-phase-start",
        type=float,
        default=None,
        metavar="FRACTION",
        help="train with SGD for this fraction of the steps, then with the method (late-sam: 0.8)",
    )
    p.add_argument(
        "--perturb-every",
        type=int,
        default=None,
        metavar="N",
        help="climb on every N-th step only (steps 0, N, 2N, ...), plain SGD steps between",
    )
    p.add_argument(
        "--perturb-probability",
        type=float,
        default=None,
        metavar="P",
        help="climb on a random fraction P of the steps (drawn from --seed), SGD on the others",
    )
    p.add_argument(
        "--m-sharpness",
        type=int,
        default=None,
        metavar="M",
        help="perturb each group of M examples with its own gradient",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        help="data-parallel devices (on CPU: that many simulated devices), per process in a "
        "run of several",
    )
    hosts = p.add_argument_group(
        "several processes (hosts)",
        "Each process trains on its rows of every global batch of --batch-size; process 0 "
        "writes metrics and plots, all write the checkpoint in --out together. Detected "
        "without flags under srun (SLURM) and mpirun (Open MPI) with several tasks and on TPU "
        "pods whose environment lists the workers.",
    )
    hosts.add_argument("--coordinator", metavar="HOST:PORT", help="where process 0 listens")
    hosts.add_argument("--num-processes", type=int, metavar="N", help="how many processes")
    hosts.add_argument("--process-id", type=int, metavar="I", help="this process, 0 to N-1")
    hosts.add_argument(
        "--distributed",
        action="store_true",
        help="let JAX find the other processes (e.g. a Cloud TPU pod slice: "
        "gcloud ... --worker=all)",
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="crop/flip/Cutout (default: on for image datasets)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="F",
        help="hold out this fraction of the training set for validation",
    )
    p.add_argument(
        "--test-size",
        type=int,
        default=None,
        metavar="N",
        help="mnist1d: N test signals (>= 1000; more from the same generator)",
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        metavar="S,S,...|A-B",
        help="run each variant once per seed (overrides --seed)",
    )
    p.add_argument("--data-dir", default=None, help="TFDS data dir, or the MNIST-1D cache dir")
    p.add_argument(
        "--download",
        action="store_true",
        help="download and prepare a TFDS dataset missing from the data dir (needs "
        "internet access and pip install 'xsam-jax[tfds-prepare]')",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write metrics.json, curves.png and the checkpoint here",
    )
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=1,
        metavar="N",
        help="with --out, save the checkpoint every N epochs and after the last (default 1; "
        "on small, fast models each save slows the next epoch)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--jit-cache",
        default=None,
        metavar="DIR",
        help="persistent XLA compilation cache, so a rerun skips compiling "
        "(default: $XSAM_JAX_CACHE/xla or ~/.cache/xsam_jax/xla)",
    )
    p.add_argument("--no-jit-cache", action="store_true", help="compile afresh every run")
    if recipe in recipes.RECIPES:
        p.set_defaults(**recipes.cli_defaults(recipe))
    return p


def _recipe_name(argv: list[str] | None) -> str | None:
    """The --recipe of a command line, read before the parser is built (unchecked)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--recipe")
    return early.parse_known_args(argv)[0].recipe


def _late_phase_flag_wins(args: argparse.Namespace, recipe: str | None) -> None:
    """An explicit --late-phase-start replaces the late phase a recipe's variant carries."""
    if recipe not in recipes.RECIPES or args.late_phase_start is None:
        return
    if args.optimizer == recipes.cli_defaults(recipe)["optimizer"]:
        args.optimizer = recipes.RECIPES[recipe].fields["optimizer"]


def _configure_jit_cache(directory: str | None, enabled: bool) -> None:
    """Keep compiled programs on disk: a small run spends much of its time compiling."""
    if not enabled:
        return
    import jax

    from xsam_jax.data import cache_dir

    path = pathlib.Path(directory).expanduser() if directory else cache_dir() / "xla"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def _configure_devices(devices: int, distributed: dict | None) -> int:
    """Requests simulated CPU devices and joins the other processes (both must happen before
    JAX starts its backend); returns the number of processes."""
    import jax

    if devices > 1:
        try:
            jax.config.update("jax_num_cpu_devices", devices)
        except RuntimeError:
            pass  # the backend is already up (e.g. called from Python): use what exists
    if distributed is not None:
        launch.join(distributed)
    if jax.local_device_count() < devices:
        raise ValueError(
            f"--devices must be at most the {jax.local_device_count()} devices available, "
            f"got {devices}"
        )
    return jax.process_count()


def _over_processes(config: TrainConfig, processes: int) -> TrainConfig:
    """The config of a run over all processes: `devices` counts them all."""
    total = config.devices * processes
    if config.batch_size % total:
        raise InvalidArgumentError(
            "--batch-size",
            f"divisible by --devices × the {processes} processes ({total})",
            config.batch_size,
        )
    return dataclasses.replace(config, devices=total)


def _configs(args: argparse.Namespace, base: TrainConfig) -> dict[str, list[TrainConfig]]:
    """Variant label -> one config per seed."""
    labels = args.compare or [args.optimizer]
    seeds = args.seeds or [args.seed]
    return {
        label: [dataclasses.replace(base, seed=seed, **parse_variant(label)) for seed in seeds]
        for label in labels
    }


def _validate(configs: dict[str, list[TrainConfig]]) -> None:
    """InvalidArgumentError naming the flag of the first bad value (seeds differ only)."""
    for per_seed in configs.values():
        per_seed[0].validate()


def main(argv: list[str] | None = None) -> int:
    recipe = _recipe_name(argv)
    parser = build_parser(recipe)
    args = parser.parse_args(argv)
    if args.list_recipes or args.recipe == "list":
        print(recipes.format_recipes())
        return 0
    _late_phase_flag_wins(args, recipe)
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"optimizer"}
    base = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    if args.resume and not args.out:
        parser.error("--resume needs --out DIR (where the checkpoint is)")
    if args.checkpoint_every < 1:
        parser.error(f"--checkpoint-every must be an integer >= 1, got {args.checkpoint_every}")
    if args.baseline is not None and args.baseline not in (args.compare or []):
        parser.error(f"--baseline must be one of the --compare variants, got {args.baseline!r}")
    configs = _configs(args, base)
    multiple = sum(len(c) for c in configs.values()) > 1
    lead = True  # the process that prints and writes the summary
    try:
        distributed = launch.distributed_arguments(
            args.coordinator, args.num_processes, args.process_id, detect=args.distributed
        )
        if distributed is None:  # one process: check the flags before JAX starts
            _validate(configs)
        processes = _configure_devices(base.devices, distributed)
        if distributed is not None:  # checked once the processes are counted (--devices is each's)
            import jax

            lead = jax.process_index() == 0
            configs = _configs(args, _over_processes(base, processes))
            _validate(configs)
        _configure_jit_cache(args.jit_cache, not args.no_jit_cache)
        from xsam_jax import experiment

        results: dict[str, list[dict]] = {}
        for label, per_seed in configs.items():
            for config in per_seed:
                out = args.out
                if out and multiple:
                    out = str(pathlib.Path(out) / f"{label}_seed{config.seed}")
                result = experiment.run(
                    config,
                    out=out,
                    resume=args.resume,
                    checkpoint_every=args.checkpoint_every,
                    progress=not args.no_progress,
                )
                results.setdefault(label, []).append(result)
                if lead:
                    print(_result_line(label, config.seed, result))
    except (ValueError, DatasetNotPreparedError) as err:
        parser.exit(2, f"xsam-train: error: {err}\n")
    if multiple and lead:
        summary = experiment.summarise(results, baseline=args.baseline)
        print()
        print(experiment.format_table(summary))
        if args.out:
            experiment.write_comparison(args.out, results, summary)
    return 0


def _result_line(label: str, seed: int, result: dict) -> str:
    parts = [
        f"{split} accuracy {result[f'final_{split}_accuracy']:.4f}"
        for split in ("val", "test")
        if f"final_{split}_accuracy" in result
    ]
    return f"{label} seed {seed}: final " + ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
