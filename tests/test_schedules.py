"""Cheaper SAM schedules (`periodic`, `randomized`) and XSAM's search on the steps that climb.

References: closed forms for the steps that climb and search, a binomial interval for the
random fraction, and the float64 NumPy re-derivations of `_reference` for the updates. The
gradient and probe counts are run-time callbacks, which fire only in the branch a step takes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import (
    W0,
    W_STEEP,
    ascent,
    grad_np,
    loss_jax,
    loss_np,
    steep_grad_np,
    steep_loss_jax,
    steep_loss_np,
    to_tree,
    to_vec,
    xsam_step,
)

import xsam_jax as xs

RHO, LR = 0.1, 0.05
GRID = np.arange(21) * 0.1
PROBES = len(GRID)  # loss evaluations of one search (one at a time on CPU)


# ------------------------------------------------------------------ which steps climb


def test_periodic_every_one_is_rho_itself():
    assert xs.periodic(0.05, 1) == 0.05
    schedule = optax.linear_schedule(0.1, 0.0, 10)
    assert xs.periodic(schedule, 1) is schedule
    assert xs.randomized(schedule, 1.0, seed=4) is schedule


def test_periodic_climbs_on_every_nth_step_with_the_inner_radius():
    counts = np.arange(20)
    np.testing.assert_array_equal(xs.perturbed_steps(xs.periodic(RHO, 3), 20), counts % 3 == 0)
    inner = lambda count: 0.1 + 0.01 * count  # noqa: E731
    values = jax.vmap(xs.periodic(inner, 4))(jnp.arange(20))
    np.testing.assert_allclose(values, np.where(counts % 4 == 0, 0.1 + 0.01 * counts, 0.0))
    late = xs.perturbed_steps(xs.periodic(xs.late_phase(RHO, 5), 2), 20)
    np.testing.assert_array_equal(late, (counts >= 5) & (counts % 2 == 0))


@pytest.mark.parametrize("probability", [0.2, 0.5])
def test_randomized_climbs_on_a_binomial_fraction_reproducibly(probability):
    n = 20_000
    plan = xs.perturbed_steps(xs.randomized(RHO, probability, seed=11), n)
    # Four standard deviations of the binomial fraction.
    assert abs(plan.mean() - probability) <= 4 * np.sqrt(probability * (1 - probability) / n)
    again = xs.perturbed_steps(xs.randomized(RHO, probability, seed=11), n)
    np.testing.assert_array_equal(plan, again)
    other = xs.perturbed_steps(xs.randomized(RHO, probability, seed=12), n)
    assert 0.1 * n < np.sum(plan != other) < 0.9 * n  # different seeds: independent draws
    # A pure function of the count: evaluated alone, out of order, it decides the same.
    schedule = jax.jit(xs.randomized(RHO, probability, seed=11))
    for t in (4321, 7, 0, 19_999):
        assert (float(schedule(jnp.int32(t))) > 0) == plan[t]
    assert not xs.perturbed_steps(xs.randomized(RHO, 0.0, seed=11), 1000).any()


# ------------------------------------------------------------------ composition with methods


def counted(loss_fn, evaluations):
    def loss(params):
        jax.debug.callback(lambda: evaluations.append(1))
        return loss_fn(params)

    return loss


def run(tx, steps, *, start=W0, loss_fn=loss_jax, plan=None):
    """Plain descent w -= LR·d with the method's d, in float64.

    Returns the directions, the loss evaluations per step and the final state.
    """
    evaluations = []
    counted_loss = counted(loss_fn, evaluations)

    @functools.partial(jax.jit, static_argnames="perturb")
    def step(params, state, perturb=None):
        grads = jax.grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, loss_fn=counted_loss, perturb=perturb)
        return jax.tree.map(lambda p, u: p - LR * u, params, updates), state, updates

    directions, per_step = [], []
    params = to_tree(start, jnp.float64)
    state = tx.init(params)
    for t in range(steps):
        before = len(evaluations)
        params, state, updates = step(params, state, None if plan is None else bool(plan[t]))
        jax.effects_barrier()
        per_step.append(len(evaluations) - before)
        directions.append(to_vec(updates))
    return directions, per_step, state


def gsam_np(w, rho, alpha):
    """GSAM (Zhuang et al. 2022): g_p minus α times g0's component orthogonal to g_p."""
    g0, g_p = grad_np(w), ascent(w, rho)[0]
    return g_p - alpha * (g0 - (g0 @ g_p) / (g_p @ g_p) * g_p)


