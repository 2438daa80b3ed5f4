"""The ρ gate: `perturb` specialises schedule-gated steps without changing a single result.

References are the NumPy re-derivations in `_reference`; the second-gradient counts are
run-time callbacks, which fire only in the branch a step actually takes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import W0, ascent, grad_np, loss_jax, to_tree, to_vec, xsam_step
from flax import nnx

import xsam_jax as xs
from xsam_jax import experiment, models, training

RHO, LR, MU = 0.1, 0.05, 0.9


def counted(evaluations):
    def loss_fn(p):
        jax.debug.callback(lambda: evaluations.append(1))
        return loss_jax(p)

    return loss_fn


def make_step(tx, loss_fn=loss_jax):
    @functools.partial(jax.jit, static_argnames="perturb")
    def step(params, state, perturb=None):
        grads = jax.grad(loss_jax)(params)
        updates, state = tx.update(grads, state, params, loss_fn=loss_fn, perturb=perturb)
        return optax.apply_updates(params, updates), state, updates

    return step


def train(tx, steps, plan=None):
    """Runs `steps` updates; returns the final params, the updates and evaluations per step."""
    evaluations = []
    step = make_step(tx, counted(evaluations))
    params = to_tree(W0)
    state = tx.init(params)
    all_updates, per_step = [], []
    for t in range(steps):
        before = len(evaluations)
        params, state, updates = step(params, state, None if plan is None else bool(plan[t]))
        jax.effects_barrier()
        per_step.append(len(evaluations) - before)
        all_updates.append(to_vec(updates))
    return params, all_updates, per_step


def test_perturbed_steps_evaluates_the_schedule_on_the_host():
    np.testing.assert_array_equal(
        xs.perturbed_steps(xs.late_phase(0.05, 3), 6), [False, False, False, True, True, True]
    )
    np.testing.assert_array_equal(xs.perturbed_steps(0.05, 3), [True, True, True])
    np.testing.assert_array_equal(xs.perturbed_steps(0.0, 2), [False, False])
    every_third = xs.perturbed_steps(lambda c: jnp.where(c % 3 == 0, 0.1, 0.0), 7)
    np.testing.assert_array_equal(every_third, [True, False, False, True, False, False, True])
    assert xs.perturbed_steps(0.05, 0).shape == (0,)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="num_steps must be an integer >= 0"):
            xs.perturbed_steps(0.05, bad)


def test_late_phase_with_a_plan_follows_the_reference_trajectory():
    """SGD for two steps, then SAM: the NumPy trajectory, with and without the plan."""
    start, steps = 2, 5
    tx = optax.chain(xs.sam(xs.late_phase(RHO, start)), optax.sgd(LR, momentum=MU))
    w, buf = W0.copy(), np.zeros_like(W0)
    for t in range(steps):
        g = grad_np(w) if t < start else ascent(w, RHO)[0]
        buf = MU * buf + g
        w = w - LR * buf
    planned, _, per_step = train(tx, steps, xs.perturbed_steps(xs.late_phase(RHO, start), steps))
    gated, _, gated_per_step = train(tx, steps)
    np.testing.assert_allclose(to_vec(planned), w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_vec(planned), to_vec(gated), rtol=1e-6, atol=1e-7)
    # The second gradient is taken exactly on the steps whose radius is positive.
    assert per_step == gated_per_step == [0, 0, 1, 1, 1]


@pytest.mark.parametrize(
    "method",
    [
        lambda rho: xs.sam(rho),
        lambda rho: xs.sam(rho, ascent_steps=3, norm="inf"),
        lambda rho: xs.gsam(rho, 0.3),
        lambda rho: xs.wsam(rho, 0.7),
        lambda rho: xs.xsam(rho, 2 * RHO if callable(rho) else 2 * rho, search_every=2),
        lambda rho: xs.fsam(rho, 0.8, 0.6),
        lambda rho: xs.vasso(rho, 0.4),
        lambda rho: xs.fisher_sam(rho, 2.0),
        lambda rho: xs.sam(rho, perturbation_mask={"kernel": True, "bias": False}),
    ],
    ids=["sam", "sam-k3-inf", "gsam", "wsam", "xsam", "fsam", "vasso", "fisher_sam", "sam-on"],
)
def test_planned_schedule_step_equals_the_float_step(method):
    """A schedule that is RHO on every step, with perturb=True, against the Python-float RHO."""
    schedule = lambda count: jnp.where(count >= 0, RHO, 0.0)  # step-dependent: not folded
    steps = 4
    _, planned, _ = train(optax.chain(method(schedule), optax.sgd(LR)), steps, [True] * steps)
    _, floated, _ = train(optax.chain(method(RHO), optax.sgd(LR)), steps)
    for a, b in zip(planned, floated, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_planned_xsam_searches_like_the_reference():
    """Switch at step 1, search every 2 steps: count 0 had rho = 0, so its period searches at
    count 1, the first step that climbs; count 2 starts the next period."""
    tx = xs.xsam(xs.late_phase(0.15, 1), 0.3, search_every=2)
    plan = xs.perturbed_steps(xs.late_phase(0.15, 1), 3)
    params = to_tree(W0)
    state = tx.init(params)
    step = jax.jit(
        lambda p, s, perturb: tx.update(
            jax.grad(loss_jax)(p), s, p, loss_fn=loss_jax, perturb=perturb
        ),
        static_argnames="perturb",
    )
    grid = xs.alpha_grid(2.0, 0.1)
    alpha = 1.0
    for t in range(3):
        updates, state = step(params, state, bool(plan[t]))
        if t == 0:
            expected = grad_np(W0)
        else:
            expected, alpha, _, _ = xsam_step(W0, 0.15, 0.3, alpha, grid)
        np.testing.assert_allclose(to_vec(updates), expected, rtol=2e-5, atol=1e-6)
        assert float(state.alpha) == pytest.approx(alpha, abs=1e-6)


def test_perturb_true_traces_no_conditional_and_stays_exact_at_zero_radius():
    tx = xs.sam(xs.late_phase(RHO, 1))
    params = to_tree(W0)
    grads = jax.grad(loss_jax)(params)

    def update(state, perturb):
        return tx.update(grads, state, params, loss_fn=loss_jax, perturb=perturb)

    state = tx.init(params)  # count 0: rho is 0
    assert "cond" not in str(jax.make_jaxpr(lambda s: update(s, True))(state))
    assert "cond" in str(jax.make_jaxpr(lambda s: update(s, None))(state))
    updates, _ = jax.jit(lambda s: update(s, True))(state)
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
        np.testing.assert_array_equal(a, b)


def test_perturb_true_at_zero_radius_leaves_the_xsam_state_alone():
    """The select covers the state too: no search and no cos psi on a step whose rho is 0."""
    tx = xs.xsam(xs.late_phase(0.15, 1), 0.3, alpha_init=0.5, search_every=1)
    params = to_tree(W0)
    updates, state = jax.jit(
        lambda s: tx.update(jax.grad(loss_jax)(params), s, params, loss_fn=loss_jax, perturb=True)
    )(tx.init(params))
    assert float(state.alpha) == 0.5 and np.isnan(float(state.cos_psi))
    assert np.all(np.isnan(np.asarray(state.alpha_losses)))
    np.testing.assert_allclose(to_vec(updates), grad_np(W0), rtol=1e-6)


def test_perturb_false_takes_no_second_gradient_and_a_wrong_plan_is_loud():
    tx = xs.sam(xs.late_phase(RHO, 2))
    _, updates, per_step = train(tx, 3, plan=[False, False, False])
    assert per_step == [0, 0, 0]
    np.testing.assert_allclose(updates[0], grad_np(W0), rtol=1e-6)
    assert np.all(np.isnan(updates[2]))  # rho = RHO at count 2, but the plan said 0


def test_bad_perturb_values_are_rejected():
    params = to_tree(W0)
    grads = jax.grad(loss_jax)(params)
    with pytest.raises(ValueError, match="perturb=False says rho is 0 on this step, but rho is"):
        tx = xs.sam(0.05)
        tx.update(grads, tx.init(params), params, loss_fn=loss_jax, perturb=False)
    tx = xs.xsam(xs.late_phase(0.1, 0), 0.2)
    with pytest.raises(TypeError, match="perturb must be None or a Python bool"):
        jax.jit(
            lambda flag: tx.update(grads, tx.init(params), params, loss_fn=loss_jax, perturb=flag)
        )(jnp.asarray(True))


def test_train_step_passes_perturb_to_the_transformation():
    """make_train_step and its m-sharpness variant: planned steps equal gated ones."""
    model = models.create("mlp", 3, in_features=5, hidden=(8,), rngs=nnx.Rngs(0))
    key = jax.random.key(0)
    batch = {"x": jax.random.normal(key, (16, 5)), "y": jax.random.randint(key, (16,), 0, 3)}
    schedule = xs.late_phase(0.05, 1)
    plan = xs.perturbed_steps(schedule, 3)
    for make, axis in (
        (training.make_train_step, None),
        (functools.partial(training.make_m_sharpness_train_step, group_size=4), "groups"),
    ):
        tx = optax.chain(
            xs.sam(schedule, axis_name=axis, local_perturbation=axis is not None), optax.sgd(0.1)
        )
        pure_step = make(model, tx)
        step = jax.jit(pure_step, static_argnames="perturb")
        planned = gated = training.TrainState.create(model, tx, rng=0)
        for perturb, has_cond in ((True, False), (None, True)):
            jaxpr = jax.make_jaxpr(functools.partial(pure_step, perturb=perturb))(planned, batch)
            assert ("cond" in str(jaxpr)) == has_cond
        for t in range(3):
            planned, _ = step(planned, batch, perturb=bool(plan[t]))
            gated, _ = step(gated, batch)
        for a, b in zip(
            jax.tree.leaves(planned.params), jax.tree.leaves(gated.params), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_xsam_train_late_sam_switches_at_the_documented_step():
    """--late-phase-start 0.25 of 4 epochs: epoch 1 is SGD's exactly, epoch 2 is not."""
    common = dict(dataset="digits", epochs=4, seed=3)
    late_config = experiment.TrainConfig(optimizer="late-sam", late_phase_start=0.25, **common)
    late = experiment.run(late_config, progress=False)
    sgd = experiment.run(experiment.TrainConfig(optimizer="sgd", **common), progress=False)
    keys = ("train_loss", "train_accuracy", "test_loss")
    assert [late["history"][0][k] for k in keys] == [sgd["history"][0][k] for k in keys]
    assert late["history"][1]["train_loss"] != sgd["history"][1]["train_loss"]
    built = experiment.train._Run(late_config)
    steps = built.steps_per_epoch
    np.testing.assert_array_equal(built.perturb_plan, np.arange(4 * steps) >= steps)
