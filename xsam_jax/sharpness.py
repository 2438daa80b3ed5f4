r"""Matrix-free sharpness measures of any ``loss_fn(params) -> scalar`` on any pytree.

Everything here is built on the Hessian-vector product

.. math::
  H v = \frac{\partial}{\partial t} \nabla L(\theta + t v) \Big|_{t=0},

computed forward-over-reverse (`jax.jvp` of `jax.grad`) at the cost of a few gradients and
without ever forming H (Pearlmutter 1994). On top of it:

- `hessian_eigenvalues`: the top-k eigenvalues by Lanczos (1950) with full
  reorthogonalisation, or by power iteration with deflation (PyHessian's method, Yao et al.
  2020); Ghorbani et al. (2019) use Lanczos to study the Hessian spectra of neural nets.
- `spectral_density`: the Hessian's eigenvalue density by stochastic Lanczos quadrature
  (Ghorbani et al. 2019), smoothed on a grid by `smoothed_density`.
- `hessian_trace`: Hutchinson's (1989) estimator :math:`\operatorname{tr} H = E[z^\top H z]`
  with Rademacher probes, with its standard error.
- `max_loss_in_ball`: the ρ-sharpness :math:`\max_{\|\epsilon\|_2 \le \rho} L(\theta +
  \epsilon) - L(\theta)` (Foret et al. 2021) by projected normalised gradient ascent.
- `nnx_loss_fn`: a pure ``loss_fn(params, batch)`` of a Flax NNX model whose BatchNorm layers
  use batch statistics (as during training) and whose statistic updates are discarded.

**Full-dataset sharpness.** Every function takes an optional ``batches``. Without it,
``loss_fn(params)`` is the loss. With it, ``loss_fn(params, batch)`` is the loss of one batch
and ``batches`` is a pytree whose leaves stack equal-sized batches along a leading axis (build
it with `stack_batches`); the loss is the mean over batches, i.e. the dataset mean, and each
HVP (or gradient) is the mean of the per-batch ones, accumulated batch by batch so that only
one batch's activations are live at a time. Because the batches are a traced argument, one
compilation serves any data of the same shape.

`hvp` and `mean_over_batches` are pure functions to use inside `jax.jit`. The eigenvalue,
trace and ρ-sharpness estimators are host loops of compiled steps, each step one HVP or
gradient (see "compiled steps" below for why); call them outside `jax.jit`. ``loss_fn`` is a
static argument of the steps, so pass the same function object to reuse the compilation
(with ``batches=`` the data can change freely).

References:
  Pearlmutter, Fast Exact Multiplication by the Hessian, Neural Computation 1994.
  Lanczos, An Iteration Method for the Solution of the Eigenvalue Problem of Linear
  Differential and Integral Operators, J. Res. Nat. Bur. Standards 1950.
  Hutchinson, A Stochastic Estimator of the Trace of the Influence Matrix for Laplacian
  Smoothing Splines, Comm. Statist. Simulation Comput. 1989.
  Ghorbani, Krishnan, Xiao, An Investigation into Neural Net Optimization via Hessian
  Eigenvalue Density, ICML 2019.
  Yao, Gholami, Keutzer, Mahoney, PyHessian: Neural Networks Through the Lens of the
  Hessian, IEEE BigData 2020 (prior art in PyTorch).
  Foret, Kleiner, Mobahi, Neyshabur, Sharpness-Aware Minimization for Efficiently Improving
  Generalization, ICLR 2021.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.flatten_util import ravel_pytree

from xsam_jax._src import tree_math
from xsam_jax._src.tree_math import PyTree
from xsam_jax._src.validation import check_choice, check_grid, check_int, check_range

_METHODS = ("lanczos", "power")


class TraceEstimate(NamedTuple):
    """Hutchinson estimate of tr H.

    Attributes:
      mean: the estimate, the mean of `samples` (float32 scalar).
      stderr: its standard error, std(samples, ddof=1) / sqrt(num_samples).
      samples: the per-probe values z_i^T H z_i, shape (num_samples,).
    """

    mean: jax.Array
    stderr: jax.Array
    samples: jax.Array


class Eigenpairs(NamedTuple):
    """Top-k eigenpairs of the Hessian.

    Attributes:
      eigenvalues: shape (k,), descending.
      eigenvectors: a pytree like params whose leaves have a leading axis of size k; entry i
        is the unit eigenvector (global L2 norm 1) of eigenvalue i.
    """

    eigenvalues: jax.Array
    eigenvectors: PyTree


class BallSharpness(NamedTuple):
    """Result of `max_loss_in_ball`.

    Attributes:
      sharpness: max_loss − loss, ≥ 0 (float32 scalar).
      epsilon: the best perturbation found, a float32 pytree like params with ‖ε‖₂ ≤ ρ.
      loss: L(θ).
      max_loss: L(θ + ε), the largest finite loss seen (L(θ) if none was larger).
    """

    sharpness: jax.Array
    epsilon: PyTree
    loss: jax.Array
    max_loss: jax.Array


# --------------------------------------------------------------------------- batches


def stack_batches(batches: Iterable[PyTree]) -> PyTree:
    """Stack equal-sized batches into the ``batches`` argument of this module's functions.

    Args:
      batches: an iterable of batch pytrees (e.g. dicts of arrays) with identical structure
        and leaf shapes.

    Returns:
      One pytree whose leaves have a new leading axis indexing the batches.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("batches must hold at least 1 batch, got an empty iterable")
    structure = jax.tree.structure(batches[0])
    shapes = [jnp.shape(x) for x in jax.tree.leaves(batches[0])]
    for i, batch in enumerate(batches[1:], start=1):
        if (
            jax.tree.structure(batch) != structure
            or [jnp.shape(x) for x in jax.tree.leaves(batch)] != shapes
        ):
            raise ValueError(
                "batches must all have the structure and leaf shapes of batch 0 (equal-sized "
                f"batches, so that the mean of batch means is the dataset mean); batch {i} "
                "differs"
            )
    return jax.tree.map(lambda *xs: jnp.stack(xs), *batches)


