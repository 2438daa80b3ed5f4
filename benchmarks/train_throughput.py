"""Throughput of `xsam_jax.training`: framework overhead, input pipeline, device count.

Three measurements, each of jitted steps after a warm-up, in interleaved rounds, reported
as medians over the rounds:

1. overhead: `make_train_step` (the full step: train/eval-mode handling, BatchNorm state,
   key folding, metrics) against a minimal hand-written jitted SAM step with the same
   transformation and the same model, on a batch already on the device (target <= 5 %;
   the overhead is the median of the per-round time ratios);
2. input pipeline: examples/s of the loader alone, of the step alone, and of the loop that
   feeds the step from the loader;
3. devices: the sharded step on a 1-device and a 4-device mesh of simulated CPU devices and
   the `shard_map` step on 4, in a subprocess, every step awaited (simulated devices share
   the host's cores, so this shows the parallel machinery's cost here, not a speed-up).

The workload is MNIST-1D (`xsam_jax.data`) with the 1-D CNN of `xsam_jax.models` ("cnn1d"),
batch 128, SAM + SGD with momentum.

Usage:
  python benchmarks/train_throughput.py            # under a minute on 2 CPU cores
  python benchmarks/train_throughput.py --quick    # about 25 seconds

Writes benchmarks/results/train_throughput.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
import optax
from flax import nnx

RESULTS = pathlib.Path(__file__).parent / "results" / "train_throughput.json"
INPUT_LENGTH, CLASSES = 40, 10
OVERHEAD_TARGET = 0.05
SIMULATED_DEVICES = 4


def _model() -> nnx.Module:
    from xsam_jax import models

    return models.create("cnn1d", CLASSES, rngs=nnx.Rngs(0), input_length=INPUT_LENGTH)


def _tx() -> optax.GradientTransformationExtraArgs:
    import xsam_jax as xs

    return optax.chain(xs.sam(0.05), optax.sgd(0.05, momentum=0.9))


def mnist1d_batches(batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled MNIST-1D training batches from `xsam_jax.data`, epoch after epoch."""
    from xsam_jax import data

    dataset = data.load("mnist1d", seed=0)
    epoch = 0
    while True:
        yield from dataset.train_batches(batch_size, epoch=epoch)
        epoch += 1


def _interleaved(
    runners: dict[str, Callable[[], None]], rounds: int, steps: int
) -> dict[str, list[float]]:
    """Seconds per step of each runner in every round; runners take `steps` steps and block."""
    for run in runners.values():
        run()  # compile and warm up
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) / steps)
    return times


def _medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(t) for name, t in times.items()}


def _minimal_step(model: nnx.Module, tx: optax.GradientTransformationExtraArgs):
    """The hand-written baseline: SAM with BatchNorm-safe state handling, nothing else."""
    graphdef, _, _ = nnx.split(model, nnx.Param, ...)

    def loss(params, rest, batch):
        model = nnx.merge(graphdef, params, rest)
        logits = model(batch["x"])
        value = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return value, nnx.as_pure(nnx.split(model, nnx.Param, ...)[2])

    @jax.jit
    def step(params, rest, opt_state, batch):
        (value, new_rest), grads = jax.value_and_grad(loss, has_aux=True)(params, rest, batch)
        updates, opt_state = tx.update(
            grads, opt_state, params, loss_fn=lambda p: loss(p, rest, batch)[0]
        )
        return optax.apply_updates(params, updates), new_rest, opt_state, value

    return step


def bench_overhead(batch_size: int, rounds: int, steps: int) -> dict:
    from xsam_jax import training

    model, tx = _model(), _tx()
    batch = jax.device_put(next(mnist1d_batches(batch_size)))
    full_step = jax.jit(training.make_train_step(model, tx))
    state = training.TrainState.create(model, tx, rng=0)
    minimal = _minimal_step(model, tx)
    carry = (state.params, state.model_state, state.opt_state)

    def run_full():
        nonlocal state
        for _ in range(steps):
            state, metrics = full_step(state, batch)
        jax.block_until_ready((state, metrics))

    def run_minimal():
        nonlocal carry
        for _ in range(steps):
            *new_carry, value = minimal(*carry, batch)
            carry = tuple(new_carry)
        jax.block_until_ready((carry, value))

    times = _interleaved({"full": run_full, "minimal": run_minimal}, rounds, steps)
    seconds = _medians(times)
    # Paired per-round ratios cancel the load drift of a shared machine better than a ratio
    # of medians taken over different moments.
    ratios = [f / m for f, m in zip(times["full"], times["minimal"], strict=True)]
    overhead = statistics.median(ratios) - 1.0
    return {
        "full_examples_per_s": batch_size / seconds["full"],
        "minimal_examples_per_s": batch_size / seconds["minimal"],
        "overhead": overhead,
        "target": OVERHEAD_TARGET,
        "meets_target": overhead <= OVERHEAD_TARGET,
    }


