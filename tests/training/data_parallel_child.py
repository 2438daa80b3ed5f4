"""Runs every data-parallel train step on 4 simulated CPU devices (spawned by a test).

Prints one JSON line: for each check, the largest absolute difference between the final
(params, running statistics) of a variant and its reference, or the error it raised.
"""

import json
import sys
import traceback

import jax

jax.config.update("jax_num_cpu_devices", 4)

import optax  # noqa: E402
from training_helpers import (  # noqa: E402
    as_dicts,
    make_batch,
    make_model,
    max_abs_difference,
    ref_train,
)

import xsam_jax as xs  # noqa: E402
from xsam_jax import training  # noqa: E402

DEVICES, PER_DEVICE, STEPS = 4, 4, 3
RHO, LR, MOMENTUM = 0.1, 0.05, 0.9
BATCHES = [make_batch(seed, DEVICES * PER_DEVICE) for seed in range(STEPS)]


def sgd() -> optax.GradientTransformation:
    return optax.sgd(LR, momentum=MOMENTUM)


def reference(local_groups: bool):
    group_size = PER_DEVICE if local_groups else None
    return ref_train(BATCHES, rho=RHO, lr=LR, momentum=MOMENTUM, group_size=group_size)


def train(step, state, batches, perturb=None):
    for b in batches:
        # Await every step: XLA's CPU collectives can deadlock when many all-reduce programs
        # are queued on simulated devices that share few cores.
        state = jax.block_until_ready(step(state, b, perturb=perturb)[0])
    return state


def run_single(sharpness, **step_kwargs):
    model = make_model()
    tx = optax.chain(sharpness, sgd())
    state = training.TrainState.create(model, tx, rng=0)
    step = jax.jit(training.make_train_step(model, tx, **step_kwargs))
    for b in BATCHES:
        state, _ = step(state, b)
    return as_dicts(state)


def run_m_sharpness_emulation():
    model = make_model()
    tx = optax.chain(xs.sam(RHO, axis_name="groups", local_perturbation=True), sgd())
    state = training.TrainState.create(model, tx, rng=0)
    step = jax.jit(training.make_m_sharpness_train_step(model, tx, PER_DEVICE))
    for b in BATCHES:
        state, _ = step(state, b)
    return as_dicts(state)


def run_sharded(sharpness, perturb=None, **step_kwargs):
    mesh = training.data_mesh(DEVICES)
    model = make_model()
    tx = optax.chain(sharpness, sgd())
    state = training.replicate(training.TrainState.create(model, tx, rng=0), mesh)
    step = training.make_sharded_train_step(model, tx, mesh, **step_kwargs)
    batches = [training.shard_batch(b, mesh) for b in BATCHES]
    return as_dicts(train(step, state, batches, perturb))


def run_shard_map(sharpness, *, sync_batch_norm: bool, perturb=None):
    mesh = training.data_mesh(DEVICES)
    model = make_model(bn_axis_name="data" if sync_batch_norm else None)
    tx = optax.chain(sharpness, sgd())
    state = training.replicate(training.TrainState.create(model, tx, rng=0), mesh)
    step = training.make_shard_map_train_step(model, tx, mesh)
    batches = [training.shard_batch(b, mesh) for b in BATCHES]
    return as_dicts(train(step, state, batches, perturb))


def run_pmap(sharpness, *, sync_batch_norm: bool, perturb=None):
    model = make_model(bn_axis_name="batch" if sync_batch_norm else None)
    tx = optax.chain(sharpness, sgd())
    state = training.replicate_for_pmap(training.TrainState.create(model, tx, rng=0))
    step = training.make_pmap_train_step(model, tx)
    state = train(step, state, [training.shard_for_pmap(b) for b in BATCHES], perturb)
    return as_dicts(training.unreplicate(state))


def xsam(axis_name=None):
    return xs.xsam(0.1, 0.2, search_every=1, axis_name=axis_name)


def main() -> None:
    assert jax.device_count() == DEVICES
    checks = {
        "single_vs_reference": (lambda: run_single(xs.sam(RHO)), lambda: reference(False)),
        "sharded_vs_reference": (lambda: run_sharded(xs.sam(RHO)), lambda: reference(False)),
        "sharded_microbatches_vs_single": (
            lambda: run_sharded(xs.sam(RHO), microbatches=2),
            lambda: run_single(xs.sam(RHO), microbatches=2),
        ),
        "shard_map_vs_reference": (
            lambda: run_shard_map(xs.sam(RHO, axis_name="data"), sync_batch_norm=True),
            lambda: reference(False),
        ),
        "pmap_vs_reference": (
            lambda: run_pmap(xs.sam(RHO, axis_name="batch"), sync_batch_norm=True),
            lambda: reference(False),
        ),
        "xsam_sharded_vs_single": (lambda: run_sharded(xsam()), lambda: run_single(xsam())),
        "xsam_shard_map_vs_single": (
            lambda: run_shard_map(xsam("data"), sync_batch_norm=True),
            lambda: run_single(xsam()),
        ),
        "xsam_pmap_vs_single": (
            lambda: run_pmap(xsam("batch"), sync_batch_norm=True),
            lambda: run_single(xsam()),
        ),
        "m_sharpness_shard_map_vs_reference": (
            lambda: run_shard_map(
                xs.sam(RHO, axis_name="data", local_perturbation=True), sync_batch_norm=False
            ),
            lambda: reference(True),
        ),
        "m_sharpness_pmap_vs_reference": (
            lambda: run_pmap(
                xs.sam(RHO, axis_name="batch", local_perturbation=True), sync_batch_norm=False
            ),
            lambda: reference(True),
        ),
        # A schedule that is on from step 0, run with perturb=True (no conditional).
        "planned_sharded_vs_reference": (
            lambda: run_sharded(xs.sam(xs.late_phase(RHO, 0)), perturb=True),
            lambda: reference(False),
        ),
        "planned_shard_map_vs_reference": (
            lambda: run_shard_map(
                xs.sam(xs.late_phase(RHO, 0), axis_name="data"), sync_batch_norm=True, perturb=True
            ),
            lambda: reference(False),
        ),
        "planned_pmap_vs_reference": (
            lambda: run_pmap(
                xs.sam(xs.late_phase(RHO, 0), axis_name="batch"), sync_batch_norm=True, perturb=True
            ),
            lambda: reference(False),
        ),
        "m_sharpness_shard_map_vs_emulation": (
            lambda: run_shard_map(
                xs.sam(RHO, axis_name="data", local_perturbation=True), sync_batch_norm=False
            ),
            run_m_sharpness_emulation,
        ),
    }
    results = {}
    for name, (variant, expected) in checks.items():
        try:
            results[name] = {"max_diff": max_abs_difference(variant(), expected())}
        except Exception:  # Each check reports its own failure to its test.
            results[name] = {"error": traceback.format_exc(limit=-3)}
    print(json.dumps(results))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
