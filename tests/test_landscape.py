"""xsam_jax.landscape against direct NumPy evaluation point by point.

The test loss L(w) = 1/2 w^T A w + b^T w + c * sum(log cosh w) has its gradient written out
by hand in NumPy (float64); the library sees it as the pytree {"kernel": (2, 3), "bias": (1,)}
so that global norms span several leaves.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _reference import W_STEEP, steep_loss_jax

import xsam_jax as xs
from xsam_jax import landscape as ls

DIM = 7
_rng = np.random.default_rng(0)
_Q, _ = np.linalg.qr(_rng.normal(size=(DIM, DIM)))
A = _Q @ np.diag([6.0, 3.0, 2.0, 1.0, 0.5, 0.3, 0.1]) @ _Q.T
B = _rng.normal(size=DIM)
C = 0.5
W0 = _rng.normal(size=DIM)
W1 = _rng.normal(size=DIM)


def loss_np(w, c=C):
    return float(0.5 * w @ A @ w + B @ w + c * np.sum(np.log(np.cosh(w))))


def grad_np(w):
    return A @ w + B + C * np.tanh(w)


def to_tree(w):
    w = np.asarray(w)
    return {"kernel": jnp.asarray(w[:6].reshape(2, 3), jnp.float32), "bias": jnp.asarray(w[6:])}


def to_vec(tree):
    return np.concatenate(
        [np.asarray(tree["kernel"], np.float64).ravel(), np.asarray(tree["bias"], np.float64)]
    )


def as_vector(tree):
    return jnp.concatenate([tree["kernel"].ravel(), tree["bias"]])


def loss_jax(tree):
    w = as_vector(tree)
    return (
        0.5 * w @ jnp.asarray(A, jnp.float32) @ w
        + jnp.asarray(B, jnp.float32) @ w
        + C * jnp.sum(jnp.log(jnp.cosh(w)))
    )


def unit(x):
    return x / np.linalg.norm(x)


def ascent_np(w, rho, k):
    """k normalised ascent steps of length rho/k: (v0, v1) as in XSAM."""
    chord = np.zeros_like(w)
    g = grad_np(w)
    for _ in range(k):
        chord = chord + rho / k * unit(g)
        g = grad_np(w + chord)
    return unit(chord), unit(g)


def slerp_np(v0, v1, alpha):
    psi = np.arccos(np.clip(v0 @ v1, -1.0, 1.0))
    return (np.sin((1 - alpha) * psi) * v0 + np.sin(alpha * psi) * v1) / np.sin(psi)


# ---------------------------------------------------------------- Proposition 1, alpha curve


@pytest.mark.parametrize("steps", [1, 3])
def test_proposition1_matches_direct_evaluation(steps):
    radii = [0.0, 0.05, 0.1, 0.2, 0.4]
    alphas = [0.0, 0.5, 1.5]
    res = ls.proposition1(
        loss_jax, to_tree(W0), radii, rho=0.1, ascent_steps=steps, alphas=alphas, chunk=4
    )
    v0, v1 = ascent_np(W0, 0.1, steps)
    if steps == 1:  # one step: v0 is the normalised clean gradient
        np.testing.assert_allclose(v0, unit(grad_np(W0)))
    np.testing.assert_allclose(res.along_v0, [loss_np(W0 + r * v0) for r in radii], rtol=2e-6)
    np.testing.assert_allclose(res.along_v1, [loss_np(W0 + r * v1) for r in radii], rtol=2e-6)
    want = [[loss_np(W0 + r * slerp_np(v0, v1, a)) for r in radii] for a in alphas]
    np.testing.assert_allclose(res.along_alpha, want, rtol=2e-6)
    assert float(res.cos_psi) == pytest.approx(v0 @ v1, abs=1e-6)
    assert float(res.loss) == pytest.approx(loss_np(W0), rel=1e-6)


def test_proposition1_without_alphas():
    res = ls.proposition1(loss_jax, to_tree(W0), jnp.array([0.1, 0.2]), rho=0.05)
    assert res.alphas is None and res.along_alpha is None
    assert res.along_v0.shape == res.along_v1.shape == (2,)


@pytest.mark.parametrize(("steps", "chunk"), [(1, None), (2, 4)])
def test_alpha_curve_matches_direct_evaluation(steps, chunk):
    rho, rho_max = 0.15, 0.3
    curve = ls.alpha_curve(
        loss_jax, to_tree(W0), rho=rho, rho_max=rho_max, ascent_steps=steps, chunk=chunk
    )
    grid = np.arange(21) * 0.1
    np.testing.assert_allclose(curve.alphas, grid, atol=1e-6)
    v0, v1 = ascent_np(W0, rho, steps)
    # The end points against the two directions themselves, without any slerp.
    assert float(curve.losses[0]) == pytest.approx(loss_np(W0 + rho_max * v0), rel=2e-6)
    assert float(curve.losses[10]) == pytest.approx(loss_np(W0 + rho_max * v1), rel=2e-6)
    want = np.array([loss_np(W0 + rho_max * slerp_np(v0, v1, a)) for a in grid])
    np.testing.assert_allclose(curve.losses, want, rtol=2e-6)
    assert float(curve.alpha_star) == pytest.approx(grid[np.argmax(want)], abs=1e-6)
    assert float(curve.cos_psi) == pytest.approx(v0 @ v1, abs=1e-6)


def test_alpha_star_skips_non_finite_losses():
    v0, v1 = ascent_np(W0, 0.15, 1)
    grid = np.arange(21) * 0.1
    want = np.array([loss_np(W0 + 0.3 * slerp_np(v0, v1, a)) for a in grid])
    top_two = np.sort(want)[-2:]
    threshold = float(top_two.mean())  # only the global maximum is above it

    def nan_above(tree):
        loss = loss_jax(tree)
        return jnp.where(loss > threshold, jnp.nan, loss)

    curve = ls.alpha_curve(nan_above, to_tree(W0))
    assert np.isnan(curve.losses).sum() == 1
    finite = np.where(want > threshold, -np.inf, want)
    assert float(curve.alpha_star) == pytest.approx(grid[np.argmax(finite)], abs=1e-6)

    curve = ls.alpha_curve(lambda tree: jnp.nan * loss_jax(tree), to_tree(W0))
    assert np.isnan(float(curve.alpha_star))


def test_alpha_curve_at_a_stationary_point_is_flat_and_finite():
    # Zero gradient: every direction is zero, all probes sit at θ; the first maximum is α = 0.
    def quadratic(tree):
        w = as_vector(tree)
        return 0.5 * w @ jnp.asarray(A, jnp.float32) @ w

    curve = ls.alpha_curve(quadratic, to_tree(np.zeros(DIM)))
    np.testing.assert_array_equal(curve.losses, 0.0)
    assert float(curve.alpha_star) == 0.0
    assert np.isfinite(float(curve.cos_psi))
    res = ls.proposition1(quadratic, to_tree(np.zeros(DIM)), [0.1], alphas=[0.5])
    assert np.isfinite(res.along_alpha).all()


@pytest.mark.parametrize("steps", [1, 2])
def test_alpha_curve_is_what_xsam_records(steps):
    """Along an XSAM trajectory whose α* is interior and moves, the analysis sees the search."""
    rho, rho_max = 0.5, 0.3
    tx = optax.chain(
        xs.xsam(rho, rho_max, ascent_steps=steps, search_every=1), optax.sgd(0.05, momentum=0.9)
    )
    params = to_tree(W_STEEP)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(steep_loss_jax)(params)
        updates, state = tx.update(grads, state, params, loss_fn=steep_loss_jax)
        return optax.apply_updates(params, updates), state

    searched = []
    for _ in range(4):
        curve = ls.alpha_curve(steep_loss_jax, params, rho=rho, rho_max=rho_max, ascent_steps=steps)
        params, state = step(params, state)
        recorded = state[0]
        np.testing.assert_allclose(curve.losses, recorded.alpha_losses, rtol=1e-6)
        assert float(curve.alpha_star) == float(recorded.alpha)
        assert float(curve.cos_psi) == pytest.approx(float(recorded.cos_psi), abs=1e-6)
        searched.append(float(recorded.alpha))
    assert len(set(searched)) > 1 and all(0.0 < a < 2.0 for a in searched), searched


# ---------------------------------------------------------------- interpolation


def metrics(tree):
    return {"loss": loss_jax(tree), "sq_norm": jnp.sum(as_vector(tree) ** 2)}


def test_interpolation_matches_direct_evaluation():
    res = ls.interpolate(metrics, to_tree(W0), to_tree(W1), chunk=5)
    lambdas = np.asarray(res.lambdas, np.float64)
    assert lambdas.shape == (29,)
    assert lambdas[4] == 0.0 and lambdas[24] == 1.0  # the two solutions are on the grid
    np.testing.assert_allclose(lambdas, -0.2 + 0.05 * np.arange(29), atol=1e-6)
    points = [(1 - lam) * W0 + lam * W1 for lam in lambdas]
    np.testing.assert_allclose(res.values["loss"], [loss_np(p) for p in points], rtol=1e-5)
    np.testing.assert_allclose(res.values["sq_norm"], [p @ p for p in points], rtol=1e-5)
    assert res.second_differences["loss"].shape == (27,)


def test_second_differences_of_a_quadratic_path_are_constant():
    def quadratic(tree):
        w = as_vector(tree)
        return 0.5 * w @ jnp.asarray(A, jnp.float32) @ w + jnp.asarray(B, jnp.float32) @ w

    res = ls.interpolate(quadratic, to_tree(W0), to_tree(W1), num=15, lo=-0.5, hi=1.5)
    d = W1 - W0
    np.testing.assert_allclose(res.second_differences, d @ A @ d, rtol=2e-3)
    # ... and of sq_norm, 2‖d‖², for a dict of metrics.
    res = ls.interpolate(metrics, to_tree(W0), to_tree(W1), num=5)
    np.testing.assert_allclose(res.second_differences["sq_norm"], 2 * d @ d, rtol=2e-3)


# ---------------------------------------------------------------- filter normalisation


PARAMS = {
    "conv": jnp.asarray(_rng.normal(size=(3, 3, 4, 8)), jnp.float32),
    "dense": jnp.asarray(_rng.normal(size=(16, 5)), jnp.float32).at[:, 2].set(0.0),
    "bias": jnp.asarray(_rng.normal(size=5), jnp.float32),
}


def test_filter_normalization_filter_by_filter():
    d = ls.filter_normalized_direction(jax.random.key(0), PARAMS)
    for name in ("conv", "dense"):
        theta, direction = np.asarray(PARAMS[name]), np.asarray(d[name])
        for j in range(theta.shape[-1]):
            assert np.linalg.norm(direction[..., j]) == pytest.approx(
                np.linalg.norm(theta[..., j]), rel=1e-5, abs=1e-7
            )
        cos = np.sum(theta * direction) / np.linalg.norm(theta) / np.linalg.norm(direction)
        assert abs(cos) < 0.5  # random, not θ itself
    np.testing.assert_array_equal(d["dense"][:, 2], 0.0)  # a zero filter of θ stays zero
    np.testing.assert_array_equal(d["bias"], 0.0)  # Li et al.: no perturbation of biases


def test_filter_normalization_options():
    d = ls.filter_normalized_direction(jax.random.key(1), PARAMS, vectors="filter", filter_axis=0)
    bias = np.asarray(PARAMS["bias"])
    assert np.linalg.norm(d["bias"]) == pytest.approx(np.linalg.norm(bias), rel=1e-5)
    assert np.abs(np.asarray(d["bias"]) - bias).max() > 1e-3
    conv, direction = np.asarray(PARAMS["conv"]), np.asarray(d["conv"])
    for i in range(conv.shape[0]):
        assert np.linalg.norm(direction[i]) == pytest.approx(np.linalg.norm(conv[i]), rel=1e-5)


# ---------------------------------------------------------------- surfaces


def test_surfaces_match_direct_evaluation():
    d1, d2 = _rng.normal(size=DIM), _rng.normal(size=DIM)
    xs, ys = np.linspace(-1.0, 1.0, 5), np.linspace(-0.5, 0.5, 4)
    line = ls.loss_surface_1d(loss_jax, to_tree(W0), to_tree(d1), xs, chunk=3)
    np.testing.assert_allclose(line, [loss_np(W0 + s * d1) for s in xs], rtol=1e-5)
    plane = ls.loss_surface_2d(metrics, to_tree(W0), (to_tree(d1), to_tree(d2)), xs, ys, chunk=7)
    assert plane["loss"].shape == (5, 4)
    want = [[loss_np(W0 + s * d1 + t * d2) for t in ys] for s in xs]
    np.testing.assert_allclose(plane["loss"], want, rtol=1e-5)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: ls.proposition1(loss_jax, to_tree(W0), [-0.1]),
            "radii must be a non-empty 1-D array of finite floats >= 0, got [-0.1]",
        ),
        (
            lambda: ls.proposition1(loss_jax, to_tree(W0), [[0.1]]),
            "radii must be a non-empty 1-D array of finite floats >= 0, got [[0.1]]",
        ),
        (
            lambda: ls.proposition1(loss_jax, to_tree(W0), [0.1], rho=-1.0),
            "rho must be a finite float >= 0, got -1.0",
        ),
        (
            lambda: ls.proposition1(loss_jax, to_tree(W0), [0.1], ascent_steps=0),
            "ascent_steps must be an integer >= 1, got 0",
        ),
        (
            lambda: ls.alpha_curve(loss_jax, to_tree(W0), rho_max=float("nan")),
            "rho_max must be a finite float >= 0, got nan",
        ),
        (
            lambda: ls.alpha_curve(loss_jax, to_tree(W0), alphas=[]),
            "alphas must be a non-empty 1-D array of finite floats, got []",
        ),
        (
            lambda: ls.alpha_curve(loss_jax, to_tree(W0), chunk=0),
            "chunk must be None or an integer >= 1, got 0",
        ),
        (
            lambda: ls.interpolate(metrics, to_tree(W0), to_tree(W1), num=2),
            "num must be an integer >= 3, got 2",
        ),
        (
            lambda: ls.interpolate(metrics, to_tree(W0), to_tree(W1), lo=1.0, hi=0.0),
            "hi must be a finite float > 1, got 0.0",
        ),
        (
            lambda: ls.interpolate(metrics, to_tree(W0), {"kernel": 0.0}, num=3),
            "params_b must have the pytree structure and leaf shapes of params_a",
        ),
        (
            lambda: ls.filter_normalized_direction(jax.random.key(0), PARAMS, vectors="x"),
            "vectors must be one of 'zero', 'filter', got 'x'",
        ),
        (
            # The dense kernel has 2 dimensions: its axes are -2, -1, 0 and 1.
            lambda: ls.filter_normalized_direction(jax.random.key(0), PARAMS, filter_axis=2),
            "filter_axis must be an integer in [-2, 1], got 2",
        ),
        (
            lambda: ls.loss_surface_1d(loss_jax, to_tree(W0), to_tree(W1), []),
            "coordinates must be a non-empty 1-D array of finite floats, got []",
        ),
        (
            lambda: ls.loss_surface_2d(loss_jax, to_tree(W0), (to_tree(W1),), [0.0], [0.0]),
            "directions must be a pair (d_1, d_2), got 1 items",
        ),
    ],
)
def test_arguments_are_validated(call, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        call()
