"""ρ schedules."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from xsam_jax._src.validation import as_schedule, check_int, check_radius


def late_phase(rho: float | optax.Schedule, start_step: int) -> Callable[[jax.Array], jax.Array]:
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
      A schedule `count -> ρ_t` (float32).

    References:
      Zhou et al., `Sharpness-Aware Minimization Efficiently Selects Flatter Minima Late in
      Training <https://arxiv.org/abs/2410.10373>`_, ICLR 2025.
    """
    check_radius("rho", rho)
    check_int("start_step", start_step, low=0)
    rho_fn = as_schedule(rho)
    start = int(start_step)

    def schedule(count: jax.Array) -> jax.Array:
        return jnp.where(count >= start, rho_fn(count), jnp.zeros((), jnp.float32))

    return schedule
