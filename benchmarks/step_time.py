"""Step-time benchmark of the SAM family: whole jitted train steps, ratios in one run.

For each model (the MNIST-1D 1-D CNN and the CIFAR ResNet-18, batch 128) it times complete
jitted steps (gradient, transformation, base SGD update) of SGD, SAM, optax.contrib.sam,
late-phase SAM before and after its switch and SAM with an injected ρ (each with the gate's
`lax.cond` and with the host-side plan, ``perturb=``), XSAM with a fixed α, XSAM on a
non-search and on a search step (with the search's `lax.cond` and with the host-side plan,
``search=``; the search in one vmap and chunked), in interleaved rounds, and reports medians
and the ratios the project targets. XSAM with one search per `--steps-per-epoch` steps is
the amortised mix.
It also times the 21-candidate search alone (vmap, lax.map, a Python loop of jitted forwards)
and reads the compiled peak temporary memory of a search step per chunk size.

Usage:
  python benchmarks/step_time.py            # both models (ResNet-18 takes several minutes)
  python benchmarks/step_time.py --quick    # the 1-D CNN only
  python benchmarks/step_time.py --resnet-rows gate  # ResNet-18: schedules and search plan
      # (planned steps only: a gradient inside a `lax.cond` takes minutes on ResNet-18 on a
      # 2-core CPU, so its conditional rows would run for hours)

Writes benchmarks/results/step_time.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
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
    "xsam search step, planned / sam": ("<=", 5.5),
    "late-phase before switch / sgd": ("<=", 1.02),
    "late-phase before switch, planned / sgd": ("<=", 1.05),
    "late-phase after switch, planned / sam": ("<=", 1.05),
    "injected rho, planned / sam": ("<=", 1.05),
    "xsam_jax.sam / optax.contrib.sam": ("<=", 1.00),
    "python loop / vmapped search": (">=", 3.0),
    "xsam non-search step, planned / sam": ("<=", 1.05),
}
# name: (numerator, denominator) of median step times.
RATIOS = {
    "sam / sgd": ("sam", "sgd"),
    "xsam fixed alpha / sam": ("xsam fixed alpha", "sam"),
    "xsam non-search step, planned / sam": ("xsam non-search step, planned", "sam"),
    "xsam non-search step (lax.cond) / sam": ("xsam non-search step (lax.cond)", "sam"),
    "xsam non-search step (lax.cond, vmap branch) / sam": (
        "xsam non-search step (lax.cond, vmap branch)",
        "sam",
    ),
    "xsam search step, planned / sam": ("xsam search step, planned", "sam"),
    "xsam search step (vmap) / sam": ("xsam search step (vmap)", "sam"),
    "xsam search step (chunk 1) / sam": ("xsam search step (chunk 1)", "sam"),
    "xsam search step (chunk 7) / sam": ("xsam search step (chunk 7)", "sam"),
    "late-phase before switch / sgd": ("late-phase before switch", "sgd"),
    "late-phase before switch, planned / sgd": ("late-phase before switch, planned", "sgd"),
    "late-phase after switch, planned / sam": ("late-phase after switch, planned", "sam"),
    "late-phase after switch (lax.cond) / sam": ("late-phase after switch", "sam"),
    "injected rho, planned / sam": ("injected rho, planned", "sam"),
    "injected rho (lax.cond) / sam": ("injected rho", "sam"),
    "xsam_jax.sam / optax.contrib.sam": ("sam", "optax.contrib.sam"),
    "python loop / vmapped search": ("python loop search", "vmapped search"),
    "python loop / lax.map search": ("python loop search", "lax.map search"),
}
# `--resnet-rows gate`: the schedules and the search plan as the training stack runs them, for
# the slow model. The conditional rows whose branch holds a conv net's gradient or search are
# left out (minutes a step there); the gate before the switch skips its branch and stays in.
GATE_ROWS = (
    "sgd",
    "sam",
    "late-phase before switch",
    "late-phase before switch, planned",
    "late-phase after switch, planned",
    "injected rho, planned",
    "xsam fixed alpha",
    "xsam non-search step, planned",
    "xsam search step, planned",
)


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


def make_step(
    loss, tx, grad_fn_kw: bool = False, perturb: bool | None = None, search: bool | None = None
):
    @jax.jit
    def step(params, state, batch):
        grads = jax.grad(loss)(params, batch)
        if grad_fn_kw:  # optax.contrib.sam's opaque mode
            kw = {"grad_fn": lambda p, _: jax.grad(loss)(p, batch)}
        else:
            kw = {"loss_fn": lambda p: loss(p, batch), "perturb": perturb, "search": search}
        updates, state = tx.update(grads, state, params, **kw)
        return optax.apply_updates(params, updates), state

    return step


def timed(fn, *args, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / inner


def bench_model(name, input_shape, rounds, inner, steps_per_epoch, rows=None):
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

    def xsam(**options):
        return optax.chain(xs.xsam(0.15, 0.3, **options), optax.sgd(lr))

    searching = xsam(search_every=steps_per_epoch)
    # label: (transformation, XSAM count, optax.contrib's opaque mode, perturb, search);
    # XSAM's count 0 is a search step, 1 is not.
    variants = {
        "sgd": (optax.sgd(lr), 0, False, None, None),
        "sam": (optax.chain(xs.sam(rho), optax.sgd(lr)), 0, False, None, None),
        "optax.contrib.sam": (contrib, 0, True, None, None),
        "late-phase before switch": (before, 0, False, None, None),
        "late-phase before switch, planned": (before, 0, False, False, None),
        "late-phase after switch": (after, 0, False, None, None),
        "late-phase after switch, planned": (after, 0, False, True, None),
        "injected rho": (injected, 0, False, None, None),
        "injected rho, planned": (injected, 0, False, True, None),
        "xsam fixed alpha": (xsam(search_every=None), 0, False, None, None),
        # The host-side search plan (`search=`), as the training stack runs XSAM ...
        "xsam non-search step, planned": (searching, 1, False, None, False),
        "xsam search step, planned": (searching, 0, False, None, True),
        # ... and the search in its `lax.cond`, with the backend's default search (one
        # candidate at a time on CPU) and with all 21 candidates in one vmap (the accelerator
        # default): on XLA:CPU the untaken branch alone slows every step of a conv net.
        "xsam non-search step (lax.cond)": (searching, 1, False, None, None),
        "xsam non-search step (lax.cond, vmap branch)": (
            xsam(search_every=steps_per_epoch, search_chunk=21),
            1,
            False,
            None,
            None,
        ),
        "xsam search step (vmap)": (
            xsam(search_every=steps_per_epoch, search_chunk=21),
            0,
            False,
            None,
            True,
        ),
        "xsam search step (chunk 1)": (
            xsam(search_every=steps_per_epoch, search_chunk=1),
            0,
            False,
            None,
            True,
        ),
        "xsam search step (chunk 7)": (
            xsam(search_every=steps_per_epoch, search_chunk=7),
            0,
            False,
            None,
            True,
        ),
    }
    if rows is not None:
        variants = {label: v for label, v in variants.items() if label in rows}
    runs, memory = {}, {}
    for label, (tx, count, opaque, perturb, search) in variants.items():
        state = tx.init(params)
        if count:  # put XSAM's counter off the search schedule
            state = (state[0]._replace(count=jnp.asarray(count, jnp.int32)), *state[1:])
        step = make_step(loss, tx, opaque, perturb, search)
        tic = time.perf_counter()
        jax.block_until_ready(step(params, state, batch))  # compile
        print(f"  {label}: compiled and ran once in {time.perf_counter() - tic:.1f} s", flush=True)
        runs[label] = (step, state)
        if "search step" in label:
            analysis = step.lower(params, state, batch).compile().memory_analysis()
            memory[label] = None if analysis is None else int(analysis.temp_size_in_bytes)

    # The search alone: 21 forwards at perturbed weights, three ways.
    grid = jnp.asarray(xs.alpha_grid(2.0, 0.1))
    direction = jax.tree.map(lambda p: jnp.ones_like(p) * 1e-3, params)

    def probe(a):
        return loss(jax.tree.map(lambda p, d: p + a * d, params, direction), batch)

    search_impls = (
        {}
        if rows is not None
        else {
            "vmapped search": jax.jit(lambda: jax.vmap(probe)(grid)),
            "lax.map search": jax.jit(lambda: jax.lax.map(probe, grid)),
        }
    )
    probe_jit = jax.jit(probe)

    def python_loop():
        return [probe_jit(a) for a in grid]

    if rows is None:
        search_impls["python loop search"] = python_loop
    for fn in search_impls.values():
        jax.block_until_ready(fn())

    samples = {label: [] for label in [*runs, *search_impls]}
    for r in range(rounds):  # interleaved, so drift in machine load hits every variant alike
        for label, (step, state) in runs.items():
            samples[label].append(timed(step, params, state, batch, inner=inner))
        for label, fn in search_impls.items():
            samples[label].append(timed(fn, inner=inner))
        print(f"  round {r + 1} of {rounds} done", flush=True)
    med = {label: statistics.median(v) for label, v in samples.items()}

    ratios = {
        name: med[top] / med[bottom]
        for name, (top, bottom) in RATIOS.items()
        if top in med and bottom in med
    }
    # One search per `steps_per_epoch` steps: as planned, and with the conditional.
    for suffix, non_search, search in (
        ("", "xsam non-search step, planned", "xsam search step, planned"),
        (" (lax.cond)", "xsam non-search step (lax.cond)", "xsam search step (chunk 1)"),
    ):
        if non_search in med and search in med:
            amortised = ((steps_per_epoch - 1) * med[non_search] + med[search]) / steps_per_epoch
            ratios[f"xsam (1 search / epoch){suffix} / sam"] = amortised / med["sam"]
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
    parser.add_argument(
        "--resnet-rows",
        choices=("all", "gate"),
        default="all",
        help="gate: on ResNet-18 only the schedule and search-plan rows",
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps-per-epoch", type=int, default=390)
    args = parser.parse_args()
    configs = [("cnn1d", (40,), args.rounds, 10, None)]
    if not args.quick:
        rows = None if args.resnet_rows == "all" else GATE_ROWS
        configs.append(("resnet18", (32, 32, 3), max(3, args.rounds // 2), 1, rows))
    report = {
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "machine": platform.machine(),
        "date": datetime.date.today().isoformat(),
        "models": {},
    }
    for name, shape, rounds, inner, rows in configs:
        print(f"benchmarking {name} (batch 128, {rounds} rounds x {inner} steps) ...", flush=True)
        report["models"][name] = bench_model(name, shape, rounds, inner, args.steps_per_epoch, rows)
        # Saved after each model: the ResNet-18 part takes long.
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2))

    names = list(report["models"])

    def cells(key, fmt):
        return " | ".join(
            "—" if report["models"][n][key].get(row) is None else fmt(report["models"][n][key][row])
            for n in names
        )

    print("\n| ratio (median step times, one run) | target | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for row in report["models"][names[0]]["ratios"]:
        target = " ".join(str(x) for x in TARGETS.get(row, ("", "")))
        print(f"| {row} | {target} | {cells('ratios', lambda r: f'{r:.3f}')} |")
    print("\n| search step peak temp memory (MiB) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for row in report["models"][names[0]]["search_temp_bytes"]:
        print(f"| {row} | {cells('search_temp_bytes', lambda b: f'{b / 2**20:.1f}')} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
