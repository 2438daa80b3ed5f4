"""Epoch iteration over in-memory arrays and a background-thread prefetcher.

Randomness is a pure function of `(seed, epoch)`: the epoch's permutation comes from the
stream `(0, seed, epoch)` and batch `b`'s augmentation from `(1, seed, epoch, b)`
(`Dataset.split_validation` draws its held-out examples from `(2, seed)`). Any
epoch can therefore be replayed alone (e.g. after restoring a checkpoint), and the
prefetcher, which only moves the same computation to another thread, cannot change what
is produced. Every stream has a fixed length and a distinct leading tag because NumPy's
`SeedSequence` treats trailing zeros as absent (`[s, e]` and `[s, e, 0]` collide).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

import numpy as np

Batch = dict[str, np.ndarray]
Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]
T = TypeVar("T")

_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1
VALIDATION_STREAM = 2


def _check_non_negative(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value}")


def epoch_permutation(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch.

    Args:
        num_examples: dataset size.
        seed: run seed, >= 0.
        epoch: epoch index, >= 0.

    Returns:
        A permutation of `range(num_examples)`, the same for the same `(seed, epoch)`.
    """
    _check_non_negative("seed", seed)
    _check_non_negative("epoch", epoch)
    rng = np.random.default_rng([_SHUFFLE_STREAM, seed, epoch])
    return rng.permutation(num_examples)


def batch_rng(*, seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator that augments batch `index` of `epoch`.

    Args:
        seed: run seed, >= 0.
        epoch: epoch index, >= 0.
        index: batch index within the epoch, >= 0.

    Returns:
        A fresh `np.random.Generator`, the same for the same `(seed, epoch, index)`.
    """
    _check_non_negative("seed", seed)
    _check_non_negative("epoch", epoch)
    _check_non_negative("index", index)
    return np.random.default_rng([_AUGMENT_STREAM, seed, epoch, index])


def iterate_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool = False,
    transform: Transform | None = None,
    rows: np.ndarray | None = None,
) -> Iterator[Batch]:
    """Yields one epoch of `{"x": float32, "y": int32}` batches.

    Args:
        x: `(N, ...)` inputs in their stored dtype.
        y: `(N,)` integer labels.
        batch_size: examples per batch, >= 1.
        shuffle: visit the examples in the `(seed, epoch)` permutation instead of in order.
        seed: run seed, >= 0 (shuffling and `transform` randomness).
        epoch: epoch index, >= 0.
        drop_last: skip the final batch if it has fewer than `batch_size` examples.
        transform: `(x_batch, rng) -> float32 batch`, e.g. normalise and augment; `rng` is
            `batch_rng(seed=seed, epoch=epoch, index=b)`. Default: cast to float32.
        rows: yield only these positions of every batch, in this order (one process's part
            of a global batch, see `training.process_batch_rows`); needs `drop_last`, so
            that every batch has them all. `transform` then gets those examples only. None
            yields whole batches.

    Returns:
        An iterator over the epoch's batches; without `drop_last` every example appears
        exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    _check_non_negative("seed", seed)
    _check_non_negative("epoch", epoch)
    if rows is not None:
        rows = np.asarray(rows)
        if rows.ndim != 1 or not np.all((rows >= 0) & (rows < batch_size)):
            raise ValueError(f"rows must be positions in [0, {batch_size}), got {rows!r}")
        if not drop_last:
            raise ValueError("rows needs drop_last=True (every batch must hold every row)")
    return _batches(x, y, batch_size, shuffle, seed, epoch, drop_last, transform, rows)


def _batches(x, y, batch_size, shuffle, seed, epoch, drop_last, transform, rows):
    n = len(x)
    order = epoch_permutation(n, seed=seed, epoch=epoch) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for index, start in enumerate(range(0, stop, batch_size)):
        idx = order[start : start + batch_size]
        if rows is not None:
            idx = idx[rows]
        xb = x[idx]
        if transform is None:
            xb = xb.astype(np.float32)
        else:
            xb = transform(xb, batch_rng(seed=seed, epoch=epoch, index=index))
        yield {"x": xb, "y": y[idx].astype(np.int32)}


_ITEM, _END, _ERROR = range(3)


def _produce(source: Iterator, out: queue.Queue, stop: threading.Event) -> None:
    # A module-level function, not a method, so the thread holds no reference to the
    # Prefetcher: an abandoned prefetcher is collected, and its __del__ stops the thread.
    def put(message) -> bool:
        while not stop.is_set():
            try:
                out.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in source:
            if not put((_ITEM, item)):
                return
    except Exception as err:  # handed to the consumer thread, which re-raises it
        put((_ERROR, err))
        return
    put((_END, None))


class Prefetcher(Iterator[T], Generic[T]):
    """Runs an iterator in a background thread, `size` items ahead of the consumer.

    NumPy releases the GIL in the copies and arithmetic that build a batch, so the next
    batches are assembled while the accelerator (or XLA on CPU) runs the current step.
    Order and content are those of the wrapped iterator; an exception raised while
    producing is re-raised by `next`. Use as a context manager, or call `close()`, to stop
    the thread early.
    """

    def __init__(self, source: Iterable[T], size: int = 2):
        """Starts the producer thread.

        Args:
            source: the iterable to read ahead.
            size: queue bound, >= 1: at most this many items wait for the consumer.
        """
        if size < 1:
            raise ValueError(f"size must be an integer >= 1, got {size}")
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(
            target=_produce, args=(iter(source), self._queue, self._stop), daemon=True
        )
        self._thread.start()

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == _ITEM:
            return value
        self._finished = True
        self._thread.join()
        if kind == _ERROR:
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stops the producer thread and discards the items it had read ahead."""
        self._finished = True
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        # getattr: __init__ may have raised before the event existed.
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