def _num_batches(batches: PyTree) -> int:
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else 0 for x in jax.tree.leaves(batches)}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(
            "batches must be a pytree whose leaves all share a leading axis of size >= 1 "
            f"(the batch index; see stack_batches), got leading sizes {sorted(sizes)}"
        )
    return sizes.pop()


def _batch_mean(fn: Callable[[PyTree], PyTree], batches: PyTree) -> PyTree:
    """(1/B) Σ_b fn(batch_b) by `lax.scan`, accumulated in at least float32."""
    n = _num_batches(batches)
    shapes = jax.eval_shape(lambda b: fn(jax.tree.map(lambda x: x[0], b)), batches)
    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, jnp.promote_types(s.dtype, jnp.float32)), shapes
    )

    def body(total, batch):
        return jax.tree.map(lambda t, x: t + x.astype(t.dtype), total, fn(batch)), None

    total, _ = lax.scan(body, zeros, batches)
    return jax.tree.map(lambda t, s: (t / n).astype(s.dtype), total, shapes)


def mean_over_batches(
    fn: Callable[[PyTree, PyTree], PyTree], batches: PyTree
) -> Callable[[PyTree], PyTree]:
    """Turn a per-batch function into its mean over stacked batches.

    Use it to hand full-dataset losses or metrics to `xsam_jax.landscape`. The body of the
    scan is rematerialised (`jax.checkpoint`), so a gradient of the result keeps only one
    batch's activations alive at the price of one extra forward pass per batch. (On CPU,
    XLA runs convolution gradients inside a scan far slower than at the top level,
    jax-ml/jax#12868; forward evaluations are unaffected.)

    Args:
      fn: ``fn(params, batch)`` returning a pytree of arrays (a loss, a dict of metrics...).
      batches: stacked equal-sized batches (see `stack_batches`).

    Returns:
      ``params -> (1/B) Σ_b fn(params, batch_b)``.
    """
    _num_batches(batches)
    step = jax.checkpoint(fn)
    return lambda params: _batch_mean(lambda batch: step(params, batch), batches)


# --------------------------------------------------------------------------- HVP


