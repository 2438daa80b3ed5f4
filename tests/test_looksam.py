"""LookSAM: full SAM steps every k steps, the reused direction in between, at one gradient.

References are `_reference.looksam_step` (written from the paper); the gradient counts are
run-time callbacks, which fire only in the branch a step actually takes. Trajectories in
float64 are in test_float64.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import W0, grad_np, looksam_step, loss_jax, to_tree, to_vec

import xsam_jax as xs

RHO, LR, MU = 0.1, 0.05, 0.9


def train(tx, steps, plan=None):
    """Params after each momentum-SGD step, and the loss_fn evaluations of each step."""
    tx = optax.chain(tx, optax.sgd(LR, momentum=MU))
    evaluations = []

    def loss_fn(p):
        jax.debug.callback(lambda: evaluations.append(1))
        return loss_jax(p)

    @functools.partial(jax.jit, static_argnames="perturb")
    def step(params, state, perturb=None):
        grads = jax.grad(loss_jax)(params)
        updates, state = tx.update(grads, state, params, loss_fn=loss_fn, perturb=perturb)
        return optax.apply_updates(params, updates), state

    params = to_tree(W0)
    state = tx.init(params)
    out, per_step = [], []
    for t in range(steps):
        before = len(evaluations)
        params, state = step(params, state, None if plan is None else bool(plan[t]))
        jax.effects_barrier()
        per_step.append(len(evaluations) - before)
        out.append(to_vec(params))
    return out, per_step


def reference(steps, alpha, full):
    """Momentum SGD on LookSAM's directions, with full steps where `full(t)` holds."""
    w, buf, g_v, out = W0.copy(), np.zeros_like(W0), None, []
    for t in range(steps):
        if g_v is None and not full(t):  # no full step yet: the clean gradient
            d = grad_np(w)
        else:
            d, g_v = looksam_step(w, g_v, full(t), RHO, alpha)
        buf = MU * buf + d
        w = w - LR * buf
        out.append(w)
    return out


def test_between_full_steps_one_gradient_and_the_plan_matches_the_gate():
    every, steps = 3, 7
    tx = xs.looksam(RHO, every=every, alpha=0.7)
    plan = xs.perturbed_steps(RHO, steps) & (np.arange(steps) % every == 0)
    gated, gated_per_step = train(tx, steps)
    planned, planned_per_step = train(tx, steps, plan)
    # The second gradient only on the full steps, with the conditional or without it.
    assert gated_per_step == planned_per_step == [1, 0, 0, 1, 0, 0, 1]
    expected = reference(steps, 0.7, full=lambda t: t % every == 0)
    for a, b, e in zip(gated, planned, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_a_wrong_plan_is_loud():
    """A plan that skips a full step yields NaN (the gate's rule for every method)."""
    out, per_step = train(xs.looksam(RHO, every=2), 3, plan=[True, False, False])
    assert per_step == [1, 0, 0]
    assert np.all(np.isfinite(out[1])) and np.all(np.isnan(out[2]))


@pytest.mark.parametrize(
    "rho,full,evaluations",
    [
        # A late phase: ρ = 0 at count 0, so the first full step is count 2.
        (xs.late_phase(RHO, 1), lambda t: t in (2, 4), [0, 0, 1, 0, 1, 0]),
        # ρ = 0 at count 2, a multiple of `every`: that step reuses g_v of count 0.
        (lambda c: jnp.where(c == 2, 0.0, RHO), lambda t: t in (0, 4), [1, 0, 0, 0, 1, 0]),
    ],
    ids=["late-phase", "off-at-2"],
)
def test_steps_whose_rho_is_zero_reuse_the_stored_direction(rho, full, evaluations):
    """The clean gradient before any full step, the stored g_v after one."""
    ours, per_step = train(xs.looksam(rho, every=2, alpha=0.5), 6)
    assert per_step == evaluations
    for a, e in zip(ours, reference(6, 0.5, full), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rho", [RHO, xs.late_phase(RHO, 2)])
def test_every_one_is_sam_bit_for_bit(rho):
    ours, _ = train(xs.looksam(rho, every=1), 4)
    sam, _ = train(xs.sam(rho), 4)
    for a, b in zip(ours, sam, strict=True):
        np.testing.assert_array_equal(a, b)
