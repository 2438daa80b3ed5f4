"""`sharpness.spectral_density` against the exact spectrum of a small network.

The reference is the dense Hessian of a 212-parameter MLP by `jax.hessian` in float64,
diagonalised by NumPy. Tolerances are four standard deviations of the probe noise, computed
in closed form from that Hessian: for a Rademacher probe q = z/√n,
Var(qᵀAq) = 2 Σ_{i≠j} A_ij² / n² (Hutchinson 1989), and Var((qᵀu)²) = 2 (1 − Σ u_i⁴) / n² for a
unit eigenvector u.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from scipy import stats

from xsam_jax import plotting
from xsam_jax import sharpness as sh

_rng = np.random.default_rng(1)
X = _rng.normal(size=(64, 8))
Y = _rng.integers(0, 4, size=64)
PARAMS = {
    "w1": _rng.normal(size=(8, 16)) * 0.6,
    "b1": _rng.normal(size=16) * 0.1,
    "w2": _rng.normal(size=(16, 4)) * 0.6,
    "b2": np.zeros(4),
}
PARAMS32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), PARAMS)
FULL = {"x": jnp.asarray(X, jnp.float32), "y": jnp.asarray(Y)}
BATCHES = sh.stack_batches(
    [{"x": FULL["x"][i : i + 16], "y": FULL["y"][i : i + 16]} for i in range(0, 64, 16)]
)
PROBES, ITERS = 30, 30


def mlp_loss(params, batch):
    h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def full_loss(params):
    return mlp_loss(params, FULL)


def exact_hessian() -> np.ndarray:
    with jax.enable_x64(True):
        w, unravel = ravel_pytree(jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), PARAMS))
        batch = {"x": jnp.asarray(X, jnp.float64), "y": jnp.asarray(Y)}
        return np.asarray(jax.jit(jax.hessian(lambda w: mlp_loss(unravel(w), batch)))(w))


H = exact_hessian()
EIGENVALUES, EIGENVECTORS = np.linalg.eigh(H)
N = H.shape[0]


@pytest.fixture(scope="module")
def density():
    return sh.spectral_density(
        full_loss, PARAMS32, key=jax.random.key(0), num_probes=PROBES, num_iters=ITERS
    )


def per_probe_moment(density, k):
    nodes = np.asarray(density.nodes, np.float64)
    return (np.asarray(density.weights, np.float64) * nodes**k).sum(axis=1)


def test_shapes_and_nodes_inside_the_spectrum(density):
    assert N == 212
    assert density.nodes.shape == density.weights.shape == (PROBES, ITERS)
    np.testing.assert_allclose(np.asarray(density.weights).sum(axis=1), 1.0, rtol=1e-5)
    assert (np.asarray(density.weights) >= 0).all()
    # Ritz values lie in [λ_min, λ_max] (Cauchy interlacing); the extremes converge first.
    scale = np.abs(EIGENVALUES).max()
    nodes = np.asarray(density.nodes, np.float64)
    assert nodes.min() >= EIGENVALUES[0] - 1e-4 * scale
    assert nodes.max() <= EIGENVALUES[-1] + 1e-4 * scale
    np.testing.assert_allclose(nodes.max(axis=1), EIGENVALUES[-1], rtol=1e-3)


@pytest.mark.parametrize("k", [1, 2])
def test_moments_are_the_normalised_traces_of_hessian_powers(density, k):
    power = np.linalg.matrix_power(H, k)
    exact = np.trace(power) / N
    sd = math.sqrt(2 * (np.sum(power**2) - np.sum(np.diag(power) ** 2))) / N
    estimate = per_probe_moment(density, k).mean()
    assert abs(estimate - exact) <= 4 * sd / math.sqrt(PROBES), (estimate, exact)


def test_isolated_extreme_eigenvalues_carry_mass_one_over_n(density):
    nodes = np.asarray(density.nodes, np.float64)
    weights = np.asarray(density.weights, np.float64)
    gaps = np.diff(EIGENVALUES)
    checked = 0
    for j, gap in ((N - 1, gaps[-1]), (0, gaps[0])):
        if gap < 0.05:  # not isolated on this network
            continue
        near = np.abs(nodes - EIGENVALUES[j]) < gap / 2
        mass = (weights * near).sum(axis=1).mean()
        u = EIGENVECTORS[:, j]
        sd = math.sqrt(2 * (1 - np.sum(u**4))) / N
        assert abs(mass - 1 / N) <= 4 * sd / math.sqrt(PROBES), (j, mass * N)
        checked += 1
    assert checked >= 1
    # Nothing between the top eigenvalue and the next one: the gap carries no mass.
    between = (nodes > EIGENVALUES[-2] + 0.1 * gaps[-1]) & (nodes < EIGENVALUES[-1] - gaps[-1] / 2)
    assert (weights * between).sum(axis=1).mean() < 1e-3 / N


def test_batches_give_the_density_of_the_dataset_mean_loss(density):
    batched = sh.spectral_density(
        mlp_loss,
        PARAMS32,
        key=jax.random.key(0),
        num_probes=4,
        num_iters=ITERS,
        batches=BATCHES,
    )
    # The same probes: each probe's quadrature of λ and λ² is a polynomial moment of H.
    for k in (1, 2):
        np.testing.assert_allclose(
            per_probe_moment(batched, k), per_probe_moment(density, k)[:4], rtol=1e-4
        )


def test_gaussian_probes_estimate_the_same_first_moment():
    gaussian = sh.spectral_density(
        full_loss,
        PARAMS32,
        key=jax.random.key(1),
        num_probes=PROBES,
        num_iters=10,
        probe="gaussian",
    )
    # For q = g/‖g‖, E[qᵀHq] = tr H / n; its spread is larger than Rademacher's (the diagonal
    # contributes), bounded by the sample's own standard error here.
    moments = per_probe_moment(gaussian, 1)
    stderr = moments.std(ddof=1) / math.sqrt(PROBES)
    assert abs(moments.mean() - np.trace(H) / N) <= 4 * stderr


def test_smoothed_density_is_the_gaussian_mixture_of_the_nodes(density):
    grid = np.linspace(EIGENVALUES[0] - 1.0, EIGENVALUES[-1] + 1.0, 4001)
    width = 0.02
    got = sh.smoothed_density(density, grid, width=width)
    nodes, weights = np.asarray(density.nodes, np.float64), np.asarray(density.weights, np.float64)
    want = (
        sum(
            weights[p, i] * stats.norm.pdf(grid, loc=nodes[p, i], scale=width)
            for p in range(PROBES)
            for i in range(ITERS)
        )
        / PROBES
    )
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.trapezoid(got, grid) == pytest.approx(1.0, abs=1e-6)
    first = np.trapezoid(grid * got, grid)
    assert first == pytest.approx(per_probe_moment(density, 1).mean(), abs=1e-6)


def test_plot_spectral_density(density, tmp_path):
    path = tmp_path / "density.png"
    fig = plotting.plot_spectral_density(density.nodes, density.weights, path=path, title="MLP")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    with pytest.raises(ValueError, match=re.escape("width must be a finite float > 0, got 0.0")):
        plotting.plot_spectral_density(density.nodes, density.weights, width=0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_probes": 0}, "num_probes must be an integer >= 1, got 0"),
        ({"num_iters": 0}, "num_iters must be an integer >= 1, got 0"),
        ({"probe": "normal"}, "probe must be one of 'rademacher', 'gaussian', got 'normal'"),
    ],
)
def test_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        sh.spectral_density(full_loss, PARAMS32, key=jax.random.key(0), **kwargs)


def test_smoothing_arguments_are_validated(density):
    with pytest.raises(ValueError, match=re.escape("width must be a finite float > 0, got -1.0")):
        sh.smoothed_density(density, [0.0, 1.0], width=-1.0)
    with pytest.raises(ValueError, match="grid must be a non-empty 1-D array of finite floats"):
        sh.smoothed_density(density, [], width=0.1)
