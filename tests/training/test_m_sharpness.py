"""Single-device m-sharpness (vmapped groups) against a per-group loop."""


import jax
import optax
import pytest
from training_helpers import (
    as_dicts,
    assert_trees_close,
    make_batch,
    make_model,
    ref_m_sharpness_gradient,
    ref_sgd_momentum,
)

import xsam_jax as xs
from xsam_jax import training

RHO, LR, MOMENTUM, GROUP = 0.1, 0.05, 0.9, 4


def _local_sam_tx(axis_name: str = "groups") -> optax.GradientTransformationExtraArgs:
    sam = xs.sam(RHO, axis_name=axis_name, local_perturbation=True)
    return optax.chain(sam, optax.sgd(LR, momentum=MOMENTUM))


def test_m_sharpness_matches_per_group_loop():
    model = make_model(seed=4)
    tx = _local_sam_tx()
    state = training.TrainState.create(model, tx, rng=0)
    step = jax.jit(training.make_m_sharpness_train_step(model, tx, GROUP))
    params, stats = as_dicts(state)
    trace = None
    for seed in range(2):
        batch = make_batch(seed, 16)
        state, metrics = step(state, batch)
        grad, stats = ref_m_sharpness_gradient(params, stats, batch["x"], batch["y"], GROUP, RHO)
        params, trace = ref_sgd_momentum(params, trace, grad, LR, MOMENTUM)
    assert_trees_close(as_dicts(state), (params, stats), rtol=1e-4, atol=1e-6)
    assert int(state.step) == 2
    assert set(metrics) == {"loss", "accuracy"}


def test_m_sharpness_rejects_bad_group_size():
    model = make_model()
    tx = _local_sam_tx()
    state = training.TrainState.create(model, tx, rng=0)
    with pytest.raises(ValueError, match="group_size"):
        training.make_m_sharpness_train_step(model, tx, 0)
    with pytest.raises(ValueError, match="group_size=5 must divide"):
        jax.jit(training.make_m_sharpness_train_step(model, tx, 5))(state, make_batch(0, 16))


def test_m_sharpness_requires_a_transformation_averaging_over_the_groups():
    model = make_model()
    tx = optax.chain(xs.sam(RHO), optax.sgd(LR))
    state = training.TrainState.create(model, tx, rng=0)
    step = jax.jit(training.make_m_sharpness_train_step(model, tx, GROUP))
    with pytest.raises(ValueError, match="axis_name='groups', local_perturbation=True"):
        step(state, make_batch(0, 16))
