r"""Loss-landscape probes: XSAM's ascent plane, interpolation paths, random-direction surfaces.

All functions take a function of the params (``loss_fn(params) -> scalar``, or for
`interpolate` and the surfaces any ``fn(params) -> pytree`` of metrics) and evaluate it at
many points of parameter space in one `jax.vmap`, or ``chunk`` points at a time with
`jax.lax.map` (memory grows with the number of parameter copies evaluated at once). For
losses and metrics over a whole dataset, wrap a per-batch function with
`xsam_jax.sharpness.mean_over_batches`. The probes are jitted with the function as a static
argument: pass the same function object to reuse the compilation.

- `proposition1` and `alpha_curve`: the geometry behind XSAM (Chen & Zhou, ICLR 2026). With
  :math:`g_0 = \nabla L(\theta)` and the SAM gradient
  :math:`g_1 = \nabla L(\theta + \rho g_0/\|g_0\|)`, Proposition 1 (second-order Taylor
  model, positive-definite Hessian, a large enough probe radius :math:`\rho_m`) says that the
  loss along :math:`g_1` is *above* the loss along :math:`g_0`, so SAM's gradient points closer
  to the maximum in the ball than :math:`g_0`, and that some combination of the two does better
  still; XSAM therefore searches the plane of :math:`v_0 = g_0/\|g_0\|` and
  :math:`v_1 = g_1/\|g_1\|` by spherical interpolation :math:`v(\alpha)`
  (`xsam_jax.slerp_coefficients`).
- `interpolate`: the linear path between two solutions and its second differences, the valley
  test of the late-phase SAM paper (Zhou et al., ICLR 2025).
- `filter_normalized_direction`, `loss_surface_1d`, `loss_surface_2d`: 1-D and 2-D plots
  along random directions with filter normalisation (Li et al., NeurIPS 2018).

References:
  Chen & Zhou, Revisiting Sharpness-Aware Minimization: A More Faithful and Effective
  Implementation, ICLR 2026.
  Zhou, Wang, Wang, Gong, Sharpness-Aware Minimization Efficiently Selects Flatter Minima
  Late in Training, ICLR 2025.
  Li, Xu, Taylor, Studer, Goldstein, Visualizing the Loss Landscape of Neural Nets,
  NeurIPS 2018.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from xsam_jax._src import ascent, search, tree_math
from xsam_jax._src.slerp import alpha_grid
from xsam_jax._src.tree_math import PyTree
from xsam_jax._src.validation import check_choice, check_grid, check_int, check_range

__all__ = [
    "AlphaCurve",
    "Interpolation",
    "Proposition1Result",
    "alpha_curve",
    "filter_normalized_direction",
    "interpolate",
    "loss_surface_1d",
    "loss_surface_2d",
    "proposition1",
]

Grid = Sequence[float] | jax.Array | np.ndarray  # a 1-D grid of radii, α or coordinates
_VECTOR_MODES = ("zero", "filter")


class Proposition1Result(NamedTuple):
    """Losses along the ascent directions (`proposition1`).

    Attributes:
      radii: the radii r, shape (R,).
      loss: L(θ).
      along_v0: L(θ + r·v0), shape (R,); v0 = g0/‖g0‖ for one ascent step.
      along_v1: L(θ + r·v1), shape (R,); v1 = g_k/‖g_k‖, the (multi-step) SAM gradient.
      alphas: the α values of `along_alpha`, shape (A,), or None.
      along_alpha: L(θ + r·v(α)), shape (A, R), or None.
      cos_psi: cos ψ = <v0, v1>.
    """

    radii: jax.Array
    loss: jax.Array
    along_v0: jax.Array
    along_v1: jax.Array
    alphas: jax.Array | None
    along_alpha: jax.Array | None
    cos_psi: jax.Array


class AlphaCurve(NamedTuple):
    """XSAM's search curve (`alpha_curve`).

    Attributes:
      alphas: the grid, shape (A,).
      losses: L(θ + ρ_max·v(α)) per α, shape (A,).
      alpha_star: the first α of maximal finite loss (NaN if no loss is finite).
      cos_psi: cos ψ = <v0, v1>.
      loss: L(θ).
    """

    alphas: jax.Array
    losses: jax.Array
    alpha_star: jax.Array
    cos_psi: jax.Array
    loss: jax.Array


class Interpolation(NamedTuple):
    """Metrics along (1 − λ)θ_A + λθ_B (`interpolate`).

    Attributes:
      lambdas: the uniform grid, shape (N,).
      values: ``fn``'s output pytree with a leading axis N.
      second_differences: like ``values`` with leading axis N − 2, at ``lambdas[1:-1]``.
    """

    lambdas: jax.Array
    values: PyTree
    second_differences: PyTree


# --------------------------------------------------------------------------- XSAM geometry


def _ascent_plane(loss_fn, params, rho, steps, eps):
    """L(θ) and the plane of `xsam_jax.xsam`'s ascent: k normalised steps of length ρ/k."""
    loss, g0 = jax.value_and_grad(loss_fn)(params)
    config = ascent.make_config(ascent_steps=steps, eps=eps)
    g_k, chord = ascent.ascend(jax.grad(loss_fn), params, g0, rho, config)
    plane = search.ascent_plane(chord, g_k, eps)
    return jnp.asarray(loss, plane.cos_psi.dtype), plane


