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


def fisher_direction(g: np.ndarray, eta: float) -> np.ndarray:
    """Fisher SAM (Kim et al. 2022): argmax of <g, e> on e^T f e <= 1, f = 1 + eta g*g."""
    f = 1.0 + eta * g * g
    return (g / f) / np.sqrt(g @ (g / f))


def ascent(
    w,
    rho,
    k=1,
    p=2.0,
    normalize=True,
    scale=None,
    grad=grad_np,
    start=None,
    mask=None,
    fisher_eta=None,
):
    """k steps of length rho/k; returns (g_k, chord).

    `scale` is ASAM's T_w; `start` replaces the first step's gradient (F-SAM, VaSSO); `mask`
    (bools per coordinate) zeroes the other coordinates of every step's gradient before its
    direction is taken (SAM-ON); `fisher_eta` takes Fisher SAM's direction.
    """
    chord = np.zeros_like(w)
    for i in range(k):
        g = start if (i == 0 and start is not None) else grad(w + chord)
        if mask is not None:
            g = np.where(mask, g, 0.0)
        if fisher_eta is not None:
            chord = chord + rho / k * fisher_direction(g, fisher_eta)
        elif scale is None:
            chord = chord + rho / k * dual(g, p, normalize)
        else:
            chord = chord + rho / k * scale * dual(scale * g, p, normalize)
    return grad(w + chord), chord


def fsam_step(w, m, rho, sigma, lmbda, grad=grad_np):
    """One Friendly-SAM step as in the authors' code (nblt/F-SAM, FriendlySAM).

    `m` is the moving average of the previous steps' gradients (None before the first
    step, which ascends along g and starts m at g). Returns (direction, new m).
    """
    g = grad(w)
    if m is None:
        return ascent(w, rho, grad=grad)[0], g
    return ascent(w, rho, grad=grad, start=g - sigma * m)[0], lmbda * m + (1 - lmbda) * g


def vasso_step(w, d, rho, theta, grad=grad_np):
    """One VaSSO step (Li & Giannakis 2023; BingcongLi/VaSSO): ascend along d = (1-θ)d + θg.

    `d` is None before the first step (then d = g). Returns (direction, new d).
    """
    g = grad(w)
    d = g if d is None else (1 - theta) * d + theta * g
    return ascent(w, rho, grad=grad, start=d)[0], d


def looksam_step(w, g_v, full, rho, alpha, grad=grad_np):
    """One LookSAM step (Liu et al. 2022): returns (direction, stored g_v).

    A full step takes the SAM gradient g_s and stores its component orthogonal to g; the
    steps in between return g + alpha ||g|| / ||g_v|| g_v.
    """
    g = grad(w)
    if full:
        g_s = ascent(w, rho, grad=grad)[0]
        return g_s, g_s - (g @ g_s) / (g @ g) * g
    return g + alpha * np.linalg.norm(g) / np.linalg.norm(g_v) * g_v, g_v


def slerp(v0: np.ndarray, v1: np.ndarray, alpha: float) -> np.ndarray:
    """XSAM Eq. 6 with the lerp limit for (anti)parallel directions."""
    psi = np.arccos(np.clip(v0 @ v1, -1.0, 1.0))
    if np.sin(psi) < 1e-6:
        return (1 - alpha) * v0 + alpha * v1
    return (np.sin((1 - alpha) * psi) * v0 + np.sin(alpha * psi) * v1) / np.sin(psi)


def xsam_step(
    w, rho, rho_max, alpha, grid=None, k=1, loss=loss_np, grad=grad_np, eps=0.0, mask=None
):
    """One XSAM step: returns (direction, alpha*, probe losses or None, cos psi).

    `eps` is added to the norms of v0 and v1 as in the authors' code (it matters at 1e-11).
    With `mask` (bools per coordinate) the ascent, v1 and the probes are confined to the
    selected coordinates, and the others get the gradient at the ascent point.
    """
    g_k, chord = ascent(w, rho, k, grad=grad, mask=mask)
    g_plane = g_k if mask is None else np.where(mask, g_k, 0.0)
    v0 = chord / (np.linalg.norm(chord) + eps)
    v1 = g_plane / (np.linalg.norm(g_plane) + eps)
    losses = None
    if grid is not None:
        losses = np.array([loss(w + rho_max * slerp(v0, v1, a)) for a in grid])
        best, best_loss = alpha, -np.inf
        for a, value in zip(grid, losses, strict=True):
            if np.isfinite(value) and value > best_loss:  # first strict maximum wins
                best, best_loss = a, value
        alpha = best
    direction = np.linalg.norm(g_plane) * slerp(v0, v1, alpha)
    if mask is not None:
        direction = np.where(mask, direction, g_k)
    return direction, alpha, losses, float(v0 @ v1)
