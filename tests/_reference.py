"""Independent NumPy (float64) re-derivations of the methods, written from the papers.

Nothing here imports xsam_jax: the tests compare the library against these formulas.
The test problem is L(w) = 1/2 w^T A w + b^T w + c * sum(log cosh w), whose gradient
A w + b + c tanh(w) is written out by hand, on a 7-vector stored in the library as the
pytree {"kernel": (2, 3), "bias": (1,)} so global norms over several leaves are exercised.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

DIM = 7
_rng = np.random.default_rng(0)
_Q, _ = np.linalg.qr(_rng.normal(size=(DIM, DIM)))
A = _Q @ np.diag([6.0, 3.0, 2.0, 1.0, 0.5, 0.3, 0.1]) @ _Q.T
B = _rng.normal(size=DIM)
C = 0.5
W0 = _rng.normal(size=DIM)


# A quadratic whose top curvature (10) dominates the probes at radius 0.3: XSAM's α* is
# interior and moves from search to search along the trajectory from W_STEEP (ρ = 0.5,
# ρ_max = 0.3, lr 0.05, momentum 0.9), with a margin of 5e-4 between the best two probes.
H_STEEP = _Q @ np.diag([10.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05]) @ _Q.T
B_STEEP = _Q @ np.array([0.3, -1.0, 0.5, 0.2, -0.3, 0.1, 0.2])
W_STEEP = np.array([1.09, -0.58, -0.94, 0.67, -0.91, -0.41, -1.24])


def loss_np(w: np.ndarray) -> float:
    return float(0.5 * w @ A @ w + B @ w + C * np.sum(np.log(np.cosh(w))))


def grad_np(w: np.ndarray) -> np.ndarray:
    return A @ w + B + C * np.tanh(w)


def to_tree(w: np.ndarray, dtype=jnp.float32) -> dict:
    w = np.asarray(w)
    return {"kernel": jnp.asarray(w[:6].reshape(2, 3), dtype), "bias": jnp.asarray(w[6:], dtype)}


def to_vec(tree: dict) -> np.ndarray:
    return np.concatenate(
        [np.asarray(tree["kernel"], np.float64).ravel(), np.asarray(tree["bias"], np.float64)]
    )


def _flat(tree: dict) -> jnp.ndarray:
    """The 7-vector, in float32 for float32 and narrower params, in float64 for float64."""
    w = jnp.concatenate([tree["kernel"].ravel(), tree["bias"]])
    return w.astype(jnp.promote_types(w.dtype, jnp.float32))


def loss_jax(tree: dict) -> jnp.ndarray:
    w = _flat(tree)
    a, b = jnp.asarray(A, w.dtype), jnp.asarray(B, w.dtype)
    return 0.5 * w @ a @ w + b @ w + C * jnp.sum(jnp.log(jnp.cosh(w)))


def steep_loss_np(w: np.ndarray) -> float:
    return float(0.5 * w @ H_STEEP @ w + B_STEEP @ w)


def steep_grad_np(w: np.ndarray) -> np.ndarray:
    return H_STEEP @ w + B_STEEP


def steep_loss_jax(tree: dict) -> jnp.ndarray:
    w = _flat(tree)
    return 0.5 * w @ jnp.asarray(H_STEEP, w.dtype) @ w + jnp.asarray(B_STEEP, w.dtype) @ w


def dual(g: np.ndarray, p: float, normalize: bool = True) -> np.ndarray:
    """argmax_{||e||_p <= 1} <g, e> (Foret et al. 2021, Eq. 2)."""
    if not normalize:
        return g
    if p == np.inf:
        return np.sign(g)
    q = p / (p - 1)
    return np.sign(g) * np.abs(g) ** (q - 1) / np.sum(np.abs(g) ** q) ** ((q - 1) / q)


def ascent(w, rho, k=1, p=2.0, normalize=True, scale=None, grad=grad_np):
    """k steps of length rho/k; returns (g_k, chord). `scale` is ASAM's T_w."""
    chord = np.zeros_like(w)
    for _ in range(k):
        g = grad(w + chord)
        if scale is None:
            chord = chord + rho / k * dual(g, p, normalize)
        else:
            chord = chord + rho / k * scale * dual(scale * g, p, normalize)
    return grad(w + chord), chord


def slerp(v0: np.ndarray, v1: np.ndarray, alpha: float) -> np.ndarray:
    """XSAM Eq. 6 with the lerp limit for (anti)parallel directions."""
    psi = np.arccos(np.clip(v0 @ v1, -1.0, 1.0))
    if np.sin(psi) < 1e-6:
        return (1 - alpha) * v0 + alpha * v1
    return (np.sin((1 - alpha) * psi) * v0 + np.sin(alpha * psi) * v1) / np.sin(psi)


def xsam_step(w, rho, rho_max, alpha, grid=None, k=1, loss=loss_np, grad=grad_np, eps=0.0):
    """One XSAM step: returns (direction, alpha*, probe losses or None, cos psi).

    `eps` is added to the norms of v0 and v1 as in the authors' code (it matters at 1e-11).
    """
    g_k, chord = ascent(w, rho, k, grad=grad)
    v0 = chord / (np.linalg.norm(chord) + eps)
    v1 = g_k / (np.linalg.norm(g_k) + eps)
    losses = None
    if grid is not None:
        losses = np.array([loss(w + rho_max * slerp(v0, v1, a)) for a in grid])
        best, best_loss = alpha, -np.inf
        for a, value in zip(grid, losses, strict=True):
            if np.isfinite(value) and value > best_loss:  # first strict maximum wins
                best, best_loss = a, value
        alpha = best
    return np.linalg.norm(g_k) * slerp(v0, v1, alpha), alpha, losses, float(v0 @ v1)
