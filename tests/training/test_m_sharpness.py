"""Single-device m-sharpness (vmapped groups) against a per-group loop."""

import jax
import numpy as np
import optax
import pytest
from training_helpers import (
    as_dicts,
    assert_trees_close,
    make_batch,
    make_model,
    ref_m_sharpness_gradient,
    ref_sgd_momentum,
    ref_xsam_m_sharpness,
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


def test_xsam_m_sharpness_averages_the_probe_losses_over_the_groups():
    """Each group climbs and probes its own plane; α* is the argmax of the mean probe loss."""
    rho, rho_max, every = 0.3, 1.0, 2
    grid = np.arange(21) * 0.1
    model = make_model(seed=4)
    xsam = xs.xsam(rho, rho_max, search_every=every, axis_name="groups", local_perturbation=True)
    tx = optax.chain(xsam, optax.sgd(LR, momentum=MOMENTUM))
    state = training.TrainState.create(model, tx, rng=0)
    step = jax.jit(training.make_m_sharpness_train_step(model, tx, GROUP))
    params, stats = as_dicts(state)
    trace, alpha, disagreements = None, 1.0, 0
    for t in range(3):
        batch = make_batch(t, 16)
        state, _ = step(state, batch)
        search = dict(rho=rho, rho_max=rho_max, grid=grid, alpha=alpha, search=t % every == 0)
        grad, stats, alpha, losses, cos_psi, own = ref_xsam_m_sharpness(
            params, stats, batch["x"], batch["y"], GROUP, search
        )
        params, trace = ref_sgd_momentum(params, trace, grad, LR, MOMENTUM)
        recorded = state.opt_state[0]
        assert float(recorded.alpha) == pytest.approx(alpha, abs=1e-6), t
        assert float(recorded.cos_psi) == pytest.approx(cos_psi, abs=1e-5), t
        if t % every == 0:
            np.testing.assert_allclose(recorded.alpha_losses, losses, rtol=1e-5)
            disagreements += sum(a != alpha for a in own)
        assert_trees_close(as_dicts(state), (params, stats), rtol=1e-4, atol=1e-6)
    # Guard on the test itself: the groups' own winners differ from the mean's.
    assert disagreements > 0 and 0.0 < alpha < 2.0


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
