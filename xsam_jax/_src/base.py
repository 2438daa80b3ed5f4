"""The skeleton every sharpness-aware method runs: gate on ρ, climb, form the output, average.

A method is a `Method`, a small record of pure functions for what is its own: its state, the
direction the ascent starts from, how the output is formed from the climb, and what a step
without ascent returns. `sharpness_aware` runs it and owns everything else: the extra-argument
checks, the ρ schedule and the gate (`gate_on_radius`, ``perturb``), the ascent
(`ascent.ascend`), data-parallel averaging (`Averaging`), dtypes and the step counter. The
options every method shares (how to climb, how to average) are one `SharedOptions`, built by
`shared_options` from the factory's arguments.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from xsam_jax._src import ascent, tree_math
from xsam_jax._src.parallel import Averaging
from xsam_jax._src.tree_math import PyTree
from xsam_jax._src.validation import (
    as_schedule,
    check_radius,
    require_extra_args,
    static_value,
)

State = Any  # a method's state: a NamedTuple with at least an int32 `count`


class SAMState(NamedTuple):
    """State of `sam`, `asam`, `gsam` and `wsam`.

    Attributes:
      count: number of `update` calls so far (int32); the argument of ρ schedules.
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do


class Climb(NamedTuple):
    """What the ascent of one step produced, for a method's `output`.

    Attributes:
      g0: the clean gradient at θ (averaged over replicas unless the perturbation is local).
      g_k: the gradient at the last ascent point ϑ_k.
      chord: ϑ_k − θ.
    """

    g0: PyTree
    g_k: PyTree
    chord: PyTree


class StepInputs(NamedTuple):
    """What else a method's `output` may evaluate: the point, the loss, the averaging policy.

    ``search`` is the caller's static word on whether this step runs XSAM's α search (the
    ``search`` extra argument, see `xsam_jax.xsam`); other methods ignore it.
    """

    params: PyTree
    loss_fn: Callable[[PyTree], jax.Array]
    averaging: Averaging
    search: bool | None = None


def _count_only(params: PyTree) -> SAMState:
    del params
    return SAMState(count=jnp.zeros([], jnp.int32))


def _from_clean_gradient(g0: PyTree, state: State) -> PyTree:
    del state
    return g0


def _gradient_at_ascent_point(climb: Climb, state: State, step: StepInputs):
    del step
    return climb.g_k, state


def _clean_gradient(g0: PyTree, state: State):
    return g0, state


@dataclasses.dataclass(frozen=True)
class Method:
    """A sharpness-aware method: the pure functions `sharpness_aware` runs.

    The defaults are SAM's. Every function returns the method's state next to its result, so
    methods with state updated on every step (e.g. an average of past gradients) fit: the
    skeleton only advances `count`.

    Attributes:
      name: the public name, for error messages.
      output: (climb, state, step) -> (direction, state) on steps that climb; SAM returns g_k.
      init: params -> the initial state (a NamedTuple with an int32 `count` of 0).
      ascent_start: (g0, state) -> the gradient the first ascent step follows; SAM's is g0.
      clean: (g0, state) -> (direction, state) on steps whose ρ is 0 (no ascent, no extra
        gradient); SAM returns g0.
      track: None, or (ḡ0, state) -> state run on every step after the above, with ḡ0 the
        clean gradient averaged over replicas even under ``local_perturbation``: for state
        that follows the clean gradients (a moving average), which must stay identical on
        every replica because training steps keep one optimizer state for all of them.
    """

    name: str
    output: Callable[[Climb, State, StepInputs], tuple[PyTree, State]] = _gradient_at_ascent_point
    init: Callable[[PyTree], State] = _count_only
    ascent_start: Callable[[PyTree, State], PyTree] = _from_clean_gradient
    clean: Callable[[PyTree, State], tuple[PyTree, State]] = _clean_gradient
    track: Callable[[PyTree, State], State] | None = None


@dataclasses.dataclass(frozen=True)
class SharedOptions:
    """The options every method takes: how to climb and how to average over replicas."""

    ascent: ascent.AscentConfig
    averaging: Averaging


