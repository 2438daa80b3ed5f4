"""An in-memory classification dataset: stored arrays, normalisation, batch iterators.

Images stay in their stored dtype (uint8 for CIFAR: 150 MB instead of 600 MB as float32)
and are normalised batch by batch; small feature datasets are stored as float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Literal

import numpy as np

from xsam_jax.data.augment import Augmentation
from xsam_jax.data.pipeline import Batch, Prefetcher, iterate_batches


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test arrays with the metadata a training loop needs.

    Attributes:
        name: the registry name, e.g. "cifar10".
        x_train: `(N, ...)` stored inputs (uint8 NHWC images or float32 features).
        y_train: `(N,)` int32 labels.
        x_test: stored test inputs.
        y_test: int32 test labels.
        num_classes: number of classes.
        seed: seeds the shuffling and augmentation of `train_batches` (with the epoch).
        scale: inputs are divided by it first (255 for uint8 images, else 1).
        mean: per-channel mean subtracted after scaling, or None for no normalisation.
        std: per-channel standard deviation divided by after that, or None.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    seed: int = 0
    scale: float = 1.0
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __post_init__(self):
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together or both be None")
        if self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed}")
        # float32 statistics keep the normalised batches float32 (float64 would upcast).
        if self.mean is not None:
            object.__setattr__(self, "mean", np.asarray(self.mean, np.float32))
            object.__setattr__(self, "std", np.asarray(self.std, np.float32))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. `(32, 32, 3)` or `(40,)`."""
        return tuple(self.x_train.shape[1:])

    @property
    def pad_value(self) -> np.ndarray:
        """The normalised value of a zero (black) input, per channel: the crop padding."""
        return self.normalize(np.zeros(self.input_shape[-1:], self.x_train.dtype))

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Stored inputs to the float32 model inputs: `(x / scale - mean) / std`.

        Args:
            x: stored inputs of any leading shape.

        Returns:
            The float32 normalised array.
        """
        out = x.astype(np.float32) / np.float32(self.scale)
        if self.mean is not None:
            out = (out - self.mean) / self.std
        return out

    def arrays(self, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
        """A whole split, normalised, e.g. for full-batch evaluation.

        Args:
            split: "train" or "test".

        Returns:
            `(x, y)`: float32 normalised inputs and int32 labels.
        """
        if split == "train":
            return self.normalize(self.x_train), self.y_train
        if split == "test":
            return self.normalize(self.x_test), self.y_test
        raise ValueError(f"split must be one of ('train', 'test'), got {split!r}")

    def train_batches(
        self,
        batch_size: int,
        *,
        epoch: int,
        augmentation: Augmentation | None = None,
        drop_last: bool = True,
        prefetch: int = 2,
    ) -> Iterator[Batch]:
        """One shuffled, optionally augmented training epoch.

        Args:
            batch_size: examples per batch.
            epoch: epoch index; with `self.seed` it fixes the order and the augmentation.
            augmentation: host-side augmentation of the normalised images, or None.
            drop_last: skip the final partial batch (keeps every step's shape static).
            prefetch: batches prepared ahead in a background thread; 0 for none.

        Returns:
            An iterator of `{"x": float32, "y": int32}` batches.
        """

        def transform(xb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            xb = self.normalize(xb)
            if augmentation is not None:
                xb = augmentation(xb, rng, pad_value=self.pad_value)
            return xb

        batches = iterate_batches(
            self.x_train,
            self.y_train,
            batch_size,
            shuffle=True,
            seed=self.seed,
            epoch=epoch,
            drop_last=drop_last,
            transform=transform,
        )
        return _maybe_prefetch(batches, prefetch)

    def test_batches(self, batch_size: int, *, prefetch: int = 2) -> Iterator[Batch]:
        """The test split in order, the last batch possibly smaller.

        Args:
            batch_size: examples per batch.
            prefetch: batches prepared ahead in a background thread; 0 for none.

        Returns:
            An iterator of `{"x": float32, "y": int32}` batches.
        """
        batches = iterate_batches(
            self.x_test,
            self.y_test,
            batch_size,
            transform=lambda xb, rng: self.normalize(xb),
        )
        return _maybe_prefetch(batches, prefetch)


def _maybe_prefetch(batches: Iterator[Batch], prefetch: int) -> Iterator[Batch]:
    if prefetch < 0:
        raise ValueError(f"prefetch must be an integer >= 0, got {prefetch}")
    return Prefetcher(batches, size=prefetch) if prefetch else batches
