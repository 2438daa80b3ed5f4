"""XSAM against the NumPy re-derivation of the authors' algorithm (tests/_reference.py)."""

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
    slerp,
    steep_grad_np,
    steep_loss_jax,
    steep_loss_np,
    to_tree,
    to_vec,
    xsam_step,
)

import xsam_jax as xs

GRID = np.arange(21) * 0.1
LR = 0.05


def make_step(tx, loss_fn=loss_jax):
    @jax.jit
    def step(params, state):
        grads = jax.grad(loss_fn)(params)
        return tx.update(grads, state, params, loss_fn=loss_fn)

    return step


@pytest.mark.parametrize("k", [1, 2, 5])
def test_search_step_matches_reference(k):
    rho, rho_max = 0.15, 0.6
    tx = xs.xsam(rho, rho_max, ascent_steps=k)
    params = to_tree(W0)
    updates, state = make_step(tx)(params, tx.init(params))
    expected, alpha, losses, cos_psi = xsam_step(W0, rho, rho_max, 1.0, GRID, k=k)
    np.testing.assert_allclose(np.asarray(state.alpha_losses), losses, rtol=1e-5)
    assert float(state.alpha) == pytest.approx(alpha, abs=1e-6)
    assert float(state.cos_psi) == pytest.approx(cos_psi, abs=1e-5)
    np.testing.assert_allclose(to_vec(updates), expected, rtol=1e-4, atol=1e-6)
    assert np.isclose(
        np.linalg.norm(to_vec(updates)), np.linalg.norm(ascent(W0, rho, k)[0]), rtol=1e-5
    )  # the output has the length of g_k


def test_alpha_is_searched_periodically_and_reused_in_between():
    rho, rho_max, every, steps = 0.15, 0.6, 3, 7
    tx = optax.chain(xs.xsam(rho, rho_max, search_every=every), optax.sgd(LR))
    params = to_tree(W0)
    state = tx.init(params)
    step = make_step(tx)
    w, alpha = W0.copy(), 1.0
    for t in range(steps):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
        d, alpha, _, _ = xsam_step(w, rho, rho_max, alpha, GRID if t % every == 0 else None)
        w = w - LR * d
        assert float(state[0].alpha) == pytest.approx(alpha, abs=1e-6), t
    np.testing.assert_allclose(to_vec(params), w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2])
def test_fixed_alpha_one_is_sam(k):
    params = to_tree(W0)
    tx_x, tx_s = (
        xs.xsam(0.1, search_every=None, alpha_init=1.0, ascent_steps=k),
        xs.sam(0.1, ascent_steps=k),
    )
    u_x, _ = make_step(tx_x)(params, tx_x.init(params))
    u_s, _ = make_step(tx_s)(params, tx_s.init(params))
    np.testing.assert_allclose(to_vec(u_x), to_vec(u_s), rtol=1e-6, atol=0)


def test_fixed_alpha_zero_is_sgd_plus():
    """alpha = 0: the clean direction with the SAM gradient's length ("SGD+")."""
    rho = 0.1
    tx = xs.xsam(rho, search_every=None, alpha_init=0.0)
    params = to_tree(W0)
    updates, state = make_step(tx)(params, tx.init(params))
    g0 = grad_np(W0)
    g_k, _ = ascent(W0, rho)
    np.testing.assert_allclose(
        to_vec(updates), np.linalg.norm(g_k) * g0 / np.linalg.norm(g0), rtol=1e-5
    )
    assert np.all(np.isnan(np.asarray(state.alpha_losses)))  # no search ran


@pytest.mark.parametrize("chunk", [1, 4, 21])
def test_chunked_search_equals_reference(chunk):
    tx = xs.xsam(0.15, 0.6, search_chunk=chunk)
    params = to_tree(W0)
    _, state = make_step(tx)(params, tx.init(params))
    _, alpha, losses, _ = xsam_step(W0, 0.15, 0.6, 1.0, GRID)
    np.testing.assert_allclose(np.asarray(state.alpha_losses), losses, rtol=1e-5)
    assert float(state.alpha) == pytest.approx(alpha, abs=1e-6)


