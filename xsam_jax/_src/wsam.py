"""WSAM (Yue et al. 2023): sharpness as a weighted regulariser of the loss."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from xsam_jax._src import tree_math
from xsam_jax._src.base import Method, SAMState, shared_options, sharpness_aware
from xsam_jax._src.validation import as_schedule, check_radius, check_range, static_value


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
    perturbation_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Weighted SAM, the non-decoupled form.

    WSAM minimises :math:`L(\theta) + \frac{\gamma}{1-\gamma}\,[L(\theta+\epsilon) -
    L(\theta)]`, whose first-order gradient is

    .. math::
      d = \frac{1-2\gamma}{1-\gamma}\, g_0 + \frac{\gamma}{1-\gamma}\, g_p

    with :math:`g_p` the SAM gradient (see `sam`). γ = 0.5 is SAM and γ = 0 the clean
    gradient (then no second gradient is taken). This direction goes through the base
    optimizer chained after it (momentum, weight decay, preconditioning); the paper's default,
    which steps with the sharpness term on its own, is `wsam_decoupled`.

    Args:
      rho: total ascent length (float or schedule).
      gamma: γ in [0, 1), weight of the sharpness term.
      ascent_steps, norm, adaptive, eta, adaptive_mask, normalize, eps, axis_name,
        local_perturbation, perturbation_mask: as in `sam`.

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

    return sharpness_aware(Method("wsam", output), _radius(rho, gamma), options)


def _radius(rho: Any, gamma: Any) -> Any:
    """ρ, or 0 when γ = 0: the sharpness term vanishes, so no ascent is taken at all."""
    return 0.0 if static_value(gamma) == 0.0 else rho


class WSAMDecoupledState(NamedTuple):
    """State of `wsam_decoupled`.

    Attributes:
      count: number of `update` calls so far (int32); the argument of the ρ and
        learning-rate schedules.
      base: the base optimizer's state.
    """

    count: jax.Array
    base: optax.OptState


def wsam_decoupled(
    base_optimizer: optax.GradientTransformation,
    learning_rate: float | optax.Schedule,
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
    perturbation_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Weighted SAM, the decoupled form (the paper's default): wraps the base optimizer.

    The base optimizer steps with the clean gradient :math:`g_0` alone, and the sharpness term
    of WSAM's objective :math:`L(\theta) + \frac{\gamma}{1-\gamma}[L(\theta+\epsilon) -
    L(\theta)]` is applied as a step of its own, scaled by the learning rate :math:`\eta_t`:

    .. math::
      \theta_{t+1} = \theta_t + u_t(g_0)
        - \eta_t\, \frac{\gamma}{1-\gamma}\, (g_p - g_0),

    with :math:`u_t` the base optimizer's update and :math:`g_p` the SAM gradient (see `sam`).
    So momentum, weight decay and any preconditioning of the base optimizer act on the clean
    gradient only, as in the authors' code (Yue et al. 2023, Alg. 1). The separate step needs
    the learning rate, so this transformation *wraps* the base optimizer rather than being
    chained before it: use ``wsam_decoupled(optax.chain(optax.add_decayed_weights(wd),
    optax.sgd(lr, momentum=0.9)), lr)`` in place of that chain, with the same ``lr`` (float or
    schedule) in both places. With plain SGD as the base optimizer this equals `wsam`; γ = 0
    is the base optimizer alone (no second gradient is taken).

    Args:
      base_optimizer: the optimizer stepping with the clean gradient (an Optax
        transformation, e.g. ``optax.sgd(lr, momentum=0.9)``).
      learning_rate: η ≥ 0 scaling the sharpness step, a float or a schedule of the step
        count; the base optimizer's learning rate.
      rho: total ascent length (float or schedule).
      gamma: γ in [0, 1), weight of the sharpness term.
      ascent_steps, norm, adaptive, eta, adaptive_mask, normalize, eps, axis_name,
        local_perturbation, perturbation_mask: as in `sam`; the base optimizer always sees
        the clean gradient averaged over `axis_name`.

    Returns:
      An `optax.GradientTransformationExtraArgs` with state `WSAMDecoupledState`, whose
      updates are final (apply them with `optax.apply_updates`); `update` needs ``loss_fn``
      (see `sam`) and hands every extra argument to the base optimizer too.

    References:
      Yue et al., `Sharpness-Aware Minimization Revisited: Weighted Sharpness as a
      Regularization Term <https://arxiv.org/abs/2305.15817>`_, KDD 2023.
    """
    check_range("gamma", gamma, low=0.0, high=1.0, high_open=True)
    check_radius("learning_rate", learning_rate)
    options = shared_options(locals())
    base = optax.with_extra_args_support(base_optimizer)
    lr_fn = as_schedule(learning_rate)
    sharp_weight = gamma / (1.0 - gamma)

    def sharpness_gap(climb, state, step):
        del step
        return tree_math.combine([1.0, -1.0], [climb.g_k, climb.g0], like=climb.g0), state

    def no_gap(g0, state):
        return jax.tree.map(jnp.zeros_like, g0), state

    gap = sharpness_aware(
        Method("wsam_decoupled", sharpness_gap, clean=no_gap), _radius(rho, gamma), options
    )

    def init_fn(params: Any) -> WSAMDecoupledState:
        return WSAMDecoupledState(count=jnp.zeros([], jnp.int32), base=base.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        g_gap, gap_state = gap.update(updates, SAMState(state.count), params, **extra_args)
        clean = options.averaging.mean(updates)  # the same on every replica
        base_updates, base_state = base.update(clean, state.base, params, **extra_args)
        step = lr_fn(state.count).astype(tree_math.compute_dtype(updates)) * sharp_weight
        new_updates = tree_math.combine([1.0, -step], [base_updates, g_gap], like=base_updates)
        return new_updates, WSAMDecoupledState(count=gap_state.count, base=base_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
