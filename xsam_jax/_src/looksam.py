"""LookSAM (Liu et al. 2022): SAM every k steps, its sharpness direction reused in between."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from xsam_jax._src import tree_math
from xsam_jax._src.base import Method, shared_options, sharpness_aware
from xsam_jax._src.tree_math import PyTree
from xsam_jax._src.validation import (
    as_schedule,
    check_positive_int,
    check_radius,
    check_range,
    static_value,
)


class LookSAMState(NamedTuple):
    """State of `looksam`.

    Attributes:
      count: number of `update` calls so far (int32); decides the full steps and ρ schedules.
      orthogonal: g_v, the part of the last full step's SAM gradient orthogonal to its clean
        gradient, in the params' computation dtype (zeros before the first full step).
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
    orthogonal: PyTree


def _safe_ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator, and 0 where the denominator is 0 (no direction to add)."""
    positive = denominator > 0
    return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


def _full_step_radius(rho: Any, every: Any) -> Any:
    """ρ on the counts that are multiples of `every`, 0 in between; ρ itself if every is 1."""
    if static_value(every) == 1:
        return rho
    rho_fn = as_schedule(rho)
    return lambda count: jnp.where(count % every == 0, rho_fn(count), 0.0)


def looksam(
    rho: float | optax.Schedule = 0.05,
    every: int = 5,
    alpha: float = 0.7,
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
    r"""LookSAM: the SAM gradient every k steps, a cheap estimate of it in between.

    LookSAM (Liu et al. 2022) observes that the part of the SAM gradient :math:`g_s`
    orthogonal to the clean gradient :math:`g` changes slowly. On full steps
    (``count % every == 0``) it takes the SAM gradient (see `sam`), outputs it and stores

    .. math::
      g_v = g_s - \frac{\langle g, g_s\rangle}{\|g\|^2}\, g;

    on the steps in between it outputs, at the cost of the clean gradient alone,

    .. math::
      g + \alpha\, \frac{\|g\|}{\|g_v\|}\, g_v .

    Norms and the projection run over the whole pytree (pytorch-optimizer's ``LookSAM``
    projects each tensor on its own). The full steps are the steps whose ρ is positive: the
    method runs with the radius ``rho`` on multiples of ``every`` and 0 in between, through the
    same gate as a ρ schedule, so the steps in between trace and take no second gradient. A
    loop that plans its steps (``perturb=``, see `xsam_jax.perturbed_steps`) computes the
    plan as ``xs.perturbed_steps(rho, n) & (np.arange(n) % every == 0)``. Steps on which a
    ρ schedule is 0 also reuse :math:`g_v` (the clean gradient before the first full step).
    ``every=1`` with a constant ρ is `sam`.

    Args:
      rho: total ascent length ρ ≥ 0 of the full steps (float or schedule of the step count).
      every: k ≥ 1, the period of the full steps (the paper's k; 5 there).
      alpha: α ≥ 0, the weight of the reused direction (0.7 in the paper).
      ascent_steps, norm, adaptive, eta, adaptive_mask, normalize, eps: as in `sam`; they
        shape the full steps' ascent.
      axis_name, local_perturbation, perturbation_mask: as in `sam`. With
        ``local_perturbation=True`` each replica forms its own :math:`g_v` and the stored one
        is their average, identical on every replica; between full steps each replica adds it
        to its own clean gradient.

    Returns:
      An `optax.GradientTransformationExtraArgs` with state `LookSAMState` (needs
      ``loss_fn``, takes ``perturb``; see `sam`).

    Examples:
      On :math:`L(w) = \tfrac12 w^\top \mathrm{diag}(1, 2)\, w` at w = (4, 1.5), g = (4, 3).
      Step 0 is a full SAM step: ε = 0.5·(0.8, 0.6), :math:`g_s` = diag(1, 2)·(4.4, 1.8) =
      (4.4, 3.6), whose part orthogonal to g is :math:`g_v = g_s - 1.136\, g` =
      (−0.144, 0.192) = 0.24·(−0.6, 0.8). Step 1 (count 1, not a multiple of 2) takes g alone
      and outputs :math:`g + 0.7 \cdot (5 / 0.24)\, g_v` = (4, 3) + 3.5·(−0.6, 0.8); step 2 is a
      full step again:

      >>> import jax, jax.numpy as jnp
      >>> import xsam_jax as xs
      >>> def loss(w):
      ...     return 0.5 * (w[0] ** 2 + 2.0 * w[1] ** 2)
      >>> w = jnp.array([4.0, 1.5])
      >>> tx = xs.looksam(rho=0.5, every=2, alpha=0.7)
      >>> state = tx.init(w)
      >>> for _ in range(3):
      ...     updates, state = tx.update(jax.grad(loss)(w), state, w, loss_fn=loss)
      ...     print([round(float(v), 4) for v in updates])
      [4.4, 3.6]
      [1.9, 5.8]
      [4.4, 3.6]

    References:
      Liu, Mai, Chen, Hsieh & You, `Towards Efficient and Scalable Sharpness-Aware
      Minimization <https://arxiv.org/abs/2203.02714>`_, CVPR 2022.
    """
    check_radius("rho", rho)
    check_positive_int("every", every)
    check_range("alpha", alpha, low=0.0)
    options = shared_options(locals())

    def init(params: PyTree) -> LookSAMState:
        zeros = jax.tree.map(jnp.zeros_like, tree_math.upcast(params))
        return LookSAMState(count=jnp.zeros([], jnp.int32), orthogonal=zeros)

    def output(climb, state, step):
        g0, g_s = climb.g0, climb.g_k
        projection = _safe_ratio(tree_math.vdot(g0, g_s), tree_math.vdot(g0, g0))
        orthogonal = tree_math.combine([1.0, -projection], [g_s, g0], like=state.orthogonal)
        return g_s, state._replace(orthogonal=step.averaging.output(orthogonal))

    def clean(g0, state):
        weight = alpha * _safe_ratio(tree_math.norm(g0), tree_math.norm(state.orthogonal))
        return tree_math.combine([1.0, weight], [g0, state.orthogonal], like=g0), state

    method = Method("looksam", output, init, clean=clean)
    return sharpness_aware(method, _full_step_radius(rho, every), options)
