"""Cost of the sharpness toolkit: Hessian-vector product against a gradient, and Lanczos.

For each model (the MNIST-1D 1-D CNN, and the CIFAR ResNet-18 with 11.2M parameters) it
times, on one batch of 128 in train mode (BatchNorm on batch statistics, via
`xsam_jax.sharpness.nnx_loss_fn`), the jitted gradient and the jitted forward-over-reverse
HVP in interleaved rounds and reports medians and their ratio (target: HVP <= 3x gradient).
It then times `hessian_eigenvalues` (Lanczos, k = 1) for the top eigenvalue of the loss over
1,000 examples given as stacked batches: compilation separately, then the median of repeated
runs. On CPU the ResNet-18 Lanczos run is long, so it uses fewer Lanczos steps
(`--resnet-iters`); its time per step is what carries over.

Usage:
  python benchmarks/sharpness_cost.py            # both models (ResNet-18: several minutes)
  python benchmarks/sharpness_cost.py --quick    # the 1-D CNN only (< 1 minute)

Writes benchmarks/results/sharpness_cost.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from xsam_jax import models
from xsam_jax import sharpness as sh

RESULTS = pathlib.Path(__file__).parent / "results" / "sharpness_cost.json"
HVP_TARGET = 3.0


def xent(model, batch):
    return optax.softmax_cross_entropy_with_integer_labels(model(batch["x"]), batch["y"]).mean()


def random_batch(key, size, input_shape, num_classes=10):
    kx, ky = jax.random.split(key)
    return {
        "x": jax.random.normal(kx, (size, *input_shape)),
        "y": jax.random.randint(ky, (size,), 0, num_classes),
    }


def timed(fn, *args, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / inner


def bench_model(name, input_shape, *, rounds, inner, examples, lanczos_batch, iters, repeats):
    model = models.create(name, 10, rngs=nnx.Rngs(0))
    loss_fn, params = sh.nnx_loss_fn(model, xent)
    batch = random_batch(jax.random.key(1), 128, input_shape)
    vector = jax.tree.map(jnp.ones_like, params)

    grad = jax.jit(jax.grad(loss_fn))
    hvp = jax.jit(lambda p, v, b: sh.hvp(lambda q: loss_fn(q, b), p, v))
    jax.block_until_ready((grad(params, batch), hvp(params, vector, batch)))  # compile

    samples = {"gradient": [], "hvp": []}
    for _ in range(rounds):  # interleaved, so drift in machine load hits both alike
        samples["gradient"].append(timed(grad, params, batch, inner=inner))
        samples["hvp"].append(timed(hvp, params, vector, batch, inner=inner))
    med = {label: statistics.median(v) for label, v in samples.items()}

    data = sh.stack_batches(
        random_batch(jax.random.key(2 + i), lanczos_batch, input_shape)
        for i in range(examples // lanczos_batch)
    )

    def lanczos():
        return sh.hessian_eigenvalues(
            loss_fn, params, key=jax.random.key(0), k=1, num_iters=iters, batches=data
        )

    # Memory in parameter-sized float32 vectors, from XLA's compiled memory analysis: the
    # temporaries of one Lanczos update (beyond its donated basis) and of one batch's HVP.
    n = sum(x.size for x in jax.tree.leaves(params))
    basis = jax.ShapeDtypeStruct((iters + 1, n), jnp.float32)
    update = sh._lanczos_extend.lower(
        basis, jax.ShapeDtypeStruct((n,), jnp.float32), 0, jax.random.key(0)
    )
    one_batch = jax.tree.map(lambda x: x[0], data)
    hvp_memory = hvp.lower(params, vector, one_batch).compile().memory_analysis()
    memory = {
        "lanczos_update_temp_vectors": update.compile().memory_analysis().temp_size_in_bytes
        / (4 * n),
        "hvp_temp_vectors": hvp_memory.temp_size_in_bytes / (4 * n),
        "basis_vectors": iters + 1,
    }

    start = time.perf_counter()
    top = float(jax.block_until_ready(lanczos())[0])
    first_call = time.perf_counter() - start
    runs = [timed(lanczos, inner=1) for _ in range(repeats)]
    lanczos_seconds = statistics.median(runs)
    return {
        "params": models.count_params(model),
        "batch": 128,
        "gradient_seconds": med["gradient"],
        "hvp_seconds": med["hvp"],
        "hvp_over_gradient": med["hvp"] / med["gradient"],
        "rounds": rounds,
        "inner": inner,
        "lanczos": {
            "examples": (examples // lanczos_batch) * lanczos_batch,
            "batch": lanczos_batch,
            "num_iters": iters,
            "compile_seconds": first_call - lanczos_seconds,
            "seconds": lanczos_seconds,
            "seconds_per_iter": lanczos_seconds / iters,
            "repeats": repeats,
            "lambda_max": top,
            "memory": memory,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1-D CNN only")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--iters", type=int, default=20, help="Lanczos steps (1-D CNN)")
    parser.add_argument("--resnet-iters", type=int, default=3, help="Lanczos steps (ResNet-18)")
    args = parser.parse_args()
    configs = [
        ("cnn1d", (40,), dict(rounds=args.rounds, inner=20, lanczos_batch=250,
                              iters=args.iters, repeats=3)),
    ]  # fmt: skip
    if not args.quick:
        configs.append(
            ("resnet18", (32, 32, 3), dict(rounds=max(3, args.rounds // 2), inner=1,
                                           lanczos_batch=125, iters=args.resnet_iters,
                                           repeats=1))
        )  # fmt: skip
    report = {
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "machine": platform.machine(),
        "models": {},
    }
    for name, shape, kw in configs:
        print(f"benchmarking {name} ...", flush=True)
        report["models"][name] = bench_model(name, shape, examples=args.examples, **kw)

    print(
        "\n| model | params | gradient (ms) | HVP (ms) | HVP / gradient (target <= 3) "
        "| Lanczos examples x steps | Lanczos (s) | per step (s) | compile (s) "
        "| update temps (param vectors, beyond the basis) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in report["models"].items():
        lz = r["lanczos"]
        print(
            f"| {name} | {r['params']:,} | {1e3 * r['gradient_seconds']:.2f} "
            f"| {1e3 * r['hvp_seconds']:.2f} | {r['hvp_over_gradient']:.2f} "
            f"| {lz['examples']} x {lz['num_iters']} | {lz['seconds']:.2f} "
            f"| {lz['seconds_per_iter']:.3f} | {lz['compile_seconds']:.1f} "
            f"| {lz['memory']['lanczos_update_temp_vectors']:.1f} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
