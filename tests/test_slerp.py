"""The slerp coefficients and the search grid, against direct NumPy geometry."""

import numpy as np
import pytest
from _reference import slerp

import xsam_jax as xs


def unit(x):
    return x / np.linalg.norm(x)


@pytest.mark.parametrize("angle", [1e-9, 0.05, 0.7, 1.5, 2.5, np.pi - 1e-9])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0, 1.7, 2.0])
def test_coefficients_reproduce_slerp(angle, alpha):
    rng = np.random.default_rng(1)
    v0 = unit(rng.normal(size=5))
    w = unit(rng.normal(size=5) - (rng.normal(size=5) @ v0) * v0)
    w = unit(w - (w @ v0) * v0)
    v1 = np.cos(angle) * v0 + np.sin(angle) * w
    a, b = (float(x) for x in xs.slerp_coefficients(alpha, v0 @ v1))
    assert np.isfinite(a) and np.isfinite(b)
    got = a * v0 + b * v1
    np.testing.assert_allclose(got, slerp(v0, v1, alpha), atol=2e-5)
    if 1e-3 < angle < np.pi - 1e-3:  # unit length, at angle alpha*psi from v0
        assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)
        assert np.arccos(np.clip(got @ v0, -1, 1)) == pytest.approx(
            min(alpha * angle, 2 * np.pi - alpha * angle), abs=1e-4
        )


def test_endpoints_are_exact():
    for cos_psi in [0.3, -0.2, 1.0, 1.0 + 1e-7]:  # rounding can push the cosine past 1
        a0, b0 = xs.slerp_coefficients(0.0, cos_psi)
        a1, b1 = xs.slerp_coefficients(1.0, cos_psi)
        assert (float(a0), float(b0), float(a1), float(b1)) == (1.0, 0.0, 0.0, 1.0)


def test_grid():
    grid = xs.alpha_grid(2.0, 0.1)
    assert grid.shape == (21,) and grid[0] == 0.0 and grid[-1] == pytest.approx(2.0)
    np.testing.assert_allclose(np.diff(grid), 0.1, rtol=1e-5)
    assert xs.alpha_grid(1.0, 0.3).tolist() == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert xs.alpha_grid(0.0, 0.1).tolist() == [0.0]
