"""Step-time benchmark of the SAM family: whole jitted train steps, ratios in one run.

For each model (the MNIST-1D 1-D CNN and the CIFAR ResNet-18, batch 128) it times complete
jitted steps (gradient, transformation, base SGD update) of SGD, SAM, optax.contrib.sam,
late-phase SAM before and after its switch and SAM with an injected ρ (each with the gate's
`lax.cond` and with the host-side plan, ``perturb=``), XSAM with a fixed α, XSAM on a
non-search and on a search
step (full vmap and chunked), in interleaved rounds, and reports medians and the ratios the
project targets. XSAM with one search per `--steps-per-epoch` steps is the amortised mix.
It also times the 21-candidate search alone (vmap, lax.map, a Python loop of jitted forwards)
and reads the compiled peak temporary memory of a search step per chunk size.

Usage:
  python benchmarks/step_time.py            # both models (ResNet-18 takes several minutes)
  python benchmarks/step_time.py --quick    # the 1-D CNN only

Writes benchmarks/results/step_time.json and prints a markdown table.
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

import xsam_jax as xs
from xsam_jax import models

RESULTS = pathlib.Path(__file__).parent / "results" / "step_time.json"
TARGETS = {
    "sam / sgd": ("<=", 2.05),
    "xsam (1 search / epoch) / sam": ("<=", 1.03),
    "xsam fixed alpha / sam": ("<=", 1.03),
    "xsam search step / sam": ("<=", 5.5),
    "late-phase before switch / sgd": ("<=", 1.02),
    "late-phase before switch, planned / sgd": ("<=", 1.05),
    "late-phase after switch, planned / sam": ("<=", 1.05),
    "injected rho, planned / sam": ("<=", 1.05),
    "xsam_jax.sam / optax.contrib.sam": ("<=", 1.00),
    "python loop / vmapped search": (">=", 3.0),
}


def functional_model(name: str, input_shape: tuple[int, ...], num_classes: int = 10):
    """(loss(params, batch), params): the model in train mode, its state held fixed."""
    model = models.create(name, num_classes, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, batch):
        logits = nnx.merge(graphdef, params, nnx.as_pure(rest))(batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    key = jax.random.key(1)
    batch = {
        "x": jax.random.normal(key, (128, *input_shape)),
        "y": jax.random.randint(key, (128,), 0, num_classes),
    }
    return loss, params, batch


def make_step(loss, tx, grad_fn_kw: bool = False, perturb: bool | None = None):
    @jax.jit
    def step(params, state, batch):
        grads = jax.grad(loss)(params, batch)
        if grad_fn_kw:  # optax.contrib.sam's opaque mode
            kw = {"grad_fn": lambda p, _: jax.grad(loss)(p, batch)}
        else:
            kw = {"loss_fn": lambda p: loss(p, batch), "perturb": perturb}
        updates, state = tx.update(grads, state, params, **kw)
        return optax.apply_updates(params, updates), state

    return step


def timed(fn, *args, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / inner


def bench_model(name, input_shape, rounds, inner, steps_per_epoch):
    loss, params, batch = functional_model(name, input_shape)
    lr, rho = 0.05, 0.05
    contrib = optax.contrib.sam(
        optax.sgd(lr),
        optax.chain(optax.contrib.normalize(), optax.sgd(rho)),
        opaque_mode=True,
    )
    never = 10**9
    before = optax.chain(xs.sam(xs.late_phase(rho, never)), optax.sgd(lr))
    after = optax.chain(xs.sam(xs.late_phase(rho, 0)), optax.sgd(lr))
    injected = optax.chain(optax.inject_hyperparams(xs.sam)(rho=rho), optax.sgd(lr))
    # label: (transformation, XSAM count, optax.contrib's opaque mode, perturb)
    variants = {
        "sgd": (optax.sgd(lr), 0, False, None),
        "sam": (optax.chain(xs.sam(rho), optax.sgd(lr)), 0, False, None),
        "optax.contrib.sam": (contrib, 0, True, None),
        "late-phase before switch": (before, 0, False, None),
        "late-phase before switch, planned": (before, 0, False, False),
        "late-phase after switch": (after, 0, False, None),
        "late-phase after switch, planned": (after, 0, False, True),
        "injected rho": (injected, 0, False, None),
        "injected rho, planned": (injected, 0, False, True),
        "xsam fixed alpha": (
            optax.chain(xs.xsam(0.15, 0.3, search_every=None), optax.sgd(lr)),
            0,
            False,
            None,
        ),
        # The backend's default search (one candidate at a time on CPU) in the branch that the
        # non-search step compiles but does not take ...
        "xsam non-search step": (
            optax.chain(xs.xsam(0.15, 0.3, search_every=steps_per_epoch), optax.sgd(lr)),
            1,
            False,
            None,
        ),
        # ... and all 21 candidates in one vmap there (the accelerator default): on XLA:CPU the
        # untaken branch alone slows every step of a conv net.
        "xsam non-search step (vmap branch)": (
            optax.chain(
                xs.xsam(0.15, 0.3, search_every=steps_per_epoch, search_chunk=21), optax.sgd(lr)
            ),
            1,
            False,
            None,
        ),
        "xsam search step (vmap)": (
            optax.chain(
                xs.xsam(0.15, 0.3, search_every=steps_per_epoch, search_chunk=21), optax.sgd(lr)
            ),
            0,
            False,
            None,
        ),
        "xsam search step (chunk 1)": (
            optax.chain(
                xs.xsam(0.15, 0.3, search_every=steps_per_epoch, search_chunk=1), optax.sgd(lr)
            ),
            0,
            False,
            None,
        ),
        "xsam search step (chunk 7)": (
            optax.chain(
                xs.xsam(0.15, 0.3, search_every=steps_per_epoch, search_chunk=7), optax.sgd(lr)
            ),
            0,
            False,
            None,
        ),
    }
    runs, memory = {}, {}
    for label, (tx, count, opaque, perturb) in variants.items():
        state = tx.init(params)
        if count:  # put XSAM's counter off the search schedule
            state = (state[0]._replace(count=jnp.asarray(count, jnp.int32)), *state[1:])
        step = make_step(loss, tx, opaque, perturb)
        jax.block_until_ready(step(params, state, batch))  # compile
        runs[label] = (step, state)
        if "search step" in label:
            analysis = step.lower(params, state, batch).compile().memory_analysis()
            memory[label] = None if analysis is None else int(analysis.temp_size_in_bytes)

    # The search alone: 21 forwards at perturbed weights, three ways.
    grid = jnp.asarray(xs.alpha_grid(2.0, 0.1))
    direction = jax.tree.map(lambda p: jnp.ones_like(p) * 1e-3, params)

    def probe(a):
        return loss(jax.tree.map(lambda p, d: p + a * d, params, direction), batch)

    search_impls = {
        "vmapped search": jax.jit(lambda: jax.vmap(probe)(grid)),
        "lax.map search": jax.jit(lambda: jax.lax.map(probe, grid)),
    }
    probe_jit = jax.jit(probe)

    def python_loop():
        return [probe_jit(a) for a in grid]

    search_impls["python loop search"] = python_loop
    for fn in search_impls.values():
        jax.block_until_ready(fn())

    samples = {label: [] for label in [*runs, *search_impls]}
    for _ in range(rounds):  # interleaved, so drift in machine load hits every variant alike
        for label, (step, state) in runs.items():
            samples[label].append(timed(step, params, state, batch, inner=inner))
        for label, fn in search_impls.items():
            samples[label].append(timed(fn, inner=inner))
    med = {label: statistics.median(v) for label, v in samples.items()}

    search = med["xsam search step (vmap)"]
    best_search = min(search, med["xsam search step (chunk 1)"], med["xsam search step (chunk 7)"])
    amortised = (
        (steps_per_epoch - 1) * med["xsam non-search step"] + best_search
    ) / steps_per_epoch
    ratios = {
        "sam / sgd": med["sam"] / med["sgd"],
        "xsam (1 search / epoch) / sam": amortised / med["sam"],
        "xsam fixed alpha / sam": med["xsam fixed alpha"] / med["sam"],
        "xsam non-search step / sam": med["xsam non-search step"] / med["sam"],
        "xsam non-search step (vmap branch) / sam": (
            med["xsam non-search step (vmap branch)"] / med["sam"]
        ),
        "xsam search step / sam": best_search / med["sam"],
        "xsam search step (vmap) / sam": search / med["sam"],
        "xsam search step (chunk 1) / sam": med["xsam search step (chunk 1)"] / med["sam"],
        "xsam search step (chunk 7) / sam": med["xsam search step (chunk 7)"] / med["sam"],
        "late-phase before switch / sgd": med["late-phase before switch"] / med["sgd"],
        "late-phase before switch, planned / sgd": (
            med["late-phase before switch, planned"] / med["sgd"]
        ),
        "late-phase after switch, planned / sam": (
            med["late-phase after switch, planned"] / med["sam"]
        ),
        "late-phase after switch (lax.cond) / sam": med["late-phase after switch"] / med["sam"],
        "injected rho, planned / sam": med["injected rho, planned"] / med["sam"],
        "injected rho (lax.cond) / sam": med["injected rho"] / med["sam"],
        "xsam_jax.sam / optax.contrib.sam": med["sam"] / med["optax.contrib.sam"],
        "python loop / vmapped search": med["python loop search"] / med["vmapped search"],
        "python loop / lax.map search": med["python loop search"] / med["lax.map search"],
    }
    return {
        "median_seconds": med,
        "ratios": ratios,
        "search_temp_bytes": memory,
        "rounds": rounds,
        "inner": inner,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1-D CNN only")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps-per-epoch", type=int, default=390)
    args = parser.parse_args()
    configs = [("cnn1d", (40,), args.rounds, 10)]
    if not args.quick:
        configs.append(("resnet18", (32, 32, 3), max(3, args.rounds // 2), 1))
    report = {
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "machine": platform.machine(),
        "models": {},
    }
    for name, shape, rounds, inner in configs:
        print(f"benchmarking {name} (batch 128, {rounds} rounds x {inner} steps) ...", flush=True)
        report["models"][name] = bench_model(name, shape, rounds, inner, args.steps_per_epoch)

    names = list(report["models"])
    print("\n| ratio (median step times, one run) | target | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for key in report["models"][names[0]]["ratios"]:
        target = " ".join(str(x) for x in TARGETS.get(key, ("", "")))
        cells = [f"{report['models'][n]['ratios'][key]:.3f}" for n in names]
        print(f"| {key} | {target} | " + " | ".join(cells) + " |")
    print("\n| search step peak temp memory (MiB) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for key in report["models"][names[0]]["search_temp_bytes"]:
        cells = [
            f"{(report['models'][n]['search_temp_bytes'][key] or 0) / 2**20:.1f}" for n in names
        ]
        print(f"| {key} | " + " | ".join(cells) + " |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
