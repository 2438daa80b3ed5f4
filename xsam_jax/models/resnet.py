"""CIFAR-style ResNets (He et al. 2016) in Flax NNX.

The CIFAR variant replaces the ImageNet stem (7x7 stride-2 convolution and max-pool) by a
single 3x3 stride-1 convolution, so a 32x32 input reaches the last stage at 4x4. Stage
widths are 64, 128, 256, 512 (`base_width` scales them) and the projection shortcut is a
strided 1x1 convolution followed by BatchNorm (option B of the paper). With 10 classes
ResNet-18 has 11,173,962 parameters, ResNet-34 21,282,122 and ResNet-50 23,520,842, the
counts of the widely used PyTorch CIFAR implementations.

References:
    He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from xsam_jax.models._layers import batch_norm, conv2d, global_avg_pool, linear

NUM_STAGES = 4


class _Projection(nnx.Module):
    """Strided 1x1 convolution + BatchNorm matching a block's output shape."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, rngs: nnx.Rngs):
        self.conv = conv2d(in_channels, out_channels, 1, stride=stride, rngs=rngs)
        self.bn = batch_norm(out_channels, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    """Two 3x3 convolutions with an identity or projection shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int, *, rngs: nnx.Rngs):
        """Builds the block.

        Args:
            in_channels: input channels.
            width: output channels.
            stride: stride of the first convolution (2 at a stage's first block).
            rngs: the parameter RNG streams.
        """
        self.conv1 = conv2d(in_channels, width, 3, stride=stride, rngs=rngs)
        self.bn1 = batch_norm(width, rngs=rngs)
        self.conv2 = conv2d(width, width, 3, rngs=rngs)
        self.bn2 = batch_norm(width, rngs=rngs)
        needs_projection = stride != 1 or in_channels != width
        self.shortcut = (
            _Projection(in_channels, width, stride, rngs=rngs) if needs_projection else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        skip = x if self.shortcut is None else self.shortcut(x)
        return nnx.relu(y + skip)


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a shortcut (ResNet-50).

    The stride sits on the 3x3 convolution (the torchvision "v1.5" placement that the
    CIFAR reference implementations use).
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int, *, rngs: nnx.Rngs):
        """Builds the block.

        Args:
            in_channels: input channels.
            width: bottleneck channels; the output has `4 * width`.
            stride: stride of the 3x3 convolution.
            rngs: the parameter RNG streams.
        """
        out_channels = self.expansion * width
        self.conv1 = conv2d(in_channels, width, 1, rngs=rngs)
        self.bn1 = batch_norm(width, rngs=rngs)
        self.conv2 = conv2d(width, width, 3, stride=stride, rngs=rngs)
        self.bn2 = batch_norm(width, rngs=rngs)
        self.conv3 = conv2d(width, out_channels, 1, rngs=rngs)
        self.bn3 = batch_norm(out_channels, rngs=rngs)
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = (
            _Projection(in_channels, out_channels, stride, rngs=rngs) if needs_projection else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        skip = x if self.shortcut is None else self.shortcut(x)
        return nnx.relu(y + skip)


class ResNet(nnx.Module):
    """CIFAR ResNet: 3x3 stem, four stages, global average pooling, linear head.

    Created in train mode (BatchNorm uses batch statistics); switch with `model.eval()` /
    `model.train()` or `nnx.view(model, use_running_average=True)`.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: Sequence[int],
        num_classes: int,
        *,
        in_channels: int = 3,
        base_width: int = 64,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
            block: `BasicBlock` or `Bottleneck`.
            blocks_per_stage: number of blocks in each of the four stages.
            num_classes: output logits.
            in_channels: input image channels (3 for CIFAR/SVHN, 1 for Fashion-MNIST).
            base_width: width of the first stage, doubled at every later stage; 64 is the
                standard ResNet, smaller values give narrow variants.
            rngs: the parameter RNG streams.
        """
        if len(blocks_per_stage) != NUM_STAGES:
            raise ValueError(
                f"blocks_per_stage must have {NUM_STAGES} entries, got {tuple(blocks_per_stage)}"
            )
        if base_width < 1:
            raise ValueError(f"base_width must be an integer >= 1, got {base_width}")
        widths = [base_width * 2**stage for stage in range(NUM_STAGES)]
        self.stem = conv2d(in_channels, base_width, 3, rngs=rngs)
        self.stem_bn = batch_norm(base_width, rngs=rngs)
        blocks = []
        channels = base_width
        for stage, (width, depth) in enumerate(zip(widths, blocks_per_stage, strict=True)):
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block(channels, width, stride, rngs=rngs))
                channels = width * block.expansion
        self.blocks = nnx.List(blocks)
        self.head = linear(channels, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for an NHWC image batch.

        Args:
            x: `(N, H, W, in_channels)` float images.

        Returns:
            `(N, num_classes)` logits.
        """
        x = nnx.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(global_avg_pool(x))


def resnet18(num_classes: int, *, rngs: nnx.Rngs, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet-18: BasicBlocks [2, 2, 2, 2]; 11,173,962 parameters for 10 classes.

    Args:
        num_classes: output logits.
        rngs: the parameter RNG streams.
        in_channels: input image channels.

    Returns:
        The `ResNet`, in train mode.
    """
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels=in_channels, rngs=rngs)


def resnet34(num_classes: int, *, rngs: nnx.Rngs, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet-34: BasicBlocks [3, 4, 6, 3]; 21,282,122 parameters for 10 classes.

    Args:
        num_classes: output logits.
        rngs: the parameter RNG streams.
        in_channels: input image channels.

    Returns:
        The `ResNet`, in train mode.
    """
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels=in_channels, rngs=rngs)


def resnet50(num_classes: int, *, rngs: nnx.Rngs, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet-50: Bottlenecks [3, 4, 6, 3]; 23,520,842 parameters for 10 classes.

    Args:
        num_classes: output logits.
        rngs: the parameter RNG streams.
        in_channels: input image channels.

    Returns:
        The `ResNet`, in train mode.
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels=in_channels, rngs=rngs)
