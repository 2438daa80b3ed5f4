"""SAM: one step and trajectories against the NumPy reference (tests/_reference.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import W0, ascent, grad_np, loss_jax, to_tree, to_vec

import xsam_jax as xs

LR = 0.05


def run(tx, w, steps=1, loss_fn=loss_jax):
    params = to_tree(w)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, loss_fn=loss_fn)
        return optax.apply_updates(params, updates), state, updates

    for _ in range(steps):
        params, state, updates = step(params, state)
    return params, state, updates


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("p", [2.0, np.inf, 3.0, 1.5])
def test_one_step_matches_reference(k, p):
    rho = 0.1
    _, state, updates = run(xs.sam(rho, ascent_steps=k, norm="inf" if p == np.inf else p), W0)
    expected, _ = ascent(W0, rho, k, p)
    np.testing.assert_allclose(to_vec(updates), expected, rtol=2e-5, atol=1e-6)
    assert int(state.count) == 1


def test_perturbation_has_dual_norm_properties():
    """For the p-ball, ||eps||_p = rho and <g, eps> = rho ||g||_q (Hölder equality)."""
    rho, p = 0.3, 3.0
    q = p / (p - 1)
    g = grad_np(W0)
    _, chord = ascent(W0, rho, 1, p)
    assert np.isclose(np.sum(np.abs(chord) ** p) ** (1 / p), rho)
    assert np.isclose(g @ chord, rho * np.sum(np.abs(g) ** q) ** (1 / q))
    # ...and the library's step is the gradient at exactly that point.
    _, _, updates = run(xs.sam(rho, norm=p), W0)
    np.testing.assert_allclose(to_vec(updates), grad_np(W0 + chord), rtol=2e-5)


def test_unnormalized_sam():
    rho = 0.01
    _, _, updates = run(xs.sam(rho, normalize=False), W0)
    np.testing.assert_allclose(to_vec(updates), grad_np(W0 + rho * grad_np(W0)), rtol=2e-5)


def test_gradient_at_perturbed_point_applied_at_current_point():
    rho = 0.2
    tx = optax.chain(xs.sam(rho), optax.sgd(LR))
    params, _, _ = run(tx, W0)
    g = grad_np(W0)
    expected = W0 - LR * grad_np(W0 + rho * g / np.linalg.norm(g))
    np.testing.assert_allclose(to_vec(params), expected, rtol=1e-5, atol=1e-6)


def test_trajectory_with_momentum_matches_reference():
    rho, mu, steps = 0.1, 0.9, 8
    tx = optax.chain(xs.sam(rho), optax.sgd(LR, momentum=mu))
    params, _, _ = run(tx, W0, steps=steps)
    w, buf = W0.copy(), np.zeros_like(W0)
    for _ in range(steps):
        g, _ = ascent(w, rho)
        buf = mu * buf + g
        w = w - LR * buf
    np.testing.assert_allclose(to_vec(params), w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rho", [0.0, xs.late_phase(0.1, 100), lambda count: 0.0 * count])
def test_zero_radius_is_the_base_optimizer_bit_for_bit(rho):
    base = optax.sgd(LR, momentum=0.9)
    sam_params, _, _ = run(optax.chain(xs.sam(rho), base), W0, steps=5)
    base_params, _, _ = run(base, W0, steps=5)
    for a, b in zip(jax.tree.leaves(sam_params), jax.tree.leaves(base_params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_single_step_ascent_is_plain_sam():
    rho = 0.07
    _, _, multi = run(xs.sam(rho, ascent_steps=1), W0)
    g = grad_np(W0)
    np.testing.assert_allclose(to_vec(multi), grad_np(W0 + rho * g / np.linalg.norm(g)), rtol=2e-5)


def test_zero_gradient_gives_finite_update():
    """At a stationary point every norm is zero: the update must be 0, not NaN."""

    def loss_fn(p):
        return jnp.sum(p["kernel"] ** 2) + jnp.sum(p["bias"] ** 2)

    for tx in [xs.sam(0.1), xs.sam(0.1, norm=3), xs.sam(0.1, norm="inf"), xs.asam(0.5)]:
        _, _, updates = run(tx, np.zeros(7), loss_fn=loss_fn)
        np.testing.assert_array_equal(to_vec(updates), np.zeros(7))


def test_unknown_extra_args_are_ignored():
    tx = xs.sam(0.1)
    params = to_tree(W0)
    grads = jax.grad(loss_jax)(params)
    updates, _ = tx.update(grads, tx.init(params), params, loss_fn=loss_jax, value=1.0, foo="x")
    expected, _ = ascent(W0, 0.1)
    np.testing.assert_allclose(to_vec(updates), expected, rtol=2e-5)


def test_missing_loss_fn_names_it_and_shows_the_fix():
    tx = xs.sam(0.1)
    params = to_tree(W0)
    with pytest.raises(TypeError, match=r"loss_fn.*loss_fn=lambda p: loss\(p, batch\)"):
        tx.update(jax.grad(loss_jax)(params), tx.init(params), params)
    with pytest.raises(TypeError, match="params"):
        tx.update(jax.grad(loss_jax)(params), tx.init(params), None, loss_fn=loss_jax)
