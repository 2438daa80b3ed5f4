"""Standard CIFAR augmentation on NHWC batches: random crop, horizontal flip, Cutout.

The SAM/XSAM reference pipelines (torchvision) apply `RandomCrop(32, padding=4)` with zero
padding and `RandomHorizontalFlip()` to the raw image, then normalise, then Cutout (16 px,
applied with probability 0.5 in the XSAM code) on the normalised tensor. Here every
operation works on already-normalised float batches: crop and flip commute with the
per-channel affine normalisation, and the crop padding is filled with `pad_value`, the
normalised value of a black pixel (`Dataset.pad_value`), so the result is the same. Cutout
writes 0, the normalised mean, as in the reference.

Two implementations with the same semantics: NumPy on the host (`Augmentation.__call__`,
used by the batch iterator, drawing from a `np.random.Generator`) and JAX on the device
(`Augmentation.apply_jax`, jitted, drawing from a PRNG key). They consume randomness
differently, so the same seed does not give the same crops in both.

References:
    DeVries, Taylor. Improved Regularization of Convolutional Neural Networks with Cutout.
    arXiv:1708.04552, 2017.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _check_images(x: np.ndarray | jax.Array) -> None:
    if x.ndim != 4:
        raise ValueError(f"x must be an NHWC image batch (4 axes), got shape {x.shape}")


def random_crop(
    x: np.ndarray,
    rng: np.random.Generator,
    *,
    padding: int = 4,
    pad_value: float | np.ndarray = 0.0,
) -> np.ndarray:
    """Pads every image by `padding` on each side and crops back to its size at random.

    Args:
        x: `(N, H, W, C)` float batch.
        rng: the source of the per-image offsets, uniform in `[0, 2 * padding]`.
        padding: pixels added on each side, >= 0.
        pad_value: fill of the border, a scalar or one value per channel.

    Returns:
        The `(N, H, W, C)` crops.
    """
    _check_images(x)
    if padding < 0:
        raise ValueError(f"padding must be an integer >= 0, got {padding}")
    return _crop(x, _draw_crop(rng, len(x), padding), padding, pad_value)


def _draw_crop(rng: np.random.Generator, n: int, padding: int) -> np.ndarray:
    """`(2, n)` offsets: the first row of each crop, then its first column."""
    return rng.integers(0, 2 * padding + 1, size=(2, n))


def _crop(x: np.ndarray, offsets: np.ndarray, padding: int, pad_value) -> np.ndarray:
    n, h, w, c = x.shape
    padded = np.empty((n, h + 2 * padding, w + 2 * padding, c), dtype=x.dtype)
    padded[...] = np.asarray(pad_value, dtype=x.dtype)
    padded[:, padding : padding + h, padding : padding + w] = x
    dy, dx = offsets
    rows = dy[:, None] + np.arange(h)
    cols = dx[:, None] + np.arange(w)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirrors each image left-right with probability 1/2.

    Args:
        x: `(N, H, W, C)` batch.
        rng: the source of the per-image coin flips.

    Returns:
        The batch with the selected images mirrored.
    """
    _check_images(x)
    return _flip(x, _draw_flip(rng, len(x)))


def _draw_flip(rng: np.random.Generator, n: int) -> np.ndarray:
    """`(n,)` booleans: which images are mirrored."""
    return rng.random(n) < 0.5


def _flip(x: np.ndarray, mirrored: np.ndarray) -> np.ndarray:
    return np.where(mirrored[:, None, None, None], x[:, :, ::-1], x)


def cutout(
    x: np.ndarray, rng: np.random.Generator, *, size: int = 16, prob: float = 0.5
) -> np.ndarray:
    """Zeroes a `size` x `size` square, clipped at the borders, in each image w.p. `prob`.

    The square's centre is uniform over all pixels, so squares near an edge are cut
    (DeVries & Taylor 2017).

    Args:
        x: `(N, H, W, C)` float batch.
        rng: the source of centres and of the per-image decisions.
        size: side of the square, >= 1.
        prob: probability of applying Cutout to an image, in [0, 1].

    Returns:
        The batch with the squares set to 0 in every channel.
    """
    _check_images(x)
    _check_cutout(size, prob)
    return _cutout(x, _draw_cutout(rng, len(x), x.shape[1:3], size, prob), size)


def _draw_cutout(
    rng: np.random.Generator, n: int, image_size: tuple[int, int], size: int, prob: float
) -> np.ndarray:
    """`(3, n)` integers: each square's top row and left column, and 1 where it is applied."""
    h, w = image_size
    top = rng.integers(0, h, size=n) - size // 2
    left = rng.integers(0, w, size=n) - size // 2
    apply = rng.random(n) < prob
    return np.stack([top, left, apply])


def _cutout(x: np.ndarray, squares: np.ndarray, size: int) -> np.ndarray:
    _, h, w, _ = x.shape
    top, left, apply = squares
    mask = _square_mask(top, left, size, h, w, apply.astype(bool), xp=np)
    return np.where(mask[..., None], np.zeros((), x.dtype), x)


