"""GSAM (Zhuang et al. 2022): descend on the perturbed loss, ascend the surrogate gap."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from xsam_jax._src import tree_math
from xsam_jax._src.base import Method, shared_options, sharpness_aware
from xsam_jax._src.validation import check_range


def gsam(
    rho: float | optax.Schedule = 0.05,
    alpha: float = 0.4,
    *,
    ascent_steps: int | None = None,
    norm: float | str | None = None,
    adaptive: bool = False,
    eta: float = 0.01,
    adaptive_mask: Any = None,
    normalize: bool = True,
    eps: float = 1e-12,
    axis_name: str | None = None,
    local_perturbation: bool = False,
    perturbation_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Surrogate-gap guided SAM.

    With :math:`g_p` the SAM gradient (see `sam`) and :math:`g_0` the clean gradient,

    .. math::
      g_{0\perp} = g_0 - \frac{\langle g_0, g_p\rangle}{\|g_p\|^2} g_p, \qquad
      d = g_p - \alpha\, g_{0\perp},

    i.e. descend on the perturbed loss while decreasing the surrogate gap along the part of
    the clean gradient orthogonal to :math:`g_p` (Zhuang et al. 2022, Alg. 1). α = 0 is SAM.
    The paper ties ρ to the learning-rate schedule; pass a schedule as ``rho`` for that.

    Args:
      rho: total ascent length (float or schedule).
      alpha: α ≥ 0, weight of the gap-decreasing component (the paper uses 0.01–0.3 for
        ResNets and up to 0.6 for ViTs).
      ascent_steps, norm, adaptive, eta, adaptive_mask, normalize, eps, axis_name,
        local_perturbation, perturbation_mask: as in `sam`.

    Returns:
      An `optax.GradientTransformationExtraArgs` (needs ``loss_fn``, see `sam`).

    References:
      Zhuang et al., `Surrogate Gap Minimization Improves Sharpness-Aware Training
      <https://arxiv.org/abs/2203.08065>`_, ICLR 2022.
    """
    check_range("alpha", alpha, low=0.0)
    options = shared_options(locals())

    def output(climb, state, step):
        del step
        g0, g_p = climb.g0, climb.g_k
        sq = tree_math.vdot(g_p, g_p)
        # A zero perturbed gradient has no orthogonal complement to remove: d = -alpha*g0.
        projection = jnp.where(sq > 0, tree_math.vdot(g0, g_p) / jnp.where(sq > 0, sq, 1.0), 0.0)
        return tree_math.combine([1.0 + alpha * projection, -alpha], [g_p, g0], like=g0), state

    return sharpness_aware(Method("gsam", output), rho, options)
