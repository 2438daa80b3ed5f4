r"""XSAM's α search (Chen & Zhou, ICLR 2026): probe the ascent plane, then pick α*.

After the ascent from θ to ϑ_k, the chord ϑ_k − θ and g_k = ∇L(ϑ_k) span a plane holding the
unit directions

.. math::
  v(\alpha) = \frac{\sin((1-\alpha)\psi)\, v_0 + \sin(\alpha\psi)\, v_1}{\sin\psi},\quad
  v_0 = \frac{\vartheta_k - \theta}{\|\vartheta_k - \theta\|},\quad
  v_1 = \frac{g_k}{\|g_k\|},\quad \cos\psi = \langle v_0, v_1\rangle.

XSAM evaluates L(θ + ρ_max·v(α)) on a grid of α and keeps the first maximiser. The two halves
are separate functions, so that `xsam_jax.landscape` measures exactly what the optimizer
computes and other selection rules (refining α* around the grid maximum, capping the rotation,
smoothing α* over searches) can be added as options of `xsam`: `probe_losses` evaluates any set
of α and radii, `first_finite_argmax` is the paper's rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from xsam_jax._src import tree_math
from xsam_jax._src.slerp import slerp_coefficients
from xsam_jax._src.tree_math import PyTree


class Plane(NamedTuple):
    """The ascent plane at θ.

    Attributes:
      chord: ϑ_k − θ, the origin of v0.
      g_k: the gradient at ϑ_k, the origin of v1.
      chord_norm: ‖ϑ_k − θ‖.
      grad_norm: ‖g_k‖.
      cos_psi: cos ψ = ⟨v0, v1⟩.
      eps: added to the norms in denominators, so zero vectors give zero directions.
    """

    chord: PyTree
    g_k: PyTree
    chord_norm: jax.Array
    grad_norm: jax.Array
    cos_psi: jax.Array
    eps: Any


def ascent_plane(chord: PyTree, g_k: PyTree, eps: Any) -> Plane:
    """The plane of the chord ϑ_k − θ and g_k, with their norms and the angle between them."""
    chord_norm, grad_norm = tree_math.norm(chord), tree_math.norm(g_k)
    cos_psi = tree_math.vdot(chord, g_k) / ((chord_norm + eps) * (grad_norm + eps))
    return Plane(chord, g_k, chord_norm, grad_norm, cos_psi, eps)


def angle(plane: Plane) -> jax.Array:
    """ψ in radians, from the clipped cosine (rounding can push |cos ψ| past 1)."""
    return jnp.arccos(jnp.clip(plane.cos_psi, -1.0, 1.0))


def along(plane: Plane, alpha: Any, length: Any) -> tuple[jax.Array, jax.Array]:
    """Coefficients (c, d) with length·v(α) = c·chord + d·g_k; α and length broadcast.

    One fused combination of two trees that already exist, so no unit vector is ever formed;
    α = 1 gives d·g_k with d = length/‖g_k‖ up to eps, so XSAM with α = 1 is SAM exactly.
    """
    a, b = slerp_coefficients(alpha, plane.cos_psi)
    return length * a / (plane.chord_norm + plane.eps), length * b / (plane.grad_norm + plane.eps)


def evaluate(fn: Callable[[jax.Array], Any], xs: jax.Array, chunk: int | None) -> Any:
    """`fn` over the leading axis of `xs`: one `vmap` (chunk None) or `lax.map` by chunks."""
    if chunk is None:
        return jax.vmap(fn)(xs)
    return lax.map(fn, xs, batch_size=chunk)


def probe_losses(
    loss_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    plane: Plane,
    alphas: jax.Array,
    radius: Any,
    chunk: int | None,
) -> jax.Array:
    """L(θ + r·v(α)) for α in `alphas` and r in `radius`, broadcast against each other.

    Args:
      loss_fn: the loss of the params on the current batch.
      params: θ.
      plane: the ascent plane at θ.
      alphas: the candidates α (any shape).
      radius: the probe radius r (any shape broadcasting with `alphas`).
      chunk: evaluate at most this many points at once (`lax.map`); None: all in one `vmap`.

    Returns:
      The losses, of the broadcast shape of `alphas` and `radius`, in the dtype of cos ψ.
    """
    c, d = jnp.broadcast_arrays(*along(plane, alphas, radius))
    coefficients = jnp.stack([c.ravel(), d.ravel()], axis=1)

    def probe(cd):
        point = tree_math.add_scaled(params, [cd[0], cd[1]], [plane.chord, plane.g_k])
        return jnp.asarray(loss_fn(point), plane.cos_psi.dtype)

    return evaluate(probe, coefficients, chunk).reshape(c.shape)


def first_finite_argmax(alphas: jax.Array, losses: jax.Array, fallback: Any) -> jax.Array:
    """The first α of largest finite loss (XSAM's rule); `fallback` if no loss is finite."""
    finite = jnp.isfinite(losses)
    best = jnp.argmax(jnp.where(finite, losses, -jnp.inf))
    return jnp.where(finite.any(), alphas[best], fallback)
