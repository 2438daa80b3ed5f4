"""xsam_jax.sharpness against exact Hessians, closed forms and finite differences.

References are independent of the code under test: spectra fixed by construction,
`jax.hessian` of a small MLP in float64 flattened with `ravel_pytree` and diagonalised by
NumPy, central differences of float64 gradients, and closed-form ball maxima.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from xsam_jax import sharpness as sh

KEY = jax.random.key(0)

# ---------------------------------------------------------------- a quadratic, known spectrum

_rng = np.random.default_rng(0)
N_QUAD = 40
_Q, _ = np.linalg.qr(_rng.normal(size=(N_QUAD, N_QUAD)))
SPECTRUM = np.concatenate([[10.0, 5.0, 2.0, 1.0], _rng.uniform(-0.5, 0.5, N_QUAD - 4)])
A_QUAD = _Q @ np.diag(SPECTRUM) @ _Q.T
QUAD_PARAMS = {"w": jnp.asarray(_rng.normal(size=(5, 6)), jnp.float32), "b": jnp.ones(10)}


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def quad_loss(params):
    w = ravel_pytree(params)[0]
    return 0.5 * w @ jnp.asarray(A_QUAD, w.dtype) @ w


def zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


# ---------------------------------------------------------------- a small MLP, exact Hessian

X = _rng.normal(size=(24, 4))
Y = _rng.integers(0, 3, size=24)
MLP_PARAMS = {
    "w1": jnp.asarray(_rng.normal(size=(4, 6)) * 0.8, jnp.float32),
    "b1": jnp.asarray(_rng.normal(size=6) * 0.1, jnp.float32),
    "w2": jnp.asarray(_rng.normal(size=(6, 3)) * 0.8, jnp.float32),
    "b2": jnp.zeros(3, jnp.float32),
}
N_MLP = sum(x.size for x in jax.tree.leaves(MLP_PARAMS))


def mlp_loss(params, batch):
    h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


FULL = {"x": jnp.asarray(X, jnp.float32), "y": jnp.asarray(Y)}
BATCHES = sh.stack_batches(
    [{"x": FULL["x"][i : i + 6], "y": FULL["y"][i : i + 6]} for i in range(0, 24, 6)]
)


def full_loss(params):
    return mlp_loss(params, FULL)


def exact_hessian(params=MLP_PARAMS) -> np.ndarray:
    """jax.hessian of the full-data MLP loss in float64, as a dense (n, n) matrix."""
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        w, unravel = ravel_pytree(p64)
        batch = {"x": jnp.asarray(X, jnp.float64), "y": jnp.asarray(Y)}
        return np.asarray(jax.jit(jax.hessian(lambda w: mlp_loss(unravel(w), batch)))(w))


H_MLP = exact_hessian()
EIG_MLP = np.linalg.eigvalsh(H_MLP)


# Eager op-by-op dispatch compiles every primitive; jitting the test's own calls is faster.
hvp = jax.jit(sh.hvp, static_argnums=0)


def random_tree(seed, like):
    w, unravel = ravel_pytree(like)
    return unravel(jnp.asarray(np.random.default_rng(seed).normal(size=w.size), w.dtype))


# ---------------------------------------------------------------- HVP


def test_hvp_matches_exact_hessian():
    v = random_tree(1, MLP_PARAMS)
    got = flat(hvp(full_loss, MLP_PARAMS, v))
    want = H_MLP @ flat(v)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_hvp_matches_central_differences_of_gradients():
    # In float64 so the finite-difference reference is accurate to ~h^2.
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), MLP_PARAMS)
        v = random_tree(2, params)
        batch = {"x": jnp.asarray(X, jnp.float64), "y": jnp.asarray(Y)}
        got = flat(jax.jit(lambda p, v: sh.hvp(lambda q: mlp_loss(q, batch), p, v))(params, v))
        w, unravel = ravel_pytree(params)
        h = 1e-5
        grad = jax.jit(jax.grad(mlp_loss))

        def grad_at(t):
            return flat(grad(unravel(w + t * ravel_pytree(v)[0]), batch))

        want = (grad_at(h) - grad_at(-h)) / (2 * h)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)


def test_batch_averaged_hvp_equals_hvp_of_the_mean_loss():
    v = random_tree(3, MLP_PARAMS)
    got = flat(hvp(mlp_loss, MLP_PARAMS, v, batches=BATCHES))
    want = H_MLP @ flat(v)  # the Hessian of the loss on all 24 examples at once
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    # ... while a single batch's HVP is different (the test could fail).
    first = jax.tree.map(lambda b: b[:1], BATCHES)
    one = flat(hvp(mlp_loss, MLP_PARAMS, v, batches=first))
    assert np.abs(one - want).max() > 1e-2 * np.abs(want).max()


def test_mean_over_batches_value_and_gradient():
    mean_loss = sh.mean_over_batches(mlp_loss, BATCHES)
    assert float(jax.jit(mean_loss)(MLP_PARAMS)) == pytest.approx(
        float(full_loss(MLP_PARAMS)), rel=1e-6
    )
    np.testing.assert_allclose(
        flat(jax.jit(jax.grad(mean_loss))(MLP_PARAMS)),
        flat(jax.jit(jax.grad(full_loss))(MLP_PARAMS)),
        rtol=1e-5,
        atol=1e-7,
    )


# ---------------------------------------------------------------- eigenvalues


def test_lanczos_top_k_on_known_spectrum():
    # 20 Lanczos steps in a 40-dimensional space: converged on the separated top of the spectrum.
    pairs = sh.hessian_eigenvalues(
        quad_loss, QUAD_PARAMS, key=KEY, k=3, num_iters=20, return_vectors=True
    )
    np.testing.assert_allclose(pairs.eigenvalues, [10.0, 5.0, 2.0], rtol=1e-3)
    vectors = jax.vmap(lambda t: ravel_pytree(t)[0])(pairs.eigenvectors)
    overlaps = np.abs(np.asarray(vectors, np.float64) @ _Q[:, :3])
    np.testing.assert_allclose(np.diag(overlaps), 1.0, atol=1e-3)


def test_lanczos_returns_largest_algebraic_not_largest_magnitude():
    spectrum = np.array([3.0, 1.0, -0.2, -8.0, -5.0])
    q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(5, 5)))
    a = jnp.asarray(q @ np.diag(spectrum) @ q.T, jnp.float32)
    got = sh.hessian_eigenvalues(lambda w: 0.5 * w @ a @ w, jnp.ones(5), key=KEY, k=2)
    np.testing.assert_allclose(got, [3.0, 1.0], rtol=1e-4)


def test_lanczos_matches_exact_mlp_hessian():
    got = sh.hessian_eigenvalues(full_loss, MLP_PARAMS, key=KEY, k=3, num_iters=N_MLP)
    want = EIG_MLP[::-1][:3]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.abs(EIG_MLP).max())


def test_lanczos_over_batches_matches_full_data_hessian():
    got = sh.hessian_eigenvalues(mlp_loss, MLP_PARAMS, key=KEY, k=2, batches=BATCHES)
    np.testing.assert_allclose(got, EIG_MLP[::-1][:2], rtol=0, atol=1e-3 * EIG_MLP.max())


def test_lanczos_on_a_low_rank_hessian_restarts_without_nan():
    # Rank 2: the Krylov space is invariant after two steps.
    a, b = jnp.arange(1.0, 7.0), jnp.array([1.0, -1.0, 0.0, 2.0, 0.0, 0.5])

    def loss(w):
        return 0.5 * (a @ w) ** 2 + 1.5 * (b @ w) ** 2

    m = np.outer(np.asarray(a), np.asarray(a)) + 3.0 * np.outer(np.asarray(b), np.asarray(b))
    want = np.linalg.eigvalsh(m)[::-1][:4]
    got = sh.hessian_eigenvalues(loss, jnp.zeros(6), key=KEY, k=4, num_iters=6)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * want[0])


def test_power_iteration_matches_known_spectrum_and_lanczos():
    power = sh.hessian_eigenvalues(
        quad_loss, QUAD_PARAMS, key=KEY, k=3, method="power", num_iters=500, tol=1e-7
    )
    np.testing.assert_allclose(power, [10.0, 5.0, 2.0], rtol=1e-3)
    lanczos = sh.hessian_eigenvalues(full_loss, MLP_PARAMS, key=KEY, k=1)
    power = sh.hessian_eigenvalues(
        full_loss, MLP_PARAMS, key=KEY, k=1, method="power", num_iters=1000, tol=1e-7
    )
    assert abs(EIG_MLP[-1]) > abs(EIG_MLP[0])  # power iteration finds the largest magnitude
    np.testing.assert_allclose(power, lanczos, rtol=1e-3)
    np.testing.assert_allclose(power, EIG_MLP[-1], rtol=1e-3)


def test_power_iteration_keeps_the_sign_of_a_dominant_negative_eigenvalue():
    # Eigenvalues {-5, 2, 1}: the largest magnitude is negative, so its Rayleigh quotient
    # v^T H v is -5 where the norm ||Hv|| would be +5.
    q, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(3, 3)))
    a = jnp.asarray(q @ np.diag([-5.0, 2.0, 1.0]) @ q.T, jnp.float32)

    def loss(w):
        return 0.5 * w @ a @ w

    top = sh.hessian_eigenvalues(loss, jnp.ones(3), key=KEY, k=1, method="power", tol=1e-7)
    np.testing.assert_allclose(top, [-5.0], rtol=1e-4)
    every = sh.hessian_eigenvalues(loss, jnp.ones(3), key=KEY, k=3, method="power", tol=1e-7)
    np.testing.assert_allclose(every, [2.0, 1.0, -5.0], rtol=1e-4)


def test_zero_hessian_gives_zero_eigenvalues_without_nan():
    for method in ("lanczos", "power"):
        got = sh.hessian_eigenvalues(lambda w: jnp.sum(w), jnp.ones(4), key=KEY, k=2, method=method)
        np.testing.assert_array_equal(got, [0.0, 0.0])


# ---------------------------------------------------------------- trace


def test_hutchinson_within_four_standard_errors_of_exact_trace():
    est = sh.hessian_trace(full_loss, MLP_PARAMS, key=KEY, num_samples=200, chunk=16)
    exact = np.trace(H_MLP)
    assert est.samples.shape == (200,)
    assert float(est.stderr) > 0
    assert abs(float(est.mean) - exact) < 4 * float(est.stderr)
    samples = np.asarray(est.samples, np.float64)
    assert float(est.stderr) == pytest.approx(samples.std(ddof=1) / math.sqrt(200), rel=1e-4)


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    # z^T D z = tr D for every Rademacher z: each sample equals the trace.
    diag = jnp.array([3.0, -1.0, 0.5, 2.0, 7.0])
    est = sh.hessian_trace(lambda w: 0.5 * jnp.sum(diag * w**2), jnp.ones(5), key=KEY, chunk=3)
    np.testing.assert_allclose(est.samples, 11.5, rtol=1e-6)
    assert float(est.stderr) < 1e-5


def test_hutchinson_over_batches():
    est = sh.hessian_trace(mlp_loss, MLP_PARAMS, key=KEY, num_samples=200, batches=BATCHES)
    assert abs(float(est.mean) - np.trace(H_MLP)) < 4 * float(est.stderr)


# ---------------------------------------------------------------- rho-sharpness


@pytest.mark.parametrize("rho", [0.05, 0.3])
def test_max_loss_in_ball_on_a_quadratic_at_its_minimum(rho):
    origin = zeros_like(QUAD_PARAMS)
    res = sh.max_loss_in_ball(quad_loss, origin, rho, steps=60, key=KEY)
    assert float(res.sharpness) == pytest.approx(0.5 * rho**2 * SPECTRUM.max(), rel=1e-3)
    eps = flat(res.epsilon)
    assert np.linalg.norm(eps) <= rho * (1 + 1e-6)
    assert abs(eps @ _Q[:, 0]) == pytest.approx(rho, rel=1e-3)  # the top eigenvector


def test_max_loss_in_ball_never_leaves_the_ball_with_large_steps():
    # Huge steps overshoot every time: only the projection keeps ε in the ball.
    for steps in (1, 2, 7):
        res = sh.max_loss_in_ball(quad_loss, QUAD_PARAMS, 0.1, steps=steps, step_size=50.0)
        assert np.linalg.norm(flat(res.epsilon)) <= 0.1 * (1 + 1e-6)
        assert float(res.max_loss) == pytest.approx(
            float(quad_loss(jax.tree.map(lambda p, e: p + e, QUAD_PARAMS, res.epsilon))), rel=1e-6
        )


def test_max_loss_in_ball_of_a_linear_loss_is_rho_times_gradient_norm():
    c = jnp.array([3.0, -4.0, 12.0])
    res = sh.max_loss_in_ball(lambda w: c @ w, jnp.ones(3), 0.2, steps=3)
    assert float(res.sharpness) == pytest.approx(0.2 * 13.0, rel=1e-5)
    np.testing.assert_allclose(res.epsilon, 0.2 * np.array([3.0, -4.0, 12.0]) / 13.0, rtol=1e-5)


def test_max_loss_in_ball_at_a_stationary_point_without_key_is_zero_not_nan():
    res = sh.max_loss_in_ball(quad_loss, zeros_like(QUAD_PARAMS), 0.1, steps=3)
    assert float(res.sharpness) == 0.0
    assert np.isfinite(flat(res.epsilon)).all()


def test_max_loss_in_ball_finds_a_peak_strictly_inside_the_ball():
    # A concave bump L(θ + ε) = -½ (ε - c)^T A (ε - c) peaks at ε = c with ‖c‖ = ρ/2: the
    # maximum over the ball is L = 0 there, sharpness ½ c^T A c. Every point of the sphere
    # ‖ε‖ = ρ is at least ρ/2 from c, so its loss is at most -½ λ_min (ρ/2)² = -0.125.
    q, _ = np.linalg.qr(np.random.default_rng(8).normal(size=(4, 4)))
    a = q @ np.diag([3.0, 2.0, 1.5, 1.0]) @ q.T
    c = 0.5 * q[:, 1]  # rho = 1

    def loss(w):
        d = w - jnp.asarray(c, jnp.float32)
        return -0.5 * d @ jnp.asarray(a, jnp.float32) @ d

    res = sh.max_loss_in_ball(loss, jnp.zeros(4), 1.0, steps=300, step_size=0.01)
    peak = 0.5 * c @ a @ c
    # Steps of length η end within η of the peak: max_loss >= -½ λ_max η².
    assert float(res.max_loss) >= -0.5 * 3.0 * 0.01**2
    assert float(res.sharpness) == pytest.approx(peak, abs=0.5 * 3.0 * 0.01**2)
    np.testing.assert_allclose(flat(res.epsilon), c, atol=0.02)
    assert np.linalg.norm(flat(res.epsilon)) < 0.6  # inside, not on the sphere


def test_max_loss_in_ball_over_batches_matches_full_data():
    rho = 0.5
    full = sh.max_loss_in_ball(full_loss, MLP_PARAMS, rho, steps=10)
    batched = sh.max_loss_in_ball(mlp_loss, MLP_PARAMS, rho, steps=10, batches=BATCHES)
    assert float(batched.sharpness) == pytest.approx(float(full.sharpness), rel=1e-4)
    # The sharpness exceeds SAM's one-step estimate L(θ + ρ g/‖g‖) − L(θ).
    g = jax.jit(jax.grad(full_loss))(MLP_PARAMS)
    scale = rho / np.linalg.norm(flat(g))
    sam = full_loss(jax.tree.map(lambda p, x: p + scale * x, MLP_PARAMS, g)) - full_loss(MLP_PARAMS)
    assert float(full.sharpness) >= float(sam) - 1e-6


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, f"k must be an integer in [1, {N_QUAD}], got 0"),
        ({"k": N_QUAD + 1}, f"k must be an integer in [1, {N_QUAD}], got {N_QUAD + 1}"),
        ({"k": 2.0}, f"k must be an integer in [1, {N_QUAD}], got 2.0"),
        ({"k": 3, "num_iters": 2}, "num_iters must be an integer >= 3, got 2"),
        ({"method": "arnoldi"}, "method must be one of 'lanczos', 'power', got 'arnoldi'"),
        ({"tol": -1.0, "method": "power"}, "tol must be a finite float >= 0, got -1.0"),
    ],
)
def test_eigenvalue_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        sh.hessian_eigenvalues(quad_loss, QUAD_PARAMS, key=KEY, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 1}, "num_samples must be an integer >= 2, got 1"),
        ({"chunk": 0}, "chunk must be an integer >= 1, got 0"),
    ],
)
def test_trace_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        sh.hessian_trace(quad_loss, QUAD_PARAMS, key=KEY, **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0.0,), {}, "rho must be a finite float > 0, got 0.0"),
        ((-0.1,), {}, "rho must be a finite float > 0, got -0.1"),
        ((float("nan"),), {}, "rho must be a finite float > 0, got nan"),
        ((None,), {}, "rho must be a finite float > 0, got None"),
        ((0.1,), {"steps": 0}, "steps must be an integer >= 1, got 0"),
        ((0.1,), {"step_size": -1.0}, "step_size must be a finite float > 0, got -1.0"),
    ],
)
def test_ball_arguments_are_validated(args, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        sh.max_loss_in_ball(quad_loss, QUAD_PARAMS, *args, **kwargs)


def test_batches_are_validated():
    with pytest.raises(ValueError, match="batches"):
        sh.stack_batches([])
    with pytest.raises(ValueError, match="batches"):
        sh.stack_batches([{"x": jnp.ones(3)}, {"x": jnp.ones(4)}])
    ragged = {"x": jnp.ones((4, 6, 4)), "y": jnp.ones((3, 6), jnp.int32)}
    with pytest.raises(ValueError, match="batches"):
        sh.hvp(mlp_loss, MLP_PARAMS, MLP_PARAMS, batches=ragged)


# ---------------------------------------------------------------- Flax NNX


class BNNet(nnx.Module):
    def __init__(self, rngs):
        self.lin1 = nnx.Linear(4, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.5, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.lin2 = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.lin2(self.drop(nnx.relu(self.bn(self.lin1(x)))))


def xent(model, batch):
    return optax.softmax_cross_entropy_with_integer_labels(model(batch["x"]), batch["y"]).mean()


def running_stats(model):
    return [np.array(x) for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


def test_nnx_loss_fn_uses_batch_statistics_and_leaves_running_stats_unchanged():
    model = BNNet(nnx.Rngs(0))
    # Make the running statistics differ from the batch's, so that the mode matters.
    model.bn.mean[...] = jnp.full(8, 0.7)
    model.bn.var[...] = jnp.full(8, 3.0)
    model.eval()  # the builder must switch BatchNorm to batch statistics itself
    before = running_stats(model)
    loss_fn, params = sh.nnx_loss_fn(model, xent)

    # Reference: a clone run in train mode with dropout off, by hand.
    reference = nnx.clone(model)
    reference.bn.use_running_average = False
    reference.drop.deterministic = True
    want = float(nnx.jit(xent)(reference, FULL))
    assert running_stats(reference)[0].tolist() != before[0].tolist()  # train mode updates them
    eval_loss = float(nnx.jit(xent)(nnx.clone(model), FULL))
    assert abs(want - eval_loss) > 1e-3  # the two modes differ on this batch

    assert float(jax.jit(loss_fn)(params, FULL)) == pytest.approx(want, rel=1e-6)
    lam = sh.hessian_eigenvalues(loss_fn, params, key=KEY, k=1, batches=BATCHES)
    assert np.isfinite(lam).all()
    for a, b in zip(running_stats(model), before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.bn.use_running_average and model.drop.deterministic  # the model's mode too
