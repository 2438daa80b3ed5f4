"""ρ schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpy.typing import ArrayLike

from xsam_jax._src.validation import as_schedule, check_int, check_radius, check_range


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

    Examples:
      Steps 0, 3, 6 climb; inside a late-phase schedule from step 4, only the even steps from
      4 on:

      >>> import xsam_jax as xs
      >>> schedule = xs.periodic(0.25, every=3)
      >>> [float(schedule(t)) for t in range(7)]
      [0.25, 0.0, 0.0, 0.25, 0.0, 0.0, 0.25]
      >>> xs.perturbed_steps(xs.periodic(xs.late_phase(0.25, start_step=4), 2), 8).tolist()
      [False, False, False, False, True, False, True, False]
    """
    check_radius("rho", rho)
    check_int("every", every, low=1)
    every = int(every)
    if every == 1:
        return rho
    rho_fn = as_schedule(rho)

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        count = jnp.asarray(count)
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

    Examples:
      Probability 0 never climbs; probability 1/2 climbs on about half of the steps (over
      1000 steps, a binomial fraction with standard deviation 0.016):

      >>> import xsam_jax as xs
      >>> xs.perturbed_steps(xs.randomized(0.25, probability=0.0, seed=0), 4).tolist()
      [False, False, False, False]
      >>> plan = xs.perturbed_steps(xs.randomized(0.25, probability=0.5, seed=7), 1000)
      >>> bool(0.4 < plan.mean() < 0.6)
      True

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

    def schedule(count: jax.typing.ArrayLike) -> jax.Array:
        count = jnp.asarray(count)
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


def search_steps(perturbed: ArrayLike, search_every: int | None) -> np.ndarray:
    r"""Which update counts run XSAM's α search, given which climb, evaluated on the host.

    The plan behind `xsam_jax.xsam`'s ``search`` extra argument. XSAM searches on the first
    step of each period of ``search_every`` steps that climbs (ρ > 0): step t searches iff it
    climbs and no earlier climbing step shares its period t // search_every. (If ρ_max is 0 on
    such a step nothing is searched and the period keeps the previous α*, as without a plan.)
    With ``search=bool(plan[t])`` on every step, XSAM's step compiles without its search
    conditional, which on XLA:CPU slows every step of a convolutional network several-fold::

        climbs = xs.perturbed_steps(rho, total_steps)
        searches = xs.search_steps(climbs, steps_per_epoch)
        step = jax.jit(train_step, static_argnames=("perturb", "search"))
        for t in range(total_steps):
            state = step(state, batch, perturb=bool(climbs[t]), search=bool(searches[t]))

    Args:
      perturbed: bool per update count 0, 1, …: whether that step climbs (e.g.
        `perturbed_steps`'s result; LookSAM-like plans that skip steps work too).
      search_every: XSAM's ``search_every`` (an integer ≥ 1), or None (no search).

    Returns:
      A NumPy bool array of ``perturbed``'s shape: entry t is True iff step t searches.

    Examples:
      >>> import xsam_jax as xs
      >>> climbs = xs.perturbed_steps(xs.periodic(0.1, every=3), 8)
      >>> climbs.tolist()
      [True, False, False, True, False, False, True, False]
      >>> xs.search_steps(climbs, search_every=4).tolist()
      [True, False, False, False, True, False, False, False]
    """
    check_int("search_every", search_every, low=1, optional=True)
    climbs = np.asarray(perturbed, dtype=bool)
    if climbs.ndim != 1:
        raise ValueError(f"perturbed must be one-dimensional, got shape {climbs.shape}")
    searches = np.zeros_like(climbs)
    if search_every is None:
        return searches
    steps = np.flatnonzero(climbs)
    # The first climbing step of each period: where the period index changes.
    periods = steps // search_every
    first = np.ones(len(steps), dtype=bool)
    first[1:] = periods[1:] != periods[:-1]
    searches[steps[first]] = True
    return searches
