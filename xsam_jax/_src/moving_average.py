"""Friendly-SAM (Li et al. 2024) and VaSSO (Li & Giannakis 2023): ascents steered by a moving
average of the clean gradients.

Both keep an exponential moving average of the clean gradient, started at the first gradient
and updated on every step (steps whose ρ is 0 included, so a late phase starts with a warm
average). Under data parallelism the average is that of the replica-averaged gradient, so it
is identical on every replica (training steps keep one optimizer state for all of them); with
``local_perturbation=True`` each replica's ascent combines that shared average with its own
local gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from xsam_jax._src import tree_math
from xsam_jax._src.base import Method, shared_options, sharpness_aware
from xsam_jax._src.tree_math import PyTree
from xsam_jax._src.validation import check_range


class MovingAverageState(NamedTuple):
    """State of `fsam` and `vasso`.

    Attributes:
      count: number of `update` calls so far (int32); the argument of ρ schedules.
      average: the exponential moving average of the clean gradients of the steps so far
        (F-SAM's m, VaSSO's d), in the params' computation dtype; zeros before the first.
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
    average: PyTree


def _init(params: PyTree) -> MovingAverageState:
    return MovingAverageState(
        count=jnp.zeros([], jnp.int32),
        average=jax.tree.map(jnp.zeros_like, tree_math.upcast(params)),
    )


def _averaged(average: PyTree, g: PyTree, decay: Any, count: jax.Array) -> PyTree:
    """decay·average + (1 − decay)·g, and g itself on the first step (as both codes start)."""
    mixed = tree_math.combine([decay, 1.0 - decay], [average, g], like=average)
    return jax.tree.map(lambda m, x: jnp.where(count == 0, x.astype(m.dtype), m), mixed, g)


def _moving_average_method(
    name: str, decay: Any, ascent_start: Callable[[PyTree, MovingAverageState], PyTree]
) -> Method:
    """A method whose ascent starts along `ascent_start` and whose state tracks the average."""

    def track(g0: PyTree, state: MovingAverageState) -> MovingAverageState:
        return state._replace(average=_averaged(state.average, g0, decay, state.count))

    return Method(name, init=_init, ascent_start=ascent_start, track=track)


