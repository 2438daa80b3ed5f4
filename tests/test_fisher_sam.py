"""Fisher SAM: the worst point of the Fisher ellipsoid, against its closed form.

The closed form in `_reference.fisher_direction` is first checked against the definition it
solves (the maximum of <g, ε> over εᵀ f ε ≤ ρ², by sampling the ellipsoid), then the library
against it. Trajectories in float64 are in test_float64.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import W0, ascent, fisher_direction, grad_np, loss_jax, to_tree, to_vec

import xsam_jax as xs


def one_update(tx, params):
    grads = jax.grad(loss_jax)(params)
    return jax.jit(lambda g, s, p: tx.update(g, s, p, loss_fn=loss_jax))(
        grads, tx.init(params), params
    )[0]


def test_the_perturbation_is_the_worst_first_order_point_of_the_ellipsoid():
    rho, eta = 0.3, 2.0
    g = grad_np(W0)
    f = 1.0 + eta * g * g
    epsilon = rho * fisher_direction(g, eta)
    assert np.isclose(epsilon @ (f * epsilon), rho**2)  # on the ellipsoid's boundary
    # No point of the ellipsoid rises faster along g (points ρ f^(-1/2) u, u on the sphere).
    u = np.random.default_rng(0).normal(size=(20000, 7))
    samples = rho * (u / np.linalg.norm(u, axis=1, keepdims=True)) / np.sqrt(f)
    assert np.max(samples @ g) <= epsilon @ g + 1e-12
    assert np.max(samples @ g) > 0.9 * (epsilon @ g)  # and the sampling gets close to it
    # The Fisher ball shortens the steep coordinates: not SAM's direction.
    assert np.linalg.norm(fisher_direction(g, eta) - g / np.linalg.norm(g)) > 0.1
    updates = one_update(xs.fisher_sam(rho, eta), to_tree(W0))
    np.testing.assert_allclose(to_vec(updates), grad_np(W0 + epsilon), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("ascent_steps", [1, 2])
def test_eta_zero_is_sam_bit_for_bit(ascent_steps):
    def trajectory(tx):
        tx = optax.chain(tx, optax.sgd(0.05, momentum=0.9))
        params = to_tree(W0)
        state = tx.init(params)
        step = jax.jit(lambda p, s: tx.update(jax.grad(loss_jax)(p), s, p, loss_fn=loss_jax))
        out = []
        for _ in range(4):
            updates, state = step(params, state)
            params = optax.apply_updates(params, updates)
            out.append(params)
        return out

    ours = trajectory(xs.fisher_sam(0.1, 0.0, ascent_steps=ascent_steps))
    sam = trajectory(xs.sam(0.1, ascent_steps=ascent_steps))
    for a, b in zip(ours, sam, strict=True):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(x, y)


def test_bf16_params_give_bf16_updates():
    params = to_tree(W0, jnp.bfloat16)
    updates = one_update(xs.fisher_sam(0.1, 2.0), params)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    expected = ascent(to_vec(params), 0.1, fisher_eta=2.0)[0]
    np.testing.assert_allclose(to_vec(updates), expected, rtol=2e-2)
