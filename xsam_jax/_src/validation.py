"""Argument checks shared by the transformation factories.

Checks run at construction time on Python values. Under `optax.inject_hyperparams` the
factories are called again inside `update` with traced arrays; those cannot be checked
without a host sync, so traced values pass through (they were checked when the wrapper
was built from the same numbers).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def static_value(x: Any) -> float | None:
    """`float(x)` for Python numbers and concrete arrays; None for schedules and tracers."""
    if callable(x):
        return None
    try:
        return float(x)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def check_radius(name: str, value: Any) -> None:
    """A radius (rho, rho_max): a float >= 0 or an `optax.Schedule` of the step count."""
    if callable(value):
        return
    v = static_value(value)
    if v is None:
        return
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite float >= 0 or an optax schedule, got {value!r}.")


def check_range(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ValueError unless low <(=) value <(=) high; describes the allowed range."""
    v = static_value(value)
    if v is None:
        return
    ok = math.isfinite(v)
    if low is not None:
        ok = ok and (v > low if low_open else v >= low)
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        lo = "" if low is None else f"{low} {'<' if low_open else '<='} "
        hi = "" if high is None else f" {'<' if high_open else '<='} {high}"
        raise ValueError(f"{name} must satisfy {lo}{name}{hi}, got {value!r}.")


def check_positive_int(name: str, value: Any) -> None:
    """An integer >= 1 (bools rejected)."""
    v = static_value(value)
    if v is None:
        return
    if isinstance(value, bool) or v != int(v) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def as_schedule(value: Any) -> Callable[[jax.Array], jax.Array]:
    """A schedule of the step count from a float, array or schedule (cast it where used)."""
    if callable(value):
        return lambda count: jnp.asarray(value(count))
    return lambda count: jnp.asarray(value)


def require_extra_args(method: str, loss_fn: Any, params: Any) -> None:
    """Clear errors for the two arguments every sharpness-aware update needs."""
    fix = "tx.update(grads, opt_state, params, loss_fn=lambda p: loss(p, batch))"
    if loss_fn is None:
        raise TypeError(
            f"xsam_jax.{method} needs the keyword argument `loss_fn`: a function of the params "
            f"returning the scalar loss on the same batch as the gradients. Fix: {fix}"
        )
    if not callable(loss_fn):
        raise TypeError(f"xsam_jax.{method}: `loss_fn` must be callable, got {type(loss_fn)}.")
    if params is None:
        raise TypeError(
            f"xsam_jax.{method} needs the current `params` (it perturbs them). Fix: {fix}"
        )
