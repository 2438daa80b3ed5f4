"""The flat-sampled initialisers have the distributions of JAX's variance scaling."""

import math

import jax
import numpy as np
import pytest

from xsam_jax.models._layers import he_normal_fan_out, lecun_normal, normal

KEY = jax.random.key(0)


@pytest.mark.parametrize("shape", [(3, 3, 64, 128), (1, 1, 256, 64)])
def test_he_normal_fan_out(shape):
    w = np.asarray(he_normal_fan_out(KEY, shape))
    assert w.shape == shape and w.dtype == np.float32
    expected_std = math.sqrt(2.0 / (math.prod(shape[:-2]) * shape[-1]))
    reference = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")(KEY, shape)
    assert abs(w.std() / expected_std - 1) < 0.02
    assert abs(np.std(reference) / expected_std - 1) < 0.02
    assert abs(w.mean()) < 0.05 * expected_std


@pytest.mark.parametrize("shape", [(512, 100), (5, 32, 64)])
def test_lecun_normal_is_truncated_with_the_target_variance(shape):
    w = np.asarray(lecun_normal(KEY, shape))
    expected_std = math.sqrt(1.0 / math.prod(shape[:-1]))
    assert w.shape == shape
    assert abs(w.std() / expected_std - 1) < 0.03
    # Truncated at two standard deviations of the underlying (wider) normal.
    assert np.abs(w).max() <= 2 * expected_std / 0.87962566103423978 + 1e-6


def test_normal_initializer():
    w = np.asarray(normal(0.02)(KEY, (1, 100, 64)))
    assert w.shape == (1, 100, 64)
    assert abs(w.std() / 0.02 - 1) < 0.03
