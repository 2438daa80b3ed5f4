"""The public API as a user's typed code calls it, for mypy (never run; see pyproject's
[tool.mypy]): this file is checked with the strict flags, so a public function that loses its
annotations (untyped call, Any result), a name that is no longer exported (no implicit
re-export) or a changed signature fails the type check.
"""

from typing import assert_type

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import xsam_jax as xs
from xsam_jax import data, landscape, models, sharpness, training

Params = dict[str, jax.Array]
Tx = optax.GradientTransformationExtraArgs


def loss(params: Params, x: jax.Array) -> jax.Array:
    return jnp.mean(jnp.tanh(x @ params["w"]) ** 2)


def every_method(steps_per_epoch: int) -> None:
    # assert_type, not a list: a factory whose result became Any fails here.
    schedule = xs.late_phase(0.05, start_step=8)
    assert_type(xs.sam(0.05), Tx)
    assert_type(xs.sam(schedule, ascent_steps=2, norm="inf"), Tx)
    assert_type(xs.asam(0.5, eta=0.01), Tx)
    assert_type(xs.xsam(0.15, 0.3, search_every=steps_per_epoch, reuse="rotation"), Tx)
    assert_type(xs.gsam(0.05, alpha=0.4), Tx)
    assert_type(xs.wsam(0.05, gamma=0.9), Tx)
    assert_type(xs.wsam_decoupled(optax.sgd(0.1, momentum=0.9), 0.1, rho=0.05), Tx)
    assert_type(xs.fsam(0.05, sigma=1.0, lmbda=0.9), Tx)
    assert_type(xs.vasso(xs.periodic(0.05, every=2), theta=0.9), Tx)
    assert_type(xs.fisher_sam(0.1, eta=1.0, perturbation_mask={"w": True}), Tx)
    assert_type(xs.looksam(xs.randomized(0.05, probability=0.5, seed=0), every=5, alpha=0.7), Tx)


def one_step(params: Params, x: jax.Array) -> tuple[Params, optax.OptState]:
    tx = optax.chain(xs.xsam(rho=0.15, rho_max=0.3), optax.sgd(0.05, momentum=0.9))
    state = tx.init(params)
    grads = jax.grad(loss)(params, x)
    updates, state = tx.update(
        grads, state, params, loss_fn=lambda p: loss(p, x), perturb=True, search=True
    )
    new_params = optax.apply_updates(params, updates)
    assert isinstance(state, tuple) and isinstance(new_params, dict)  # optax's OptState: a union
    xsam_state = state[0]
    assert isinstance(xsam_state, xs.XSAMState)
    assert_type(xsam_state.alpha, jax.Array)
    return {"w": jnp.asarray(new_params["w"])}, state


def schedules() -> None:
    plan = xs.perturbed_steps(xs.late_phase(0.05, start_step=8), 10)
    assert_type(plan, np.ndarray)
    assert_type(xs.search_steps(plan, 5), np.ndarray)
    assert_type(xs.alpha_grid(2.0, 0.1), np.ndarray)
    assert_type(xs.sam(), Tx)


def sharpness_and_landscape(params: Params, x: jax.Array) -> float:
    def loss_fn(p: Params) -> jax.Array:
        return loss(p, x)

    key = jax.random.key(0)
    top = sharpness.hessian_eigenvalues(loss_fn, params, key=key, k=2)
    trace = sharpness.hessian_trace(loss_fn, params, key=key, num_samples=8)
    assert_type(trace, sharpness.TraceEstimate)
    ball = sharpness.max_loss_in_ball(loss_fn, params, rho=0.05)
    assert_type(ball, sharpness.BallSharpness)
    curve = landscape.alpha_curve(loss_fn, params, rho=0.15, rho_max=0.3)
    assert_type(curve, landscape.AlphaCurve)
    prop = landscape.proposition1(loss_fn, params, np.linspace(0.0, 0.5, 6))
    assert_type(prop, landscape.Proposition1Result)
    density = sharpness.spectral_density(loss_fn, params, key=key, num_probes=2, num_iters=8)
    assert_type(density, sharpness.SpectralDensity)
    assert_type(sharpness.smoothed_density(density, np.linspace(-1, 1, 9), width=0.1), np.ndarray)
    return float(trace.mean) + float(ball.sharpness) + float(curve.alpha_star) + float(top[0])


def train_a_model() -> float:
    ds = data.load("digits")
    assert_type(ds, data.Dataset)
    model = models.create("mlp", ds.num_classes, in_features=64, rngs=nnx.Rngs(0))
    mask = training.normalization_mask(model)
    tx = optax.chain(xs.sam(0.05, perturbation_mask=mask), optax.sgd(0.05, momentum=0.9))
    state = training.TrainState.create(model, tx, rng=0)
    assert_type(state, training.TrainState)
    train_step = jax.jit(training.make_train_step(model, tx))
    for batch in ds.train_batches(128, epoch=0):
        state, metrics = train_step(state, batch)
    return float(metrics["loss"])