@functools.partial(jax.jit, static_argnames=("loss_fn", "steps", "chunk"))
def _proposition1(loss_fn, params, radii, alphas, rho, eps, *, steps, chunk):
    loss, plane = _ascent_plane(loss_fn, params, rho, steps, eps)
    probe_alphas = jnp.concatenate([jnp.array([0.0, 1.0], alphas.dtype), alphas])
    losses = search.probe_losses(
        loss_fn, params, plane, probe_alphas[:, None], radii[None, :], chunk
    )
    return loss, losses, plane.cos_psi


def proposition1(
    loss_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    radii: Grid,
    *,
    rho: float = 0.05,
    ascent_steps: int = 1,
    alphas: Grid | None = None,
    chunk: int | None = None,
    eps: float = 1e-12,
) -> Proposition1Result:
    r"""Losses along SAM's ascent directions at several radii (XSAM, Proposition 1).

    With :math:`g_0 = \nabla L(\theta)` and :math:`g_1 = \nabla L(\theta + \rho\,g_0/\|g_0\|)`
    (``ascent_steps=1``), evaluates for each radius r

    .. math::
      L(\theta + r\, g_0/\|g_0\|), \qquad L(\theta + r\, g_1/\|g_1\|),

    and optionally :math:`L(\theta + r\, v(\alpha))` with the slerp
    :math:`v(\alpha) = [\sin((1-\alpha)\psi) v_0 + \sin(\alpha\psi) v_1]/\sin\psi`,
    :math:`\cos\psi = \langle v_0, v_1\rangle`. Chen & Zhou (ICLR 2026, Prop. 1) show, on a
    second-order model with a positive-definite Hessian and a large enough radius, that the
    loss along :math:`g_1` exceeds the loss along :math:`g_0` (``along_v1 > along_v0``), and
    that some :math:`v(\alpha)` exceeds both (``along_alpha``), which is what XSAM's search
    exploits. With k ascent steps of length ρ/k, :math:`v_0` is the chord from θ to the last
    ascent point and :math:`v_1 = g_k/\|g_k\|`, as in `xsam_jax.xsam`. Costs k + 1
    gradients and (2 + A)·R loss evaluations, vmapped (``chunk`` at a time if given).

    Args:
      loss_fn: ``loss_fn(params) -> scalar`` (e.g. the loss on one batch).
      params: the point θ.
      radii: radii r ≥ 0 (ρ_m in the paper), a 1-D array.
      rho: total ascent length ρ ≥ 0 defining g_1.
      ascent_steps: number k ≥ 1 of ascent steps.
      alphas: optional 1-D array of α for the v(α) directions.
      chunk: evaluate at most this many points at once (≥ 1); None evaluates all at once.
      eps: added to norms in denominators (a zero gradient gives zero directions, not NaN).

    Returns:
      `Proposition1Result`.
    """
    radii = check_grid("radii", radii, low=0.0).astype(np.float32)
    check_range("rho", rho, low=0.0)
    check_int("ascent_steps", ascent_steps, low=1)
    check_int("chunk", chunk, low=1, optional=True)
    check_range("eps", eps, low=0.0)
    extra = np.zeros(0) if alphas is None else check_grid("alphas", alphas)
    extra = extra.astype(np.float32)
    loss, losses, cos_psi = _proposition1(
        loss_fn,
        params,
        jnp.asarray(radii),
        jnp.asarray(extra),
        jnp.asarray(rho, jnp.float32),
        jnp.asarray(eps, jnp.float32),
        steps=ascent_steps,
        chunk=chunk,
    )
    return Proposition1Result(
        radii=jnp.asarray(radii),
        loss=loss,
        along_v0=losses[0],
        along_v1=losses[1],
        alphas=None if alphas is None else jnp.asarray(extra),
        along_alpha=None if alphas is None else losses[2:],
        cos_psi=cos_psi,
    )


