"""Layer constructors shared by the model definitions.

The CIFAR reference implementations that SAM/XSAM results are reported with are PyTorch
models, so the defaults here follow PyTorch where it changes the computation or the
parameter count: explicit symmetric padding (Flax's 'SAME' pads stride-2 convolutions
asymmetrically), bias-free convolutions in front of BatchNorm, and BatchNorm statistics
updated with PyTorch's momentum 0.1 and epsilon 1e-5.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]

# Standard deviation of a standard normal truncated to [-2, 2]; dividing by it restores
# the intended variance (as jax.nn.initializers.variance_scaling does).
_TRUNCATED_STD = 0.87962566103423978


def variance_scaling(scale: float, mode: str, distribution: str) -> Initializer:
    """`jax.nn.initializers.variance_scaling` for kernels whose last axis is the output.

    The distribution is the same as JAX's; the sample is drawn as a flat vector and then
    reshaped, because with JAX's partitionable threefry (the default) a multi-axis draw
    compiles several times slower on CPU, and those compilations dominate the time to
    build a model.

    Args:
        scale: variance numerator (2 for He, 1 for LeCun).
        mode: "fan_in" (product of all axes but the last) or "fan_out" (receptive field
            times the last axis).
        distribution: "normal" or "truncated_normal" (at two standard deviations).

    Returns:
        An initializer `(key, shape, dtype=float32) -> array`.
    """
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be one of ('fan_in', 'fan_out'), got {mode!r}")
    if distribution not in ("normal", "truncated_normal"):
        raise ValueError(
            f"distribution must be one of ('normal', 'truncated_normal'), got {distribution!r}"
        )

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        fan = math.prod(shape[:-1]) if mode == "fan_in" else math.prod(shape[:-2]) * shape[-1]
        size = (math.prod(shape),)
        if distribution == "normal":
            sample = jax.random.normal(key, size, dtype) * math.sqrt(scale / fan)
        else:
            std = math.sqrt(scale / fan) / _TRUNCATED_STD
            sample = jax.random.truncated_normal(key, -2.0, 2.0, size, dtype) * std
        return sample.reshape(shape)

    return init


def normal(stddev: float) -> Initializer:
    """Zero-mean normal initializer, sampled flat for the compile-time reason above.

    Args:
        stddev: standard deviation.

    Returns:
        An initializer `(key, shape, dtype=float32) -> array`.
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return (jax.random.normal(key, (math.prod(shape),), dtype) * stddev).reshape(shape)

    return init


# He et al. (2015) normal initialisation scaled by fan-out, the default of the torchvision
# ResNet/VGG/DenseNet and of the original (Torch) WRN code.
he_normal_fan_out = variance_scaling(2.0, "fan_out", "normal")
# Flax's default kernel initialiser.
lecun_normal = variance_scaling(1.0, "fan_in", "truncated_normal")

# Flax's momentum is the weight of the old running average: PyTorch's momentum=0.1 is 0.9.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    use_bias: bool = False,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A square 2-D convolution with PyTorch-style `kernel_size // 2` zero padding.

    Args:
        in_channels: input feature maps.
        out_channels: output feature maps.
        kernel_size: side of the square kernel (odd).
        stride: spatial stride.
        use_bias: add a bias; off by default because BatchNorm follows.
        rngs: the parameter RNG streams.

    Returns:
        The `nnx.Conv` layer (NHWC).
    """
    pad = kernel_size // 2
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        kernel_init=he_normal_fan_out,
        rngs=rngs,
    )


def linear(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """A dense layer with Flax's default LeCun-normal kernel and zero bias.

    Args:
        in_features: input width.
        out_features: output width.
        rngs: the parameter RNG streams.

    Returns:
        The `nnx.Linear` layer.
    """
    return nnx.Linear(in_features, out_features, kernel_init=lecun_normal, rngs=rngs)


def batch_norm(num_features: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with PyTorch's running-average momentum and epsilon, in train mode.

    Args:
        num_features: channels (last axis).
        rngs: the parameter RNG streams.

    Returns:
        The `nnx.BatchNorm` layer, normalising with batch statistics until switched to eval.
    """
    return nnx.BatchNorm(
        num_features,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        use_running_average=False,
        rngs=rngs,
    )


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes of an NHWC (or NLC) batch."""
    return x.mean(axis=tuple(range(1, x.ndim - 1)))


def as_sequence(x: jax.Array, in_channels: int) -> jax.Array:
    """Brings a batch of signals to `(N, L, C)`.

    `(N, L)` gains a channel axis; `(N, ..., C)` with several positional axes (e.g. an
    8x8x1 image) is flattened row-major into one sequence axis.

    Args:
        x: `(N, L)`, `(N, L, C)` or `(N, H, W, C)` array.
        in_channels: the expected channel count C.

    Returns:
        The `(N, L, C)` view of `x`.

    Raises:
        ValueError: if the channel axis does not have `in_channels` entries.
    """
    if x.ndim == 2:
        x = x[..., None]
    elif x.ndim > 3:
        x = x.reshape(x.shape[0], -1, x.shape[-1])
    if x.ndim != 3 or x.shape[-1] != in_channels:
        raise ValueError(
            f"x must have shape (N, L), (N, L, {in_channels}) or (N, H, W, {in_channels}) "
            f"for in_channels={in_channels}, got {x.shape}"
        )
    return x
