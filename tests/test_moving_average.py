"""Friendly-SAM and VaSSO against NumPy re-derivations of the authors' updates (`_reference`).

Trajectories in float64 are in test_float64.py; here: the reductions to SAM, the average
following every step (ρ = 0 steps included), plans, dtypes and optax.inject_hyperparams.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import W0, ascent, fsam_step, grad_np, loss_jax, to_tree, to_vec, vasso_step

import xsam_jax as xs

LR, MU = 0.05, 0.9


def trajectory(tx, steps, plan=None):
    """Params after each of `steps` momentum-SGD steps, and the final inner state."""
    tx = optax.chain(tx, optax.sgd(LR, momentum=MU))
    params = to_tree(W0)
    state = tx.init(params)

    @functools.partial(jax.jit, static_argnames="perturb")
    def step(params, state, perturb=None):
        grads = jax.grad(loss_jax)(params)
        updates, state = tx.update(grads, state, params, loss_fn=loss_jax, perturb=perturb)
        return optax.apply_updates(params, updates), state

    out = []
    for t in range(steps):
        params, state = step(params, state, None if plan is None else bool(plan[t]))
        out.append(params)
    return out, state[0]


def reference(direction, steps):
    """Momentum SGD on `direction(w, t)`: the params after each step."""
    w, buf, out = W0.copy(), np.zeros_like(W0), []
    for t in range(steps):
        buf = MU * buf + direction(w, t)
        w = w - LR * buf
        out.append(w)
    return out


@pytest.mark.parametrize(
    "reduced",
    [lambda rho: xs.fsam(rho, sigma=0.0, lmbda=0.6), lambda rho: xs.vasso(rho, theta=1.0)],
    ids=["fsam-sigma-0", "vasso-theta-1"],
)
def test_reductions_to_sam_are_exact(reduced):
    for rho in (0.1, xs.late_phase(0.1, 2)):
        ours, _ = trajectory(reduced(rho), 5)
        sam, _ = trajectory(xs.sam(rho), 5)
        for a, b in zip(ours, sam, strict=True):
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
                np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", ["fsam", "vasso"])
def test_the_average_follows_the_steps_without_ascent(name):
    """A late phase: two SGD steps feed the average, then the method ascends from it."""
    start, steps = 2, 5
    rho = xs.late_phase(0.1, start)
    if name == "fsam":
        tx, update = xs.fsam(rho, 0.8, 0.6), lambda g, m: 0.6 * m + 0.4 * g
    else:
        tx, update = xs.vasso(rho, 0.4), lambda g, d: 0.6 * d + 0.4 * g
    history = {"average": None}

    def direction(w, t):
        if t < start:  # the average still takes in the clean gradient
            g = grad_np(w)
            history["average"] = g if history["average"] is None else update(g, history["average"])
            return g
        if name == "fsam":
            d, history["average"] = fsam_step(w, history["average"], 0.1, 0.8, 0.6)
        else:
            d, history["average"] = vasso_step(w, history["average"], 0.1, 0.4)
        return d

    expected = reference(direction, steps)
    gated, state = trajectory(tx, steps)
    planned, _ = trajectory(tx, steps, xs.perturbed_steps(rho, steps))
    for a, b, e in zip(gated, planned, expected, strict=True):
        np.testing.assert_allclose(to_vec(a), e, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(to_vec(b), to_vec(a), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(to_vec(state.average), history["average"], rtol=2e-5, atol=2e-6)
    assert int(state.count) == steps


def test_fsam_subtracts_the_previous_average_not_the_updated_one():
    """Step 1 ascends along g1 − σ·g0 (m = g0 from step 0), not along g1 − σ·(λg0 + (1−λ)g1).

    (With σ = 1 the two are parallel, so σ = 0.5 tells them apart.)
    """
    tx = xs.fsam(0.2, 0.5, 0.6)
    params = to_tree(W0)
    state = tx.init(params)
    update = jax.jit(lambda p, s: tx.update(jax.grad(loss_jax)(p), s, p, loss_fn=loss_jax))
    _, state = update(params, state)
    w1 = W0 - 0.3 * grad_np(W0)  # any other point: step 1's gradient differs from step 0's
    updates, _ = update(to_tree(w1), state)
    g0, g1 = grad_np(W0), grad_np(w1)
    np.testing.assert_allclose(
        to_vec(updates), ascent(w1, 0.2, start=g1 - 0.5 * g0)[0], rtol=2e-5, atol=1e-6
    )
    wrong = ascent(w1, 0.2, start=g1 - 0.5 * (0.6 * g0 + 0.4 * g1))[0]
    assert np.linalg.norm(wrong - to_vec(updates)) > 1e-2


@pytest.mark.parametrize(
    "make", [lambda: xs.fsam(0.1), lambda: xs.vasso(0.1)], ids=["fsam", "vasso"]
)
def test_bf16_params_give_bf16_updates_and_a_float32_average(make):
    tx = make()
    params = to_tree(W0, jnp.bfloat16)
    state = tx.init(params)
    update = jax.jit(lambda p, s: tx.update(jax.grad(loss_jax)(p), s, p, loss_fn=loss_jax))
    updates, new_state = update(params, state)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(new_state.average))
    same = jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype), new_state, state)
    assert all(jax.tree.leaves(same))  # the state is type-stable (lax.scan works)
    expected = ascent(to_vec(params), 0.1)[0]
    np.testing.assert_allclose(to_vec(updates), expected, rtol=2e-2)


@pytest.mark.parametrize(
    "factory,kwargs,step",
    [
        (
            xs.fsam,
            {"rho": 0.1, "sigma": 0.5, "lmbda": 0.7},
            lambda w, h: fsam_step(w, h, 0.1, 0.5, 0.7),
        ),
        (xs.vasso, {"rho": 0.1, "theta": 0.3}, lambda w, h: vasso_step(w, h, 0.1, 0.3)),
    ],
    ids=["fsam", "vasso"],
)
def test_inject_hyperparams(factory, kwargs, step):
    tx = optax.inject_hyperparams(factory)(**kwargs)
    history = {"h": None}

    def direction(w, t):
        d, history["h"] = step(w, history["h"])
        return d

    ours, _ = trajectory(tx, 3)
    for a, e in zip(ours, reference(direction, 3), strict=True):
        np.testing.assert_allclose(to_vec(a), e, rtol=2e-5, atol=2e-6)