def test_parallel_directions_give_finite_output():
    """A linear loss has g_k = g0, so v0 = v1 and sin psi = 0."""
    c = np.linspace(-1.0, 1.0, 7)

    def linear(p):
        return jnp.dot(
            jnp.concatenate([p["kernel"].ravel(), p["bias"]]), jnp.asarray(c, jnp.float32)
        )

    for alpha in [0.0, 0.5, 1.0, 2.0]:
        tx = xs.xsam(0.1, search_every=None, alpha_init=alpha)
        params = to_tree(W0)
        updates, state = make_step(tx, linear)(params, tx.init(params))
        np.testing.assert_allclose(to_vec(updates), c, rtol=1e-5, atol=1e-6)
        assert float(state.cos_psi) == pytest.approx(1.0, abs=1e-6)
    tx = xs.xsam(0.1)  # every probe is the same point up to rounding: any alpha is right
    updates, state = make_step(tx, linear)(params, tx.init(params))
    np.testing.assert_allclose(to_vec(updates), c, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(state.alpha_losses)))


def test_zero_gradient_gives_zero_update():
    def bowl(p):
        return jnp.sum(p["kernel"] ** 2) + jnp.sum(p["bias"] ** 2)

    tx = xs.xsam(0.1, ascent_steps=2)
    params = to_tree(np.zeros(7))
    updates, state = make_step(tx, bowl)(params, tx.init(params))
    np.testing.assert_array_equal(to_vec(updates), np.zeros(7))
    assert np.isfinite(float(state.alpha))


def test_non_finite_probe_losses_are_skipped():
    rho, rho_max = 0.15, 0.6
    _, best, losses, _ = xsam_step(W0, rho, rho_max, 1.0, GRID)
    # Poison every probe whose loss reaches the best one's: the winner must be the runner-up.
    threshold = np.sort(losses)[-2] + 1e-4 * (losses.max() - np.sort(losses)[-2])

    def poisoned(p):
        value = loss_jax(p)
        return jnp.where(value > threshold, jnp.nan, value)

    tx = xs.xsam(rho, rho_max)
    params = to_tree(W0)
    _, state = make_step(tx, poisoned)(params, tx.init(params))
    runner_up = GRID[np.flatnonzero(losses == np.sort(losses)[-2])[0]]
    assert float(state.alpha) == pytest.approx(runner_up, abs=1e-6) and runner_up != best

    def all_nan(p):  # finite at the ascent point (distance 0.15), NaN at distance 0.6
        w = jnp.concatenate([p["kernel"].ravel(), p["bias"]])
        far = jnp.linalg.norm(w - jnp.asarray(W0, jnp.float32)) > 0.4
        return jnp.where(far, jnp.nan, loss_jax(p))

    tx = xs.xsam(rho, rho_max, alpha_init=0.7)
    updates, state = make_step(tx, all_nan)(params, tx.init(params))
    assert float(state.alpha) == pytest.approx(0.7)
    assert np.all(np.isfinite(to_vec(updates)))


def test_late_phase_takes_no_extra_gradient_before_the_switch():
    """Runtime count of loss evaluations (a callback runs only in the branch taken)."""
    evaluations = []

    def counted(p):
        jax.debug.callback(lambda: evaluations.append(1))
        return loss_jax(p)

    start = 3
    tx = xs.xsam(xs.late_phase(0.15, start), 0.6, search_every=100)
    params, state = to_tree(W0), None
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        return tx.update(jax.grad(loss_jax)(params), state, params, loss_fn=counted)

    per_step = []
    for _ in range(5):
        before = len(evaluations)
        updates, state = step(params, state)
        jax.effects_barrier()
        per_step.append(len(evaluations) - before)
    # No evaluation before the switch; after it, one gradient (g_k) per step. The search due
    # at count 0, whose rho was 0, runs at the switch (21 probes), not a period later.
    assert per_step == [0, 0, 0, 1 + len(GRID), 1]
    # Both steps climb from W0 (no update is applied): the last one uses the α* searched at
    # the switch.
    searched = xsam_step(W0, 0.15, 0.6, 1.0, GRID)[0]
    np.testing.assert_allclose(to_vec(updates), searched, rtol=2e-5, atol=1e-6)


