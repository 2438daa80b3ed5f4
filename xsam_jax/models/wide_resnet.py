"""Wide residual networks (Zagoruyko & Komodakis 2016) in Flax NNX.

WRN-d-k: a 3x3 stem to 16 channels, three groups of `(d - 4) / 6` pre-activation basic
blocks of widths 16k, 32k, 64k (strides 1, 2, 2), then BatchNorm-ReLU, global average
pooling and a linear head. Convolutions have no bias; a shortcut that changes the width is
a 1x1 convolution applied to the block's pre-activated input, as in the authors' code.
Optional dropout sits between the two convolutions of every block. With 10 classes
WRN-28-10 has 36,479,194 parameters (the paper's "36.5M") and WRN-16-8 10,961,370
("11.0M").

References:
    Zagoruyko, Komodakis. Wide Residual Networks. BMVC 2016.
"""

from __future__ import annotations

import jax
from flax import nnx

from xsam_jax.models._layers import batch_norm, conv2d, global_avg_pool, linear


class WideBlock(nnx.Module):
    """BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3 with an identity or 1x1 shortcut."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        *,
        dropout: float,
        rngs: nnx.Rngs,
    ):
        """Builds the block.

        Args:
            in_channels: input channels.
            out_channels: output channels.
            stride: stride of the first convolution and of the shortcut.
            dropout: dropout rate between the convolutions (0 disables the layer).
            rngs: the parameter and dropout RNG streams.
        """
        self.bn1 = batch_norm(in_channels, rngs=rngs)
        self.conv1 = conv2d(in_channels, out_channels, 3, stride=stride, rngs=rngs)
        self.bn2 = batch_norm(out_channels, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.conv2 = conv2d(out_channels, out_channels, 3, rngs=rngs)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = (
            conv2d(in_channels, out_channels, 1, stride=stride, rngs=rngs)
            if needs_projection
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        pre = nnx.relu(self.bn1(x))
        y = self.conv1(pre)
        y = nnx.relu(self.bn2(y))
        if self.dropout is not None:
            y = self.dropout(y)
        y = self.conv2(y)
        # The projection reads the pre-activated input (both paths share BN-ReLU), while an
        # identity shortcut carries the raw input, as in the reference implementation.
        skip = x if self.shortcut is None else self.shortcut(pre)
        return y + skip


class WideResNet(nnx.Module):
    """WRN-depth-widen_factor for 32x32 inputs.

    Created in train mode (BatchNorm on batch statistics, dropout active); switch with
    `model.eval()` / `model.train()` or
    `nnx.view(model, use_running_average=..., deterministic=..., raise_if_not_found=False)`.
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        *,
        dropout: float = 0.0,
        in_channels: int = 3,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
            depth: total depth d; `(d - 4)` must be a positive multiple of 6.
            widen_factor: width multiplier k >= 1.
            num_classes: output logits.
            dropout: dropout rate in [0, 1) inside every block (the paper uses 0.3 on
                CIFAR for some runs; SAM papers train without it).
            in_channels: input image channels.
            rngs: the parameter and dropout RNG streams.
        """
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be an integer >= 1, got {widen_factor}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        blocks_per_group = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.stem = conv2d(in_channels, 16, 3, rngs=rngs)
        blocks = []
        channels = 16
        for group, width in enumerate(widths):
            for i in range(blocks_per_group):
                stride = 2 if group > 0 and i == 0 else 1
                blocks.append(WideBlock(channels, width, stride, dropout=dropout, rngs=rngs))
                channels = width
        self.blocks = nnx.List(blocks)
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
        for block in self.blocks:
            x = block(x)
        x = nnx.relu(self.final_bn(x))
        return self.head(global_avg_pool(x))


def wrn16_8(
    num_classes: int, *, rngs: nnx.Rngs, dropout: float = 0.0, in_channels: int = 3
) -> WideResNet:
    """WRN-16-8; 10,961,370 parameters for 10 classes.

    Args:
        num_classes: output logits.
        rngs: the parameter and dropout RNG streams.
        dropout: dropout rate inside the blocks.
        in_channels: input image channels.

    Returns:
        The `WideResNet`, in train mode.
    """
    return WideResNet(16, 8, num_classes, dropout=dropout, in_channels=in_channels, rngs=rngs)


def wrn28_10(
    num_classes: int, *, rngs: nnx.Rngs, dropout: float = 0.0, in_channels: int = 3
) -> WideResNet:
    """WRN-28-10; 36,479,194 parameters for 10 classes.

    Args:
        num_classes: output logits.
        rngs: the parameter and dropout RNG streams.
        dropout: dropout rate inside the blocks.
        in_channels: input image channels.

    Returns:
        The `WideResNet`, in train mode.
    """
    return WideResNet(28, 10, num_classes, dropout=dropout, in_channels=in_channels, rngs=rngs)