def _hvp_one(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, v: PyTree) -> PyTree:
    # Tangents must have the primal dtypes; v may come in float32 for bf16 params.
    v = jax.tree.map(lambda p, t: jnp.asarray(t).astype(p.dtype), params, v)
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def hvp(
    loss_fn: Callable[..., jax.Array], params: PyTree, v: PyTree, *, batches: PyTree = None
) -> PyTree:
    r"""Hessian-vector product :math:`\nabla^2 L(\theta)\, v`, forward-over-reverse.

    Costs about one gradient plus its forward-mode derivative (2-3 gradients) and never
    materialises the Hessian. With ``batches``, returns
    :math:`\frac{1}{B}\sum_b \nabla^2 L_b(\theta) v`, which for equal-sized batches is the
    HVP of the dataset-mean loss, accumulated by `jax.lax.scan` (a pure function, usable
    under `jax.jit`; on CPU, XLA runs convolution gradients inside a scan far slower than at
    the top level, jax-ml/jax#12868, which is why the estimators below loop on the host).

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, or ``loss_fn(params, batch)`` with ``batches``.
      params: the point θ (any pytree of float arrays).
      v: the vector, a pytree like params.
      batches: optional stacked batches (see the module docstring).

    Returns:
      H v as a pytree like params (params' dtypes).
    """
    if batches is None:
        return _hvp_one(loss_fn, params, v)
    return _batch_mean(lambda batch: _hvp_one(lambda p: loss_fn(p, batch), params, v), batches)


# --------------------------------------------------------------------------- compiled steps
#
# The iterative methods below are host loops around compiled steps, each holding one HVP or
# gradient, rather than `lax.fori_loop`s: XLA:CPU compiles convolution gradients inside loop
# bodies 20-100x slower than at the top level (jax-ml/jax#12868), which would make Lanczos on
# a CNN impractical on CPU. Dispatch costs microseconds per step; the data stay on the device
# and each step picks its batch by index, so one compilation serves every batch.


def _loss_on(loss_fn, batch):
    return loss_fn if batch is None else (lambda p: loss_fn(p, batch))


def _flat_hvp_kernel(loss_fn, batch, params, x):
    flat, unravel = ravel_pytree(params)
    hv = _hvp_one(_loss_on(loss_fn, batch), params, unravel(x.astype(flat.dtype)))
    return ravel_pytree(hv)[0].astype(x.dtype)


def _quadratic_forms_kernel(loss_fn, batch, params, probes):
    return jax.vmap(lambda z: z @ _flat_hvp_kernel(loss_fn, batch, params, z))(probes)


def _value_and_grad_kernel(loss_fn, batch, params, epsilon):
    point = tree_math.add_scaled(params, [1.0], [epsilon])
    loss, grad = jax.value_and_grad(_loss_on(loss_fn, batch))(point)
    return jnp.asarray(loss, jnp.float32), tree_math.to_float32(grad)


def _value_kernel(loss_fn, batch, params, epsilon):
    point = tree_math.add_scaled(params, [1.0], [epsilon])
    return jnp.asarray(_loss_on(loss_fn, batch)(point), jnp.float32)


@functools.partial(jax.jit, static_argnames=("kernel", "loss_fn"), donate_argnames=("total",))
def _accumulate(kernel, loss_fn, total, scale, batches, index, *args):
    batch = None
    if batches is not None:
        batch = jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, index, keepdims=False), batches)
    out = kernel(loss_fn, batch, *args)
    return jax.tree.map(lambda t, o: t + scale * o.astype(t.dtype), total, out)


def _mean(kernel, loss_fn, batches, zeros, *args):
    """kernel(loss_fn, None, *args), or its mean over the stacked batches, into `zeros`."""
    n = 1 if batches is None else _num_batches(batches)
    total = zeros
    for i in range(n):
        total = _accumulate(kernel, loss_fn, total, 1.0 / n, batches, i, *args)
    return total


def _flat_operator(loss_fn, params, batches):
    """x -> H x on flat vectors of dtype >= float32: (matvec, n, dtype)."""
    flat = ravel_pytree(params)[0]
    dtype = jnp.promote_types(flat.dtype, jnp.float32)

    def matvec(x):
        return _mean(_flat_hvp_kernel, loss_fn, batches, jnp.zeros(flat.shape, dtype), params, x)

    return matvec, flat.size, dtype


# --------------------------------------------------------------------------- eigenvalues


def _orthogonalize(basis: jax.Array, w: jax.Array) -> jax.Array:
    # Classical Gram-Schmidt applied twice ("twice is enough", Giraud et al. 2005): one pass
    # in float32 leaves components of order eps·cond that would let Ritz values repeat.
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _unit(x: jax.Array) -> jax.Array:
    return x / (jnp.linalg.norm(x) + jnp.finfo(x.dtype).tiny)


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def _random_unit(key, basis, *, n, dtype):
    return _unit(_orthogonalize(basis, jax.random.normal(key, (n,), dtype)))


