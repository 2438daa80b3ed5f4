"""XSAM (Chen & Zhou, ICLR 2026): search the ascent plane for the direction to the maximum."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from xsam_jax._src import search, tree_math
from xsam_jax._src.ascent import restrict, selected_leaves
from xsam_jax._src.base import Method, shared_options, sharpness_aware
from xsam_jax._src.slerp import alpha_grid
from xsam_jax._src.validation import (
    as_schedule,
    check_choice,
    check_positive_int,
    check_radius,
    check_range,
    static_value,
)


class XSAMState(NamedTuple):
    """State of `xsam`.

    Attributes:
      count: number of `update` calls so far (int32); decides search steps and ρ schedules.
      alpha: α* in use; the last search's winner, or ``alpha_init`` before it.
      alpha_losses: probe losses L(θ + ρ_max·v(α)) of the last search, one per grid point
        (NaN before the first search); plot them against `alphas` of the grid.
      cos_psi: cos ψ = <v0, v1> of the last step that climbed (NaN before it).
      rotation: the angle in radians between v0 and the direction the last climbing step
        applied: α·ψ (NaN before the first climb).
      search_rotation: α*·ψ at the last search, in radians (NaN before it): the rotation the
        search chose, which ``reuse="rotation"`` keeps until the next search.
      searched_period: ``count // search_every`` of the last search step (int32, −1 before
        it): a period whose index exceeds it has not searched yet.

    The floats are in the params' computation dtype: float32, or float64 for float64 params.
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
    alpha: jax.Array
    alpha_losses: jax.Array
    cos_psi: jax.Array
    rotation: jax.Array
    search_rotation: jax.Array
    searched_period: jax.Array


_REUSE = ("alpha", "rotation")


def _static_grid(alpha_max: Any, alpha_step: Any):
    alpha_max = 2.0 if alpha_max is None else alpha_max
    alpha_step = 0.1 if alpha_step is None else alpha_step
    if static_value(alpha_max) is None or static_value(alpha_step) is None:
        raise ValueError(
            "alpha_max and alpha_step must be Python floats: they fix the number of search "
            "candidates when the step is traced. Under optax.inject_hyperparams, pass "
            "static_args=('alpha_max', 'alpha_step')."
        )
    check_range("alpha_max", alpha_max, low=0.0)
    check_range("alpha_step", alpha_step, low=0.0, low_open=True)
    return alpha_grid(float(alpha_max), float(alpha_step))