def bench_pipeline(batch_size: int, rounds: int, steps: int) -> dict:
    from xsam_jax import training

    model, tx = _model(), _tx()
    loader = mnist1d_batches(batch_size)
    step = jax.jit(training.make_train_step(model, tx))
    state = training.TrainState.create(model, tx, rng=0)
    fixed = jax.device_put(next(loader))

    def run_loader():
        for _ in range(steps):
            jax.block_until_ready(jax.device_put(next(loader)))

    def run_step():
        nonlocal state
        for _ in range(steps):
            state, metrics = step(state, fixed)
        jax.block_until_ready((state, metrics))

    def run_loop():
        nonlocal state
        for _ in range(steps):
            state, metrics = step(state, next(loader))
        jax.block_until_ready((state, metrics))

    seconds = _medians(
        _interleaved({"loader": run_loader, "step": run_step, "loop": run_loop}, rounds, steps)
    )
    return {
        "loader": "xsam_jax.data mnist1d, prefetch 2, device_put",
        "loader_examples_per_s": batch_size / seconds["loader"],
        "step_examples_per_s": batch_size / seconds["step"],
        "loop_examples_per_s": batch_size / seconds["loop"],
    }


def devices_child(batch_size: int, rounds: int, steps: int) -> dict:
    """Runs in a process with SIMULATED_DEVICES CPU devices (see `bench_devices`)."""
    import xsam_jax as xs
    from xsam_jax import training

    model = _model()
    batch = next(mnist1d_batches(batch_size))
    runners, variants = (
        {},
        {
            "sharded, 1 device": (1, "sharded"),
            f"sharded, {SIMULATED_DEVICES} devices": (SIMULATED_DEVICES, "sharded"),
            f"shard_map, {SIMULATED_DEVICES} devices": (SIMULATED_DEVICES, "shard_map"),
        },
    )
    for name, (devices, kind) in variants.items():
        mesh = training.data_mesh(devices)
        if kind == "sharded":
            tx = _tx()
            step = training.make_sharded_train_step(model, tx, mesh)
        else:
            tx = optax.chain(xs.sam(0.05, axis_name="data"), optax.sgd(0.05, momentum=0.9))
            step = training.make_shard_map_train_step(model, tx, mesh)
        runners[name] = _device_runner(
            step,
            training.replicate(training.TrainState.create(model, tx, rng=0), mesh),
            training.shard_batch(batch, mesh),
            steps,
        )
    seconds = _medians(_interleaved(runners, rounds, steps))
    return {name: batch_size / s for name, s in seconds.items()}


def _device_runner(step, state, batch, steps: int) -> Callable[[], None]:
    def run():
        nonlocal state
        for _ in range(steps):
            # Every step is awaited: with many all-reduce programs queued, XLA's CPU
            # collectives on simulated devices that share few cores can deadlock (a plain
            # jitted data-parallel loop reproduces it).
            state, metrics = jax.block_until_ready(step(state, batch))

    return run


def bench_devices(batch_size: int, rounds: int, steps: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--devices-child",
        f"--batch-size={batch_size}",
        f"--rounds={rounds}",
        f"--steps={steps}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"device benchmark failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _table(results: dict) -> str:
    o, p, d = results["overhead"], results["pipeline"], results["devices"]
    rows = [
        ("full train step (make_train_step)", o["full_examples_per_s"], ""),
        ("minimal hand-written SAM step", o["minimal_examples_per_s"], ""),
        (
            "overhead of the full step",
            None,
            f"{100 * o['overhead']:+.1f} % (target <= {100 * o['target']:.0f} %: "
            f"{'met' if o['meets_target'] else 'MISSED'})",
        ),
        (f"loader alone: {p['loader']}", p["loader_examples_per_s"], ""),
        ("step alone (batch on device)", p["step_examples_per_s"], ""),
        ("loop: loader feeding the step", p["loop_examples_per_s"], ""),
        *((name, value, "simulated devices share the cores") for name, value in d.items()),
    ]
    lines = ["| measurement | examples/s | note |", "|---|---:|---|"]
    for name, value, note in rows:
        lines.append(f"| {name} | {'' if value is None else f'{value:,.0f}'} | {note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps (< 2 min)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=None, help="steps per round")
    parser.add_argument("--devices-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch_size < SIMULATED_DEVICES or args.batch_size % SIMULATED_DEVICES:
        parser.error(f"--batch-size must be a positive multiple of {SIMULATED_DEVICES}")
    rounds = args.rounds or (11 if args.quick else 41)
    steps = args.steps or (10 if args.quick else 40)
    if rounds < 1 or steps < 1:
        parser.error("--rounds and --steps must be >= 1")

    if args.devices_child:
        jax.config.update("jax_num_cpu_devices", SIMULATED_DEVICES)
        print(json.dumps(devices_child(args.batch_size, rounds, steps)))
        return

    results = {
        "config": {
            "model": "cnn1d",
            "input_length": INPUT_LENGTH,
            "batch_size": args.batch_size,
            "rounds": rounds,
            "steps_per_round": steps,
            "quick": args.quick,
            "transformation": "optax.chain(xs.sam(0.05), optax.sgd(0.05, momentum=0.9))",
        },
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
        },
        "overhead": bench_overhead(args.batch_size, rounds, steps),
        "pipeline": bench_pipeline(args.batch_size, rounds, steps),
        "devices": bench_devices(args.batch_size, rounds, steps),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(_table(results))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