@functools.partial(jax.jit, donate_argnames=("basis",))
def _lanczos_extend(basis, hv, j, key):
    """One Lanczos step after hv = H q_j: (basis with q_{j+1}, α_j, β_j)."""
    # Not basis[j] @ hv: slicing a row of the donated basis made XLA copy the whole basis
    # (27 parameter-sized temporaries instead of 6 with a 21-vector basis).
    alpha = (basis @ hv)[j]
    w = _orthogonalize(basis, hv)
    beta = jnp.linalg.norm(w)
    # A residual below this fraction of ‖Hq‖ means the Krylov space is invariant; dropping it
    # perturbs the Ritz values by at most that much.
    invariant = beta <= 100 * jnp.finfo(hv.dtype).eps * jnp.linalg.norm(hv)
    # On breakdown, restart in the orthogonal complement: T becomes block diagonal and its
    # eigenvalues stay eigenvalues of H (e.g. for degenerate or low-rank Hessians).
    nxt = lax.cond(
        invariant,
        lambda: _random_unit(jax.random.fold_in(key, j + 1), basis, n=hv.size, dtype=hv.dtype),
        lambda: w / beta,
    )
    return basis.at[j + 1].set(nxt), alpha, jnp.where(invariant, 0.0, beta).astype(hv.dtype)


@functools.partial(jax.jit, static_argnames=("k",))
def _ritz(diag, off, basis, *, k):
    tridiagonal = jnp.diag(diag) + jnp.diag(off[:-1], 1) + jnp.diag(off[:-1], -1)
    values, vectors = jnp.linalg.eigh(tridiagonal)
    top = vectors[:, ::-1][:, :k]
    return values[::-1][:k], top.T @ basis[: diag.shape[0]]


def _lanczos_tridiagonal(matvec, start, num_iters, key):
    """`num_iters` Lanczos steps from the unit vector `start`: (α, β, basis) of T_m."""
    basis = jnp.zeros((num_iters + 1, start.size), start.dtype).at[0].set(start)
    diag, off = [], []
    for j in range(num_iters):
        basis, alpha, beta = _lanczos_extend(basis, matvec(basis[j]), j, key)
        diag.append(alpha)
        off.append(beta)
    return jnp.stack(diag), jnp.stack(off), basis


def _lanczos(loss_fn, params, batches, key, k, num_iters):
    matvec, n, dtype = _flat_operator(loss_fn, params, batches)
    start = _random_unit(key, jnp.zeros((1, n), dtype), n=n, dtype=dtype)
    diag, off, basis = _lanczos_tridiagonal(matvec, start, num_iters, key)
    return _ritz(diag, off, basis, k=k)


@jax.jit
def _power_step(found, v, hv):
    # Projecting out the eigenvectors already found deflates them to eigenvalue 0.
    hv = _orthogonalize(found, hv)
    return _unit(hv), v @ hv


def _power(loss_fn, params, batches, key, k, num_iters, tol):
    matvec, n, dtype = _flat_operator(loss_fn, params, batches)
    found = jnp.zeros((k, n), dtype)
    values = []
    for i in range(k):
        v = _random_unit(jax.random.fold_in(key, i), found, n=n, dtype=dtype)
        value = math.inf
        for _ in range(num_iters):
            v, new = _power_step(found, v, matvec(v))
            new = float(new)
            converged = abs(new - value) <= tol * abs(new)
            value = new
            if converged:
                break
        found = found.at[i].set(v)
        values.append(value)
    order = jnp.argsort(-jnp.asarray(values, dtype))
    return jnp.asarray(values, dtype)[order], found[order]