def xsam(
    rho: float | optax.Schedule = 0.15,
    rho_max: float | optax.Schedule = 0.3,
    *,
    ascent_steps: int | None = None,
    alpha_max: float | None = None,
    alpha_step: float | None = None,
    search_every: int | None = 1,
    alpha_init: float = 1.0,
    adaptive: bool = False,
    eta: float = 0.01,
    adaptive_mask: Any = None,
    search_chunk: int | None = None,
    eps: float = 1e-12,
    axis_name: str | None = None,
    local_perturbation: bool = False,
    reuse: str = "alpha",
    max_rotation: float | None = None,
    perturbation_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""XSAM: SAM along the best direction of the plane spanned by the ascent.

    SAM applies the gradient at the ascent point at θ, reading it as the direction towards the
    maximum of the loss in the ρ-ball. XSAM (Chen & Zhou 2026) searches for a better estimate.
    After k ascent steps of length ρ/k from ϑ_0 = θ (as in `sam`),

    .. math::
      v_0 = \frac{\vartheta_k - \theta}{\|\vartheta_k - \theta\|},\quad
      v_1 = \frac{g_k}{\|g_k\|},\quad \psi = \arccos\langle v_0, v_1\rangle,\quad
      v(\alpha) = \frac{\sin((1-\alpha)\psi)\,v_0 + \sin(\alpha\psi)\,v_1}{\sin\psi},

    with g_k = ∇L(ϑ_k) and one global angle ψ over the whole pytree (v0 = g0/‖g0‖ for one
    step). On search steps it sets

    .. math::
      \alpha^* = \arg\max_{\alpha \in \{0, \Delta, \dots, a\}} L(\theta + \rho_{\max} v(\alpha)),

    evaluating all candidates on the same batch in one `jax.vmap` on accelerators (in
    chunks of ``search_chunk`` with `jax.lax.map`, one at a time on CPU by default); the first
    maximum wins, non-finite losses are skipped, and if all are non-finite α* keeps its value.
    α > 1 extrapolates past v1. The new α* is used from that same step on, and every step
    outputs

    .. math::
      d = \|g_k\|\, v(\alpha^*),

    formed as one fused combination of the ascent chord and g_k. α* = 1 is (multi-step) SAM
    and α* = 0 the paper's "SGD+". The authors search once an epoch: pass
    ``search_every=steps_per_epoch``. With ``search_every=None`` α stays ``alpha_init``.

    The search steps are the first step that climbs (ρ > 0) in each period of
    ``search_every`` steps: ``count % search_every == 0`` when every step climbs, the paper's
    rule. With a ρ schedule that skips steps (`periodic`, `randomized`, `late_phase`) a
    scheduled search whose ρ is 0 is not lost but moves to the next step that climbs, so α* is
    still searched about once per period (at most once; on every climbing step if steps climb
    less often than once a period).

    The search sits in a `lax.cond`, so steps that do not search skip the probes. On XLA:CPU
    that conditional slows *every* step of a convolutional network several-fold (a 1-D CNN's
    non-searching step: 4.0× SAM's, 1.00× planned; benchmarks/step_time.py), so a loop that
    knows its step count can fix the decision when the step is traced:
    ``update(..., search=True)`` on the steps `xsam_jax.search_steps` marks, ``search=False``
    on the others, with the train step jitted with ``static_argnames=("perturb", "search")``;
    two compiled programs, no conditional.
    ``search=True`` still searches only if a search is due (a select, at the probes' cost);
    ``search=False`` on a step where a search is due makes α* NaN, so a wrong plan cannot
    pass unnoticed. The training stack (`xsam_jax.training`, ``xsam-train``) does this.

    When sin ψ → 0 the exact limit v(α) = (1−α)v0 + αv1 is used (the authors' code uses
    (v0 + v1)/2 there). Weight decay and momentum stay in the base optimizer chained after.

    ``adaptive=True`` (XSAM + ASAM) is our interpretation; the paper reports the combination
    but its code does not include it: the ascent steps are ASAM's (rescaled by
    :math:`T_w = |w| + \eta`), while v0, v1, the probes and the output live in parameter space.

    Two options go beyond the paper (their defaults are the paper's algorithm). Between
    searches the paper applies the same α* to every step's own angle ψ_t, so the update turns
    α*·ψ_t away from v0; early in training ψ_t grows within an epoch and a searched α* near 2
    then turns steps by 90° and more, against the clean gradient (see the README's study).
    ``reuse="rotation"`` keeps the searched angle φ* = α*·ψ instead: each step applies
    α_t = min(φ*/ψ_t, a), never turning further than the search validated.
    ``max_rotation`` caps the turn directly: candidates with α·ψ above it are not chosen, and
    each step applies α_t = min(α*, max_rotation/ψ_t).

    ``perturbation_mask`` (see `sam`) confines XSAM to the selected leaves S: the ascent moves
    only them, so v0 is zero elsewhere; v1 is g_k restricted to S, so ψ, the plane and the
    probes θ + ρ_max·v(α) all lie in S; the output is ‖g_k|S‖·v(α*) on S and g_k on the other
    leaves (which SAM-ON also updates with the gradient at the ascent point), so α* = 1 is
    SAM with the same mask.

    Args:
      rho: total ascent length ρ ≥ 0 (float or schedule); steps with ρ = 0 return the clean
        gradient without any extra gradient or search.
      rho_max: probe radius ρ_max ≥ 0 (an absolute distance; float or schedule); a search
        step where it is 0 searches nothing (its period keeps the previous α*).
      ascent_steps: number k ≥ 1 of ascent steps; None means 1.
      alpha_max: a ≥ 0, largest candidate α; None means 2.0.
      alpha_step: Δ > 0, grid spacing; None means 0.1 (21 candidates with a = 2). These three
        default to None, not to numbers, so that `optax.inject_hyperparams` (which traces every
        numeric argument) leaves them static: they fix the shape of the computation.
      search_every: search period in steps (≥ 1), or None for a fixed α.
      alpha_init: α used before the first search, or always when ``search_every=None``.
      adaptive: ASAM ascent (see above).
      eta: ASAM's η ≥ 0.
      adaptive_mask: leaves ASAM rescales (see `sam`).
      search_chunk: evaluate at most this many candidates at once with `jax.lax.map` (memory:
        that many parameter copies and activation sets). None picks per backend: 1 on CPU,
        where batching forwards over different weights is slower than running them in turn
        (ResNet-18, batch 128: a search step costs 3.5 SAM steps with 1, 23 with all 21 at
        once, and the compiled step reserves 1.0 GB instead of 5.1 GB of temporaries; see
        benchmarks/step_time.py), and all candidates in one `jax.vmap` on GPU/TPU. Both
        branches of the search `lax.cond` are compiled, so this memory is reserved on every
        step, not only on search steps (with ``search=False`` it is not).
      eps: added to norms in denominators (zero gradients give zero directions, not NaN).
      axis_name: mapped axis for data parallelism (see `sam`).
      local_perturbation: per-device ascent (m-sharpness, see `sam`); probe losses, cos ψ and
        the output are averaged over `axis_name`, so α* is identical on every replica.
      reuse: what a search hands to the steps until the next one: ``"alpha"`` (the paper: α*)
        or ``"rotation"`` (the angle α*·ψ, see above).
      max_rotation: the largest angle in radians, in (0, π], between v0 and an applied
        direction, or None (the paper: no cap).
      perturbation_mask: the leaves XSAM perturbs (see above and `sam`); None = every leaf.

    Returns:
      An `optax.GradientTransformationExtraArgs` with state `XSAMState`; `update` needs
      ``loss_fn(params) -> scalar`` on the same batch as the gradients and takes the optional
      static keywords ``perturb`` (see `sam` and `xsam_jax.perturbed_steps`) and ``search``
      (see above and `xsam_jax.search_steps`).

    Examples:
      On :math:`L(w) = \tfrac12 w^\top \mathrm{diag}(1, 4)\, w` at w = (3, 1):
      :math:`g_0 = (3, 4)`, and one ascent step of ρ = 1 reaches
      :math:`g_k = (3.6, 7.2)`. Probing at ρ_max = 2, the search turns past SAM's
      :math:`v_1` (α = 1) to α* = 1.9, towards the sharper axis:

      >>> import jax, jax.numpy as jnp
      >>> import xsam_jax as xs
      >>> def loss(w):
      ...     return 0.5 * (w[0] ** 2 + 4.0 * w[1] ** 2)
      >>> w = jnp.array([3.0, 1.0])
      >>> tx = xs.xsam(rho=1.0, rho_max=2.0)
      >>> updates, state = tx.update(jax.grad(loss)(w), tx.init(w), w, loss_fn=loss)
      >>> round(float(state.alpha), 4)
      1.9
      >>> [round(float(v), 4) for v in updates]  # |g_k| v(1.9)
      [2.3926, 7.6861]

    References:
      Chen & Zhou, `Revisiting Sharpness-Aware Minimization: A More Faithful and Effective
      Implementation <https://arxiv.org/abs/2603.10048>`_, ICLR 2026.
    """
    check_radius("rho", rho)  # before rho_max, which callers often derive from it
    check_radius("rho_max", rho_max)
    grid = _static_grid(alpha_max, alpha_step)
    if search_every is not None:
        check_positive_int("search_every", search_every)
    if search_chunk is not None:
        check_positive_int("search_chunk", search_chunk)
    check_range("alpha_init", alpha_init)
    check_choice("reuse", reuse, _REUSE)
    if max_rotation is not None:
        check_range("max_rotation", max_rotation, low=0.0, high=math.pi, low_open=True)
    options = shared_options(locals())
    method = _xsam_method(
        grid,
        rho_max,
        search_every,
        alpha_init,
        search_chunk,
        eps,
        reuse,
        max_rotation,
        options.ascent.perturbation_mask,
    )
    return sharpness_aware(method, rho, options)


def _xsam_method(
    grid: Any,
    rho_max: Any,
    search_every: int | None,
    alpha_init: Any,
    search_chunk: int | None,
    eps: Any,
    reuse: str,
    max_rotation: float | None,
    mask: Any,
) -> Method:
    """XSAM as a `Method`: α* lives in the state, and the output step runs the search."""
    rho_max_fn = as_schedule(rho_max)

    def init(params: Any) -> XSAMState:
        dtype = tree_math.compute_dtype(params)
        nan = jnp.asarray(jnp.nan, dtype)
        return XSAMState(
            count=jnp.zeros([], jnp.int32),
            alpha=jnp.asarray(alpha_init, dtype),
            alpha_losses=jnp.full(grid.shape, jnp.nan, dtype),
            cos_psi=nan,
            rotation=nan,
            search_rotation=nan,
            searched_period=jnp.full([], -1, jnp.int32),
        )

    def search_alpha(plane, psi, radius, state, step):
        chunk = search_chunk
        if chunk is None and jax.default_backend() == "cpu":
            chunk = 1
        alphas = jnp.asarray(grid, psi.dtype)
        losses = search.probe_losses(step.loss_fn, step.params, plane, alphas, radius, chunk)
        losses = step.averaging.mean(losses)  # α* is the same on every replica
        eligible = losses
        if max_rotation is not None:  # a candidate the cap would bend is not chosen
            eligible = jnp.where(alphas * psi <= max_rotation, losses, jnp.nan)
        alpha = search.first_finite_argmax(alphas, eligible, state.alpha)
        return alpha, losses, alpha * psi

    def applied(alpha, search_rotation, psi):
        """The α a step uses: α*, or with reuse="rotation" the searched angle over this ψ."""
        tiny = jnp.finfo(psi.dtype).tiny
        if reuse == "rotation":
            # Before the first search (NaN) the initial α applies.
            alpha = jnp.where(
                jnp.isnan(search_rotation),
                alpha,
                jnp.minimum(search_rotation / (psi + tiny), grid[-1]),
            )
        if max_rotation is not None:
            alpha = jnp.minimum(alpha, max_rotation / (psi + tiny))
        return alpha

    def output(climb, state, step):
        # Python branch: without a mask the program is the unmasked one, op for op.
        selected = None if mask is None else selected_leaves("perturbation_mask", mask, step.params)
        g_plane = climb.g_k if selected is None else restrict(climb.g_k, selected)
        plane = search.ascent_plane(climb.chord, g_plane, eps)
        psi = step.averaging.output(search.angle(plane))
        alpha, losses, search_rotation = state.alpha, state.alpha_losses, state.search_rotation
        searched_period = state.searched_period
        if search_every is not None:
            radius = rho_max_fn(state.count).astype(psi.dtype)
            # This runs on climbing steps only: the first of each period searches, even if the
            # period's first step did not climb. Integer bookkeeping only, so a float ρ (every
            # step climbs, the search at count % search_every == 0) compiles the same
            # floating-point program as before.
            period = state.count // search_every
            due = period > searched_period
            searching = due & (radius > 0)
            kept = (alpha, losses, search_rotation)
            if step.search is None:
                alpha, losses, search_rotation = lax.cond(
                    searching, lambda: search_alpha(plane, psi, radius, state, step), lambda: kept
                )
            elif step.search:
                # The caller's word that this step searches: the probes outside any
                # conditional (on XLA:CPU a conditional slows the whole step, see the
                # ``search`` argument), selected so that the step stays exact either way.
                found = search_alpha(plane, psi, radius, state, step)
                alpha, losses, search_rotation = jax.tree.map(
                    lambda f, k: jnp.where(searching, f, k), found, kept
                )
            else:
                # The caller's word that no search is due: nothing traced. A wrong plan makes
                # α* NaN from here on, so it cannot pass unnoticed.
                alpha = jnp.where(searching, jnp.asarray(jnp.nan, alpha.dtype), alpha)
            searched_period = jnp.where(due, period, searched_period)
        alpha_t = applied(alpha, search_rotation, psi)
        # ‖g_k‖·v(α_t): one fused combination of the chord and g_k (α = 1 gives g_k exactly).
        coefficients = search.along(plane, alpha_t, plane.grad_norm)
        direction = tree_math.combine(coefficients, [climb.chord, g_plane], like=climb.g0)
        if selected is not None:  # leaves outside the mask: the gradient at ϑ_k, as in SAM
            direction = jax.tree.map(
                lambda s, d, g: d if s else g.astype(d.dtype), selected, direction, climb.g_k
            )
        cos_psi = step.averaging.output(plane.cos_psi)
        return direction, state._replace(
            alpha=alpha,
            alpha_losses=losses,
            cos_psi=cos_psi,
            rotation=alpha_t * psi,
            search_rotation=search_rotation,
            searched_period=searched_period,
        )

    return Method("xsam", output, init)
