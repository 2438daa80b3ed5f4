"""The skeleton shared by SAM, GSAM and WSAM: gate on ρ, climb, combine, average.

Each method is a function of two gradients, the clean g0 and the perturbed g_p; this
module owns everything else (extra-argument checks, the ρ schedule, skipping the second
gradient when ρ = 0, data-parallel averaging, dtypes, the step counter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from xsam_jax._src import ascent
from xsam_jax._src.parallel import Averaging
from xsam_jax._src.validation import (
    as_schedule,
    check_radius,
    require_extra_args,
    static_value,
)

PyTree = Any


class SAMState(NamedTuple):
    """State of `sam`, `asam`, `gsam` and `wsam`.

    Attributes:
      count: number of `update` calls so far (int32); the argument of ρ schedules.
    """

    count: jax.Array


def cast_like(tree: PyTree, like: PyTree) -> PyTree:
    return jax.tree.map(lambda x, ref: x.astype(ref.dtype), tree, like)


def check_perturb(perturb: Any) -> None:
    """`perturb` selects a compiled program, so it must be known when the step is traced."""
    if perturb is not None and not isinstance(perturb, bool):
        raise TypeError(
            "perturb must be None or a Python bool, got "
            f"{type(perturb).__name__}: it selects the compiled program, so mark it static "
            "(jax.jit(step, static_argnames='perturb'))."
        )


def gate_on_radius(
    rho: Any,
    rho_now: jax.Array,
    perturbed: Callable[[], Any],
    clean: Callable[[], Any],
    perturb: bool | None = None,
) -> Any:
    """Run `perturbed` when ρ > 0, else `clean`.

    A Python ρ decides at trace time (no branch in the graph). Otherwise `perturb`, fixed
    when the step is traced, decides which program is built:

    - None: `lax.cond` on ρ > 0, so steps with ρ = 0 never evaluate the second gradient
      (under `vmap` with a batched ρ the cond becomes a select and both sides run). On
      XLA:CPU the gradient of a convolution inside a conditional runs many times slower than
      outside it (its convolution rewrites skip nested computations), hence the two others.
    - True, the caller's word that ρ > 0 on this step: `perturbed` outside any conditional; a
      select on the results keeps the step exact if ρ is 0 after all (at the cost of the
      second gradient).
    - False, the caller's word that ρ = 0: only `clean`, no second gradient traced. If ρ is
      positive after all the outputs are NaN, so a wrong plan cannot pass unnoticed.
    """
    fixed = static_value(rho)
    if fixed is not None:
        if perturb is False and fixed > 0:
            raise ValueError(f"perturb=False says rho is 0 on this step, but rho is {fixed}.")
        return perturbed() if fixed > 0 else clean()
    if perturb is None:
        return lax.cond(rho_now > 0, perturbed, clean)
    active = rho_now > 0
    if perturb:
        return jax.tree.map(lambda p, c: jnp.where(active, p, c), perturbed(), clean())
    return jax.tree.map(lambda c: _nan_where(active, c), clean())


def _nan_where(condition: jax.Array, x: jax.Array) -> jax.Array:
    """NaN where `condition` holds, for floating-point `x`; other dtypes pass through."""
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return x
    return jnp.where(condition, jnp.asarray(jnp.nan, x.dtype), x)


def sharpness_aware(
    method: str,
    rho: Any,
    config: ascent.AscentConfig,
    averaging: Averaging,
    combine: Callable[[PyTree, PyTree], PyTree],
) -> optax.GradientTransformationExtraArgs:
    """Build a transformation g0 -> combine(g0, g_p) with g_p = ∇L(θ + ε(g0)).

    Args:
      method: public name, for error messages.
      rho: total ascent length, a float or a schedule of the step count.
      config: the ascent configuration.
      averaging: the data-parallel averaging policy.
      combine: (g0, g_p) -> direction, both in the gradients' dtypes.

    Returns:
      An `optax.GradientTransformationExtraArgs` with state `SAMState`.
    """
    check_radius("rho", rho)
    rho_fn = as_schedule(rho)

    def init_fn(params: PyTree) -> SAMState:
        del params
        return SAMState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, loss_fn=None, perturb=None, **extra_args):
        del extra_args  # The ExtraArgs contract: accept and ignore what others need.
        check_perturb(perturb)
        if static_value(rho) != 0.0:
            require_extra_args(method, loss_fn, params)
        g0 = averaging.incoming(updates)
        rho_now = rho_fn(state.count)

        def perturbed():
            g_p, _ = ascent.ascend(averaging.gradient(loss_fn), params, g0, rho_now, config)
            return cast_like(averaging.output(combine(g0, cast_like(g_p, g0))), updates)

        def clean():
            return cast_like(averaging.output(g0), updates)

        new_updates = gate_on_radius(rho, rho_now, perturbed, clean, perturb)
        return new_updates, SAMState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