def shared_options(arguments: Mapping[str, Any], **fixed: Any) -> SharedOptions:
    """Validate and freeze the shared options from a factory's arguments.

    Each public factory lists the shared options in its own signature (for help, docs and
    `optax.inject_hyperparams`, which reads the signature) and passes its ``locals()`` here,
    so they are checked and interpreted in one place. Options a factory does not offer take
    `ascent.make_config`'s and `Averaging`'s defaults.

    Args:
      arguments: the factory's arguments by name; names that are not shared are ignored.
      **fixed: values that replace arguments (e.g. ``adaptive=True`` for `asam`).

    Returns:
      The `SharedOptions`.
    """
    values = {**arguments, **fixed}

    def given(names):
        return {name: values[name] for name in names if name in values}

    return SharedOptions(
        ascent.make_config(**given(_ASCENT_ARGUMENTS)), Averaging(**given(_AVERAGING_ARGUMENTS))
    )


_ASCENT_ARGUMENTS = tuple(inspect.signature(ascent.make_config).parameters)
_AVERAGING_ARGUMENTS = tuple(field.name for field in dataclasses.fields(Averaging))


def check_static_flag(name: str, value: Any) -> None:
    """`perturb` and `search` select a compiled program: they must be known when tracing."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(
            f"{name} must be None or a Python bool, got "
            f"{type(value).__name__}: it selects the compiled program, so mark it static "
            f"(jax.jit(step, static_argnames={name!r}))."
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
    method: Method, rho: Any, options: SharedOptions
) -> optax.GradientTransformationExtraArgs:
    """The transformation g0 -> `method.output` of the climb from θ along `method.ascent_start`.

    On each step: ρ_t = ρ(count); if ρ_t > 0, climb k steps of total length ρ_t from θ on
    ``loss_fn`` (starting along ``method.ascent_start(g0, state)``) and return
    ``method.output``; else return ``method.clean`` without any extra gradient. A perturbation
    mask that selects no leaf makes every step such a step. The result is averaged over
    replicas as ``options.averaging`` says and cast to the gradients' dtypes; then
    ``method.track`` sees the replica-averaged clean gradient.
    ρ_t and everything derived from it are in the gradients' computation dtype (float32, or
    float64 for float64 gradients; see `tree_math`).

    Args:
      method: the method's own functions.
      rho: total ascent length, a float or a schedule of the step count.
      options: the shared ascent and averaging options.

    Returns:
      An `optax.GradientTransformationExtraArgs` whose state is ``method.init``'s. Its
      `update` needs ``loss_fn(params) -> scalar`` (unless ρ is the Python number 0), takes the
      optional static ``perturb`` (see `gate_on_radius`) and ``search`` (XSAM's, see
      `xsam_jax.xsam`; other methods ignore it) and ignores other extra arguments.
    """
    check_radius("rho", rho)
    rho_fn = as_schedule(rho)
    averaging = options.averaging

    def update_fn(
        updates, state, params=None, *, loss_fn=None, perturb=None, search=None, **extra_args
    ):
        del extra_args  # The ExtraArgs contract: accept and ignore what others need.
        check_static_flag("perturb", perturb)
        check_static_flag("search", search)
        if static_value(rho) != 0.0:
            require_extra_args(method.name, loss_fn, params)
        g0 = averaging.incoming(updates)
        rho_now = rho_fn(state.count).astype(tree_math.compute_dtype(updates))

        def finish(direction_and_state):
            direction, new_state = direction_and_state
            return optax.tree.cast_like(averaging.output(direction), updates), new_state

        def perturbed():
            start = method.ascent_start(g0, state)
            g_k, chord = ascent.ascend(
                averaging.gradient(loss_fn), params, start, rho_now, options.ascent
            )
            step = StepInputs(params, loss_fn, averaging, search)
            return finish(method.output(Climb(g0, g_k, chord), state, step))

        def clean():
            return finish(method.clean(g0, state))

        radius = 0.0 if ascent.perturbs_nothing(options.ascent, params) else rho
        new_updates, new_state = gate_on_radius(radius, rho_now, perturbed, clean, perturb)
        if method.track is not None:
            new_state = method.track(averaging.shared(g0), new_state)
        return new_updates, new_state._replace(count=optax.safe_increment(state.count))

    # optax's TransformInitFn protocol names its argument `params`; `Method.init` is positional.
    return optax.GradientTransformationExtraArgs(method.init, update_fn)  # type: ignore[arg-type]