def hessian_eigenvalues(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    *,
    key: jax.Array,
    k: int = 1,
    num_iters: int | None = None,
    method: str = "lanczos",
    tol: float = 1e-5,
    batches: PyTree = None,
    return_vectors: bool = False,
) -> jax.Array | Eigenpairs:
    r"""Top-k Hessian eigenvalues (largest algebraic), matrix-free.

    ``method="lanczos"`` runs m = ``num_iters`` Lanczos steps from a random unit vector
    :math:`q_1`, with full reorthogonalisation against all previous :math:`q_i`:

    .. math::
      \beta_j q_{j+1} = H q_j - \alpha_j q_j - \beta_{j-1} q_{j-1}, \qquad
      \alpha_j = q_j^\top H q_j,

    and returns the k largest eigenvalues of the tridiagonal
    :math:`T_m = \mathrm{tridiag}(\beta, \alpha, \beta)` (`jnp.linalg.eigh`), the Ritz values,
    which converge to the extreme eigenvalues of H first (Lanczos 1950; Ghorbani et al. 2019).
    It stores m vectors of the size of params (memory m × n floats) and costs m HVPs. If the
    Krylov space becomes invariant it restarts in the orthogonal complement. m is capped at n.

    ``method="power"`` (PyHessian, Yao et al. 2020) runs power iteration for each of the k
    eigenvalues in turn, projecting out the eigenvectors already found, until the Rayleigh
    quotient :math:`v^\top H v` changes by at most ``tol`` relative or after ``num_iters``
    iterations. Power iteration converges to the eigenvalues of largest *magnitude*: these
    are the largest algebraic ones only when the top of the spectrum dominates its negative
    part, as is usual for trained networks; prefer Lanczos otherwise.

    Both run on the flattened parameters in float32 (float64 for float64 params), as a host
    loop of compiled steps (see the module docstring); call them outside `jax.jit`.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, or ``loss_fn(params, batch)`` with ``batches``.
      params: the point θ.
      key: PRNG key for the starting vectors.
      k: number of eigenvalues, 1 <= k <= number of parameters.
      num_iters: Lanczos steps or maximum power iterations per eigenvalue, >= k; None means
        max(20, 2k + 10) for Lanczos and 100 for power iteration.
      method: "lanczos" or "power".
      tol: relative convergence tolerance of power iteration (>= 0; unused by Lanczos).
      batches: optional stacked batches; the Hessian is then that of the dataset-mean loss.
      return_vectors: also return the unit eigenvectors as pytrees.

    Returns:
      The eigenvalues, shape (k,), descending; or `Eigenpairs` with ``return_vectors``.
    """
    check_choice("method", method, _METHODS)
    n = sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(params))
    check_int("k", k, low=1, high=n)
    if num_iters is None:
        num_iters = max(20, 2 * k + 10) if method == "lanczos" else 100
    check_int("num_iters", num_iters, low=k)
    check_range("tol", tol, low=0.0)
    if method == "lanczos":
        values, vectors = _lanczos(loss_fn, params, batches, key, k, min(num_iters, n))
    else:
        values, vectors = _power(loss_fn, params, batches, key, k, num_iters, tol)
    if not return_vectors:
        return values
    return Eigenpairs(values, jax.vmap(ravel_pytree(params)[1])(vectors))


# --------------------------------------------------------------------------- density


class SpectralDensity(NamedTuple):
    r"""Stochastic Lanczos quadrature of the Hessian's eigenvalue density (`spectral_density`).

    The estimate of the density :math:`\phi(t) = \frac1n \sum_i \delta(t - \lambda_i)` is
    :math:`\frac1L \sum_{l=1}^{L} \sum_{i=1}^{m} w_{li}\, \delta(t - \lambda_{li})`; smooth it
    with `smoothed_density`.

    Attributes:
      nodes: shape (num_probes, m): per probe, the Ritz values λ_li, ascending.
      weights: shape (num_probes, m): per probe, the squared first components w_li of the
        eigenvectors of its Lanczos tridiagonal; each row sums to 1.
    """

    nodes: jax.Array
    weights: jax.Array


_PROBES = ("rademacher", "gaussian")


@functools.partial(jax.jit, static_argnames=("n", "dtype", "probe"))
def _unit_probe(key, *, n, dtype, probe):
    if probe == "rademacher":
        return jax.random.rademacher(key, (n,), dtype) / jnp.sqrt(jnp.asarray(n, dtype))
    return _unit(jax.random.normal(key, (n,), dtype))


@jax.jit
def _gauss_quadrature(diag, off):
    """Nodes and weights of T_m: its eigenvalues and the squares of their first components."""
    tridiagonal = jnp.diag(diag) + jnp.diag(off[:-1], 1) + jnp.diag(off[:-1], -1)
    values, vectors = jnp.linalg.eigh(tridiagonal)
    return values, vectors[0] ** 2


