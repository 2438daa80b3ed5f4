"""ASAM against the official definition eps = rho T^2 g / ||T g||, T = |w| + eta."""

import jax
import numpy as np
import pytest
from _reference import W0, ascent, grad_np, loss_jax, to_tree, to_vec

import xsam_jax as xs


def one_update(tx, w):
    params = to_tree(w)
    grads = jax.grad(loss_jax)(params)
    updates, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, loss_fn=loss_jax))(
        grads, tx.init(params), params
    )
    return to_vec(updates)


@pytest.mark.parametrize("k", [1, 3])
def test_matches_official_formula(k):
    rho, eta = 0.5, 0.01
    scale = np.abs(W0) + eta
    expected, _ = ascent(W0, rho, k, scale=scale)
    np.testing.assert_allclose(
        one_update(xs.asam(rho, eta, ascent_steps=k), W0), expected, rtol=2e-5
    )
    if k == 1:  # the closed form of the official code, written out once more
        g = grad_np(W0)
        eps = rho * scale**2 * g / np.linalg.norm(scale * g)
        np.testing.assert_allclose(one_update(xs.asam(rho, eta), W0), grad_np(W0 + eps), rtol=2e-5)


@pytest.mark.parametrize(
    "mask", [{"kernel": True, "bias": False}, lambda p: jax.tree.map(lambda x: x.ndim > 1, p)]
)
def test_mask_leaves_unselected_leaves_unscaled(mask):
    """Like the official code, which rescales weights but not biases."""
    rho, eta = 0.5, 0.01
    scale = np.abs(W0) + eta
    scale[6:] = 1.0  # the bias leaf
    expected, _ = ascent(W0, rho, 1, scale=scale)
    np.testing.assert_allclose(
        one_update(xs.asam(rho, eta, adaptive_mask=mask), W0), expected, rtol=2e-5
    )


def test_constant_weights_reduce_to_sam_with_scaled_radius():
    c, eta, rho = 0.7, 0.01, 0.2
    w = np.full(7, c) * np.array([1, -1, 1, 1, -1, 1, -1])
    np.testing.assert_allclose(
        one_update(xs.asam(rho, eta), w), one_update(xs.sam(rho * (c + eta)), w), rtol=1e-5
    )
