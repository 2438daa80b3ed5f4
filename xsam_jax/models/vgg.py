"""VGG with BatchNorm for 32x32 inputs (Simonyan & Zisserman 2015) in Flax NNX.

Every 3x3 convolution (with bias, as in the PyTorch CIFAR variants) is followed by
BatchNorm and ReLU; five 2x2 max-pools bring a 32x32 input to 1x1x512. Two heads:

- `classifier="linear"`: a single 512 -> C linear layer, the common CIFAR variant
  (VGG-16-BN: 14,728,266 parameters for 10 classes; VGG-11-BN: 9,231,114);
- `classifier="mlp"`: 512 -> 4096 -> 4096 -> C with ReLU and dropout after each hidden
  layer (torchvision's head on 512 features), the head of the VGG-11 the XSAM authors
  train (VGG-11-BN: 28,149,514 parameters for 10 classes).

The final 1x1 map is averaged rather than flattened so inputs larger than 32x32 also
work; at 32x32 the two are the same.

References:
    Simonyan, Zisserman. Very Deep Convolutional Networks for Large-Scale Image
    Recognition. ICLR 2015.
"""

from __future__ import annotations

from typing import Literal

import jax
from flax import nnx

from xsam_jax.models._layers import batch_norm, conv2d, global_avg_pool, linear

# Output channels of the 3x3 convolutions; "M" is a 2x2 max-pool (configurations A and D).
CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
        512, 512, 512, "M", 512, 512, 512, "M",
    ),
}  # fmt: skip
CLASSIFIERS = ("linear", "mlp")
MLP_WIDTH = 4096


class _ConvBNReLU(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.conv = conv2d(in_channels, out_channels, 3, use_bias=True, rngs=rngs)
        self.bn = batch_norm(out_channels, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.bn(self.conv(x)))


class _MaxPool(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))


class _MLPHead(nnx.Module):
    def __init__(self, in_features: int, num_classes: int, *, dropout: float, rngs: nnx.Rngs):
        self.fc1 = linear(in_features, MLP_WIDTH, rngs=rngs)
        self.fc2 = linear(MLP_WIDTH, MLP_WIDTH, rngs=rngs)
        self.out = linear(MLP_WIDTH, num_classes, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.dropout(nnx.relu(self.fc1(x)))
        x = self.dropout(nnx.relu(self.fc2(x)))
        return self.out(x)


class VGG(nnx.Module):
    """VGG-BN feature extractor and a linear or MLP head.

    Created in train mode (BatchNorm on batch statistics, dropout active); switch with
    `model.eval()` / `model.train()` or `nnx.view(model, use_running_average=...,
    deterministic=..., raise_if_not_found=False)`.
    """

    def __init__(
        self,
        config: str,
        num_classes: int,
        *,
        classifier: Literal["linear", "mlp"] = "linear",
        dropout: float = 0.5,
        in_channels: int = 3,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
            config: "vgg11" or "vgg16" (configurations A and D of the paper).
            num_classes: output logits.
            classifier: "linear" (512 -> C) or "mlp" (512 -> 4096 -> 4096 -> C).
            dropout: dropout rate of the "mlp" head, in [0, 1); unused by "linear".
            in_channels: input image channels.
            rngs: the parameter and dropout RNG streams.
        """
        if config not in CONFIGS:
            raise ValueError(f"config must be one of {sorted(CONFIGS)}, got {config!r}")
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nnx.Module] = []
        channels = in_channels
        for item in CONFIGS[config]:
            if isinstance(item, str):  # "M", a max-pool
                layers.append(_MaxPool())
            else:
                layers.append(_ConvBNReLU(channels, item, rngs=rngs))
                channels = item
        self.features = nnx.List(layers)
        self.head: nnx.Module
        if classifier == "linear":
            self.head = linear(channels, num_classes, rngs=rngs)
        else:
            self.head = _MLPHead(channels, num_classes, dropout=dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for an NHWC image batch.

        Args:
            x: `(N, H, W, in_channels)` float images, H and W at least 32.

        Returns:
            `(N, num_classes)` logits.
        """
        for layer in self.features:
            x = layer(x)
        return self.head(global_avg_pool(x))


def vgg11(
    num_classes: int,
    *,
    rngs: nnx.Rngs,
    classifier: Literal["linear", "mlp"] = "linear",
    dropout: float = 0.5,
    in_channels: int = 3,
) -> VGG:
    """VGG-11-BN; 9,231,114 ("linear") or 28,149,514 ("mlp") parameters for 10 classes.

    Args:
        num_classes: output logits.
        rngs: the parameter and dropout RNG streams.
        classifier: "linear" or "mlp" (the XSAM authors' head).
        dropout: dropout rate of the "mlp" head.
        in_channels: input image channels.

    Returns:
        The `VGG`, in train mode.
    """
    return VGG(
        "vgg11",
        num_classes,
        classifier=classifier,
        dropout=dropout,
        in_channels=in_channels,
        rngs=rngs,
    )


def vgg16(
    num_classes: int,
    *,
    rngs: nnx.Rngs,
    classifier: Literal["linear", "mlp"] = "linear",
    dropout: float = 0.5,
    in_channels: int = 3,
) -> VGG:
    """VGG-16-BN; 14,728,266 ("linear") parameters for 10 classes.

    Args:
        num_classes: output logits.
        rngs: the parameter and dropout RNG streams.
        classifier: "linear" or "mlp".
        dropout: dropout rate of the "mlp" head.
        in_channels: input image channels.

    Returns:
        The `VGG`, in train mode.
    """
    return VGG(
        "vgg16",
        num_classes,
        classifier=classifier,
        dropout=dropout,
        in_channels=in_channels,
        rngs=rngs,
    )
