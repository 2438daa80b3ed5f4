"""ρ schedules."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xsam_jax._src.validation import as_schedule, check_int, check_radius, check_range


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
      A schedule `count -> ρ_t`.

    References:
      Zhou et al., `Sharpness-Aware Minimization Efficiently Selects Flatter Minima Late in
      Training <https://arxiv.org/abs/2410.10373>`_, ICLR 2025.
    """
    check_radius("rho", rho)
    check_int("start_step", start_step, low=0)
    rho_fn = as_schedule(rho)
    start = int(start_step)

    def schedule(count: jax.Array) -> jax.Array:
        return jnp.where(count >= start, rho_fn(count), 0.0)

    return schedule


def periodic(rho: float | optax.Schedule, every: int) -> float | optax.Schedule:
    r"""ρ schedule for SAM on every `every`-th step only: ρ(t) where t % every == 0, else 0.

    Pass it as ``rho`` of any method (``xs.sam(rho=xs.periodic(0.05, 5))``). A step whose ρ is
    0 returns the clean gradient and takes no second gradient, so a run costs
    :math:`1 + k/\text{every}` gradients per step on average (k = ``ascent_steps``) instead of
    1 + k. Steps 0, every, 2·every, … climb. With a schedule inside (``xs.periodic(
    xs.late_phase(0.05, start), 2)``) both conditions must hold.

    Inside a compiled step the skip is a `lax.cond` on ρ > 0, which on XLA:CPU makes a
    convolution's gradient several times slower; a loop that passes the host-side plan
    ``xs.perturbed_steps(schedule, num_steps)`` as the ``perturb`` extra argument compiles a
    plain gradient step for the skipped steps and a conditional-free SAM step for the others
    (`xsam_jax.training`'s steps and `xsam-train` do), so skipped steps cost what SGD costs.

    Args:
      rho: the radius on the steps that climb (a float ≥ 0, or a schedule of the step count).
      every: the period in steps, an integer ≥ 1. ``every=1`` returns `rho` itself: SAM on every
        step, the very program the method compiles for `rho`.

    Returns:
      A schedule `count -> ρ_t`, or `rho` for ``every=1``.
    """
    check_radius("rho", rho)
    check_int("every", every, low=1)
    every = int(every)
    if every == 1:
        return rho
    rho_fn = as_schedule(rho)

    def schedule(count: jax.Array) -> jax.Array:
        return jnp.where(count % every == 0, rho_fn(count), 0.0)

    return schedule


def randomized(
    rho: float | optax.Schedule, probability: float, seed: int
) -> float | optax.Schedule:
    r"""ρ schedule for SAM on a random fraction of the steps (RST, Zhao et al. 2022).

    Step t climbs with ρ(t) with probability `probability`, independently of the other steps,
    and takes the clean gradient otherwise. The draw is a pure function of (`seed`, t),

    .. math::
      \text{climb}_t = \mathrm{bernoulli}(\mathrm{fold\_in}(\mathrm{key}(\text{seed}), t),
      \ \text{probability}),

    so a run is reproducible from the seed and the step count, the schedule works under
    `jax.jit`, and `xsam_jax.perturbed_steps` evaluates the very same decisions on the host (a
    resumed run draws what it would have drawn). A run costs :math:`1 + k\,p` gradients per
    step in expectation (k = ``ascent_steps``); skipped steps take no second gradient, and the
    ``perturb`` plan makes them as cheap on CPU as an SGD step (see `periodic`). The seed is a
    constant of the compiled step, so each seed compiles its own programs (a persistent
    compilation cache cannot share them across seeds).

    Args:
      rho: the radius on the steps that climb (a float ≥ 0, or a schedule of the step count).
      probability: p in [0, 1], the chance that a step climbs. ``probability=1`` returns `rho`
        itself.
      seed: an integer in [0, 2**32 − 1] (the PRNG key's range); use a different one per run.

    Returns:
      A schedule `count -> ρ_t`, or `rho` for ``probability=1``.

    References:
      Zhao, Zhang, Hu, `Randomized Sharpness-Aware Training for Boosting Computational
      Efficiency in Deep Learning <https://arxiv.org/abs/2203.09962>`_, 2022.
    """
    check_radius("rho", rho)
    check_range("probability", probability, low=0.0, high=1.0)
    check_int("seed", seed, low=0, high=2**32 - 1)
    probability, seed = float(probability), int(seed)
    if probability == 1.0:
        return rho
    rho_fn = as_schedule(rho)

    def schedule(count: jax.Array) -> jax.Array:
        draw = jax.random.fold_in(jax.random.key(seed), count)
        # A float32 probability: the same uniform draws (and decisions) with and without x64.
        climbs = jax.random.bernoulli(draw, np.float32(probability))
        return jnp.where(climbs, rho_fn(count), 0.0)

    return schedule


def perturbed_steps(rho: float | optax.Schedule, num_steps: int) -> np.ndarray:
    r"""Which of the update counts 0, …, num_steps − 1 have ρ > 0, evaluated on the host.

    The plan behind the ``perturb`` extra argument that every method's ``update`` accepts, for
    any schedule (`late_phase`, `periodic`, `randomized`, your own).
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
    """
    check_radius("rho", rho)
    check_int("num_steps", num_steps, low=0)
    counts = jnp.arange(int(num_steps), dtype=jnp.int32)
    values = jax.jit(jax.vmap(as_schedule(rho)))(counts)
    return np.asarray(values) > 0
