"""Dataset.split_validation: a seeded hold-out of training examples, the test set untouched."""

import collections
import dataclasses

import numpy as np
import pytest

from xsam_jax.data import Dataset, load_digits

SCALE, MEAN, STD = 4.0, np.array([0.5, -1.0, 0.0]), np.array([2.0, 0.5, 1.0])


def random_dataset(n=50, seed=0):
    # Distinct float rows, so rows identify examples; labels are arbitrary.
    rng = np.random.default_rng(seed)
    return Dataset(
        name="random",
        x_train=rng.normal(size=(n, 3)).astype(np.float32),
        y_train=rng.integers(0, 4, n).astype(np.int32),
        x_test=rng.normal(size=(20, 3)).astype(np.float32),
        y_test=rng.integers(0, 4, 20).astype(np.int32),
        num_classes=4,
        scale=SCALE,
        mean=MEAN,
        std=STD,
    )


def examples(x, y):
    """The multiset of (row, label) pairs."""
    return collections.Counter((row.tobytes(), int(label)) for row, label in zip(x, y, strict=True))


def test_split_is_a_disjoint_partition_of_the_training_set():
    ds = random_dataset()
    split = ds.split_validation(0.2, seed=3)
    assert len(split.y_val) == 10 and len(split.y_train) == 40
    train_rows = {row.tobytes() for row in split.x_train}
    assert not any(row.tobytes() in train_rows for row in split.x_val)
    assert examples(split.x_train, split.y_train) + examples(split.x_val, split.y_val) == examples(
        ds.x_train, ds.y_train
    )


@pytest.mark.parametrize(("fraction", "expected"), [(0.1, 5), (0.25, 12), (0.5, 25), (0.98, 49)])
def test_sizes_round_the_fraction(fraction, expected):
    split = random_dataset().split_validation(fraction, seed=0)
    assert len(split.y_val) == len(split.x_val) == expected
    assert len(split.y_train) == len(split.x_train) == 50 - expected


def test_same_seed_same_split_other_seed_other_split():
    ds = random_dataset()
    a, b = ds.split_validation(0.2, seed=1), ds.split_validation(0.2, seed=1)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    c = ds.split_validation(0.2, seed=2)
    assert examples(a.x_val, a.y_val) != examples(c.x_val, c.y_val)
    # The dataset's own shuffling seed does not enter the choice.
    d = dataclasses.replace(ds, seed=9).split_validation(0.2, seed=1)
    np.testing.assert_array_equal(a.x_val, d.x_val)
    assert d.seed == 9


def test_test_split_and_normalisation_unchanged():
    ds = random_dataset()
    split = ds.split_validation(0.3, seed=0)
    assert split.x_test is ds.x_test and split.y_test is ds.y_test
    np.testing.assert_array_equal(split.arrays("test")[0], ds.arrays("test")[0])
    x_val, y_val = split.arrays("val")
    assert x_val.dtype == np.float32 and y_val.dtype == np.int32
    np.testing.assert_allclose(x_val, (split.x_val / SCALE - MEAN) / STD, rtol=1e-6)
    x_train, _ = split.arrays("train")
    np.testing.assert_allclose(x_train, (split.x_train / SCALE - MEAN) / STD, rtol=1e-6)


def test_val_batches_cover_the_validation_split_in_order():
    split = random_dataset().split_validation(0.3, seed=0)
    batches = list(split.val_batches(4))
    assert [len(b["y"]) for b in batches] == [4, 4, 4, 3]
    x_val, y_val = split.arrays("val")
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), x_val)
    np.testing.assert_array_equal(np.concatenate([b["y"] for b in batches]), y_val)


def test_training_iterates_only_the_remaining_examples():
    split = random_dataset().split_validation(0.2, seed=0)
    seen = np.concatenate([b["x"] for b in split.train_batches(7, epoch=0, drop_last=False)])
    expected, _ = split.arrays("train")
    assert sorted(map(bytes, seen)) == sorted(map(bytes, expected))


def test_digits_validation_comes_from_training_images():
    ds = load_digits(seed=0)
    split = ds.split_validation(0.1, seed=0)
    assert len(split.y_val) == round(0.1 * len(ds.y_train))
    assert examples(split.x_train, split.y_train) + examples(split.x_val, split.y_val) == examples(
        ds.x_train, ds.y_train
    )
    np.testing.assert_array_equal(split.x_test, ds.x_test)


@pytest.mark.parametrize(
    ("fraction", "seed", "match"),
    [
        (0.0, 0, r"fraction must be in \(0, 1\).*got 0.0"),
        (1.0, 0, "fraction must be in"),
        (-0.2, 0, "fraction must be in"),
        (float("nan"), 0, "fraction must be in"),
        (0.005, 0, r"at least one of the 50 training examples on each side, got 0.005 \(0 held"),
        (0.995, 0, r"got 0.995 \(50 held out\)"),
        (0.2, -1, "seed must be an integer >= 0, got -1"),
    ],
)
def test_bad_arguments(fraction, seed, match):
    with pytest.raises(ValueError, match=match):
        random_dataset().split_validation(fraction, seed=seed)


def test_no_validation_split_and_double_split_errors():
    ds = random_dataset()
    with pytest.raises(ValueError, match="no validation split; call split_validation"):
        ds.arrays("val")
    with pytest.raises(ValueError, match="no validation split"):
        ds.val_batches(4)
    with pytest.raises(ValueError, match="needs a dataset without a validation split"):
        ds.split_validation(0.2, seed=0).split_validation(0.2, seed=1)
    with pytest.raises(ValueError, match="x_val and y_val"):
        dataclasses.replace(ds, x_val=ds.x_train[:2])