def spectral_density(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    *,
    key: jax.Array,
    num_probes: int = 10,
    num_iters: int = 80,
    probe: str = "rademacher",
    batches: PyTree = None,
) -> SpectralDensity:
    r"""The Hessian's eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    For each of L = ``num_probes`` random unit probes q (Rademacher :math:`z/\sqrt n`, or a
    normalised Gaussian), m = ``num_iters`` Lanczos steps from q with full reorthogonalisation
    (the iteration of `hessian_eigenvalues`) give the tridiagonal :math:`T_m = U \Lambda
    U^\top`, and

    .. math::
      q^\top f(H)\, q \approx e_1^\top f(T_m)\, e_1 = \sum_{i=1}^m w_i f(\lambda_i),
      \qquad w_i = U_{1i}^2,

    Gauss quadrature of the spectral measure of H seen from q, exact for polynomials f of
    degree < 2m. Since :math:`E[q^\top f(H) q] = \operatorname{tr} f(H)/n`, averaging over
    probes estimates the density :math:`\frac1n \sum_j \delta(t - \lambda_j)`: e.g.
    :math:`\frac1L \sum_l \sum_i w_{li} \lambda_{li}^k \approx \operatorname{tr}(H^k)/n`,
    and an isolated eigenvalue carries mass about 1/n. The extreme eigenvalues converge first;
    the bulk is resolved to about the spacing of the nodes, so look at it through
    `smoothed_density`. This is what PyHessian's ``density`` computes (Yao et al. 2020).

    Costs L·m HVPs and stores m + 1 parameter-sized vectors; m is capped at the number of
    parameters n. Runs as a host loop of compiled steps (see the module docstring); call it
    outside `jax.jit`.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, or ``loss_fn(params, batch)`` with ``batches``.
      params: the point θ.
      key: PRNG key for the probes.
      num_probes: L >= 1 probes (the moments' error shrinks like 1/√L).
      num_iters: m >= 1 Lanczos steps per probe (Ghorbani et al. use about 90).
      probe: "rademacher" or "gaussian".
      batches: optional stacked batches; the Hessian is then that of the dataset-mean loss.

    Returns:
      `SpectralDensity` (nodes and weights, one row per probe).

    References:
      Ghorbani, Krishnan, Xiao, An Investigation into Neural Net Optimization via Hessian
      Eigenvalue Density, ICML 2019. Golub & Meurant, Matrices, Moments and Quadrature with
      Applications, Princeton 2010 (Lanczos quadrature).
    """
    check_int("num_probes", num_probes, low=1)
    check_int("num_iters", num_iters, low=1)
    check_choice("probe", probe, _PROBES)
    matvec, n, dtype = _flat_operator(loss_fn, params, batches)
    nodes, weights = [], []
    for i in range(num_probes):
        probe_key = jax.random.fold_in(key, i)
        start = _unit_probe(probe_key, n=n, dtype=dtype, probe=probe)
        diag, off, _ = _lanczos_tridiagonal(matvec, start, min(num_iters, n), probe_key)
        values, squares = _gauss_quadrature(diag, off)
        nodes.append(values)
        weights.append(squares)
    return SpectralDensity(jnp.stack(nodes), jnp.stack(weights))


def smoothed_density(density: SpectralDensity, grid: Any, *, width: float) -> np.ndarray:
    r"""The quadrature as a density on `grid`: a Gaussian of standard deviation `width` per node.

    .. math::
      \phi_\sigma(t) = \frac1L \sum_{l=1}^{L} \sum_{i=1}^{m} w_{li}\,
      \frac{1}{\sigma\sqrt{2\pi}} \exp\Big(-\frac{(t - \lambda_{li})^2}{2\sigma^2}\Big),

    which integrates to 1 over the real line (no renormalisation on the grid, so mass outside
    it is visible as a deficit). Pick σ near the nodes' spacing in the bulk: smaller shows
    the individual nodes, larger blurs isolated eigenvalues into the bulk.

    Args:
      density: what `spectral_density` returned.
      grid: the points t, a 1-D array of finite floats.
      width: σ > 0, in the units of the eigenvalues.

    Returns:
      φ_σ on `grid`, a float64 NumPy array of the grid's shape.
    """
    grid = check_grid("grid", grid)
    check_range("width", width, low=0.0, low_open=True)
    nodes = np.asarray(density.nodes, np.float64).ravel()
    weights = np.asarray(density.weights, np.float64).ravel() / np.shape(density.nodes)[0]
    z = (grid[:, None] - nodes[None, :]) / width
    return np.exp(-0.5 * z**2) @ weights / (width * math.sqrt(2 * math.pi))


# --------------------------------------------------------------------------- trace


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def _rademacher(keys, *, n, dtype):
    return jax.vmap(lambda key: jax.random.rademacher(key, (n,), dtype))(keys)


