r"""Spherical interpolation in the plane of two unit directions (XSAM, Eq. 6).

Given unit vectors :math:`v_0, v_1` at angle :math:`\psi = \arccos\langle v_0, v_1\rangle`,

.. math::
  v(\alpha) = \frac{\sin((1-\alpha)\psi)}{\sin\psi} v_0 + \frac{\sin(\alpha\psi)}{\sin\psi} v_1,

a unit vector at angle :math:`\alpha\psi` from :math:`v_0`; :math:`\alpha > 1` keeps rotating
past :math:`v_1`. We only ever need the two scalar coefficients, so directions are formed as one
fused linear combination of trees that already exist.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Below this sin(psi) the two directions are treated as parallel (or anti-parallel).
_PARALLEL_SIN = 1e-6


def slerp_coefficients(
    alpha: jax.Array | float, cos_psi: jax.Array | float
) -> tuple[jax.Array, jax.Array]:
    r"""Coefficients (a, b) with v(alpha) = a * v0 + b * v1.

    The cosine is clipped to [-1, 1] before `arccos` (rounding can push it past 1).
    When sin(psi) -> 0 the exact limit a = 1 - alpha, b = alpha is used, so alpha = 0
    and alpha = 1 still give exactly v0 and v1. (The authors' code falls back to
    (v0 + v1) / 2 there, which ignores alpha; for parallel directions both agree.)

    Args:
      alpha: interpolation parameter(s); any shape.
      cos_psi: <v0, v1> of the unit directions (a scalar).

    Returns:
      The pair (a, b), broadcast to alpha's shape, in the inputs' dtype promoted to at least
      float32 (float64 for float64 inputs).
    """
    dtype = jnp.promote_types(jnp.result_type(alpha, cos_psi), jnp.float32)
    alpha = jnp.asarray(alpha, dtype)
    psi = jnp.arccos(jnp.clip(jnp.asarray(cos_psi, dtype), -1.0, 1.0))
    sin_psi = jnp.sin(psi)
    parallel = sin_psi < _PARALLEL_SIN
    safe_sin = jnp.where(parallel, 1.0, sin_psi)
    a = jnp.where(parallel, 1.0 - alpha, jnp.sin((1.0 - alpha) * psi) / safe_sin)
    b = jnp.where(parallel, alpha, jnp.sin(alpha * psi) / safe_sin)
    return a, b


def alpha_grid(alpha_max: float, alpha_step: float) -> np.ndarray:
    """The XSAM search grid {0, step, 2 step, ..., alpha_max} (a float64 host array).

    Built from integer multiples so the grid has exactly round(alpha_max / step) + 1 points
    (21 for the defaults 2.0 and 0.1) without cumulative rounding.
    """
    if alpha_step <= 0:
        raise ValueError(f"alpha_step must be > 0, got {alpha_step!r}.")
    if alpha_max < 0:
        raise ValueError(f"alpha_max must be >= 0, got {alpha_max!r}.")
    n = int(np.floor(alpha_max / alpha_step + 1e-6)) + 1
    return np.arange(n, dtype=np.float64) * alpha_step