def _check_cutout(size: int, prob: float) -> None:
    if size < 1:
        raise ValueError(f"cutout size must be an integer >= 1, got {size}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"cutout prob must be in [0, 1], got {prob}")


def _square_mask(top, left, size, h, w, apply, *, xp):
    """`(N, H, W)` boolean mask of the squares `[top, top + size) x [left, left + size)`."""
    rows = xp.arange(h)
    cols = xp.arange(w)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)
    return in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Crop, flip and Cutout settings; call it on a normalised NHWC batch.

    `Augmentation()` is the standard CIFAR crop + flip; `Augmentation(cutout_size=16)` adds
    the XSAM authors' Cutout (probability 0.5).

    Attributes:
        crop_padding: random-crop padding in pixels; 0 disables cropping.
        flip: random horizontal flips.
        cutout_size: Cutout square side in pixels; 0 disables Cutout.
        cutout_prob: probability of applying Cutout to an image.
    """

    crop_padding: int = 4
    flip: bool = True
    cutout_size: int = 0
    cutout_prob: float = 0.5

    def __post_init__(self):
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be an integer >= 0, got {self.crop_padding}")
        if self.cutout_size < 0:
            raise ValueError(f"cutout_size must be an integer >= 0, got {self.cutout_size}")
        if not 0.0 <= self.cutout_prob <= 1.0:
            raise ValueError(f"cutout_prob must be in [0, 1], got {self.cutout_prob}")

    def __call__(
        self,
        x: np.ndarray,
        rng: np.random.Generator,
        *,
        pad_value: float | np.ndarray = 0.0,
        rows: np.ndarray | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Augments a batch on the host.

        With `rows`, `x` is part of a batch (e.g. one process's share of a global batch): the
        random choices are drawn for the whole batch and those of `rows` applied, so every
        image is augmented exactly as it is when the whole batch is augmented at once.

        Args:
            x: `(N, H, W, C)` normalised float batch.
            rng: the batch's generator; the same generator state gives the same output.
            pad_value: crop padding fill, a scalar or one value per channel.
            rows: the positions of `x`'s images in the whole batch, or None (`x` is it).
            batch_size: the size of the whole batch; given exactly when `rows` is.

        Returns:
            The augmented batch, same shape and dtype.
        """
        _check_images(x)
        n, pick = _whole_batch(len(x), rows, batch_size)
        if self.crop_padding:
            offsets = pick(_draw_crop(rng, n, self.crop_padding))
            x = _crop(x, offsets, self.crop_padding, pad_value)
        if self.flip:
            x = _flip(x, pick(_draw_flip(rng, n)))
        if self.cutout_size:
            squares = _draw_cutout(rng, n, x.shape[1:3], self.cutout_size, self.cutout_prob)
            x = _cutout(x, pick(squares), self.cutout_size)
        return x

    def apply_jax(
        self, key: jax.Array, x: jax.Array, *, pad_value: float | jax.Array = 0.0
    ) -> jax.Array:
        """Augments a batch on the device (jitted; usable inside a jitted train step).

        Args:
            key: a PRNG key for this batch.
            x: `(N, H, W, C)` normalised float batch.
            pad_value: crop padding fill, a scalar or one value per channel.

        Returns:
            The augmented batch, same shape and dtype.
        """
        _check_images(x)
        return _augment_jax(
            key,
            x,
            jnp.asarray(pad_value, x.dtype),
            crop_padding=self.crop_padding,
            flip=self.flip,
            cutout_size=self.cutout_size,
            cutout_prob=self.cutout_prob,
        )


def _whole_batch(
    num_images: int, rows: np.ndarray | None, batch_size: int | None
) -> tuple[int, Callable[[np.ndarray], np.ndarray]]:
    """The number of images to draw for, and how to keep the draws of `rows` (last axis)."""
    if rows is None and batch_size is None:
        return num_images, lambda draws: draws
    if rows is None or batch_size is None:
        raise ValueError(
            f"rows and batch_size must be given together, got rows={rows!r} and "
            f"batch_size={batch_size!r}"
        )
    rows = np.asarray(rows)
    if rows.shape != (num_images,) or not np.all((rows >= 0) & (rows < batch_size)):
        raise ValueError(
            f"rows must be {num_images} positions in [0, {batch_size}) (one per image of x), "
            f"got {rows!r}"
        )
    return batch_size, lambda draws: draws[..., rows]


@functools.partial(jax.jit, static_argnames=("crop_padding", "flip", "cutout_size", "cutout_prob"))
def _augment_jax(key, x, pad_value, *, crop_padding, flip, cutout_size, cutout_prob):
    n, h, w, c = x.shape
    crop_key, flip_key, centre_key, apply_key = jax.random.split(key, 4)
    if crop_padding:
        p = crop_padding
        padded = jnp.broadcast_to(pad_value, (n, h + 2 * p, w + 2 * p, c))
        padded = padded.at[:, p : p + h, p : p + w].set(x)
        offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * p + 1)
        x = jax.vmap(lambda img, o: lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(
            padded, offsets
        )
    if flip:
        mirrored = jax.random.bernoulli(flip_key, 0.5, (n,))
        x = jnp.where(mirrored[:, None, None, None], x[:, :, ::-1], x)
    if cutout_size:
        centres = jax.random.randint(centre_key, (n, 2), 0, jnp.array([h, w]))
        corners = centres - cutout_size // 2
        apply = jax.random.bernoulli(apply_key, cutout_prob, (n,))
        mask = _square_mask(corners[:, 0], corners[:, 1], cutout_size, h, w, apply, xp=jnp)
        x = jnp.where(mask[..., None], jnp.zeros((), x.dtype), x)
    return x