def hessian_trace(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    *,
    key: jax.Array,
    num_samples: int = 100,
    chunk: int = 8,
    batches: PyTree = None,
) -> TraceEstimate:
    r"""Hutchinson's estimate of :math:`\operatorname{tr} \nabla^2 L(\theta)`.

    .. math::
      \operatorname{tr} H = E_z[z^\top H z] \approx \frac{1}{N} \sum_{i=1}^N z_i^\top H z_i,
      \qquad z_i \in \{-1, +1\}^n \text{ i.i.d. uniform (Rademacher)},

    unbiased with variance :math:`2 \sum_{i \ne j} H_{ij}^2 / N` (Hutchinson 1989), the
    smallest among probes with independent entries. The N HVPs are vmapped ``chunk`` at a
    time, so memory grows with ``chunk``, not N; the last chunk is filled up with extra probes
    that are discarded, so that one compilation serves every chunk.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, or ``loss_fn(params, batch)`` with ``batches``.
      params: the point θ.
      key: PRNG key for the probes.
      num_samples: number of probes N >= 2 (two are needed for a standard error).
      chunk: probes evaluated at once, >= 1.
      batches: optional stacked batches; the Hessian is then that of the dataset-mean loss.

    Returns:
      `TraceEstimate` (mean, standard error, per-probe samples).
    """
    check_int("num_samples", num_samples, low=2)
    check_int("chunk", chunk, low=1)
    chunk = min(chunk, num_samples)
    flat = ravel_pytree(params)[0]
    dtype = jnp.promote_types(flat.dtype, jnp.float32)
    keys = jax.random.split(key, -(-num_samples // chunk) * chunk)
    parts = []
    for start in range(0, num_samples, chunk):
        probes = _rademacher(keys[start : start + chunk], n=flat.size, dtype=dtype)
        zeros = jnp.zeros(chunk, dtype)
        parts.append(_mean(_quadratic_forms_kernel, loss_fn, batches, zeros, params, probes))
    samples = jnp.concatenate(parts)[:num_samples]
    return TraceEstimate(samples.mean(), samples.std(ddof=1) / math.sqrt(num_samples), samples)


# --------------------------------------------------------------------------- rho-sharpness


@jax.jit
def _project(epsilon, rho, eps):
    scale = jnp.minimum(1.0, rho / (tree_math.norm(epsilon) + eps))
    return jax.tree.map(lambda x: x * scale, epsilon)


@jax.jit
def _keep_best(best_epsilon, best_loss, epsilon, loss):
    better = jnp.isfinite(loss) & (loss > best_loss)
    chosen = jax.tree.map(lambda a, b: jnp.where(better, a, b), epsilon, best_epsilon)
    return chosen, jnp.where(better, loss, best_loss)


@jax.jit
def _ascend(epsilon, grad, step_size, rho, eps):
    scale = step_size / (tree_math.norm(grad) + eps)
    return _project(tree_math.add_scaled(epsilon, [scale], [grad]), rho, eps)


def max_loss_in_ball(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    rho: float,
    *,
    steps: int = 20,
    step_size: float | None = None,
    key: jax.Array | None = None,
    batches: PyTree = None,
    eps: float = 1e-12,
) -> BallSharpness:
    r"""ρ-sharpness :math:`\max_{\|\epsilon\|_2 \le \rho} L(\theta + \epsilon) - L(\theta)`.

    Projected normalised gradient ascent on ε (the inner problem of SAM, Foret et al. 2021,
    solved with many steps instead of SAM's one):

    .. math::
      \epsilon_{t+1} = P_\rho\!\Big(\epsilon_t + \eta\,
      \frac{\nabla L(\theta + \epsilon_t)}{\|\nabla L(\theta + \epsilon_t)\|}\Big), \qquad
      P_\rho(x) = x \min\!\Big(1, \frac{\rho}{\|x\|}\Big),

    from :math:`\epsilon_0 = \rho\, g/\|g\|` (the SAM point) or, with ``key``, from a random
    point of the sphere (needed at stationary points, where g = 0 and the SAM start does not
    move). Every iterate stays in the ball (up to rounding); the best finite loss over ε = 0
    and all iterates is returned, so the result is a lower bound of the true maximum and never
    negative. For the quadratic :math:`\frac12 x^\top A x` at x = 0 it converges to
    :math:`\frac12 \rho^2 \lambda_{\max}(A)` (power iteration on :math:`I + \eta' A`).
    Runs as a host loop of compiled steps (see the module docstring).

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, or ``loss_fn(params, batch)`` with ``batches``.
      params: the point θ.
      rho: radius ρ > 0 of the L2 ball (global over the pytree).
      steps: ascent steps >= 1 (each costs one gradient).
      step_size: η > 0; None means ρ.
      key: optional PRNG key for a random start on the sphere.
      batches: optional stacked batches; the loss is then the dataset mean.
      eps: added to norms in denominators (zero gradients give zero steps, not NaN).

    Returns:
      `BallSharpness` (sharpness, ε, L(θ), L(θ + ε)).
    """
    check_range("rho", rho, low=0.0, low_open=True)
    check_int("steps", steps, low=1)
    step_size = rho if step_size is None else step_size
    check_range("step_size", step_size, low=0.0, low_open=True)
    check_range("eps", eps, low=0.0)
    rho, step_size, eps = (jnp.asarray(x, jnp.float32) for x in (rho, step_size, eps))
    zero = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), params)

    def value_and_grad(epsilon):
        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, zero))  # donated
        return _mean(_value_and_grad_kernel, loss_fn, batches, zeros, params, epsilon)

    loss0, g0 = value_and_grad(zero)
    if key is None:
        start = g0
    else:
        flat, unravel = ravel_pytree(zero)
        start = unravel(jax.random.normal(key, flat.shape, jnp.float32))
    epsilon = _ascend(zero, start, rho, rho, eps)  # a step of length ρ from 0: onto the sphere
    # ε = 0 is a candidate, so the estimate is a valid lower bound of the true max (≥ 0).
    best_epsilon, best_loss = zero, loss0
    for _ in range(steps):
        loss, grad = value_and_grad(epsilon)
        best_epsilon, best_loss = _keep_best(best_epsilon, best_loss, epsilon, loss)
        epsilon = _ascend(epsilon, grad, step_size, rho, eps)
    last = _mean(_value_kernel, loss_fn, batches, jnp.zeros((), jnp.float32), params, epsilon)
    best_epsilon, best_loss = _keep_best(best_epsilon, best_loss, epsilon, last)
    return BallSharpness(best_loss - loss0, best_epsilon, loss0, best_loss)


