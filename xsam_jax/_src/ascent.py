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
:math:`T_w^2 g / \|T_w g\|`. Without normalisation (USAM) :math:`d(g) = g`.

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

from xsam_jax._src import tree_math
from xsam_jax._src.tree_math import PyTree
from xsam_jax._src.validation import check_positive_int, check_range, static_value

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
) -> AscentConfig:
    """Validate the ascent arguments (ValueError naming the argument) and freeze them.

    `ascent_steps` and `norm` default to None (meaning 1 and 2) rather than to numbers because
    `optax.inject_hyperparams` turns every numeric argument, defaults included, into a traced
    hyperparameter, and these two shape the computation.
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
    return AscentConfig(
        steps=int(ascent_steps),
        norm=_parse_norm(norm),
        normalize=bool(normalize),
        adaptive=bool(adaptive),
        eta=eta,
        adaptive_mask=adaptive_mask,
        eps=eps,
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
    mask = cfg.adaptive_mask
    if mask is None:
        return jax.tree.map(lambda w: jnp.abs(w) + cfg.eta, tree_math.upcast(params))
    if callable(mask):
        mask = mask(params)

    def scale_subtree(selected, subtree):
        if not isinstance(selected, bool | jnp.bool_):
            raise ValueError(
                "adaptive_mask must hold Python bools (like optax masks), got a leaf of type "
                f"{type(selected).__name__}."
            )
        subtree = tree_math.upcast(subtree)
        if selected:
            return jax.tree.map(lambda w: jnp.abs(w) + cfg.eta, subtree)
        return jax.tree.map(lambda w: jnp.ones((), w.dtype), subtree)

    # The mask may be a prefix of the params tree, as for optax.masked.
    return jax.tree.map(scale_subtree, mask, params)


def ascent_step_direction(g: PyTree, scale: PyTree | None, cfg: AscentConfig) -> PyTree:
    """d(g) of the module docstring, in the computation dtype."""
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
      (g_k, chord): the gradient at the last ascent point ϑ_k, and ϑ_k − θ in the
      computation dtype. Costs k gradient evaluations.
    """
    scale = adaptive_scale(params, cfg) if cfg.adaptive else None
    step = rho / cfg.steps
    chord = jax.tree.map(lambda d: step * d, ascent_step_direction(start, scale, cfg))
    for _ in range(cfg.steps - 1):
        g = grad_fn(tree_math.add_scaled(params, [1.0], [chord]))
        chord = jax.tree.map(lambda c, d: c + step * d, chord, ascent_step_direction(g, scale, cfg))
    g_k = grad_fn(tree_math.add_scaled(params, [1.0], [chord]))
    return g_k, chord
