"""XSAM's search plan: `search=` specialises the step without changing a single result.

The plan's rule is re-derived here with a plain loop; the probe counts are run-time callbacks,
which fire only for the losses a step actually evaluates (one for the ascent, one per α
candidate on a search step).
"""

import functools

import jax
import numpy as np
import optax
import pytest
from _reference import W0, loss_jax, to_tree, to_vec
from flax import nnx

import xsam_jax as xs
from xsam_jax import models, training

GRID = len(xs.alpha_grid(2.0, 0.1))
LR = 0.05


def searches_by_loop(climbs, every):
    """The documented rule, step by step: the first climbing step of each period searches."""
    out, last_period = [], -1
    for t, climb in enumerate(climbs):
        due = every is not None and climb and t // every > last_period
        if due:
            last_period = t // every
        out.append(bool(due))
    return out


def test_search_steps_follow_the_rule():
    rng = np.random.default_rng(0)
    for every in (1, 2, 3, 7, None):
        for density in (0.1, 0.5, 1.0):
            climbs = rng.random(40) < density
            np.testing.assert_array_equal(
                xs.search_steps(climbs, every), searches_by_loop(climbs, every)
            )
    # Late phase from step 5, a period of 4: periods 1 and 2 search at steps 5 and 8.
    climbs = xs.perturbed_steps(xs.late_phase(0.1, 5), 10)
    assert np.flatnonzero(xs.search_steps(climbs, 4)).tolist() == [5, 8]
    assert xs.search_steps(np.zeros(0, bool), 3).shape == (0,)
    with pytest.raises(ValueError, match="search_every must be None or an integer >= 1, got 0"):
        xs.search_steps(climbs, 0)
    with pytest.raises(ValueError, match="perturbed must be one-dimensional"):
        xs.search_steps(np.ones((2, 2), bool), 1)


def counted(evaluations):
    def loss_fn(p):
        jax.debug.callback(lambda: evaluations.append(1))
        return loss_jax(p)

    return loss_fn


def train(tx, steps, climbs=None, searches=None):
    """Runs `steps` updates of `tx` then SGD; returns updates, XSAM's states and loss
    evaluations per step."""
    tx = optax.chain(tx, optax.sgd(LR))
    evaluations = []
    loss_fn = counted(evaluations)

    @functools.partial(jax.jit, static_argnames=("perturb", "search"))
    def step(params, state, perturb, search):
        grads = jax.grad(loss_jax)(params)
        kwargs = dict(loss_fn=loss_fn, perturb=perturb, search=search)
        updates, state = tx.update(grads, state, params, **kwargs)
        return optax.apply_updates(params, updates), state, updates

    params = to_tree(W0)
    state = tx.init(params)
    updates_per_step, states, per_step = [], [], []
    for t in range(steps):
        before = len(evaluations)
        perturb = None if climbs is None else bool(climbs[t])
        search = None if searches is None else bool(searches[t])
        params, state, updates = step(params, state, perturb, search)
        jax.effects_barrier()
        per_step.append(len(evaluations) - before)
        updates_per_step.append(to_vec(updates))
        states.append(state[0])  # XSAM's
    return updates_per_step, states, per_step


@pytest.mark.parametrize(
    "rho,every,options",
    [
        (0.15, 3, {}),
        (xs.late_phase(0.15, 2), 3, {}),
        (xs.periodic(0.15, 2), 3, {}),
        (xs.late_phase(0.15, 1), 2, {"reuse": "rotation"}),
        (0.15, 2, {"max_rotation": 0.3}),
    ],
    ids=["float", "late-phase", "periodic", "rotation", "cap"],
)
def test_planned_search_equals_the_conditional(rho, every, options):
    """Same updates and states step for step, the probes evaluated on the same steps."""
    steps = 8
    tx = xs.xsam(rho, 0.3, search_every=every, **options)
    climbs = xs.perturbed_steps(rho, steps)
    searches = xs.search_steps(climbs, every)
    planned, planned_states, planned_count = train(tx, steps, climbs, searches)
    gated, gated_states, gated_count = train(tx, steps)
    expected = [int(c) + GRID * int(s) for c, s in zip(climbs, searches, strict=True)]
    assert planned_count == gated_count == expected
    for a, b in zip(planned, gated, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(planned_states, gated_states, strict=True):
        for field in ("alpha", "alpha_losses", "searched_period"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-6)
        # An angle from arccos of a cosine near 1: float32 rounding of the cosine alone moves
        # it by ~1e-6 rad.
        np.testing.assert_allclose(a.search_rotation, b.search_rotation, atol=1e-5)


def test_search_true_everywhere_still_searches_only_when_due():
    """search=True on every step pays the probes but keeps the documented searches."""
    steps, every = 6, 3
    tx = xs.xsam(0.15, 0.3, search_every=every)
    eager, eager_states, eager_count = train(tx, steps, [True] * steps, [True] * steps)
    gated, gated_states, _ = train(tx, steps)
    assert eager_count == [1 + GRID] * steps
    for a, b in zip(eager, gated, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert [int(s.searched_period) for s in eager_states] == [0, 0, 0, 1, 1, 1]
    assert [float(s.alpha) for s in eager_states] == [float(s.alpha) for s in gated_states]


def test_search_false_traces_no_conditional_and_a_wrong_plan_is_loud():
    tx = xs.xsam(0.15, 0.3, search_every=2)
    params = to_tree(W0)
    grads = jax.grad(loss_jax)(params)

    def update(state, search):
        return tx.update(grads, state, params, loss_fn=loss_jax, search=search)

    state = tx.init(params)
    assert "cond" in str(jax.make_jaxpr(lambda s: update(s, None))(state))
    for search in (True, False):
        assert "cond" not in str(jax.make_jaxpr(lambda s, f=search: update(s, f))(state))
    # Count 0 is due to search: the plan that says otherwise poisons α* and the updates.
    updates, state = jax.jit(lambda s: update(s, False))(state)
    assert np.isnan(float(state.alpha)) and np.all(np.isnan(to_vec(updates)))
    with pytest.raises(TypeError, match="search must be None or a Python bool"):
        jax.jit(update)(tx.init(params), np.bool_(True))


def test_train_steps_pass_search_to_the_transformation():
    """make_train_step and its m-sharpness variant: planned searches equal gated ones."""
    model = models.create("cnn1d", 3, rngs=nnx.Rngs(0))
    key = jax.random.key(0)
    batch = {"x": jax.random.normal(key, (8, 40, 1)), "y": jax.random.randint(key, (8,), 0, 3)}
    every, steps = 2, 4
    searches = xs.search_steps(np.ones(steps, bool), every)
    for make, axis in (
        (training.make_train_step, None),
        (functools.partial(training.make_m_sharpness_train_step, group_size=4), "groups"),
    ):
        tx = optax.chain(
            xs.xsam(0.1, 0.2, search_every=every, axis_name=axis, local_perturbation=bool(axis)),
            optax.sgd(0.1),
        )
        pure_step = make(model, tx)
        jaxpr = jax.make_jaxpr(functools.partial(pure_step, search=False))
        assert "cond" not in str(jaxpr(training.TrainState.create(model, tx, rng=0), batch))
        step = jax.jit(pure_step, static_argnames=("perturb", "search"))
        planned = gated = training.TrainState.create(model, tx, rng=0)
        for t in range(steps):
            planned, _ = step(planned, batch, search=bool(searches[t]))
            gated, _ = step(gated, batch)
        for a, b in zip(
            jax.tree.leaves(planned.params), jax.tree.leaves(gated.params), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
