"""`perturbation_mask` on every method: SAM-ON's restricted ascent and its two reductions.

References are the NumPy re-derivations in `_reference` (the ascent with the unselected
coordinates of every step's gradient zeroed, as in the SAM-ON code); the reductions compare
the library with itself on purpose: an all-True mask must leave the program exactly as it was,
and an all-False one must be exactly the method's ρ = 0 step.
"""

import jax
import numpy as np
import optax
import pytest
from _reference import W0, ascent, grad_np, loss_jax, to_tree, to_vec

import xsam_jax as xs

KERNEL_ONLY = {"kernel": True, "bias": False}
KERNEL = np.arange(7) < 6  # the kernel is w[:6], the bias w[6]

# name -> (rho, mask) -> transformation
METHODS = {
    "sam": lambda rho, mask: xs.sam(rho, perturbation_mask=mask),
    "sam-k2-inf": lambda rho, mask: xs.sam(rho, ascent_steps=2, norm="inf", perturbation_mask=mask),
    "asam": lambda rho, mask: xs.asam(5 * rho, perturbation_mask=mask),
    "gsam": lambda rho, mask: xs.gsam(rho, 0.3, perturbation_mask=mask),
    "wsam": lambda rho, mask: xs.wsam(rho, 0.7, perturbation_mask=mask),
    "wsam_decoupled": lambda rho, mask: xs.wsam_decoupled(
        optax.sgd(0.05, momentum=0.9), 0.05, rho, perturbation_mask=mask
    ),
    "xsam": lambda rho, mask: xs.xsam(rho, 2 * rho, search_every=2, perturbation_mask=mask),
    "fsam": lambda rho, mask: xs.fsam(rho, 0.8, 0.6, perturbation_mask=mask),
    "vasso": lambda rho, mask: xs.vasso(rho, 0.4, perturbation_mask=mask),
    "fisher_sam": lambda rho, mask: xs.fisher_sam(rho, 2.0, perturbation_mask=mask),
    "looksam": lambda rho, mask: xs.looksam(rho, every=2, perturbation_mask=mask),
}


def run(tx, steps=3):
    """Updates of `steps` SGD steps and the number of loss_fn evaluations of each."""
    evaluations = []

    def loss_fn(p):
        jax.debug.callback(lambda: evaluations.append(1))
        return loss_jax(p)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss_jax)(params)
        updates, state = tx.update(grads, state, params, loss_fn=loss_fn)
        params = jax.tree.map(lambda p, u: p - 0.05 * u, params, updates)
        return params, state, (updates, grads)

    params = to_tree(W0)
    state = tx.init(params)
    out, per_step = [], []
    for _ in range(steps):
        before = len(evaluations)
        params, state, pair = step(params, state)
        jax.effects_barrier()
        per_step.append(len(evaluations) - before)
        out.append(pair)
    return out, per_step


@pytest.mark.parametrize("name", list(METHODS))
def test_an_all_true_mask_is_the_unmasked_method_bit_for_bit(name):
    unmasked, _ = run(METHODS[name](0.1, None))
    for mask in (True, {"kernel": True, "bias": True}, lambda p: jax.tree.map(lambda _: True, p)):
        masked, _ = run(METHODS[name](0.1, mask))
        for (a, _), (b, _) in zip(masked, unmasked, strict=True):
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
                np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", list(METHODS))
def test_an_all_false_mask_is_the_step_without_ascent(name):
    """Every step is the method's ρ = 0 step: no loss evaluation, the clean gradient."""
    clean, _ = run(METHODS[name](0.0, None))
    for mask in (False, {"kernel": False, "bias": False}):
        masked, per_step = run(METHODS[name](0.1, mask))
        assert per_step == [0, 0, 0]
        for (a, grads), (b, _) in zip(masked, clean, strict=True):
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
                np.testing.assert_array_equal(x, y)
            if name != "wsam_decoupled":  # which returns the base optimizer's step
                np.testing.assert_array_equal(to_vec(a), to_vec(grads))


