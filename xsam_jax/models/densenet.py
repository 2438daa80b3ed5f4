"""CIFAR DenseNet-BC (Huang et al. 2017) in Flax NNX.

DenseNet-121 for 32x32 inputs: a 3x3 stem to `2 * growth_rate` channels (no ImageNet
7x7/max-pool stem), dense blocks of [6, 12, 24, 16] bottleneck layers
(BN-ReLU-conv1x1 to `4 * growth_rate`, BN-ReLU-conv3x3 to `growth_rate`, concatenated
to the input), transitions that halve channels (compression 0.5) and resolution, then
BN-ReLU, global average pooling and a linear head. With growth rate 32 and 10 classes it
has 6,956,298 parameters, the count of the common PyTorch CIFAR implementation.

References:
    Huang, Liu, van der Maaten, Weinberger. Densely Connected Convolutional Networks.
    CVPR 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from xsam_jax.models._layers import batch_norm, conv2d, global_avg_pool, linear

COMPRESSION = 0.5


class DenseLayer(nnx.Module):
    """Bottleneck layer whose `growth_rate` new channels are concatenated to its input."""

    def __init__(self, in_channels: int, growth_rate: int, *, rngs: nnx.Rngs):
        """Builds the layer.

        Args:
            in_channels: input channels.
            growth_rate: channels added to the running feature map.
            rngs: the parameter RNG streams.
        """
        self.bn1 = batch_norm(in_channels, rngs=rngs)
        self.conv1 = conv2d(in_channels, 4 * growth_rate, 1, rngs=rngs)
        self.bn2 = batch_norm(4 * growth_rate, rngs=rngs)
        self.conv2 = conv2d(4 * growth_rate, growth_rate, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv1(nnx.relu(self.bn1(x)))
        y = self.conv2(nnx.relu(self.bn2(y)))
        return jnp.concatenate([y, x], axis=-1)


class Transition(nnx.Module):
    """BN-ReLU-conv1x1 to fewer channels, then 2x2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        """Builds the transition.

        Args:
            in_channels: input channels.
            out_channels: output channels.
            rngs: the parameter RNG streams.
        """
        self.bn = batch_norm(in_channels, rngs=rngs)
        self.conv = conv2d(in_channels, out_channels, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(nnx.relu(self.bn(x)))
        return nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


class DenseNet(nnx.Module):
    """CIFAR DenseNet-BC.

    Created in train mode (BatchNorm on batch statistics); switch with `model.eval()` /
    `model.train()` or `nnx.view(model, use_running_average=True)`.
    """

    def __init__(
        self,
        layers_per_block: Sequence[int],
        num_classes: int,
        *,
        growth_rate: int = 32,
        in_channels: int = 3,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
            layers_per_block: bottleneck layers in each dense block.
            num_classes: output logits.
            growth_rate: channels each bottleneck layer adds (k in the paper), >= 1.
            in_channels: input image channels.
            rngs: the parameter RNG streams.
        """
        if not layers_per_block or min(layers_per_block) < 1:
            raise ValueError(
                f"layers_per_block must be non-empty with entries >= 1, got "
                f"{tuple(layers_per_block)}"
            )
        if growth_rate < 1:
            raise ValueError(f"growth_rate must be an integer >= 1, got {growth_rate}")
        channels = 2 * growth_rate
        self.stem = conv2d(in_channels, channels, 3, rngs=rngs)
        stages: list[nnx.Module] = []
        for b, depth in enumerate(layers_per_block):
            for _ in range(depth):
                stages.append(DenseLayer(channels, growth_rate, rngs=rngs))
                channels += growth_rate
            if b < len(layers_per_block) - 1:
                reduced = int(channels * COMPRESSION)
                stages.append(Transition(channels, reduced, rngs=rngs))
                channels = reduced
        self.stages = nnx.List(stages)
        self.final_bn = batch_norm(channels, rngs=rngs)
        self.head = linear(channels, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for an NHWC image batch.

        Args:
            x: `(N, H, W, in_channels)` float images.

        Returns:
            `(N, num_classes)` logits.
        """
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        x = nnx.relu(self.final_bn(x))
        return self.head(global_avg_pool(x))


def densenet121(
    num_classes: int, *, rngs: nnx.Rngs, growth_rate: int = 32, in_channels: int = 3
) -> DenseNet:
    """CIFAR DenseNet-121; 6,956,298 parameters for growth rate 32 and 10 classes.

    Args:
        num_classes: output logits.
        rngs: the parameter RNG streams.
        growth_rate: channels each bottleneck layer adds.
        in_channels: input image channels.

    Returns:
        The `DenseNet`, in train mode.
    """
    return DenseNet(
        (6, 12, 24, 16),
        num_classes,
        growth_rate=growth_rate,
        in_channels=in_channels,
        rngs=rngs,
    )