# --------------------------------------------------------------------------- Flax NNX


def nnx_loss_fn(
    model: nnx.Module,
    loss: Callable[[nnx.Module, Any], jax.Array],
    *,
    wrt: Any = nnx.Param,
    use_running_average: bool = False,
) -> tuple[Callable[[PyTree, Any], jax.Array], PyTree]:
    """A pure ``loss_fn(params, batch)`` of an NNX model, for the functions of this module.

    The model is viewed with ``use_running_average=False`` (BatchNorm normalises with the
    statistics of the batch, as it did in training, so the sharpness is that of the training
    objective) and ``deterministic=True`` (no dropout: the loss must be a deterministic
    function of the params), then split into (graphdef, params, rest). Each call merges
    graphdef, the given params and ``nnx.as_pure(rest)`` into a fresh module: the BatchNorm
    statistic updates land in that throwaway copy, so the model's running statistics are
    unchanged. ``rest`` is captured when this builder is called; in train mode it does not
    affect the loss, but with ``use_running_average=True`` rebuild after further training.
    Build once and reuse the returned function: the estimators compile per function object.

    Example::

        loss_fn, params = nnx_loss_fn(model, lambda m, b: xent(m(b["x"]), b["y"]))
        lam = hessian_eigenvalues(loss_fn, params, key=key, batches=stack_batches(data))

    Args:
      model: the NNX model (left untouched).
      loss: ``loss(model, batch) -> scalar``.
      wrt: filter of the variables that are the differentiated params (default `nnx.Param`).
      use_running_average: True evaluates BatchNorm with its running statistics instead.

    Returns:
      ``(loss_fn, params)``: the function of (params, batch) and the model's current params
      as a pure pytree (an `nnx.State` of arrays).
    """
    view = nnx.view(
        model,
        use_running_average=use_running_average,
        deterministic=True,
        raise_if_not_found=False,
    )
    graphdef, params, rest = nnx.split(view, wrt, ...)
    rest = nnx.as_pure(rest)

    def loss_fn(params: PyTree, batch: Any) -> jax.Array:
        return loss(nnx.merge(graphdef, params, rest), batch)

    return loss_fn, nnx.as_pure(params)