@functools.partial(jax.jit, static_argnames=("loss_fn", "steps", "chunk"))
def _alpha_curve(loss_fn, params, alphas, rho, rho_max, eps, *, steps, chunk):
    loss, plane = _ascent_plane(loss_fn, params, rho, steps, eps)
    losses = search.probe_losses(loss_fn, params, plane, alphas, rho_max, chunk)
    alpha_star = search.first_finite_argmax(alphas, losses, jnp.nan)
    return AlphaCurve(alphas, losses, alpha_star, plane.cos_psi, loss)


def alpha_curve(
    loss_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    *,
    rho: float = 0.15,
    rho_max: float = 0.3,
    ascent_steps: int = 1,
    alphas: Grid | None = None,
    chunk: int | None = None,
    eps: float = 1e-12,
) -> AlphaCurve:
    r"""XSAM's α curve :math:`\alpha \mapsto L(\theta + \rho_{\max} v(\alpha))` and its argmax.

    After k ascent steps of length ρ/k from θ (one step: :math:`v_0 = g_0/\|g_0\|`; k steps:
    :math:`v_0` the normalised chord from θ to the last ascent point), with
    :math:`v_1 = g_k/\|g_k\|` and :math:`\cos\psi = \langle v_0, v_1\rangle`,

    .. math::
      v(\alpha) = \frac{\sin((1-\alpha)\psi)}{\sin\psi} v_0
                + \frac{\sin(\alpha\psi)}{\sin\psi} v_1, \qquad
      \alpha^* = \arg\max_\alpha L(\theta + \rho_{\max} v(\alpha)),

    the quantity `xsam_jax.xsam` maximises on its search steps (Chen & Zhou, ICLR 2026);
    α = 0 is the direction v0, α = 1 SAM's v1, α > 1 extrapolates past v1. α* is the first
    maximum, skipping non-finite losses. The candidates are vmapped (``chunk`` at a time).

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: the point θ.
      rho: total ascent length ρ ≥ 0 (XSAM's default 0.15).
      rho_max: probe radius ρ_max ≥ 0 (XSAM's default 0.3).
      ascent_steps: number k ≥ 1 of ascent steps.
      alphas: 1-D grid of α; None is XSAM's grid 0, 0.1, ..., 2.
      chunk: evaluate at most this many candidates at once (≥ 1); None evaluates all at once.
      eps: added to norms in denominators (a zero gradient gives zero directions, not NaN).

    Returns:
      `AlphaCurve` (alphas, losses, α*, cos ψ, L(θ)).

    Examples:
      The problem of `xsam_jax.xsam`'s example: the loss rises from v0 (α = 0) through
      SAM's v1 (α = 1) to its maximum at α = 1.9:

      >>> import jax.numpy as jnp
      >>> from xsam_jax import landscape
      >>> def loss(w):
      ...     return 0.5 * (w[0] ** 2 + 4.0 * w[1] ** 2)
      >>> curve = landscape.alpha_curve(loss, jnp.array([3.0, 1.0]), rho=1.0, rho_max=2.0)
      >>> [round(float(curve.losses[i]), 3) for i in (0, 10, 19, 20)]  # alphas 0, 1, 1.9, 2
      [22.34, 23.139, 23.392, 23.39]
      >>> round(float(curve.alpha_star), 4)
      1.9
    """
    alphas = alpha_grid(2.0, 0.1) if alphas is None else check_grid("alphas", alphas)
    check_range("rho", rho, low=0.0)
    check_range("rho_max", rho_max, low=0.0)
    check_int("ascent_steps", ascent_steps, low=1)
    check_int("chunk", chunk, low=1, optional=True)
    check_range("eps", eps, low=0.0)
    return _alpha_curve(
        loss_fn,
        params,
        jnp.asarray(alphas, jnp.float32),
        jnp.asarray(rho, jnp.float32),
        jnp.asarray(rho_max, jnp.float32),
        jnp.asarray(eps, jnp.float32),
        steps=ascent_steps,
        chunk=chunk,
    )


# --------------------------------------------------------------------------- interpolation


def _second_differences(values: PyTree, h: float) -> PyTree:
    return jax.tree.map(lambda v: (v[2:] - 2.0 * v[1:-1] + v[:-2]) / h**2, values)


@functools.partial(jax.jit, static_argnames=("fn", "chunk"))
def _interpolate(fn, params_a, params_b, lambdas, *, chunk):
    def at(lam):
        return fn(tree_math.combine([1.0 - lam, lam], [params_a, params_b], like=params_a))

    return search.evaluate(at, lambdas, chunk)


