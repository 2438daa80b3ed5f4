"""`xsam-train` (also `python -m xsam_jax`): train with a sharpness-aware optimizer from the shell.

With no arguments it trains the 1-D CNN on MNIST-1D (generated offline) with XSAM for 60 epochs,
about a minute on a laptop CPU. `--compare sam,xsam --seeds 0,1,2` runs several optimizers and
seeds with otherwise equal settings and prints a table of final test accuracies.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

from xsam_jax.data import DatasetNotPreparedError
from xsam_jax.experiment import OPTIMIZERS, TrainConfig


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part]
    except ValueError:
        message = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _optimizer_list(text: str) -> list[str]:
    names = [part for part in text.split(",") if part]
    bad = [n for n in names if n not in OPTIMIZERS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown optimizer {', '.join(bad) or text!r}; choose from {', '.join(OPTIMIZERS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(
        prog="xsam-train",
        description="Train a model with SGD or a sharpness-aware optimizer (SAM family, XSAM).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    p.add_argument("--compare", type=_optimizer_list, metavar="OPT,OPT,...",
                   help="run these optimizers side by side (overrides --optimizer)")
    p.add_argument("--dataset", default=defaults.dataset,
                   help="mnist1d | digits | cifar10 | cifar100 | svhn | fashion_mnist")
    p.add_argument("--model", default=None,
                   help="model name (default: cnn1d for mnist1d, mlp for digits, "
                   "resnet18 for image datasets)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr, help="peak of the cosine schedule")
    p.add_argument("--momentum", type=float, default=defaults.momentum)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--rho", type=float, default=None,
                   help="ascent radius (default: sam/gsam/wsam/late-sam 0.05, asam 0.5, xsam 0.15)")
    p.add_argument("--rho-max", type=float, default=None, help="XSAM probe radius (default 2*rho)")
    p.add_argument("--ascent-steps", type=int, default=defaults.ascent_steps)
    p.add_argument("--search-every", type=int, default=None,
                   help="XSAM: steps between alpha searches (default: once an epoch)")
    p.add_argument("--gsam-alpha", type=float, default=defaults.gsam_alpha)
    p.add_argument("--wsam-gamma", type=float, default=defaults.wsam_gamma)
    p.add_argument("--late-phase-start", type=float, default=defaults.late_phase_start,
                   metavar="FRACTION", help="late-sam: fraction of training done with SGD first")
    p.add_argument("--m-sharpness", type=int, default=None, metavar="M",
                   help="perturb each group of M examples with its own gradient")
    p.add_argument("--devices", type=int, default=1,
                   help="data-parallel devices (on CPU: that many simulated devices)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="crop/flip/Cutout (default: on for image datasets)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--seeds", type=_int_list, default=None, metavar="S,S,...",
                   help="run each optimizer once per seed (overrides --seed)")
    p.add_argument("--data-dir", default=None, help="TFDS data dir, or the MNIST-1D cache dir")
    p.add_argument("--download", action="store_true",
                   help="download and prepare a TFDS dataset missing from the data dir (needs "
                   "internet access and pip install 'xsam-jax[tfds-prepare]')")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write metrics.json, curves.png and the checkpoint here")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--jit-cache", default=None, metavar="DIR",
                   help="persistent XLA compilation cache, so a rerun skips compiling "
                   "(default: $XSAM_JAX_CACHE/xla or ~/.cache/xsam_jax/xla)")
    p.add_argument("--no-jit-cache", action="store_true", help="compile afresh every run")
    return p


def _configure_jit_cache(directory: str | None, enabled: bool) -> None:
    """Keep compiled programs on disk: a small run spends much of its time compiling."""
    if not enabled:
        return
    import jax

    from xsam_jax.data import cache_dir

    path = pathlib.Path(directory).expanduser() if directory else cache_dir() / "xla"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def _configure_devices(devices: int) -> None:
    """Simulated CPU devices must be requested before JAX starts its backend."""
    import jax

    if devices > 1:
        try:
            jax.config.update("jax_num_cpu_devices", devices)
        except RuntimeError:
            pass  # the backend is already up (e.g. called from Python): use what exists
    if jax.device_count() < devices:
        raise ValueError(f"--devices must be at most the {jax.device_count()} devices available, "
                         f"got {devices}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    optimizers = args.compare or [args.optimizer]
    seeds = args.seeds or [args.seed]
    if args.resume and not args.out:
        parser.error("--resume needs --out DIR (where the checkpoint is)")
    try:
        for name in optimizers:
            dataclasses.replace(config, optimizer=name).validate()
        _configure_devices(config.devices)
        _configure_jit_cache(args.jit_cache, not args.no_jit_cache)
        from xsam_jax import experiment, plotting

        multiple = len(optimizers) * len(seeds) > 1
        results: dict[str, list[dict]] = {}
        for name in optimizers:
            for seed in seeds:
                run_config = dataclasses.replace(config, optimizer=name, seed=seed)
                out = args.out
                if out and multiple:
                    out = str(pathlib.Path(out) / f"{name}_seed{seed}")
                result = experiment.run(run_config, out=out, resume=args.resume,
                                        progress=not args.no_progress)
                results.setdefault(name, []).append(result)
                print(f"{name} seed {seed}: final test accuracy "
                      f"{result['final_test_accuracy']:.4f}")
    except (ValueError, DatasetNotPreparedError) as err:
        parser.exit(2, f"xsam-train: error: {err}\n")
    if multiple:
        summary = experiment.summarise(results)
        print("\n| optimizer | final test accuracy (mean ± std) | seeds | train s/run |")
        print("|---|---|---|---|")
        for name, row in summary.items():
            print(f"| {name} | {row['mean']:.4f} ± {row['std']:.4f} | {row['seeds']} "
                  f"| {row['seconds']:.1f} |")
        if args.out:
            out = pathlib.Path(args.out)
            (out / "summary.json").write_text(json.dumps({"summary": summary}, indent=2))
            plotting.plot_training_curves({n: r[0]["history"] for n, r in results.items()},
                                          path=out / "compare.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
