r"""The ascent phase shared by every method: k normalised steps on the same batch.

.. math::
  \vartheta_0 = \theta, \qquad
  \vartheta_{i+1} = \vartheta_i + \tfrac{\rho}{k}\, d(g_i), \qquad g_i = \nabla L(\vartheta_i),

where :math:`d` is the maximiser of :math:`\langle g, \epsilon\rangle` on the unit ball of
the chosen norm (Foret et al. 2021, Eq. 2): for the p-norm ball with dual exponent
:math:`q = p/(p-1)`,

.. math::
  d(g) = \operatorname{sign}(g)\, |g|^{q-1} / \|g\|_q^{q-1},

which is :math:`g/\|g\|_2` for p = 2 and :math:`\operatorname{sign}(g)` for p = ∞. ASAM
(Kwon et al. 2021) ascends in the space rescaled by :math:`T_w = |w| + \eta`:
:math:`d(g) = T_w\, \hat d(T_w g)`, which for p = 2 is the official
:math:`T_w^2 g / \|T_w g\|`. Without normalisation (USAM) :math:`d(g) = g`. Fisher SAM
(Kim et al. 2022) measures the ball in the metric :math:`f = 1 + \eta_F\, g \odot g`:
:math:`d(g) = f^{-1} g / \sqrt{g^\top f^{-1} g}`.

A perturbation mask (SAM-ON, Mueller et al. 2023) restricts every step to the selected
leaves: d is taken of the gradient with the other leaves zeroed, so its norms run over the
selected leaves only and the other leaves are never moved.

Directions and the chord :math:`\vartheta_k - \theta` are computed in the computation dtype
(`tree_math`: float32 for bf16, f16 and f32 params, float64 for float64 ones; XSAM needs the
chord as :math:`v_0`); points in parameter space keep the params' dtype.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xsam_jax._src import tree_math
from xsam_jax._src.tree_math import PyTree
from xsam_jax._src.validation import (
    InvalidArgumentError,
    check_positive_int,
    check_range,
    static_value,
)

Mask = PyTree | Callable[[PyTree], PyTree] | None


@dataclasses.dataclass(frozen=True)
class AscentConfig:
    """Static description of the ascent (see module docstring)."""

    steps: int = 1
    norm: float = 2.0
    normalize: bool = True
    adaptive: bool = False
    eta: float = 0.01
    adaptive_mask: Mask = None
    eps: float = 1e-12
    perturbation_mask: Mask = None
    fisher_eta: float | None = None


def _parse_norm(norm: Any) -> float:
    if not isinstance(norm, str) and static_value(norm) is None:
        raise ValueError(
            "norm must be a Python number or 'inf': it selects the ascent direction when the "
            "step is traced. Under optax.inject_hyperparams, pass static_args=('norm',)."
        )
    if isinstance(norm, str):
        if norm.lower() in ("inf", "infinity"):
            return math.inf
        raise ValueError(f"norm must be a number p > 1 or 'inf', got {norm!r}.")
    try:
        p = float(norm)
    except (TypeError, ValueError):
        raise ValueError(f"norm must be a number p > 1 or 'inf', got {norm!r}.") from None
    if math.isnan(p) or p <= 1:
        raise ValueError(f"norm must be a number p > 1 or 'inf', got {norm!r}.")
    return p


def make_config(
    *,
    ascent_steps: int | None = None,
    norm: Any = None,
    normalize: bool = True,
    adaptive: bool = False,
    eta: float = 0.01,
    adaptive_mask: Mask = None,
    eps: float = 1e-12,
    perturbation_mask: Mask = None,
    fisher_eta: float | None = None,
) -> AscentConfig:
    """Validate the ascent arguments (ValueError naming the argument) and freeze them.

    `ascent_steps` and `norm` default to None (meaning 1 and 2) rather than to numbers because
    `optax.inject_hyperparams` turns every numeric argument, defaults included, into a traced
    hyperparameter, and these two shape the computation. `fisher_eta` (not None) replaces
    the p-norm ball by `fisher_sam`'s Fisher ball, which only that factory offers.
    """
    ascent_steps = 1 if ascent_steps is None else ascent_steps
    norm = 2 if norm is None else norm
    if static_value(ascent_steps) is None:
        raise ValueError(
            "ascent_steps must be a Python int: it fixes the number of gradient evaluations "
            "when the step is traced. Under optax.inject_hyperparams, pass "
            "static_args=('ascent_steps',)."
        )
    check_positive_int("ascent_steps", ascent_steps)
    check_range("eta", eta, low=0.0)
    check_range("eps", eps, low=0.0)
    if adaptive_mask is not None and not adaptive:
        raise ValueError("adaptive_mask only applies with adaptive=True (ASAM).")
    check_mask("adaptive_mask", adaptive_mask)
    check_mask("perturbation_mask", perturbation_mask)
    return AscentConfig(
        steps=int(ascent_steps),
        norm=_parse_norm(norm),
        normalize=bool(normalize),
        adaptive=bool(adaptive),
        eta=eta,
        adaptive_mask=adaptive_mask,
        eps=eps,
        perturbation_mask=perturbation_mask,
        fisher_eta=fisher_eta,
    )


def check_mask(name: str, mask: Mask) -> None:
    """None, a callable, or a pytree of Python bools (like optax masks); checked at once."""
    if mask is None or callable(mask):
        return
    for leaf in jax.tree.leaves(mask):
        _check_selection(name, leaf)


def _check_selection(name: str, leaf: Any) -> None:
    if not isinstance(leaf, bool | np.bool_):
        raise InvalidArgumentError(
            name,
            "a pytree of Python bools (possibly a prefix of the params, like an optax mask) "
            "or a callable returning one",
            leaf,
        )


def selected_leaves(name: str, mask: Mask, params: PyTree) -> PyTree:
    """The mask resolved against `params`: a pytree of their structure with a bool per leaf.

    Args:
      name: the mask's argument name, for errors.
      mask: a pytree of bools, possibly a prefix of the params (as for `optax.masked`), or a
        callable params -> such a pytree.
      params: the parameters the mask selects from.

    Returns:
      A pytree with the structure of `params` holding one Python bool per leaf.
    """
    if callable(mask):
        mask = mask(params)

    def expand(selected, subtree):
        _check_selection(name, selected)
        return jax.tree.map(lambda _: bool(selected), subtree)

    return jax.tree.map(expand, mask, params)


def restrict(tree: PyTree, selected: PyTree) -> PyTree:
    """`tree` with the leaves `selected` does not select replaced by zeros (a Python choice)."""
    return jax.tree.map(lambda s, x: x if s else jnp.zeros_like(x), selected, tree)


def perturbs_nothing(cfg: AscentConfig, params: PyTree) -> bool:
    """True iff a perturbation mask is set and selects no leaf of `params` (given)."""
    mask = cfg.perturbation_mask
    return (
        mask is not None
        and params is not None
        and not any(jax.tree.leaves(selected_leaves("perturbation_mask", mask, params)))
    )


def _dual_direction(g: PyTree, cfg: AscentConfig) -> PyTree:
    """argmax_{||e||_p <= 1} <g, e> in the computation dtype; zero for a zero gradient."""
    g = tree_math.upcast(g)
    if not cfg.normalize:
        return g
    if cfg.norm == 2.0:
        scale = 1.0 / (tree_math.norm(g) + cfg.eps)
        return jax.tree.map(lambda x: x * scale, g)
    if math.isinf(cfg.norm):
        return jax.tree.map(jnp.sign, g)
    q = cfg.norm / (cfg.norm - 1.0)
    # Divide by max|g| first: |g|^q under- or overflows for q far from 2.
    peak = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree.leaves(g)]))
    peak = jnp.where(peak > 0, peak, 1.0)
    mags = jax.tree.map(lambda x: jnp.abs(x) / peak, g)
    q_norm = sum(jnp.sum(m**q) for m in jax.tree.leaves(mags)) ** (1.0 / q)
    denom = q_norm ** (q - 1.0) + cfg.eps
    return jax.tree.map(lambda x, m: jnp.sign(x) * m ** (q - 1.0) / denom, g, mags)


def adaptive_scale(params: PyTree, cfg: AscentConfig) -> PyTree:
    """T_w = |w| + eta on the leaves selected by `adaptive_mask`, 1 elsewhere.

    In the computation dtype of each leaf (see `tree_math`).
    """
    if cfg.adaptive_mask is None:
        return jax.tree.map(lambda w: jnp.abs(w) + cfg.eta, tree_math.upcast(params))
    selected = selected_leaves("adaptive_mask", cfg.adaptive_mask, params)
    return jax.tree.map(
        lambda s, w: jnp.abs(w) + cfg.eta if s else jnp.ones((), w.dtype),
        selected,
        tree_math.upcast(params),
    )


def _fisher_direction(g: PyTree, cfg: AscentConfig) -> PyTree:
    """f⁻¹g / √(gᵀf⁻¹g) with the diagonal f = 1 + η_F·g⊙g; zero for a zero gradient.

    With η_F = 0 every operation is exact (x / 1 = x), so this is `_dual_direction`'s p = 2
    direction bit for bit.
    """
    g = tree_math.upcast(g)
    preconditioned = jax.tree.map(lambda x: x / (1.0 + cfg.fisher_eta * x * x), g)
    scale = 1.0 / (jnp.sqrt(tree_math.vdot(g, preconditioned)) + cfg.eps)
    return jax.tree.map(lambda x: x * scale, preconditioned)


def ascent_step_direction(g: PyTree, scale: PyTree | None, cfg: AscentConfig) -> PyTree:
    """d(g) of the module docstring, in the computation dtype."""
    if cfg.fisher_eta is not None:
        return _fisher_direction(g, cfg)
    if scale is None:
        return _dual_direction(g, cfg)
    scaled = jax.tree.map(lambda t, x: t * x, scale, tree_math.upcast(g))
    return jax.tree.map(lambda t, u: t * u, scale, _dual_direction(scaled, cfg))


def ascend(
    grad_fn: Callable[[PyTree], PyTree],
    params: PyTree,
    start: PyTree,
    rho: jax.Array,
    cfg: AscentConfig,
) -> tuple[PyTree, PyTree]:
    """Run the ascent from `params`, its first step along `start`.

    Args:
      grad_fn: p -> gradient of the loss at p (already averaged as the policy says).
      params: the current parameters θ.
      start: what the first step follows in place of a gradient at θ: the clean gradient g0
        for SAM (it is not recomputed), another direction for methods that steer the ascent.
      rho: total ascent length ρ (each step has length ρ/k).
      cfg: the static ascent configuration.

    Returns:
      (g_k, chord): the gradient at the last ascent point ϑ_k (every leaf), and ϑ_k − θ in
      the computation dtype (zero on the leaves a perturbation mask leaves out). Costs k
      gradient evaluations.
    """
    scale = adaptive_scale(params, cfg) if cfg.adaptive else None
    mask = cfg.perturbation_mask
    selected = None if mask is None else selected_leaves("perturbation_mask", mask, params)

    def direction(g):
        # Python branch: without a mask the program is the unmasked one, op for op.
        return ascent_step_direction(g if selected is None else restrict(g, selected), scale, cfg)

    step = rho / cfg.steps
    chord = jax.tree.map(lambda d: step * d, direction(start))
    for _ in range(cfg.steps - 1):
        g = grad_fn(tree_math.add_scaled(params, [1.0], [chord]))
        chord = jax.tree.map(lambda c, d: c + step * d, chord, direction(g))
    g_k = grad_fn(tree_math.add_scaled(params, [1.0], [chord]))
    return g_k, chord
