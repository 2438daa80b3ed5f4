"""GSAM and WSAM against their update rules written from the papers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import W0, ascent, grad_np, loss_jax, to_tree, to_vec

import xsam_jax as xs


def one_update(tx, w=W0):
    params = to_tree(w)
    grads = jax.grad(loss_jax)(params)
    updates, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, loss_fn=loss_jax))(
        grads, tx.init(params), params
    )
    return updates


@pytest.mark.parametrize("alpha", [0.1, 0.4, 1.0])
def test_gsam_matches_reference(alpha):
    rho = 0.3
    g0 = grad_np(W0)
    g_p, _ = ascent(W0, rho)
    g0_perp = g0 - (g0 @ g_p) / (g_p @ g_p) * g_p
    expected = g_p - alpha * g0_perp
    np.testing.assert_allclose(
        to_vec(one_update(xs.gsam(rho, alpha))), expected, rtol=2e-5, atol=1e-6
    )
    # The removed component is orthogonal to the SAM gradient, so <d, g_p> = ||g_p||^2.
    assert np.isclose(to_vec(one_update(xs.gsam(rho, alpha))) @ g_p, g_p @ g_p, rtol=1e-5)


T_W = np.abs(W0) + 0.02  # ASAM's scale with eta = 0.02
ASCENTS = {  # name: (keyword arguments of the method, keyword arguments of _reference.ascent)
    "k3": (dict(ascent_steps=3), dict(k=3)),
    "inf": (dict(norm="inf"), dict(p=np.inf)),
    "adaptive": (dict(adaptive=True, eta=0.02), dict(scale=T_W)),
    "adaptive-k3": (dict(adaptive=True, eta=0.02, ascent_steps=3), dict(k=3, scale=T_W)),
}


@pytest.mark.parametrize("ascent_name", list(ASCENTS))
def test_gsam_and_wsam_with_other_ascents_match_reference(ascent_name):
    """Multi-step, sign (p = ∞) and ASAM ascents, combined as each paper says."""
    rho, alpha, gamma = 1.5, 0.4, 0.7  # a long ascent, so that k = 3 differs from k = 1
    method_kw, ascent_kw = ASCENTS[ascent_name]
    g0, g_p = grad_np(W0), ascent(W0, rho, **ascent_kw)[0]
    gsam_expected = g_p - alpha * (g0 - (g0 @ g_p) / (g_p @ g_p) * g_p)
    gsam_update = to_vec(one_update(xs.gsam(rho, alpha, **method_kw)))
    np.testing.assert_allclose(gsam_update, gsam_expected, rtol=2e-5, atol=1e-6)
    wsam_expected = (1 - 2 * gamma) / (1 - gamma) * g0 + gamma / (1 - gamma) * g_p
    wsam_update = to_vec(one_update(xs.wsam(rho, gamma, **method_kw)))
    np.testing.assert_allclose(wsam_update, wsam_expected, rtol=2e-5, atol=1e-6)
    # Guard on the test itself: each option changes g_p by far more than the tolerance.
    for dropped in ascent_kw:
        other = ascent(W0, rho, **{k: v for k, v in ascent_kw.items() if k != dropped})[0]
        assert np.linalg.norm(g_p - other) > 1e-3 * np.linalg.norm(g_p), dropped


def test_gsam_with_a_zero_perturbed_gradient_descends_along_the_clean_gradient():
    """At an ascent point where ∇L is exactly 0, g0⊥ is undefined: d = −α·g0, not NaN.

    L(w) = −½‖w − c‖² from θ = 0 with ‖c‖ = ρ: g0 = c, and the ascent point θ + ρ g0/‖g0‖
    is c itself (exact in binary floating point), where the gradient c − w vanishes.
    """
    rho, alpha = 0.5, 0.4
    c = np.zeros(7)
    c[0] = rho

    def concave(p):
        w = jnp.concatenate([p["kernel"].ravel(), p["bias"]])
        return -0.5 * jnp.sum((w - jnp.asarray(c, w.dtype)) ** 2)

    params = to_tree(np.zeros(7))
    grads = jax.grad(concave)(params)
    tx = xs.gsam(rho, alpha)
    updates, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, loss_fn=concave))(
        grads, tx.init(params), params
    )
    np.testing.assert_allclose(to_vec(updates), -alpha * c, rtol=1e-6, atol=0)


def test_gsam_alpha_zero_is_sam():
    a, b = one_update(xs.gsam(0.2, alpha=0.0)), one_update(xs.sam(0.2))
    np.testing.assert_allclose(to_vec(a), to_vec(b), rtol=1e-6)


@pytest.mark.parametrize("gamma", [0.3, 0.9])
def test_wsam_matches_reference(gamma):
    rho = 0.3
    g_p, _ = ascent(W0, rho)
    expected = (1 - 2 * gamma) / (1 - gamma) * grad_np(W0) + gamma / (1 - gamma) * g_p
    np.testing.assert_allclose(to_vec(one_update(xs.wsam(rho, gamma))), expected, rtol=2e-5)


def test_wsam_half_is_sam_and_zero_is_the_clean_gradient():
    for a, b in zip(
        jax.tree.leaves(one_update(xs.wsam(0.2, gamma=0.5))),
        jax.tree.leaves(one_update(xs.sam(0.2))),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    clean = jax.grad(loss_jax)(to_tree(W0))
    for a, b in zip(
        jax.tree.leaves(one_update(xs.wsam(0.2, gamma=0.0))), jax.tree.leaves(clean), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_wsam_gamma_zero_takes_no_second_gradient():
    """gamma = 0 must cost one gradient: loss_fn is never traced."""
    calls = []

    def counting_loss(p):
        calls.append(1)
        return loss_jax(p)

    tx = optax.chain(xs.wsam(0.2, gamma=0.0), optax.sgd(0.1))
    params = to_tree(W0)
    tx.update(jax.grad(loss_jax)(params), tx.init(params), params, loss_fn=counting_loss)
    assert calls == []


# ------------------------------------------------------------------ decoupled WSAM


def schedule_np(t):
    return 0.1 / (1.0 + 0.3 * t)


def schedule(count):
    return 0.1 / (1.0 + 0.3 * count)


def run_trajectory(tx, steps):
    params = to_tree(W0)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss_jax)(params), state, params, loss_fn=loss_jax)
        return optax.apply_updates(params, updates), state

    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(to_vec(params))
    return out, state


@pytest.mark.parametrize("gamma", [0.3, 0.9])
def test_wsam_decoupled_matches_reference(gamma):
    """The base optimizer (weight decay, momentum) sees g0 only; the sharpness step is plain.

    Written from Yue et al. (2023), Alg. 1 with decouple=True: w <- w - lr_t (momentum buffer
    of g0 + wd w) - lr_t γ/(1-γ) (g_p - g0), with a learning-rate schedule.
    """
    rho, mu, wd, steps = 0.2, 0.9, 0.01, 6
    base = optax.chain(optax.add_decayed_weights(wd), optax.sgd(schedule, momentum=mu))
    lib, state = run_trajectory(xs.wsam_decoupled(base, schedule, rho, gamma), steps)
    w, buf = W0.copy(), np.zeros_like(W0)
    for t in range(steps):
        g0, g_p = grad_np(w), ascent(w, rho)[0]
        buf = mu * buf + g0 + wd * w
        w = w - schedule_np(t) * buf - schedule_np(t) * gamma / (1 - gamma) * (g_p - g0)
        np.testing.assert_allclose(lib[t], w, rtol=1e-5, atol=1e-6)
    assert int(state.count) == steps


def test_wsam_decoupled_with_plain_sgd_is_wsam_and_gamma_zero_is_the_base_optimizer():
    lr, steps = 0.05, 4
    decoupled, _ = run_trajectory(xs.wsam_decoupled(optax.sgd(lr), lr, 0.2, 0.7), steps)
    coupled, _ = run_trajectory(optax.chain(xs.wsam(0.2, 0.7), optax.sgd(lr)), steps)
    np.testing.assert_allclose(decoupled, coupled, rtol=1e-5, atol=1e-6)
    base = optax.sgd(lr, momentum=0.9)
    plain, _ = run_trajectory(xs.wsam_decoupled(base, lr, 0.2, gamma=0.0), steps)
    np.testing.assert_array_equal(plain, run_trajectory(base, steps)[0])
