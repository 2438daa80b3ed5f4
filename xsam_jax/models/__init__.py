"""Flax NNX classifiers for the SAM/XSAM experiments, and a registry to build them by name.

Every model is built as `create(name, num_classes, rngs=nnx.Rngs(seed), **kw)` and called
as `model(x)` with NHWC images or `(N, L[, C])` signals. Models start in train mode
(BatchNorm normalises with batch statistics and updates its running averages, dropout is
active). Two standard NNX ways switch the mode:

- in place: `model.eval()` / `model.train()`;
- functionally, without touching `model`: `nnx.view(model, use_running_average=True,
  deterministic=True, raise_if_not_found=False)` returns a view that shares the arrays
  (`raise_if_not_found=False` because models without BatchNorm or dropout lack one of the
  attributes).

Example::

    from flax import nnx
    from xsam_jax import models

    model = models.create("resnet18", 10, rngs=nnx.Rngs(0))
    logits = model(images)  # train mode
    eval_logits = nnx.view(model, use_running_average=True, raise_if_not_found=False)(images)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from flax import nnx

from xsam_jax._src.validation import check_choice, check_int
from xsam_jax.models.densenet import DenseNet, densenet121
from xsam_jax.models.resnet import ResNet, resnet18, resnet34, resnet50
from xsam_jax.models.small import CNN1D, MLP, CNN1DWide
from xsam_jax.models.transformer import TransformerClassifier
from xsam_jax.models.vgg import VGG, vgg11, vgg16
from xsam_jax.models.wide_resnet import WideResNet, wrn16_8, wrn28_10


class _Entry(NamedTuple):
    build: Callable[..., nnx.Module]
    # The number of dimensions of one example the model reads: 3 for (H, W, C) images;
    # sequence models and the MLP also read (L,) and (L, C) signals (an image becomes H*W
    # tokens of C values, or is flattened).
    example_ndims: tuple[int, ...]


_IMAGES = (3,)
_ANY = (1, 2, 3)

_REGISTRY: dict[str, _Entry] = {
    "resnet18": _Entry(resnet18, _IMAGES),
    "resnet34": _Entry(resnet34, _IMAGES),
    "resnet50": _Entry(resnet50, _IMAGES),
    "wrn16_8": _Entry(wrn16_8, _IMAGES),
    "wrn28_10": _Entry(wrn28_10, _IMAGES),
    "vgg11": _Entry(vgg11, _IMAGES),
    # The VGG-11-BN the XSAM authors train: the 512 -> 4096 -> 4096 -> C head with dropout.
    "vgg11_mlp": _Entry(functools.partial(vgg11, classifier="mlp"), _IMAGES),
    "vgg16": _Entry(vgg16, _IMAGES),
    "densenet121": _Entry(densenet121, _IMAGES),
    "cnn1d": _Entry(CNN1D, _ANY),
    "cnn1d_wide": _Entry(CNN1DWide, _ANY),
    "mlp": _Entry(MLP, _ANY),
    "transformer": _Entry(TransformerClassifier, _ANY),
}


def available(input_shape: tuple[int, ...] | None = None) -> list[str]:
    """The model names `create` accepts, sorted.

    Args:
        input_shape: the shape of one example, e.g. `(40,)` for MNIST-1D or `(32, 32, 3)`
            for CIFAR; given, only the models that read it: every model reads images, only
            the sequence models and the MLP read 1-D signals.

    Returns:
        The names.
    """
    ndim = None if input_shape is None else len(input_shape)
    return sorted(n for n, e in _REGISTRY.items() if ndim is None or ndim in e.example_ndims)


def create(name: str, num_classes: int, *, rngs: nnx.Rngs, **kwargs: Any) -> nnx.Module:
    """Builds a registered model.

    Args:
        name: one of `available()`, e.g. "resnet18", "wrn28_10", "vgg11", "mlp".
        num_classes: output logits, >= 1.
        rngs: the parameter (and dropout) RNG streams, e.g. `nnx.Rngs(0)`.
        **kwargs: model options, e.g. `in_channels=1`, `dropout=0.3` (WRN, VGG "mlp" head,
            transformer), `classifier="mlp"` (VGG), `in_features=64` (MLP),
            `input_length=64` (CNN1D, CNN1DWide, transformer), `kernel_sizes=(5, 3, 3)`
            (CNN1DWide).

    Returns:
        The model, in train mode.

    Raises:
        ValueError: for an unknown `name` (the message lists the allowed names) or a
            `num_classes` below 1.
    """
    check_choice("name", name, available())
    check_int("num_classes", num_classes, low=1)
    return _REGISTRY[name].build(num_classes, rngs=rngs, **kwargs)


def count_params(model: nnx.Module) -> int:
    """Number of scalars in the model's `nnx.Param` leaves (BatchNorm statistics excluded).

    Works on abstract models too, so a large model can be counted without allocating it:
    `count_params(nnx.eval_shape(lambda: create("wrn28_10", 10, rngs=nnx.Rngs(0))))`.

    Args:
        model: a concrete or `nnx.eval_shape` model.

    Returns:
        The total parameter count.
    """
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = [
    "CNN1D",
    "CNN1DWide",
    "MLP",
    "VGG",
    "DenseNet",
    "ResNet",
    "TransformerClassifier",
    "WideResNet",
    "available",
    "count_params",
    "create",
    "densenet121",
    "resnet18",
    "resnet34",
    "resnet50",
    "vgg11",
    "vgg16",
    "wrn16_8",
    "wrn28_10",
]