def interpolate(
    fn: Callable[[PyTree], PyTree],
    params_a: PyTree,
    params_b: PyTree,
    *,
    num: int = 29,
    lo: float = -0.2,
    hi: float = 1.2,
    chunk: int | None = None,
) -> Interpolation:
    r"""Metrics on the line through two solutions, and its curvature.

    Evaluates ``fn`` at :math:`\theta(\lambda) = (1-\lambda)\theta_A + \lambda\theta_B` on
    the uniform grid of ``num`` points from ``lo`` to ``hi`` (default step 0.05 on
    [−0.2, 1.2], which contains λ = 0 and 1), and the second differences

    .. math::
      \Delta^2 L(\lambda) = \frac{L(\lambda + h) - 2L(\lambda) + L(\lambda - h)}{h^2},

    at the interior points, which approximate :math:`d^\top \nabla^2 L\, d` with
    :math:`d = \theta_B - \theta_A`. Zhou et al. (ICLR 2025) use this path between the
    solutions of SGD and of SAM applied late in training to show they lie in the same valley,
    SAM's end being the flatter. ``fn`` may return a dict of metrics (e.g. train and test loss
    and accuracy); every leaf gets its curve and second differences. Points are vmapped
    (``chunk`` at a time if given); the path is formed in float32.

    Args:
      fn: ``fn(params) -> pytree of arrays`` (a loss or a dict of metrics).
      params_a: θ_A (λ = 0).
      params_b: θ_B (λ = 1), a pytree of the same structure and shapes.
      num: number of grid points, ≥ 3.
      lo: first λ.
      hi: last λ, > lo.
      chunk: evaluate at most this many points at once (≥ 1); None evaluates all at once.

    Returns:
      `Interpolation` (lambdas, values, second differences).
    """
    check_int("num", num, low=3)
    check_int("chunk", chunk, low=1, optional=True)
    check_range("lo", lo)
    check_range("hi", hi, low=lo, low_open=True)
    if jax.tree.structure(params_a) != jax.tree.structure(params_b) or any(  # type: ignore[operator]
        jnp.shape(a) != jnp.shape(b)
        for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True)
    ):
        raise ValueError("params_b must have the pytree structure and leaf shapes of params_a")
    h = (hi - lo) / (num - 1)
    lambdas = lo + h * np.arange(num, dtype=np.float64)
    # Snap points that are integers up to rounding (-0.2 + 4 * 0.05 is -2.8e-17), so that
    # λ = 0 and 1 evaluate θ_A and θ_B exactly.
    nearest = np.round(lambdas)
    lambdas = np.where(np.abs(lambdas - nearest) < 1e-9 * h, nearest, lambdas).astype(np.float32)
    values = _interpolate(fn, params_a, params_b, jnp.asarray(lambdas), chunk=chunk)
    return Interpolation(jnp.asarray(lambdas), values, _second_differences(values, h))


# --------------------------------------------------------------------------- random surfaces


@functools.partial(jax.jit, static_argnames=("vectors", "filter_axis"))
def _filter_normalized(key, params, eps, *, vectors, filter_axis):
    # One draw for the whole tree: a single RNG call compiles much faster than one per leaf.
    flat, unravel = ravel_pytree(tree_math.to_float32(params))
    noise = unravel(jax.random.normal(key, flat.shape, jnp.float32))

    def direction(theta, d):
        theta32 = theta.astype(jnp.float32)
        if theta.ndim <= 1:
            if vectors == "zero":
                return jnp.zeros_like(theta)
            axes = None
        else:
            axis = filter_axis % theta.ndim
            axes = tuple(i for i in range(theta.ndim) if i != axis)
        theta_norm = jnp.sqrt(jnp.sum(theta32**2, axis=axes, keepdims=True))
        d_norm = jnp.sqrt(jnp.sum(d**2, axis=axes, keepdims=True))
        return (d * (theta_norm / (d_norm + eps))).astype(theta.dtype)

    return jax.tree.map(direction, params, noise)