def fsam(
    rho: float | optax.Schedule = 0.05,
    sigma: float = 1.0,
    lmbda: float = 0.9,
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
    r"""Friendly-SAM: ascend along the stochastic part of the gradient only.

    The minibatch gradient :math:`g_t` is the full gradient plus stochastic noise; F-SAM
    (Li et al. 2024) finds the full-gradient component harmful to the ascent, estimates it by
    an exponential moving average :math:`m` of past gradients and removes it:

    .. math::
      \epsilon_t = \rho\, \frac{g_t - \sigma\, m_{t-1}}{\|g_t - \sigma\, m_{t-1}\|},\qquad
      m_t = \lambda\, m_{t-1} + (1 - \lambda)\, g_t,\qquad m_0 = g_0,

    and outputs the gradient at :math:`\theta + \epsilon_t`, as SAM does. As in the authors'
    code (github.com/nblt/F-SAM, class ``FriendlySAM``), the ascent subtracts the average of
    the *previous* steps and the first step ascends along :math:`g_0` itself. The average is
    updated on every step, ρ = 0 steps included. σ = 0 is `sam`. With ``ascent_steps`` k > 1
    the first step starts along :math:`g_t - \sigma m_{t-1}` and the later ones follow the
    gradients at the ascent points, as in `sam`.

    Data parallelism: :math:`m` is the average of the replica-averaged gradients, identical
    on every replica; with ``local_perturbation=True`` each replica ascends along its own
    :math:`g_t - \sigma m_{t-1}`.

    Args:
      rho: total ascent length ρ ≥ 0 (float or schedule); the authors' default is 0.05 (their
        CIFAR-100 script uses 0.2 with λ = 0.6).
      sigma: σ ≥ 0, how much of the estimated full gradient is removed.
      lmbda: λ in [0, 1], the decay of the moving average (named as in the authors' code).
      ascent_steps, norm, adaptive, eta, adaptive_mask, normalize, eps: as in `sam`.
      axis_name, local_perturbation, perturbation_mask: as in `sam`. A mask restricts the
        ascent direction, not the average, which follows every leaf.

    Returns:
      An `optax.GradientTransformationExtraArgs` with state `MovingAverageState` (needs
      ``loss_fn``, takes ``perturb``; see `sam`).

    Examples:
      On :math:`L(w) = \tfrac12\|w\|^2` the gradient at a point is the point itself. The
      first step, at w = (3, 4), is SAM's, (3, 4) + 0.5·(0.6, 0.8), and starts m at
      g₁ = (3, 4). At w = (0, 4), with σ = 0.5, the ascent follows
      g₂ − σ·m = (−1.5, 2) = 2.5·(−0.6, 0.8), so the output is (0, 4) + 0.5·(−0.6, 0.8) where
      SAM's is (0, 4.5); then m = 0.9·(3, 4) + 0.1·(0, 4):

      >>> import jax, jax.numpy as jnp
      >>> import xsam_jax as xs
      >>> def loss(w):
      ...     return 0.5 * jnp.sum(w**2)
      >>> tx = xs.fsam(rho=0.5, sigma=0.5, lmbda=0.9)
      >>> state = tx.init(jnp.zeros(2))
      >>> for w in [jnp.array([3.0, 4.0]), jnp.array([0.0, 4.0])]:
      ...     updates, state = tx.update(jax.grad(loss)(w), state, w, loss_fn=loss)
      ...     print([round(float(v), 4) for v in updates])
      [3.3, 4.4]
      [-0.3, 4.4]
      >>> [round(float(v), 4) for v in state.average]  # m
      [2.7, 4.0]

    References:
      Li, Zhou, He, Cheng & Huang, `Friendly Sharpness-Aware Minimization
      <https://arxiv.org/abs/2403.12350>`_, CVPR 2024.
    """
    check_range("sigma", sigma, low=0.0)
    check_range("lmbda", lmbda, low=0.0, high=1.0)
    options = shared_options(locals())

    def ascent_start(g0: PyTree, state: MovingAverageState) -> PyTree:
        # The average is still m_{t-1} here (zeros on the first step: g0 itself).
        return tree_math.combine([1.0, -sigma], [g0, state.average], like=state.average)

    return sharpness_aware(_moving_average_method("fsam", lmbda, ascent_start), rho, options)


def vasso(
    rho: float | optax.Schedule = 0.05,
    theta: float = 0.9,
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
    r"""VaSSO: ascend along a variance-suppressed average of the stochastic gradients.

    SAM's ascent direction, one minibatch gradient, is noisy; VaSSO (Li & Giannakis 2023)
    ascends along an exponential moving average of them instead:

    .. math::
      d_t = (1 - \theta)\, d_{t-1} + \theta\, g_t,\qquad d_0 = g_0,\qquad
      \epsilon_t = \rho\, \frac{d_t}{\|d_t\|},

    and outputs the gradient at :math:`\theta_t + \epsilon_t`, as SAM does (the authors'
    code, github.com/BingcongLi/VaSSO, ``solver/vasso.py``). The average is updated on every
    step, ρ = 0 steps included. θ = 1 is `sam`. The authors add 1e-7 to ‖d‖; here it is
    ``eps`` as in every method.

    Data parallelism: :math:`d` is the average of the replica-averaged gradients, identical
    on every replica; with ``local_perturbation=True`` each replica ascends along
    :math:`(1 - \theta) d_{t-1} + \theta g_t` with its own local :math:`g_t`.

    Args:
      rho: total ascent length ρ ≥ 0 (float or schedule); the authors' default is 0.05.
      theta: θ in [0, 1], the weight of the newest gradient in the average (the authors'
        default 0.9).
      ascent_steps, norm, adaptive, eta, adaptive_mask, normalize, eps: as in `sam`.
      axis_name, local_perturbation, perturbation_mask: as in `sam`. A mask restricts the
        ascent direction, not the average, which follows every leaf.

    Returns:
      An `optax.GradientTransformationExtraArgs` with state `MovingAverageState` (needs
      ``loss_fn``, takes ``perturb``; see `sam`).

    Examples:
      On :math:`L(w) = \tfrac12\|w\|^2` the gradient at a point is the point itself. The
      first step, at w = (3, 4), is SAM's, (3, 4) + 0.5·(0.6, 0.8), and starts d at
      g₁ = (3, 4). At w = (−1, 4), with θ = 0.75, the ascent follows
      d = 0.25·(3, 4) + 0.75·(−1, 4) = (0, 4), so the output is (−1, 4) + 0.5·(0, 1), where
      SAM's would climb along g₂ = (−1, 4) itself:

      >>> import jax, jax.numpy as jnp
      >>> import xsam_jax as xs
      >>> def loss(w):
      ...     return 0.5 * jnp.sum(w**2)
      >>> tx = xs.vasso(rho=0.5, theta=0.75)
      >>> state = tx.init(jnp.zeros(2))
      >>> for w in [jnp.array([3.0, 4.0]), jnp.array([-1.0, 4.0])]:
      ...     updates, state = tx.update(jax.grad(loss)(w), state, w, loss_fn=loss)
      ...     print([round(float(v), 4) for v in updates])
      [3.3, 4.4]
      [-1.0, 4.5]
      >>> [round(float(v), 4) for v in state.average]  # d
      [0.0, 4.0]

    References:
      Li & Giannakis, `Enhancing Sharpness-Aware Optimization Through Variance Suppression
      <https://arxiv.org/abs/2309.15639>`_, NeurIPS 2023.
    """
    check_range("theta", theta, low=0.0, high=1.0)
    options = shared_options(locals())

    def ascent_start(g0: PyTree, state: MovingAverageState) -> PyTree:
        return _averaged(state.average, g0, 1.0 - theta, state.count)

    return sharpness_aware(_moving_average_method("vasso", 1.0 - theta, ascent_start), rho, options)