def test_adaptive_is_asam_ascent_with_parameter_space_slerp():
    rho, rho_max, eta = 0.5, 0.6, 0.01
    scale = np.abs(W0) + eta
    g_k, chord = ascent(W0, rho, scale=scale)
    v0, v1 = chord / np.linalg.norm(chord), g_k / np.linalg.norm(g_k)
    losses = np.array([loss_np(W0 + rho_max * slerp(v0, v1, a)) for a in GRID])
    alpha = GRID[np.argmax(losses)]
    tx = xs.xsam(rho, rho_max, adaptive=True, eta=eta)
    params = to_tree(W0)
    updates, state = make_step(tx)(params, tx.init(params))
    assert float(state.alpha) == pytest.approx(alpha, abs=1e-6)
    np.testing.assert_allclose(
        to_vec(updates), np.linalg.norm(g_k) * slerp(v0, v1, alpha), rtol=1e-4, atol=1e-6
    )


def test_initial_state_marks_missing_diagnostics():
    state = xs.xsam(alpha_init=0.3).init(to_tree(W0))
    assert float(state.alpha) == pytest.approx(0.3) and int(state.count) == 0
    assert state.alpha_losses.shape == (21,) and np.all(np.isnan(np.asarray(state.alpha_losses)))
    assert np.isnan(float(state.cos_psi))


def test_no_search_while_rho_max_is_zero():
    """Runtime count of loss evaluations: g_k only while ρ_max is 0, then g_k and 21 probes."""
    evaluations = []

    def counted(p):
        jax.debug.callback(lambda: evaluations.append(1))
        return loss_jax(p)

    def per_step(tx, steps):
        params = to_tree(W0)
        state = tx.init(params)
        step = jax.jit(lambda s: tx.update(jax.grad(loss_jax)(params), s, params, loss_fn=counted))
        counts = []
        for _ in range(steps):
            before = len(evaluations)
            _, state = step(state)
            jax.effects_barrier()
            counts.append(len(evaluations) - before)
        return counts, state

    counts, state = per_step(xs.xsam(0.15, 0.0), 2)
    assert counts == [1, 1]
    assert float(state.alpha) == 1.0 and np.all(np.isnan(np.asarray(state.alpha_losses)))
    radius = lambda count: jnp.where(count >= 2, 0.6, 0.0)  # traced: decided at run time
    counts, state = per_step(xs.xsam(0.15, radius), 3)
    assert counts == [1, 1, 1 + len(GRID)]
    _, alpha, losses, _ = xsam_step(W0, 0.15, 0.6, 1.0, GRID)
    np.testing.assert_allclose(np.asarray(state.alpha_losses), losses, rtol=1e-5)
    assert float(state.alpha) == pytest.approx(alpha, abs=1e-6)


@pytest.mark.parametrize("every", [1, 3])
def test_interior_alpha_star_is_searched_on_the_right_steps(every):
    """α* moves inside the grid from search to search: a periodic search is visible."""
    rho, rho_max, mu, steps = 0.5, 0.3, 0.9, 7
    tx = optax.chain(xs.xsam(rho, rho_max, search_every=every), optax.sgd(LR, momentum=mu))
    params = to_tree(W_STEEP)
    state = tx.init(params)
    step = make_step(tx, steep_loss_jax)
    w, buf, alpha, used = W_STEEP.copy(), np.zeros(7), 1.0, []
    for t in range(steps):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
        searching = t % every == 0
        grid = GRID if searching else None
        d, alpha, losses, _ = xsam_step(
            w, rho, rho_max, alpha, grid, loss=steep_loss_np, grad=steep_grad_np
        )
        buf = mu * buf + d
        w = w - LR * buf
        assert float(state[0].alpha) == pytest.approx(alpha, abs=1e-6), t
        if searching:
            np.testing.assert_allclose(np.asarray(state[0].alpha_losses), losses, atol=1e-5)
        np.testing.assert_allclose(to_vec(params), w, rtol=1e-4, atol=1e-5)
        used.append(round(float(alpha), 6))
    # Guards on the test itself: interior winners that change between searches.
    assert all(0.0 < a < 2.0 for a in used) and len(set(used)) >= (4 if every == 1 else 2), used