def filter_normalized_direction(
    key: jax.Array,
    params: PyTree,
    *,
    vectors: str = "zero",
    filter_axis: int = -1,
    eps: float = 1e-12,
) -> PyTree:
    r"""A Gaussian random direction with filter normalisation (Li et al., NeurIPS 2018).

    Each filter :math:`d_{i}` of a Gaussian direction d is rescaled to the norm of the
    corresponding filter of θ,

    .. math::
      d_i \leftarrow \frac{d_i}{\|d_i\|}\, \|\theta_i\|,

    which removes the scale invariance of ReLU/BatchNorm networks from the plot, so that
    surfaces of different networks are comparable. A filter is a slice along ``filter_axis``
    of a leaf with ≥ 2 dimensions; the default −1 is the output-feature axis of Flax kernels
    (Dense ``(in, out)``, Conv ``(..., in, out)``), i.e. one filter per output unit or
    channel (PyTorch stores filters on axis 0). Leaves with ≤ 1 dimension (biases,
    BatchNorm scales and offsets): ``vectors="zero"`` sets the direction to zero there, as Li
    et al. do for biases and BatchNorm parameters (``--xignore biasbn`` in their code);
    ``vectors="filter"`` treats the whole leaf as one filter. A zero filter of θ gives a zero
    filter of d.

    Args:
      key: PRNG key.
      params: θ.
      vectors: "zero" or "filter", the treatment of leaves with ≤ 1 dimension.
      filter_axis: the axis indexing filters in leaves with ≥ 2 dimensions.
      eps: added to the norm of each random filter.

    Returns:
      The direction, a pytree like params (params' dtypes).
    """
    check_choice("vectors", vectors, _VECTOR_MODES)
    check_range("eps", eps, low=0.0)
    # The axis must exist in every leaf that has filters (>= 2 dimensions).
    ndim = min(
        (jnp.ndim(leaf) for leaf in jax.tree.leaves(params) if jnp.ndim(leaf) >= 2), default=None
    )
    if ndim is not None:
        check_int("filter_axis", filter_axis, low=-ndim, high=ndim - 1)
    return _filter_normalized(key, params, vectors=vectors, filter_axis=filter_axis, eps=eps)


@functools.partial(jax.jit, static_argnames=("fn", "chunk"))
def _surface(fn, params, directions, coefficients, *, chunk):
    def at(c):
        return fn(tree_math.add_scaled(params, list(c), list(directions)))

    return search.evaluate(at, coefficients, chunk)


def loss_surface_1d(
    fn: Callable[[PyTree], PyTree],
    params: PyTree,
    direction: PyTree,
    coordinates: Grid,
    *,
    chunk: int | None = None,
) -> PyTree:
    r"""``fn`` along a line, :math:`t \mapsto f(\theta + t\, d)` (Li et al., NeurIPS 2018).

    Args:
      fn: ``fn(params) -> pytree of arrays`` (a loss or a dict of metrics).
      params: θ.
      direction: d, a pytree like params (e.g. from `filter_normalized_direction`).
      coordinates: the values of t, a 1-D array.
      chunk: evaluate at most this many points at once (≥ 1); None evaluates all at once.

    Returns:
      ``fn``'s output with a leading axis of len(coordinates).
    """
    ts = check_grid("coordinates", coordinates)
    check_int("chunk", chunk, low=1, optional=True)
    return _surface(fn, params, (direction,), jnp.asarray(ts, jnp.float32)[:, None], chunk=chunk)


def loss_surface_2d(
    fn: Callable[[PyTree], PyTree],
    params: PyTree,
    directions: tuple[PyTree, PyTree],
    x: Grid,
    y: Grid,
    *,
    chunk: int | None = None,
) -> PyTree:
    r"""``fn`` on a plane, :math:`(s, t) \mapsto f(\theta + s\, d_1 + t\, d_2)` (Li et al.).

    Use two independent `filter_normalized_direction` draws for Li et al.'s 2-D contour plots
    (in high dimension they are nearly orthogonal). Points are evaluated row-major and
    vmapped ``chunk`` at a time.

    Args:
      fn: ``fn(params) -> pytree of arrays`` (a loss or a dict of metrics).
      params: θ.
      directions: (d_1, d_2), pytrees like params.
      x: coordinates s along d_1, a 1-D array of length X.
      y: coordinates t along d_2, a 1-D array of length Y.
      chunk: evaluate at most this many points at once (≥ 1); None evaluates all at once.

    Returns:
      ``fn``'s output with leading axes (X, Y): entry [i, j] is at (x[i], y[j]).
    """
    xs, ys = check_grid("x", x).astype(np.float32), check_grid("y", y).astype(np.float32)
    check_int("chunk", chunk, low=1, optional=True)
    if len(directions) != 2:
        raise ValueError(f"directions must be a pair (d_1, d_2), got {len(directions)} items")
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1).reshape(-1, 2)
    values = _surface(fn, params, tuple(directions), jnp.asarray(grid), chunk=chunk)
    return jax.tree.map(lambda v: v.reshape(xs.size, ys.size, *v.shape[1:]), values)
