"""CNN1DWide: parameter count by hand, shapes, and a forward pass against NumPy."""

import jax
import numpy as np
import pytest
from flax import nnx

from xsam_jax import models


def numpy_conv_same(x, kernel, bias):
    """Cross-correlation of (N, L, C_in) with a (K, C_in, C_out) kernel, K // 2 zero padding."""
    k = kernel.shape[0]
    padded = np.pad(x, ((0, 0), (k // 2, k // 2), (0, 0)))
    length = x.shape[1]
    out = np.zeros((x.shape[0], length, kernel.shape[2]))
    for position in range(length):
        window = padded[:, position : position + k, :]  # (N, K, C_in)
        out[:, position, :] = np.einsum("nkc,kco->no", window, kernel)
    return out + bias


def numpy_forward(model, x):
    h = np.asarray(x, np.float64)[..., None]
    for conv in model.convs:
        kernel = np.asarray(conv.kernel[...], np.float64)
        bias = np.asarray(conv.bias[...], np.float64)
        h = np.maximum(numpy_conv_same(h, kernel, bias), 0.0)
    flat = h.reshape(h.shape[0], -1)  # row-major: position-major, channel-minor
    return flat @ np.asarray(model.head.kernel[...]) + np.asarray(model.head.bias[...])


def test_parameter_count_by_hand():
    model = models.create("cnn1d_wide", 10, rngs=nnx.Rngs(0), input_length=40)
    conv1 = 5 * 1 * 32 + 32
    conv2 = 3 * 32 * 32 + 32
    conv3 = 3 * 32 * 32 + 32
    head = 40 * 32 * 10 + 10
    assert models.count_params(model) == conv1 + conv2 + conv3 + head == 19_210


def test_parameter_count_other_options():
    model = models.create(
        "cnn1d_wide",
        3,
        rngs=nnx.Rngs(0),
        input_length=64,
        in_channels=2,
        channels=8,
        kernel_sizes=(7, 1),
    )
    assert models.count_params(model) == (7 * 2 * 8 + 8) + (1 * 8 * 8 + 8) + (64 * 8 * 3 + 3)


def test_forward_matches_numpy_reference():
    model = models.create("cnn1d_wide", 10, rngs=nnx.Rngs(0), input_length=12)
    # Biases start at zero; random ones make the reference check their placement too.
    keys = jax.random.split(jax.random.key(1), len(model.convs) + 1)
    for layer, key in zip([*model.convs, model.head], keys, strict=True):
        layer.bias[...] = 0.1 * jax.random.normal(key, layer.bias[...].shape)
    x = np.asarray(jax.random.normal(jax.random.key(2), (4, 12)))
    out = np.asarray(model(x))
    assert out.shape == (4, 10)
    np.testing.assert_allclose(out, numpy_forward(model, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 40), (3, 40, 1), (3, 5, 8, 1)])
def test_output_shape_for_each_input_layout(shape):
    model = models.create("cnn1d_wide", 7, rngs=nnx.Rngs(0))
    assert model(np.zeros(shape, np.float32)).shape == (3, 7)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"input_length": 0}, "input_length must be an integer >= 1, got 0"),
        ({"in_channels": 0}, "in_channels must be an integer >= 1, got 0"),
        ({"channels": 0}, "channels must be an integer >= 1, got 0"),
        ({"kernel_sizes": ()}, "kernel_sizes must hold at least one width"),
        ({"kernel_sizes": (5, 4, 3)}, r"kernel_sizes must be odd integers >= 1, got \(5, 4, 3\)"),
        ({"kernel_sizes": (5, 0)}, "kernel_sizes must be odd integers >= 1"),
    ],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        models.create("cnn1d_wide", 10, rngs=nnx.Rngs(0), **kw)


def test_wrong_length_names_input_length():
    model = models.create("cnn1d_wide", 10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_length=40"):
        model(np.zeros((2, 64), np.float32))
