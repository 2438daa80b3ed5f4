"""WSAM (Yue et al. 2023): sharpness as a weighted regulariser of the loss."""

from __future__ import annotations

from typing import Any

import optax

from xsam_jax._src import tree_math
from xsam_jax._src.base import Method, shared_options, sharpness_aware
from xsam_jax._src.validation import check_range, static_value


def wsam(
    rho: float | optax.Schedule = 0.05,
    gamma: float = 0.9,
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
) -> optax.GradientTransformationExtraArgs:
    r"""Weighted SAM, the non-decoupled form.

    WSAM minimises :math:`L(\theta) + \frac{\gamma}{1-\gamma}\,[L(\theta+\epsilon) -
    L(\theta)]`, whose first-order gradient is

    .. math::
      d = \frac{1-2\gamma}{1-\gamma}\, g_0 + \frac{\gamma}{1-\gamma}\, g_p

    with :math:`g_p` the SAM gradient (see `sam`). γ = 0.5 is SAM and γ = 0 the clean
    gradient (then no second gradient is taken). The paper's decoupled variant, which
    applies the sharpness term outside the base optimizer's preconditioning, is not offered.

    Args:
      rho: total ascent length (float or schedule).
      gamma: γ in [0, 1), weight of the sharpness term.
      ascent_steps, norm, adaptive, eta, adaptive_mask, normalize, eps, axis_name,
        local_perturbation: as in `sam`.

    Returns:
      An `optax.GradientTransformationExtraArgs` (needs ``loss_fn``, see `sam`).

    References:
      Yue et al., `Sharpness-Aware Minimization Revisited: Weighted Sharpness as a
      Regularization Term <https://arxiv.org/abs/2305.15817>`_, KDD 2023.
    """
    check_range("gamma", gamma, low=0.0, high=1.0, high_open=True)
    options = shared_options(locals())
    clean_weight = (1.0 - 2.0 * gamma) / (1.0 - gamma)
    sharp_weight = gamma / (1.0 - gamma)

    def output(climb, state, step):
        del step
        g0, g_p = climb.g0, climb.g_k
        return tree_math.combine([clean_weight, sharp_weight], [g0, g_p], like=g0), state

    # gamma == 0 is the clean gradient: skip the ascent entirely.
    radius = 0.0 if static_value(gamma) == 0.0 else rho
    return sharpness_aware(Method("wsam", output), radius, options)
