"""ρ schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xsam_jax._src.validation import as_schedule, check_int, check_radius


def late_phase(rho: float | optax.Schedule, start_step: int) -> optax.Schedule:
    r"""ρ schedule for late-phase SAM: 0 before `start_step`, ρ from it on.

    Zhou et al. (2025) show that training with SGD and switching to SAM for the last few
    epochs reaches nearly the generalisation and flatness of SAM run throughout. Pass this
    schedule as ``rho`` of any method (``xs.sam(rho=xs.late_phase(0.05, start))``): steps
    before the switch return the clean gradient and take no second gradient, so they cost
    what an SGD step costs.

    .. note::
      The base optimizer's momentum carries on through the switch. The authors' code used two
      optimizer objects with separate momentum buffers, so their SAM phase started from the
      SAM optimizer's own (empty) buffer; we do not reproduce that restart.

    Args:
      rho: the radius from `start_step` on (a float ≥ 0, or a schedule of the step count).
      start_step: first step (0-based `update` count) that uses ρ, an integer ≥ 0. For "the last
        E of T epochs" use ``(T - E) * steps_per_epoch``.

    Returns:
      A schedule `count -> ρ_t`.

    Examples:
      >>> import xsam_jax as xs
      >>> schedule = xs.late_phase(0.25, start_step=3)
      >>> [float(schedule(t)) for t in range(5)]
      [0.0, 0.0, 0.0, 0.25, 0.25]

    References:
      Zhou et al., `Sharpness-Aware Minimization Efficiently Selects Flatter Minima Late in
      Training <https://arxiv.org/abs/2410.10373>`_, ICLR 2025.
    """
    check_radius("rho", rho)
    check_int("start_step", start_step, low=0)
    rho_fn = as_schedule(rho)
    start = int(start_step)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        count = jnp.asarray(count)
        return jnp.where(count >= start, rho_fn(count), 0.0)

    return schedule


def perturbed_steps(rho: float | optax.Schedule, num_steps: int) -> np.ndarray:
    r"""Which of the update counts 0, …, num_steps − 1 have ρ > 0, evaluated on the host.

    The plan behind the ``perturb`` extra argument that every method's ``update`` accepts.
    A method whose ρ is a schedule (or an injected hyperparameter) decides inside the compiled
    step, with `lax.cond`, whether to take the second gradient. On XLA:CPU the gradient of a
    convolution inside a conditional runs many times slower than outside one (a 1-D CNN's SAM
    step: 6.6× the same step with a Python-float ρ), so a loop that knows its step count can
    instead compile two specialised steps and pick one per step on the host::

        plan = xs.perturbed_steps(rho_schedule, total_steps)
        step = jax.jit(train_step, static_argnames="perturb")  # passes perturb to tx.update
        for t in range(total_steps):
            params, opt_state = step(params, opt_state, batch, perturb=bool(plan[t]))

    ``perturb=True`` traces the ascent outside any conditional (and still returns the clean
    gradient if ρ is 0 after all); ``perturb=False`` traces no ascent at all, so the step
    compiles and runs like a plain gradient step (and its updates are NaN should ρ be positive
    after all: a wrong plan cannot pass unnoticed). ``perturb=None``, the default, keeps the
    conditional. `xsam_jax.training`'s steps take the same keyword and `xsam-train` uses it.

    Args:
      rho: a float or a schedule of the update count (what was passed as the method's ``rho``).
      num_steps: how many update counts to evaluate, an integer ≥ 0.

    Returns:
      A NumPy bool array of shape ``(num_steps,)``: entry t is True iff ρ(t) > 0.

    Examples:
      >>> import xsam_jax as xs
      >>> xs.perturbed_steps(xs.late_phase(0.25, start_step=3), 5).tolist()
      [False, False, False, True, True]
    """
    check_radius("rho", rho)
    check_int("num_steps", num_steps, low=0)
    counts = jnp.arange(int(num_steps), dtype=jnp.int32)
    values = jax.jit(jax.vmap(as_schedule(rho)))(counts)
    return np.asarray(values) > 0