def xsam_np(climbs, every, rho, rho_max, *, start, loss=loss_np, grad=grad_np):
    """XSAM along plain descent: the clean gradient where ρ = 0; searches on the first
    climbing step of each period of `every` steps. Returns (directions, α*, search steps)."""
    w, alpha, last_period = start.copy(), 1.0, -1
    directions, alphas, searches = [], [], []
    for t, climb in enumerate(climbs):
        if climb:
            search = t // every > last_period
            if search:
                last_period = t // every
                searches.append(t)
            d, alpha, _, _ = xsam_step(
                w, rho, rho_max, alpha, GRID if search else None, loss=loss, grad=grad, eps=1e-12
            )
        else:
            d = grad(w)
        directions.append(d)
        alphas.append(alpha)
        w = w - LR * d
    return directions, alphas, searches


METHODS = {
    "sam": (xs.sam, lambda w: ascent(w, RHO)[0]),
    "gsam": (lambda rho: xs.gsam(rho, 0.3), lambda w: gsam_np(w, RHO, 0.3)),
    "xsam": (lambda rho: xs.xsam(rho, 2 * RHO, search_every=4), None),
}
SCHEDULES = {
    "periodic-3": lambda: xs.periodic(RHO, 3),
    "randomized-0.5": lambda: xs.randomized(RHO, 0.5, seed=3),
}
STEPS = 12


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("method_name", list(METHODS))
def test_schedules_compose_with_methods(method_name, schedule_name):
    """Gated (lax.cond) and planned (perturb=) steps: the reference where ρ > 0, the clean
    gradient and not a single extra loss evaluation where ρ = 0."""
    make, reference = METHODS[method_name]
    schedule = SCHEDULES[schedule_name]()
    plan = xs.perturbed_steps(schedule, STEPS)
    assert 0 < plan.sum() < STEPS
    with jax.enable_x64(True):
        gated, gated_counts, _ = run(make(schedule), STEPS)
        planned, planned_counts, _ = run(make(schedule), STEPS, plan=plan)
    # The decisions taken inside the compiled step are the host plan's.
    np.testing.assert_array_equal(np.asarray(gated_counts) > 0, plan)
    assert gated_counts == planned_counts
    if reference is None:
        expected, _, searches = xsam_np(plan, 4, RHO, 2 * RHO, start=W0)
    else:
        w, expected, searches = W0.copy(), [], []
        for climb in plan:
            expected.append(reference(w) if climb else grad_np(w))
            w = w - LR * expected[-1]
    probes = [PROBES if t in searches else 0 for t in range(STEPS)]
    assert gated_counts == [int(c) + p for c, p in zip(plan, probes, strict=True)]
    for directions in (gated, planned):
        for got, want in zip(directions, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ XSAM: searches not lost

SEARCH_CASES = {
    # ρ on steps 0, 3, 6, 9, 12; periods of 4 start at 0, 4, 8, 12. Period 1's search moves
    # from step 4 (ρ = 0) to step 6, period 2's from 8 to 9; step 3 is in period 0 (searched).
    "periodic": (lambda: xs.periodic(0.5, 3), [0, 6, 9, 12]),
    # SGD until step 3: period 0's search happens at the switch, then the paper's steps.
    "late-phase": (lambda: xs.late_phase(0.5, 3), [3, 4, 8, 12]),
    # Every step climbs: the paper's rule, count % search_every == 0.
    "float": (lambda: 0.5, [0, 4, 8, 12]),
}


@pytest.mark.parametrize("name", list(SEARCH_CASES))
def test_xsam_searches_on_the_first_climbing_step_of_each_period(name):
    make, expected_searches = SEARCH_CASES[name]
    steps, every, rho_max = 13, 4, 0.3
    climbs = xs.perturbed_steps(make(), steps)
    with jax.enable_x64(True):
        tx = xs.xsam(make(), rho_max, search_every=every)
        directions, per_step, state = run(tx, steps, start=W_STEEP, loss_fn=steep_loss_jax)
    expected, alphas, searches = xsam_np(
        climbs, every, 0.5, rho_max, start=W_STEEP, loss=steep_loss_np, grad=steep_grad_np
    )
    assert searches == expected_searches
    # α* moves on a search the paper's rule (count % every == 0) skips: losing it changes
    # the updates.
    moved = [t for t in searches if alphas[t] != (alphas[t - 1] if t else 1.0)]
    assert name == "float" or any(t % every for t in moved)
    assert per_step == [
        (1 + PROBES if t in searches else 1) if climb else 0 for t, climb in enumerate(climbs)
    ]
    for got, want in zip(directions, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert float(state.alpha) == pytest.approx(alphas[-1], abs=1e-12)
    assert int(state.searched_period) == (steps - 1) // every
