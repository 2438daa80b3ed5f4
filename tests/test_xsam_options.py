"""XSAM's options beyond the paper (`reuse="rotation"`, `max_rotation`) against NumPy.

The reference below follows the docstring: a search picks α* among the candidates whose turn
α·ψ stays within the cap; between searches a step applies α* (the paper) or the searched angle
φ* = α*·ψ over its own ψ, capped by the grid's end; the cap bounds every step's α·ψ.
"""

import jax
import numpy as np
import optax
import pytest
from _reference import (
    W_STEEP,
    ascent,
    slerp,
    steep_grad_np,
    steep_loss_jax,
    steep_loss_np,
    to_tree,
    to_vec,
)

import xsam_jax as xs

GRID = np.arange(21) * 0.1
LR, MU = 0.05, 0.9
RHO, RHO_MAX = 0.5, 0.3


def reference(steps, every, reuse="alpha", cap=None):
    """Parameters after `steps` XSAM steps with momentum, and the (α*, applied α·ψ) per step."""
    w, buf, alpha, phi, record = W_STEEP.copy(), np.zeros(7), 1.0, None, []
    for t in range(steps):
        g_k, chord = ascent(w, RHO, grad=steep_grad_np)
        v0, v1 = chord / np.linalg.norm(chord), g_k / np.linalg.norm(g_k)
        psi = np.arccos(np.clip(v0 @ v1, -1, 1))
        if t % every == 0:
            losses = np.array([steep_loss_np(w + RHO_MAX * slerp(v0, v1, a)) for a in GRID])
            eligible = [a * psi <= cap if cap is not None else True for a in GRID]
            best, best_loss = alpha, -np.inf
            for a, value, ok in zip(GRID, losses, eligible, strict=True):
                if ok and value > best_loss:
                    best, best_loss = a, value
            alpha, phi = best, best * psi
        applied = alpha if reuse == "alpha" else min(phi / psi, GRID[-1])
        if cap is not None:
            applied = min(applied, cap / psi)
        record.append((alpha, applied * psi))
        buf = MU * buf + np.linalg.norm(g_k) * slerp(v0, v1, applied)
        w = w - LR * buf
    return w, record


def run(steps, every, **options):
    tx = optax.chain(
        xs.xsam(RHO, RHO_MAX, search_every=every, **options), optax.sgd(LR, momentum=MU)
    )
    params = to_tree(W_STEEP)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(steep_loss_jax)(params)
        updates, state = tx.update(grads, state, params, loss_fn=steep_loss_jax)
        return optax.apply_updates(params, updates), state

    record = []
    for _ in range(steps):
        params, state = step(params, state)
        record.append((float(state[0].alpha), float(state[0].rotation)))
    return to_vec(params), record, state[0]


@pytest.mark.parametrize(
    "options",
    [{"reuse": "rotation"}, {"max_rotation": 0.2}, {"reuse": "rotation", "max_rotation": 0.25}],
    ids=["reuse-rotation", "cap", "both"],
)
def test_options_follow_the_reference(options):
    steps, every = 7, 3
    params, record, state = run(steps, every, **options)
    cap = options.get("max_rotation")
    expected, expected_record = reference(steps, every, options.get("reuse", "alpha"), cap)
    np.testing.assert_allclose(params, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(record, expected_record, rtol=1e-4, atol=1e-6)
    if cap is not None:
        assert all(rotation <= cap + 1e-6 for _, rotation in record)
    # Guard on the test: the option changes the trajectory of the paper's XSAM.
    paper, _ = reference(steps, every)
    assert np.max(np.abs(expected - paper)) > 1e-3


def test_defaults_are_the_paper_and_record_the_turn():
    params, record, state = run(4, 2)
    expected, expected_record = reference(4, 2)
    np.testing.assert_allclose(params, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(record, expected_record, rtol=1e-4, atol=1e-6)
    # The last search (step 2) chose α*, at that step's ψ: the searched rotation.
    assert float(state.search_rotation) == pytest.approx(expected_record[2][1], rel=1e-4)


def test_initial_state_and_bad_options():
    state = xs.xsam().init(to_tree(W_STEEP))
    assert np.isnan(float(state.rotation)) and np.isnan(float(state.search_rotation))
    with pytest.raises(ValueError, match="reuse must be one of 'alpha', 'rotation', got 'angle'"):
        xs.xsam(reuse="angle")
    with pytest.raises(ValueError, match="max_rotation must be a finite float in"):
        xs.xsam(max_rotation=0.0)
    with pytest.raises(ValueError, match="max_rotation must be a finite float in"):
        xs.xsam(max_rotation=4.0)
