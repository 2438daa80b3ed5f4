"""Crop, flip and Cutout (NumPy and JAX) against independent NumPy checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xsam_jax.data import Augmentation, cutout, random_crop, random_flip

N, H, W, C = 64, 8, 10, 3
PAD_VALUE = np.array([-1.5, -2.0, -2.5], np.float32)


def batch(seed=0):
    # Positive values, unique per pixel, so a zero or a pad value can only come from the
    # augmentation and a window is identified by its content.
    return np.random.default_rng(seed).uniform(1.0, 2.0, (N, H, W, C)).astype(np.float32)


def crop_offsets(x, out, padding, pad_value):
    """For each image, the (dy, dx) windows of the padded input equal to the output."""
    padded = np.broadcast_to(pad_value, (N, H + 2 * padding, W + 2 * padding, C)).copy()
    padded[:, padding : padding + H, padding : padding + W] = x
    found = []
    for i in range(N):
        matches = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if np.array_equal(out[i], padded[i, dy : dy + H, dx : dx + W])
        ]
        found.append(matches)
    return found


def mirrored(x, out):
    """Per image: True if mirrored, False if unchanged; fails if neither."""
    flags = []
    for i in range(N):
        if np.array_equal(out[i], x[i, :, ::-1]):
            flags.append(True)
        else:
            np.testing.assert_array_equal(out[i], x[i])
            flags.append(False)
    return np.array(flags)


def cutout_boxes(x, out, size):
    """Per image, the zeroed rectangle (top, bottom, left, right) or None; checks that it is
    a square of side `size` clipped at the borders and that nothing else changed."""
    boxes = []
    for i in range(N):
        zero = np.all(out[i] == 0, axis=-1)
        if not zero.any():
            np.testing.assert_array_equal(out[i], x[i])
            boxes.append(None)
            continue
        rows, cols = np.flatnonzero(zero.any(axis=1)), np.flatnonzero(zero.any(axis=0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        assert zero[top:bottom, left:right].all()  # a full rectangle
        assert zero.sum() == (bottom - top) * (right - left)  # and nothing else zeroed
        assert np.all(out[i][zero] == 0)  # in every channel
        np.testing.assert_array_equal(out[i][~zero], x[i][~zero])
        for lo, hi, extent in ((top, bottom, H), (left, right, W)):
            side = hi - lo
            assert side <= size
            if side < size:  # clipped: the square must extend past a border
                assert lo == 0 or hi == extent
        boxes.append((top, bottom, left, right))
    return boxes


def test_random_crop_is_a_window_of_the_padded_input():
    x = batch()
    out = random_crop(x, np.random.default_rng(1), padding=2, pad_value=PAD_VALUE)
    assert out.shape == x.shape and out.dtype == x.dtype
    found = crop_offsets(x, out, 2, PAD_VALUE)
    assert all(len(m) == 1 for m in found)
    offsets = {m[0] for m in found}
    assert len(offsets) > 10  # offsets vary across images
    assert all(0 <= dy <= 4 and 0 <= dx <= 4 for dy, dx in offsets)


def test_random_crop_zero_padding_default_and_uint8():
    x = (batch() * 100).astype(np.uint8)
    out = random_crop(x, np.random.default_rng(2), padding=4)
    assert out.dtype == np.uint8
    assert all(len(m) >= 1 for m in crop_offsets(x, out, 4, np.zeros(C, np.uint8)))


def test_random_flip_is_an_exact_mirror():
    x = batch()
    flags = mirrored(x, random_flip(x, np.random.default_rng(3)))
    assert 0 < flags.sum() < N


@pytest.mark.parametrize("size", [4, 5, 30])
def test_cutout_zeroes_exactly_a_clipped_square(size):
    x = batch()
    boxes = cutout_boxes(x, cutout(x, np.random.default_rng(4), size=size, prob=1.0), size)
    assert all(b is not None for b in boxes)
    if size == 30:  # larger than the image: everything is erased
        assert all(b == (0, H, 0, W) for b in boxes)
    else:
        assert any(b[1] - b[0] < size for b in boxes)  # some clipped at a border
        assert any(b[1] - b[0] == size and b[3] - b[2] == size for b in boxes)


def test_cutout_probability():
    x = np.ones((4000, 4, 4, 1), np.float32)
    out = cutout(x, np.random.default_rng(5), size=2, prob=0.5)
    applied = np.any(out == 0, axis=(1, 2, 3)).mean()
    assert 0.46 < applied < 0.54
    np.testing.assert_array_equal(cutout(x, np.random.default_rng(5), size=2, prob=0.0), x)


def test_augmentation_composes_and_is_deterministic():
    x = batch()
    aug = Augmentation(crop_padding=2, flip=True, cutout_size=3, cutout_prob=0.5)
    out = aug(x, np.random.default_rng(6), pad_value=PAD_VALUE)
    rng = np.random.default_rng(6)
    expected = random_crop(x, rng, padding=2, pad_value=PAD_VALUE)
    expected = cutout(random_flip(expected, rng), rng, size=3, prob=0.5)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, aug(x, np.random.default_rng(6), pad_value=PAD_VALUE))
    assert not np.array_equal(out, aug(x, np.random.default_rng(7), pad_value=PAD_VALUE))
    np.testing.assert_array_equal(
        Augmentation(crop_padding=0, flip=False)(x, np.random.default_rng(0)), x
    )


def test_augmenting_some_rows_matches_augmenting_the_whole_batch():
    """A process augmenting its rows of a global batch gets what the whole batch would."""
    x = batch()
    aug = Augmentation(crop_padding=2, flip=True, cutout_size=3, cutout_prob=0.5)
    whole = aug(x, np.random.default_rng(6), pad_value=PAD_VALUE)
    for rows in (np.arange(N // 2, N), np.arange(0, N, 3), np.array([40, 2, 17])):
        part = aug(x[rows], np.random.default_rng(6), pad_value=PAD_VALUE, rows=rows, batch_size=N)
        np.testing.assert_array_equal(part, whole[rows])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rows": np.arange(4)}, "rows and batch_size must be given together"),
        ({"batch_size": N}, "rows and batch_size must be given together"),
        ({"rows": np.arange(3), "batch_size": N}, r"rows must be 4 positions in \[0, 64\)"),
        ({"rows": np.array([0, 1, 2, 64]), "batch_size": N}, r"in \[0, 64\)"),
    ],
)
def test_augmentation_rejects_bad_rows(kw, match):
    with pytest.raises(ValueError, match=match):
        Augmentation()(batch()[:4], np.random.default_rng(0), **kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"crop_padding": -1}, "crop_padding"),
        ({"cutout_size": -2}, "cutout_size"),
        ({"cutout_prob": 1.5}, "cutout_prob"),
    ],
)
def test_augmentation_rejects_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        Augmentation(**kw)


def test_functions_reject_bad_arguments():
    x = batch()
    with pytest.raises(ValueError, match="NHWC"):
        random_flip(x[0], np.random.default_rng(0))
    with pytest.raises(ValueError, match="padding"):
        random_crop(x, np.random.default_rng(0), padding=-1)
    with pytest.raises(ValueError, match="size"):
        cutout(x, np.random.default_rng(0), size=0)
    with pytest.raises(ValueError, match="prob"):
        cutout(x, np.random.default_rng(0), prob=-0.1)


def test_jax_version_has_the_same_semantics():
    x = batch()
    key = jax.random.key(0)
    crop = Augmentation(crop_padding=2, flip=False).apply_jax(
        key, jnp.asarray(x), pad_value=PAD_VALUE
    )
    found = crop_offsets(x, np.asarray(crop), 2, PAD_VALUE)
    assert all(len(m) == 1 for m in found) and len({m[0] for m in found}) > 10

    flip = Augmentation(crop_padding=0, flip=True).apply_jax(key, jnp.asarray(x))
    assert 0 < mirrored(x, np.asarray(flip)).sum() < N

    aug = Augmentation(crop_padding=0, flip=False, cutout_size=5, cutout_prob=1.0)
    erased = np.asarray(aug.apply_jax(key, jnp.asarray(x)))
    assert all(b is not None for b in cutout_boxes(x, erased, 5))
    np.testing.assert_array_equal(erased, np.asarray(aug.apply_jax(key, jnp.asarray(x))))
    other = np.asarray(aug.apply_jax(jax.random.key(1), jnp.asarray(x)))
    assert not np.array_equal(erased, other)
