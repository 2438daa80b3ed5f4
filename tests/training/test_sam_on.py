"""SAM-ON with an NNX model: `normalization_mask` in the train step, against a hand-written step.

The reference perturbs only the BatchNorm scale and bias, ε = ρ g_BN/‖g_BN‖ (the SAM-ON code,
Mueller et al. 2023), takes the gradient of every parameter at θ + ε with the hand-written
forward pass of `training_helpers`, and steps SGD with momentum.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from training_helpers import (
    as_dicts,
    assert_trees_close,
    make_batch,
    make_model,
    ref_sgd_momentum,
    ref_train_loss,
    ref_updated_stats,
)

import xsam_jax as xs
from xsam_jax import training

RHO, LR, MOMENTUM, STEPS = 0.5, 0.05, 0.9, 3


def ref_sam_on_gradient(loss, params, rho):
    g0 = jax.grad(loss)(params)
    norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(g0["bn"])))
    epsilon = {name: jax.tree.map(jnp.zeros_like, g) for name, g in g0.items()}
    epsilon["bn"] = jax.tree.map(lambda g: rho * g / norm, g0["bn"])
    return jax.grad(loss)(jax.tree.map(jnp.add, params, epsilon))


def test_normalization_mask_selects_the_batchnorm_parameters():
    model = make_model()
    state = training.TrainState.create(model, optax.sgd(LR), rng=0)
    selected = training.normalization_mask(model)(state.params)
    flat = {
        jax.tree_util.keystr(path): s for path, s in jax.tree_util.tree_leaves_with_path(selected)
    }
    assert flat == {
        "['bn']['bias']": True,
        "['bn']['scale']": True,
        "['l1']['bias']": False,
        "['l1']['kernel']": False,
        "['l2']['bias']": False,
        "['l2']['kernel']": False,
    }


def test_sam_on_train_step_matches_the_reference():
    model = make_model()
    mask = training.normalization_mask(model)
    tx = optax.chain(xs.sam(RHO, perturbation_mask=mask), optax.sgd(LR, momentum=MOMENTUM))
    state = training.TrainState.create(model, tx, rng=0)
    step = jax.jit(training.make_train_step(model, tx))
    params, stats = as_dicts(state)
    trace = None
    for t in range(STEPS):
        batch = make_batch(t, 16)
        state, _ = step(state, batch)
        x, y = batch["x"], batch["y"]
        grad = ref_sam_on_gradient(lambda p, x=x, y=y: ref_train_loss(p, x, y), params, RHO)
        stats = ref_updated_stats(stats, params, x)
        params, trace = ref_sgd_momentum(params, trace, grad, LR, MOMENTUM)
    ours, our_stats = as_dicts(state)
    assert_trees_close(ours, params)
    assert_trees_close(our_stats, stats)
    # The check can fail: SAM on every parameter goes elsewhere.
    plain = optax.chain(xs.sam(RHO), optax.sgd(LR, momentum=MOMENTUM))
    other = training.TrainState.create(make_model(), plain, rng=0)
    other_step = jax.jit(training.make_train_step(make_model(), plain))
    for t in range(STEPS):
        other, _ = other_step(other, make_batch(t, 16))
    difference = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), as_dicts(other)[0], ours)
    assert max(jax.tree.leaves(difference)) > 1e-3
