"""float64 params are exact to float64: ten-step trajectories against the NumPy reference.

Every method runs under `jax.enable_x64` with float64 params and momentum SGD, and is
compared with its float64 NumPy re-derivation in `_reference` to 1e-12 relative, which no
float32 step on the way (a norm, a direction, the ascent point, ρ, a slerp coefficient, the
α grid) would allow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import (
    W0,
    W_STEEP,
    ascent,
    fsam_step,
    grad_np,
    looksam_step,
    loss_jax,
    loss_np,
    steep_grad_np,
    steep_loss_jax,
    steep_loss_np,
    to_tree,
    to_vec,
    vasso_step,
    xsam_step,
)

import xsam_jax as xs

LR, MU, STEPS, RTOL = 0.05, 0.9, 10, 1e-12
GRID = np.arange(21) * 0.1
SCALE_ETA = 0.01
KERNEL_ONLY = {"kernel": True, "bias": False}  # a perturbation mask and its coordinates:
KERNEL = np.arange(7) < 6  # the kernel is w[:6], the bias w[6]


def sam_like(rho, **kw):
    return lambda w, state: (ascent(w, rho, **kw)[0], state)


def gsam_np(rho, alpha):
    def direction(w, state):
        g0, g_p = grad_np(w), ascent(w, rho)[0]
        return g_p - alpha * (g0 - (g0 @ g_p) / (g_p @ g_p) * g_p), state

    return direction


def wsam_np(rho, gamma):
    def direction(w, state):
        g_p = ascent(w, rho)[0]
        return (1 - 2 * gamma) / (1 - gamma) * grad_np(w) + gamma / (1 - gamma) * g_p, state

    return direction


def xsam_np(rho, rho_max, every, loss, grad, mask=None):
    def direction(w, state):
        count, alpha = state
        searching = count % every == 0
        grid = GRID if searching else None
        d, alpha, _, _ = xsam_step(
            w, rho, rho_max, alpha, grid, loss=loss, grad=grad, eps=1e-12, mask=mask
        )
        return d, (count + 1, alpha)

    return direction


def with_history(step):
    """A reference step(w, history, count) -> (d, history) as a `direction(w, state)`."""

    def direction(w, state):
        count, history = state
        d, history = step(w, None if count == 0 else history, count)
        return d, (count + 1, history)

    return direction


def asam_np(rho):
    return lambda w, state: (ascent(w, rho, scale=np.abs(w) + SCALE_ETA)[0], state)


CASES = {
    "sam-k1-p2": (lambda: xs.sam(0.1), sam_like(0.1)),
    "sam-k3-p2": (lambda: xs.sam(0.1, ascent_steps=3), sam_like(0.1, k=3)),
    "sam-k1-inf": (lambda: xs.sam(0.1, norm="inf"), sam_like(0.1, p=np.inf)),
    "sam-k3-inf": (lambda: xs.sam(0.1, ascent_steps=3, norm="inf"), sam_like(0.1, k=3, p=np.inf)),
    "sam-k1-p3": (lambda: xs.sam(0.1, norm=3), sam_like(0.1, p=3.0)),
    "sam-k3-p3": (lambda: xs.sam(0.1, ascent_steps=3, norm=3), sam_like(0.1, k=3, p=3.0)),
    "usam": (lambda: xs.sam(0.01, normalize=False), sam_like(0.01, normalize=False)),
    "asam": (lambda: xs.asam(0.5, SCALE_ETA), asam_np(0.5)),
    "gsam": (lambda: xs.gsam(0.1, 0.3), gsam_np(0.1, 0.3)),
    "wsam": (lambda: xs.wsam(0.1, 0.7), wsam_np(0.1, 0.7)),
    "xsam": (lambda: xs.xsam(0.15, 0.6, search_every=3), xsam_np(0.15, 0.6, 3, loss_np, grad_np)),
    "xsam-interior": (
        lambda: xs.xsam(0.5, 0.3, search_every=1),
        xsam_np(0.5, 0.3, 1, steep_loss_np, steep_grad_np),
    ),
    "fsam": (
        lambda: xs.fsam(0.1, 0.8, 0.6),
        with_history(lambda w, m, t: fsam_step(w, m, 0.1, 0.8, 0.6)),
    ),
    "vasso": (
        lambda: xs.vasso(0.1, 0.4),
        with_history(lambda w, d, t: vasso_step(w, d, 0.1, 0.4)),
    ),
    "fisher-sam": (
        lambda: xs.fisher_sam(0.1, 2.0),
        lambda w, state: (ascent(w, 0.1, fisher_eta=2.0)[0], state),
    ),
    "fisher-sam-k2": (
        lambda: xs.fisher_sam(0.1, 2.0, ascent_steps=2),
        lambda w, state: (ascent(w, 0.1, k=2, fisher_eta=2.0)[0], state),
    ),
    "looksam": (
        lambda: xs.looksam(0.1, every=3, alpha=0.7),
        with_history(lambda w, g_v, t: looksam_step(w, g_v, t % 3 == 0, 0.1, 0.7)),
    ),
    "sam-masked": (
        lambda: xs.sam(0.1, perturbation_mask=KERNEL_ONLY),
        lambda w, state: (ascent(w, 0.1, mask=KERNEL)[0], state),
    ),
    "xsam-masked": (
        lambda: xs.xsam(0.15, 0.6, search_every=3, perturbation_mask=KERNEL_ONLY),
        xsam_np(0.15, 0.6, 3, loss_np, grad_np, mask=KERNEL),
    ),
}


def trajectory(tx, start, loss_fn):
    params = to_tree(start, jnp.float64)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, loss_fn=loss_fn)
        return optax.apply_updates(params, updates), state

    out = []
    for _ in range(STEPS):
        params, state = step(params, state)
        assert all(p.dtype == jnp.float64 for p in jax.tree.leaves(params))
        out.append(to_vec(params))
    return out, state


def reference_trajectory(direction, start):
    w, buf, state, out = start.copy(), np.zeros_like(start), (0, 1.0), []
    for _ in range(STEPS):
        d, state = direction(w, state)
        buf = MU * buf + d
        w = w - LR * buf
        out.append(w)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_float64_trajectory_matches_the_reference(name):
    make, direction = CASES[name]
    interior = name == "xsam-interior"
    start, loss_fn = (W_STEEP, steep_loss_jax) if interior else (W0, loss_jax)
    with jax.enable_x64(True):
        lib, state = trajectory(optax.chain(make(), optax.sgd(LR, momentum=MU)), start, loss_fn)
    ref = reference_trajectory(direction, start)
    worst = max(np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(lib, ref, strict=True))
    print(f"{name}: largest relative difference {worst:.3g}")
    assert worst < RTOL, f"{name}: largest relative difference {worst:.3g}"
    for leaf in jax.tree.leaves(state[0]):  # XSAM's α*, probe losses, cos ψ; the averages
        assert leaf.dtype in (jnp.int32, jnp.float64), leaf.dtype
