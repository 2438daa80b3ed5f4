"""SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021) as Optax transformations."""

from __future__ import annotations

from typing import Any

import optax

from xsam_jax._src.base import Method, shared_options, sharpness_aware


def sam(
    rho: float | optax.Schedule = 0.05,
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
    r"""Sharpness-aware minimisation: replace g0 by the gradient at the ascent point.

    SAM minimises :math:`\max_{\|\epsilon\|_p \le \rho} L(\theta + \epsilon)`. With
    :math:`k` = ``ascent_steps`` steps of length :math:`\rho/k` on the same batch,

    .. math::
      \vartheta_0 = \theta,\quad
      \vartheta_{i+1} = \vartheta_i + \tfrac{\rho}{k}\, d(\nabla L(\vartheta_i)),\quad
      \text{output } \nabla L(\vartheta_k),

    where :math:`d(g)` is :math:`g/\|g\|_2` (``norm=2``), :math:`\operatorname{sign}(g)`
    (``norm='inf'``) or :math:`\operatorname{sign}(g)|g|^{q-1}/\|g\|_q^{q-1}` with
    :math:`q = p/(p-1)` for any p > 1 (Foret et al. 2021, Eq. 2); ``normalize=False`` uses
    :math:`d(g) = g` (unnormalised SAM). ``adaptive=True`` is ASAM (see `asam`). The output is
    applied at θ by the base optimizer chained after this transformation, so momentum, weight
    decay and learning-rate schedules stay Optax's. Costs k extra gradients per step.

    The multi-step ascent is not projected back onto the ball; its end point lies within
    distance ρ of θ because the path has length ρ.

    Args:
      rho: total ascent length ρ ≥ 0, a float or an `optax.Schedule` of the step count. On a
        step whose ρ is 0 the clean gradient is returned and no second gradient is taken.
      ascent_steps: number k ≥ 1 of ascent steps; None means 1.
      norm: p of the ρ-ball: 2, ``'inf'``, or any number p > 1; None means 2. Both default to
        None, not to numbers, so that `optax.inject_hyperparams` (which traces every numeric
        argument) leaves them static: they fix the shape of the computation.
      adaptive: ascend in the space rescaled by :math:`T_w = |w| + \eta` (ASAM).
      eta: ASAM's η ≥ 0.
      adaptive_mask: which leaves ASAM rescales (a pytree of bools, possibly a prefix of the
        params, or a callable params -> such a pytree, like optax masks); None = every leaf.
      normalize: False gives unnormalised SAM (USAM): ϑ = θ + ρ·g.
      eps: added to norms in denominators, so zero gradients give a zero perturbation.
      axis_name: the mapped axis of `pmap` / `shard_map` for data parallelism, or None.
      local_perturbation: False (default) climbs along the gradient averaged over
        `axis_name` (result independent of the device count); True climbs from each device's
        local gradients and averages only the output (m-sharpness with m = per-device batch).
      perturbation_mask: which leaves the ascent moves: a pytree of bools (possibly a prefix
        of the params) or a callable params -> such a pytree, like optax masks; None = every
        leaf. Each ascent step follows d of the gradient restricted to the selected leaves
        (norms over them only), and the gradient at the ascent point is taken for every leaf,
        as in the SAM-ON code (Mueller et al. 2023), which selects the normalisation layers
        (`xsam_jax.training.normalization_mask`). A mask selecting no leaf makes every step a
        ρ = 0 step: the clean gradient, no second gradient.

    Returns:
      An `optax.GradientTransformationExtraArgs`. Its `update` needs the keyword argument
      ``loss_fn(params) -> scalar``, the loss on the same batch as the gradients, and takes
      the optional keyword ``perturb``: None (default) decides with `lax.cond` whether a
      scheduled ρ is positive; a Python bool, computed on the host by
      `xsam_jax.perturbed_steps`, builds a program without that conditional (on XLA:CPU a
      convolution's gradient inside one runs several times slower).

    References:
      Foret et al., `Sharpness-Aware Minimization for Efficiently Improving Generalization
      <https://arxiv.org/abs/2010.01412>`_, ICLR 2021.
    """
    options = shared_options(locals())
    return sharpness_aware(Method("asam" if adaptive else "sam"), rho, options)


def asam(
    rho: float | optax.Schedule = 0.5,
    eta: float = 0.01,
    *,
    ascent_steps: int | None = None,
    norm: float | str | None = None,
    adaptive_mask: Any = None,
    normalize: bool = True,
    eps: float = 1e-12,
    axis_name: str | None = None,
    local_perturbation: bool = False,
    perturbation_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Adaptive SAM: SAM in the space rescaled by :math:`T_w = |w| + \eta`.

    The perturbation is the official ASAM one (Kwon et al. 2021, Eq. 11 with the
    element-wise operator :math:`T_w = |w| + \eta`),

    .. math::
      \epsilon = \rho\, \frac{T_w^2\, g}{\|T_w\, g\|_2},

    so the neighbourhood scales with the weights and the sharpness is invariant to
    rescaling them. The official code rescales only weights, not biases; pass e.g.
    ``adaptive_mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)`` for that behaviour.
    With every :math:`|w| = c` this is SAM with radius :math:`\rho (c + \eta)`.

    Args:
      rho: total ascent length in the rescaled space (ASAM's default 0.5; 2.0 is common with
        label smoothing on CIFAR); a float or a schedule.
      eta: η ≥ 0, keeps zero weights perturbable.
      ascent_steps, norm, adaptive_mask, normalize, eps, axis_name, local_perturbation,
        perturbation_mask: as in `sam`.

    Returns:
      An `optax.GradientTransformationExtraArgs` (see `sam`).

    References:
      Kwon et al., `ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning
      of Deep Neural Networks <https://arxiv.org/abs/2102.11600>`_, ICML 2021.
    """
    options = shared_options(locals(), adaptive=True)
    return sharpness_aware(Method("asam"), rho, options)