def one_update(tx):
    params = to_tree(W0)
    grads = jax.grad(loss_jax)(params)
    return jax.jit(lambda g, s, p: tx.update(g, s, p, loss_fn=loss_jax))(
        grads, tx.init(params), params
    )[0]


@pytest.mark.parametrize(
    "mask",
    [KERNEL_ONLY, lambda p: {"kernel": p["kernel"].ndim > 1, "bias": p["bias"].ndim > 1}],
    ids=["pytree", "callable"],
)
def test_sam_on_perturbs_only_the_selected_leaves(mask):
    """SAM-ON: ε = ρ g_S/‖g_S‖ on the selected leaves S, the gradient there for every leaf."""
    updates = one_update(xs.sam(0.3, perturbation_mask=mask))
    expected, chord = ascent(W0, 0.3, mask=KERNEL)
    assert chord[6] == 0.0 and np.isclose(np.linalg.norm(chord), 0.3)
    np.testing.assert_allclose(to_vec(updates), expected, rtol=2e-5, atol=1e-6)
    assert np.linalg.norm(expected - ascent(W0, 0.3)[0]) > 1e-2  # the mask matters here


@pytest.mark.parametrize(
    "build,reference",
    [
        (
            lambda: xs.asam(0.5, 0.01, perturbation_mask=KERNEL_ONLY),
            lambda w: ascent(w, 0.5, scale=np.abs(w) + 0.01, mask=KERNEL)[0],
        ),
        (
            lambda: xs.sam(0.2, ascent_steps=3, norm=3, perturbation_mask=KERNEL_ONLY),
            lambda w: ascent(w, 0.2, k=3, p=3.0, mask=KERNEL)[0],
        ),
        (
            lambda: xs.fisher_sam(0.2, 2.0, perturbation_mask=KERNEL_ONLY),
            lambda w: ascent(w, 0.2, fisher_eta=2.0, mask=KERNEL)[0],
        ),
        (
            lambda: xs.gsam(0.2, 0.3, perturbation_mask=KERNEL_ONLY),
            lambda w: _gsam(ascent(w, 0.2, mask=KERNEL)[0], grad_np(w), 0.3),
        ),
    ],
    ids=["asam", "sam-k3-p3", "fisher_sam", "gsam"],
)
def test_masked_ascents_against_the_reference(build, reference):
    tx = optax.chain(build(), optax.sgd(0.05, momentum=0.9))
    params = to_tree(W0)
    state = tx.init(params)
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss_jax)(p), s, p, loss_fn=loss_jax))
    w, buf = W0.copy(), np.zeros(7)
    for _ in range(4):
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
        buf = 0.9 * buf + reference(w)
        w = w - 0.05 * buf
    np.testing.assert_allclose(to_vec(params), w, rtol=2e-5, atol=2e-6)


def _gsam(g_p, g0, alpha):
    return g_p - alpha * (g0 - (g0 @ g_p) / (g_p @ g_p) * g_p)


def test_bad_masks_are_rejected_at_construction():
    with pytest.raises(ValueError, match="perturbation_mask must be a pytree of Python bools"):
        xs.sam(0.1, perturbation_mask={"kernel": 1.0})
    with pytest.raises(ValueError, match="perturbation_mask must be a pytree of Python bools"):
        xs.looksam(0.1, perturbation_mask={"kernel": np.ones(3, bool)})
    with pytest.raises(ValueError, match="adaptive_mask must be a pytree of Python bools"):
        xs.asam(0.5, adaptive_mask={"kernel": "yes"})
    # A callable's result is known only at the first update (when the step is traced).
    with pytest.raises(ValueError, match="perturbation_mask must be a pytree of Python bools"):
        one_update(xs.sam(0.1, perturbation_mask=lambda p: {"kernel": True, "bias": 0}))
