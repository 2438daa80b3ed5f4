"""The single-device train and eval steps against hand-written references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from training_helpers import (
    as_dicts,
    assert_trees_close,
    make_batch,
    make_model,
    max_abs_difference,
    ref_cross_entropy,
    ref_logits,
    ref_sam_gradient,
    ref_sgd_momentum,
    ref_train_loss,
    ref_updated_stats,
)

import xsam_jax as xs
from xsam_jax import training

RHO, LR, MOMENTUM = 0.1, 0.05, 0.9


def test_reference_forward_matches_the_model():
    model = make_model()
    x = make_batch(0, 16)["x"]
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    eval_logits = nnx.view(model, use_running_average=True)(x)
    np.testing.assert_allclose(eval_logits, ref_logits(params, x, stats)[0], rtol=1e-5, atol=1e-6)
    train_logits = model(x)
    np.testing.assert_allclose(train_logits, ref_logits(params, x)[0], rtol=1e-5, atol=1e-6)
    assert_trees_close(
        nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), ref_updated_stats(stats, params, x)
    )


def test_sam_step_keeps_clean_batch_stats_and_perturbs_in_train_mode():
    model = make_model()
    batch = make_batch(1, 16)
    x, y = batch["x"], batch["y"]
    tx = optax.chain(xs.sam(RHO), optax.sgd(LR))
    state = training.TrainState.create(model, tx, rng=0)
    params0, stats0 = as_dicts(state)
    clean_model = nnx.clone(model)
    clean_model(x)

    new_state, metrics = jax.jit(training.make_train_step(model, tx))(state, batch)
    params1, stats1 = as_dicts(new_state)

    # Running statistics: exactly one clean forward pass, none from the perturbed pass.
    assert_trees_close(stats1, nnx.to_pure_dict(nnx.state(clean_model, nnx.BatchStat)))
    assert_trees_close(stats1, ref_updated_stats(stats0, params0, x))
    # The SAM gradient uses batch statistics at w + eps.
    sam_grad = ref_sam_gradient(lambda p: ref_train_loss(p, x, y), params0, RHO)
    assert_trees_close(params1, jax.tree.map(lambda w, g: w - LR * g, params0, sam_grad))
    np.testing.assert_allclose(metrics["loss"], ref_train_loss(params0, x, y), rtol=1e-6)
    assert int(new_state.step) == 1
    # The test can tell: perturbing with running averages gives another update.
    eval_grad = ref_sam_gradient(
        lambda p: ref_cross_entropy(ref_logits(p, x, stats0)[0], y), params0, RHO
    )
    assert max_abs_difference(sam_grad, eval_grad) > 1e-3


def test_steps_with_momentum_match_reference():
    model = make_model(seed=3)
    tx = optax.chain(xs.sam(RHO), optax.sgd(LR, momentum=MOMENTUM))
    state = training.TrainState.create(model, tx, rng=0)
    step = jax.jit(training.make_train_step(model, tx))
    params, stats = as_dicts(state)
    trace = None
    for seed in range(3):
        batch = make_batch(seed, 16)
        state, _ = step(state, batch)
        grad = ref_sam_gradient(lambda p, b=batch: ref_train_loss(p, b["x"], b["y"]), params, RHO)
        stats = ref_updated_stats(stats, params, batch["x"])
        params, trace = ref_sgd_momentum(params, trace, grad, LR, MOMENTUM)
    assert_trees_close(as_dicts(state), (params, stats), rtol=1e-4, atol=1e-6)


def test_eval_step_uses_running_averages_and_changes_nothing():
    model = make_model()
    batch = make_batch(2, 16)
    state = training.TrainState.create(model, optax.sgd(LR), rng=0)
    metrics = jax.jit(training.make_eval_step(model))(state, batch)
    params, stats = as_dicts(state)
    logits = ref_logits(params, batch["x"], stats)[0]
    np.testing.assert_allclose(metrics["loss"], ref_cross_entropy(logits, batch["y"]), rtol=1e-6)
    expected_accuracy = np.mean(np.argmax(logits, axis=-1) == batch["y"])
    np.testing.assert_allclose(metrics["accuracy"], expected_accuracy)


class DropoutMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(6, 16, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.dropout(nnx.relu(self.l1(x))))


def _gradient_of_loss_fn() -> optax.GradientTransformationExtraArgs:
    """Replaces g0 by grad(loss_fn) at the same parameters."""

    def update_fn(updates, state, params=None, *, loss_fn=None, **extra_args):
        del updates, extra_args
        return jax.grad(loss_fn)(params), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def test_loss_fn_reuses_the_clean_pass_dropout_mask():
    model = DropoutMLP(nnx.Rngs(0, dropout=1))
    batch = make_batch(3, 32)
    plain_tx = optax.sgd(1.0)
    probe_tx = optax.chain(_gradient_of_loss_fn(), optax.sgd(1.0))
    plain = training.TrainState.create(model, plain_tx, rng=0)
    probed = training.TrainState.create(model, probe_tx, rng=0)
    plain, _ = jax.jit(training.make_train_step(model, plain_tx))(plain, batch)
    probed, _ = jax.jit(training.make_train_step(model, probe_tx))(probed, batch)
    # Same mask in the clean pass and in loss_fn: grad(loss_fn)(w) is exactly g0.
    assert_trees_close(nnx.to_pure_dict(probed.params), nnx.to_pure_dict(plain.params))
    # Only the clean pass advanced the dropout stream.
    assert int(probed.model_state["dropout"]["rngs"]["count"]) == 1


def test_train_step_rejects_bad_arguments():
    model = make_model()
    with pytest.raises(ValueError, match="microbatches"):
        training.make_train_step(model, optax.sgd(LR), microbatches=0)
    with pytest.raises(TypeError, match="model_or_graphdef"):
        training.make_train_step(jnp.zeros(3), optax.sgd(LR))
