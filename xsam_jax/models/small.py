"""Small models for MNIST-1D (Greydanus 2020) and scikit-learn's 8x8 digits.

`MLP` and `CNN1D` follow the baselines of the MNIST-1D paper: an MLP with two hidden
layers of 100 ReLU units, and a 1-D CNN of three stride-2 convolutions (ReLU) whose
flattened output feeds a linear layer. `CNN1DWide` keeps the signal length (stride-1
convolutions of widths 5, 3, 3), so its head sees every position. None has BatchNorm or
dropout, so train and eval mode coincide.

References:
    Greydanus. Scaling down Deep Learning (MNIST-1D). arXiv:2011.14439, 2020.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx

from xsam_jax.models._layers import as_sequence, lecun_normal, linear


class MLP(nnx.Module):
    """Fully connected ReLU network on flattened inputs."""

    def __init__(
        self,
        num_classes: int,
        *,
        in_features: int = 40,
        hidden: Sequence[int] = (100, 100),
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
            num_classes: output logits.
            in_features: size of one flattened example (40 for MNIST-1D, 64 for digits).
            hidden: widths of the hidden layers, each >= 1.
            rngs: the parameter RNG streams.
        """
        if in_features < 1:
            raise ValueError(f"in_features must be an integer >= 1, got {in_features}")
        if any(w < 1 for w in hidden):
            raise ValueError(f"hidden widths must be integers >= 1, got {tuple(hidden)}")
        widths = (in_features, *hidden)
        self.in_features = in_features
        self.hidden = nnx.List(
            [linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )
        self.head = linear(widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for a batch of any shape whose non-batch axes hold `in_features` values.

        Args:
            x: `(N, ...)` inputs, e.g. `(N, 40)` or `(N, 8, 8, 1)`.

        Returns:
            `(N, num_classes)` logits.
        """
        if math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(
                f"x must hold in_features={self.in_features} values per example, got shape "
                f"{x.shape}"
            )
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = nnx.relu(layer(x))
        return self.head(x)


def _conv1d(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, *, rngs: nnx.Rngs
) -> nnx.Conv:
    # Symmetric `kernel_size // 2` zero padding: "same" length at stride 1, `ceil(L / 2)`
    # at stride 2 (Flax's "SAME" would pad a stride-2 convolution asymmetrically).
    pad = kernel_size // 2
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel_size,),
        strides=(stride,),
        padding=((pad, pad),),
        kernel_init=lecun_normal,
        rngs=rngs,
    )


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value}")


class _ConvClassifier1D(nnx.Module):
    """Forward pass shared by the 1-D CNNs: ReLU convolutions, flatten, linear head.

    Subclasses set `input_length`, `in_channels`, `convs` (an `nnx.List`) and `head`.
    """

    input_length: int
    in_channels: int
    convs: nnx.List
    head: nnx.Module

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for a batch of 1-D signals.

        Args:
            x: `(N, L)`, `(N, L, C)`, or `(N, H, W, C)` flattened row-major to length
                `H * W`; the length must equal `input_length`.

        Returns:
            `(N, num_classes)` logits.
        """
        x = as_sequence(x, self.in_channels)
        if x.shape[1] != self.input_length:
            raise ValueError(
                f"x must have length input_length={self.input_length}, got shape {x.shape}"
            )
        for conv in self.convs:
            x = nnx.relu(conv(x))
        return self.head(x.reshape(x.shape[0], -1))


class CNN1D(_ConvClassifier1D):
    """Three stride-2 1-D convolutions with ReLU, flattened into a linear head."""

    def __init__(
        self,
        num_classes: int,
        *,
        input_length: int = 40,
        in_channels: int = 1,
        channels: int = 32,
        kernel_size: int = 5,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
            num_classes: output logits.
            input_length: signal length L (40 for MNIST-1D, 64 for flattened digits).
            in_channels: channels C of the signal.
            channels: feature maps of every convolution.
            kernel_size: odd kernel width; the padding keeps `ceil(L / 2)` per layer.
            rngs: the parameter RNG streams.
        """
        _check_positive("input_length", input_length)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size}")
        convs = []
        length, c_in = input_length, in_channels
        for _ in range(3):
            convs.append(_conv1d(c_in, channels, kernel_size, 2, rngs=rngs))
            length, c_in = (length + 1) // 2, channels
        self.input_length = input_length
        self.in_channels = in_channels
        self.convs = nnx.List(convs)
        self.head = linear(length * channels, num_classes, rngs=rngs)


class CNN1DWide(_ConvClassifier1D):
    """Stride-1 ("same" length) 1-D convolutions with ReLU, flattened into a linear head.

    Unlike `CNN1D` the signal is never downsampled, so the head sees all
    `input_length * channels` features: with the defaults on MNIST-1D, 40 * 32 = 1,280
    per example instead of 160 (19,210 parameters for 10 classes against 12,106).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        input_length: int = 40,
        in_channels: int = 1,
        channels: int = 32,
        kernel_sizes: Sequence[int] = (5, 3, 3),
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
            num_classes: output logits.
            input_length: signal length L (40 for MNIST-1D, 64 for flattened digits).
            in_channels: channels C of the signal, >= 1.
            channels: feature maps of every convolution, >= 1.
            kernel_sizes: one odd kernel width per convolution (at least one); each is
                zero-padded by `k // 2` on both sides so the length stays L.
            rngs: the parameter RNG streams.
        """
        _check_positive("input_length", input_length)
        _check_positive("in_channels", in_channels)
        _check_positive("channels", channels)
        kernel_sizes = tuple(kernel_sizes)
        if not kernel_sizes:
            raise ValueError(f"kernel_sizes must hold at least one width, got {kernel_sizes}")
        if any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd integers >= 1, got {kernel_sizes}")
        widths = (in_channels,) + (channels,) * len(kernel_sizes)
        self.input_length = input_length
        self.in_channels = in_channels
        self.convs = nnx.List(
            [
                _conv1d(c_in, c_out, k, 1, rngs=rngs)
                for c_in, c_out, k in zip(widths[:-1], widths[1:], kernel_sizes, strict=True)
            ]
        )
        self.head = linear(input_length * channels, num_classes, rngs=rngs)
