"""An in-memory classification dataset: stored arrays, normalisation, batch iterators.

Images stay in their stored dtype (uint8 for CIFAR: 150 MB instead of 600 MB as float32)
and are normalised batch by batch; small feature datasets are stored as float32.

A validation split is carved out of the training set by `Dataset.split_validation`
after loading, so it works the same for every loader and never touches the test set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from xsam_jax.data.augment import Augmentation
from xsam_jax.data.pipeline import VALIDATION_STREAM, Batch, Prefetcher, iterate_batches

Split = Literal["train", "val", "test"]


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
        x_val: stored validation inputs held out of the training set, or None (see
            `split_validation`).
        y_val: int32 validation labels, or None.
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
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    def __post_init__(self):
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together or both be None")
        if (self.x_val is None) != (self.y_val is None):
            raise ValueError("x_val and y_val must be given together or both be None")
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

    def split_validation(self, fraction: float, seed: int) -> Dataset:
        """Holds a random share of the training set out as a validation split.

        The `round(fraction * N)` held-out examples are drawn uniformly (not stratified)
        from the `N` training examples by a generator seeded with `seed` alone, so the same
        seed always holds out the same examples, whatever the dataset's own `seed`. Both
        parts keep their original relative order; the test split, the normalisation (the
        stored `scale`, `mean`, `std`, also when they were computed from the full training
        split) and the shuffling seed are unchanged.

        Args:
            fraction: share of the training examples to hold out, in (0, 1), leaving at
                least one example on each side.
            seed: fixes which examples are held out, >= 0.

        Returns:
            A new `Dataset` that trains on the remaining examples and serves the held-out
            ones through `arrays("val")` and `val_batches`.

        Raises:
            ValueError: for a `fraction` or `seed` out of range, or a dataset that already
                has a validation split.
        """
        if self.x_val is not None:
            raise ValueError(
                "split_validation needs a dataset without a validation split; split the "
                "original dataset instead"
            )
        if seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed}")
        num_train = len(self.y_train)
        num_val = round(fraction * num_train) if 0.0 < fraction < 1.0 else 0
        if not 1 <= num_val <= num_train - 1:
            raise ValueError(
                f"fraction must be in (0, 1) and leave at least one of the {num_train} "
                f"training examples on each side, got {fraction} ({num_val} held out)"
            )
        rng = np.random.default_rng([VALIDATION_STREAM, seed])
        held_out = np.zeros(num_train, bool)
        held_out[rng.permutation(num_train)[:num_val]] = True
        return dataclasses.replace(
            self,
            x_train=self.x_train[~held_out],
            y_train=self.y_train[~held_out],
            x_val=self.x_train[held_out],
            y_val=self.y_train[held_out],
        )

    def arrays(self, split: Split) -> tuple[np.ndarray, np.ndarray]:
        """A whole split, normalised, e.g. for full-batch evaluation.

        Args:
            split: "train", "val" (after `split_validation`) or "test".

        Returns:
            `(x, y)`: float32 normalised inputs and int32 labels.
        """
        if split == "train":
            return self.normalize(self.x_train), self.y_train
        if split == "val":
            x, y = self._validation()
            return self.normalize(x), y
        if split == "test":
            return self.normalize(self.x_test), self.y_test
        raise ValueError(f"split must be one of ('train', 'val', 'test'), got {split!r}")

    def train_batches(
        self,
        batch_size: int,
        *,
        epoch: int,
        augmentation: Augmentation | None = None,
        drop_last: bool = True,
        prefetch: int = 2,
        rows: np.ndarray | None = None,
    ) -> Iterator[Batch]:
        """One shuffled, optionally augmented training epoch.

        Args:
            batch_size: examples per batch.
            epoch: epoch index; with `self.seed` it fixes the order and the augmentation.
            augmentation: host-side augmentation of the normalised images, or None.
            drop_last: skip the final partial batch (keeps every step's shape static).
            prefetch: batches prepared ahead in a background thread; 0 for none.
            rows: load only these positions of every batch (a process's part of the global
                batch, `training.process_batch_rows`), each example normalised and augmented
                exactly as in the whole batch; needs `drop_last`. None loads whole batches.

        Returns:
            An iterator of ``{"x": float32, "y": int32}`` batches.
        """
        part: dict[str, Any] = {} if rows is None else {"rows": rows, "batch_size": batch_size}

        def transform(xb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            xb = self.normalize(xb)
            if augmentation is not None:
                xb = augmentation(xb, rng, pad_value=self.pad_value, **part)
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
            rows=rows,
        )
        return _maybe_prefetch(batches, prefetch)

    def test_batches(self, batch_size: int, *, prefetch: int = 2) -> Iterator[Batch]:
        """The test split in order, the last batch possibly smaller.

        Args:
            batch_size: examples per batch.
            prefetch: batches prepared ahead in a background thread; 0 for none.

        Returns:
            An iterator of ``{"x": float32, "y": int32}`` batches.
        """
        return self._ordered_batches(self.x_test, self.y_test, batch_size, prefetch)

    def val_batches(self, batch_size: int, *, prefetch: int = 2) -> Iterator[Batch]:
        """The validation split (see `split_validation`) in order, like `test_batches`.

        Args:
            batch_size: examples per batch.
            prefetch: batches prepared ahead in a background thread; 0 for none.

        Returns:
            An iterator of ``{"x": float32, "y": int32}`` batches.
        """
        x, y = self._validation()
        return self._ordered_batches(x, y, batch_size, prefetch)

    def _validation(self) -> tuple[np.ndarray, np.ndarray]:
        if self.x_val is None or self.y_val is None:
            raise ValueError(
                f"the {self.name!r} dataset has no validation split; call split_validation first"
            )
        return self.x_val, self.y_val

    def _ordered_batches(
        self, x: np.ndarray, y: np.ndarray, batch_size: int, prefetch: int
    ) -> Iterator[Batch]:
        batches = iterate_batches(x, y, batch_size, transform=lambda xb, rng: self.normalize(xb))
        return _maybe_prefetch(batches, prefetch)


def _maybe_prefetch(batches: Iterator[Batch], prefetch: int) -> Iterator[Batch]:
    if prefetch < 0:
        raise ValueError(f"prefetch must be an integer >= 0, got {prefetch}")
    return Prefetcher(batches, size=prefetch) if prefetch else batches
