"""Gradient accumulation: in-step micro-batches and SAM outside optax.MultiSteps."""

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from training_helpers import (
    as_dicts,
    assert_trees_close,
    make_batch,
    make_model,
    mean_trees,
    ref_sam_gradient,
    ref_sgd_momentum,
    ref_train_loss,
    ref_updated_stats,
)

import xsam_jax as xs
from xsam_jax import training

RHO, LR, MOMENTUM, K = 0.1, 0.05, 0.9, 4


def _run(model, tx, batches, **step_kwargs):
    state = training.TrainState.create(model, tx, rng=0)
    step = jax.jit(training.make_train_step(model, tx, **step_kwargs))
    for batch in batches:
        state, _ = step(state, batch)
    return state


def test_microbatches_without_batch_norm_give_the_full_batch_sam_step():
    model = make_model(seed=5, batch_norm=False)
    tx = optax.chain(xs.sam(RHO), optax.sgd(LR, momentum=MOMENTUM))
    batches = [make_batch(seed, 16) for seed in range(2)]
    state = _run(model, tx, batches, microbatches=K)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    trace = None
    for b in batches:
        grad = ref_sam_gradient(lambda p, b=b: ref_train_loss(p, b["x"], b["y"]), params, RHO)
        params, trace = ref_sgd_momentum(params, trace, grad, LR, MOMENTUM)
    assert_trees_close(nnx.to_pure_dict(state.params), params, rtol=1e-4, atol=1e-6)


def test_microbatches_with_batch_norm_normalise_each_microbatch():
    model = make_model(seed=6)
    tx = optax.chain(xs.sam(RHO), optax.sgd(LR))
    batch = make_batch(0, 16)
    state = training.TrainState.create(model, tx, rng=0)
    params, stats = as_dicts(state)
    state, metrics = jax.jit(training.make_train_step(model, tx, microbatches=K))(state, batch)

    # Micro-batch j holds examples j, j + K, ...; each is normalised with its own statistics.
    micro = [(batch["x"][j::K], batch["y"][j::K]) for j in range(K)]

    def loss(p):
        return jnp.mean(jnp.stack([ref_train_loss(p, x, y) for x, y in micro]))

    grad = ref_sam_gradient(loss, params, RHO)
    for x, _ in micro:
        stats = ref_updated_stats(stats, params, x)
    expected_params = jax.tree.map(lambda w, g: w - LR * g, params, grad)
    assert_trees_close(as_dicts(state), (expected_params, stats), rtol=1e-4, atol=1e-6)
    assert jnp.allclose(metrics["loss"], loss(params))


def test_sam_outside_multisteps_averages_per_microbatch_sam_gradients():
    model = make_model(seed=7)
    tx = optax.chain(xs.sam(RHO), optax.MultiSteps(optax.sgd(LR), every_k_schedule=K))
    micro = [make_batch(seed, 4) for seed in range(K)]
    state = training.TrainState.create(model, tx, rng=0)
    step = jax.jit(training.make_train_step(model, tx))
    params, stats = as_dicts(state)
    grads = []
    for i, b in enumerate(micro):
        state, _ = step(state, b)
        grads.append(
            ref_sam_gradient(lambda p, b=b: ref_train_loss(p, b["x"], b["y"]), params, RHO)
        )
        stats = ref_updated_stats(stats, params, b["x"])
        if i < K - 1:
            assert_trees_close(nnx.to_pure_dict(state.params), params)
    expected_params = jax.tree.map(lambda w, g: w - LR * g, params, mean_trees(grads))
    assert_trees_close(as_dicts(state), (expected_params, stats), rtol=1e-4, atol=1e-6)


def test_microbatches_must_divide_the_batch():
    model = make_model()
    tx = optax.sgd(LR)
    state = training.TrainState.create(model, tx, rng=0)
    step = jax.jit(training.make_train_step(model, tx, microbatches=3))
    with pytest.raises(ValueError, match="microbatches=3 must divide the batch size 16"):
        step(state, make_batch(0, 16))
