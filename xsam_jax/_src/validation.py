"""Argument checks for the whole library, with one message style.

Every check raises `InvalidArgumentError` (a `ValueError`) whose message reads
``<name> must be <constraint>, got <value>``, e.g. "rho must be a finite float >= 0 or an
optax schedule, got -1.0". The error keeps the name, the constraint and the value apart, so
that a command-line tool can say the same with its flag instead of the argument name
(`InvalidArgumentError.message`).

Checks run at construction time on Python values. Under `optax.inject_hyperparams` the
transformation factories are called again inside `update` with traced arrays; those cannot be
checked without a host sync, so traced values pass through (they were checked when the
wrapper was built from the same numbers).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class InvalidArgumentError(ValueError):
    """A bad argument; ``str(err)`` is ``<name> must be <constraint>, got <value>``.

    Attributes:
      name: the argument's name.
      constraint: what it must be, e.g. "an integer >= 1".
      value: what it was.
    """

    def __init__(self, name: str, constraint: str, value: Any):
        self.name, self.constraint, self.value = name, constraint, value
        super().__init__(self.message(name))

    def message(self, name: str) -> str:
        """The message with another name for the argument, e.g. its command-line flag."""
        return f"{name} must be {self.constraint}, got {_show(self.value)}"


def _show(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()  # 0.5, not np.float64(0.5)
    text = repr(value)
    if len(text) <= 100:
        return text
    try:  # a long array or list: its shape says enough
        return f"an array of shape {np.shape(value)}"
    except ValueError:  # ragged
        return text[:97] + "..."


def static_value(x: Any) -> float | None:
    """`float(x)` for Python numbers and concrete arrays; None for schedules and tracers."""
    if callable(x):
        return None
    try:
        return float(x)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def _number(value: Any) -> float | None:
    """`float(value)`; None for a traced value (unchecked); NaN for anything not a number."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, bool | str | bytes) or callable(value):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _bound(x: float) -> str:
    return str(x) if isinstance(x, numbers.Integral) else f"{x:g}"


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """The range as it follows "a finite float": " >= 0", " in [0, 1)" or ""."""
    if low is not None and high is not None:
        lo, hi = _bound(low), _bound(high)
        return f" in {'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {_bound(low)}"
    if high is not None:
        return f" {'<' if high_open else '<='} {_bound(high)}"
    return ""


def _within(v: float, low, high, low_open: bool, high_open: bool) -> bool:
    ok = math.isfinite(v)
    if low is not None:
        ok = ok and (v > low if low_open else v >= low)
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    return ok


def check_range(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> None:
    """A finite float with low <(=) value <(=) high (either bound may be absent).

    Args:
      name: the argument's name, for the message.
      value: the value to check; a traced value passes unchecked.
      low: the lower bound, or None.
      high: the upper bound, or None.
      low_open: exclude ``low`` itself.
      high_open: exclude ``high`` itself.
      optional: also accept None.

    Raises:
      InvalidArgumentError: e.g. "gamma must be a finite float in [0, 1), got 1.0".
    """
    if optional and value is None:
        return
    v = _number(value)
    if v is not None and not _within(v, low, high, low_open, high_open):
        constraint = "a finite float" + _bounds(low, high, low_open, high_open)
        raise InvalidArgumentError(name, ("None or " if optional else "") + constraint, value)


def check_radius(name: str, value: Any) -> None:
    """A radius (rho, rho_max) of a transformation: a float >= 0 or an `optax.Schedule`."""
    if callable(value):
        return
    v = _number(value)
    if v is not None and not _within(v, 0.0, None, False, False):
        raise InvalidArgumentError(name, "a finite float >= 0 or an optax schedule", value)


def _is_integer(value: Any) -> bool:
    """A Python or NumPy integer, or a 0-d array of integral value (what optax passes)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    if isinstance(value, np.ndarray | jax.Array) and np.ndim(value) == 0:
        v = float(value)
        return math.isfinite(v) and v == int(v)
    return False


def check_int(
    name: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    optional: bool = False,
) -> None:
    """An integer with low <= value <= high (bools and floats such as 2.0 are rejected).

    Args:
      name: the argument's name, for the message.
      value: the value to check; a traced value passes unchecked.
      low: the smallest allowed value, or None.
      high: the largest allowed value, or None.
      optional: also accept None.

    Raises:
      InvalidArgumentError: e.g. "k must be an integer in [1, 10], got 0".
    """
    if (optional and value is None) or isinstance(value, jax.core.Tracer):
        return
    if not (_is_integer(value) and _within(int(value), low, high, False, False)):
        constraint = "an integer" + _bounds(low, high, False, False)
        raise InvalidArgumentError(name, ("None or " if optional else "") + constraint, value)


def check_positive_int(name: str, value: Any) -> None:
    """An integer >= 1."""
    check_int(name, value, low=1)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """One of ``choices``.

    Raises:
      InvalidArgumentError: e.g. "method must be one of 'lanczos', 'power', got 'qr'".
    """
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise InvalidArgumentError(name, f"one of {allowed}", value)


def check_grid(
    name: str, values: Any, *, low: float | None = None, finite: bool = True
) -> np.ndarray:
    """A non-empty 1-D array of floats (finite, >= low), returned as a float64 NumPy array.

    Args:
      name: the argument's name, for the message.
      values: an array-like.
      low: the smallest allowed entry, or None.
      finite: reject NaN and infinite entries (False leaves them, e.g. as gaps in a plot).

    Raises:
      InvalidArgumentError: e.g. "radii must be a non-empty 1-D array of finite floats >= 0,
        got [-0.1]".
    """
    constraint = "a non-empty 1-D array of " + ("finite floats" if finite else "floats")
    constraint += _bounds(low, None, False, False)
    try:
        grid = np.asarray(values, np.float64)
    except (TypeError, ValueError):
        raise InvalidArgumentError(name, constraint, values) from None
    ok = grid.ndim == 1 and grid.size > 0
    ok = ok and (not finite or bool(np.isfinite(grid).all()))
    ok = ok and (low is None or bool((grid[~np.isnan(grid)] >= low).all()))
    if not ok:
        raise InvalidArgumentError(name, constraint, values)
    return grid


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
