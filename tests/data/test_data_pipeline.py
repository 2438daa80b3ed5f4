"""Epoch iteration, per-(seed, epoch) determinism, the prefetcher and Dataset batching."""

import dataclasses
import gc
import threading
import time

import numpy as np
import pytest

from xsam_jax.data import Augmentation, Dataset, Prefetcher, iterate_batches


def ids_dataset(n=103, seed=0):
    # Each image's pixels carry its index, so a batch reveals which examples it holds.
    x = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 6, 6, 3)).copy()
    y = (np.arange(n) % 7).astype(np.int64)
    return Dataset(
        name="ids",
        x_train=x,
        y_train=y,
        x_test=x[:50],
        y_test=y[:50],
        num_classes=7,
        seed=seed,
        scale=255.0,
        mean=np.array([0.1, 0.2, 0.3]),
        std=np.array([0.5, 0.25, 2.0]),
    )


def example_ids(batches, ds):
    # Invert the normalisation of one untouched channel-0 pixel per example.
    return [
        np.rint((b["x"][:, 3, 3, 0] * ds.std[0] + ds.mean[0]) * 255).astype(int) for b in batches
    ]


@pytest.mark.parametrize("batch_size", [1, 10, 103, 200])
def test_every_example_once_per_epoch_without_drop_last(batch_size):
    x, y = np.arange(103), np.arange(103) * 2
    batches = list(iterate_batches(x, y, batch_size, shuffle=True, seed=1, epoch=2))
    seen = np.concatenate([b["y"] for b in batches]) // 2
    assert sorted(seen) == list(range(103))
    assert [len(b["y"]) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
    for b in batches:
        np.testing.assert_array_equal(b["x"] * 2, b["y"])  # x and y stay paired
        assert b["x"].dtype == np.float32 and b["y"].dtype == np.int32


def test_drop_last_keeps_only_full_batches():
    x = np.arange(103)
    batches = list(iterate_batches(x, x, 10, shuffle=True, seed=0, epoch=0, drop_last=True))
    assert [len(b["y"]) for b in batches] == [10] * 10
    seen = np.concatenate([b["y"] for b in batches])
    assert len(set(seen.tolist())) == 100
    assert list(iterate_batches(x, x, 200, drop_last=True)) == []


def test_no_shuffle_keeps_order():
    x = np.arange(25)
    seen = np.concatenate([b["y"] for b in iterate_batches(x, x, 7)])
    np.testing.assert_array_equal(seen, x)


def test_shuffle_is_a_function_of_seed_and_epoch():
    x = np.arange(500)

    def order(seed, epoch):
        batches = iterate_batches(x, x, 50, shuffle=True, seed=seed, epoch=epoch)
        return np.concatenate([b["y"] for b in batches])

    np.testing.assert_array_equal(order(3, 1), order(3, 1))
    assert not np.array_equal(order(3, 1), order(3, 2))
    assert not np.array_equal(order(3, 1), order(4, 1))
    assert not np.array_equal(order(0, 0), x)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"epoch": -1}, "epoch"),
    ],
)
def test_iterate_batches_rejects_bad_arguments(kw, match):
    args = {"batch_size": 4, **kw}
    with pytest.raises(ValueError, match=match):
        iterate_batches(np.arange(8), np.arange(8), args.pop("batch_size"), **args)


def test_iterate_batches_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        iterate_batches(np.arange(8), np.arange(7), 4)


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert u.keys() == v.keys()
        for k in u:
            np.testing.assert_array_equal(u[k], v[k])
            assert u[k].dtype == v[k].dtype


def test_prefetcher_yields_the_same_batches():
    ds = ids_dataset()
    aug = Augmentation(cutout_size=3)
    plain = list(ds.train_batches(16, epoch=3, augmentation=aug, prefetch=0))
    fetched = list(ds.train_batches(16, epoch=3, augmentation=aug, prefetch=2))
    assert_same_batches(plain, fetched)
    assert_same_batches(list(ds.test_batches(16, prefetch=0)), list(ds.test_batches(16)))


def test_prefetcher_reads_ahead_boundedly():
    produced = []

    def source():
        for i in range(10):
            produced.append(i)
            yield i

    with Prefetcher(source(), size=2) as it:
        assert next(it) == 0
        time.sleep(0.2)
        # One item consumed, at most `size` queued and one blocked in `put`.
        assert len(produced) <= 4
        assert list(it) == list(range(1, 10))


def test_prefetcher_reraises_producer_errors():
    def source():
        yield 1
        raise KeyError("boom")

    it = Prefetcher(source())
    assert next(it) == 1
    with pytest.raises(KeyError, match="boom"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def new_threads(before):
    return set(threading.enumerate()) - before


def test_prefetcher_close_stops_the_thread():
    before = set(threading.enumerate())
    it = Prefetcher(iter(range(10**9)), size=1)
    next(it)
    assert new_threads(before)
    it.close()
    assert not new_threads(before)
    with pytest.raises(StopIteration):
        next(it)


def test_abandoned_prefetcher_stops_its_thread():
    before = set(threading.enumerate())
    it = Prefetcher(iter(range(10**9)), size=1)
    next(it)
    del it
    gc.collect()
    deadline = time.monotonic() + 5.0
    while new_threads(before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not new_threads(before)


def test_prefetcher_rejects_bad_size():
    with pytest.raises(ValueError, match="size"):
        Prefetcher(range(3), size=0)


def test_dataset_batches_are_normalised_and_cover_the_epoch():
    ds = ids_dataset()
    batches = list(ds.train_batches(10, epoch=0, drop_last=False))
    ids = np.concatenate(example_ids(batches, ds))
    assert sorted(ids.tolist()) == list(range(103))
    b = batches[0]
    assert b["x"].dtype == np.float32 and b["y"].dtype == np.int32
    i = ids[0]
    expected = (np.float32(i) / 255 - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.25, 2.0])
    np.testing.assert_allclose(b["x"][0], np.broadcast_to(expected, (6, 6, 3)), rtol=1e-6)
    assert b["y"][0] == i % 7
    assert [len(b["y"]) for b in ds.train_batches(10, epoch=0)] == [10] * 10


def test_dataset_augmentation_depends_on_seed_and_epoch():
    aug = Augmentation(crop_padding=2, cutout_size=2)

    def epoch(ds, e):
        return list(ds.train_batches(16, epoch=e, augmentation=aug))

    ds = ids_dataset(seed=5)
    assert_same_batches(epoch(ds, 1), epoch(ds, 1))
    assert_same_batches(epoch(ds, 1), epoch(ids_dataset(seed=5), 1))
    assert not np.array_equal(epoch(ds, 1)[0]["x"], epoch(ds, 2)[0]["x"])
    other_seed = dataclasses.replace(ds, seed=6)
    assert not np.array_equal(epoch(ds, 1)[0]["x"], epoch(other_seed, 1)[0]["x"])


def test_processes_loading_their_rows_rebuild_the_global_batches():
    """Two processes taking interleaved rows of every batch (augmented) together load exactly
    the batches of one process, each example augmented the same way."""
    ds = ids_dataset(seed=3)
    aug = Augmentation(crop_padding=2, cutout_size=2)
    whole = list(ds.train_batches(16, epoch=2, augmentation=aug))
    parts = [np.arange(0, 16, 2), np.arange(1, 16, 2)]
    loaded = [list(ds.train_batches(16, epoch=2, augmentation=aug, rows=r)) for r in parts]
    assert len(loaded[0]) == len(loaded[1]) == len(whole) == 103 // 16
    for b, batch in enumerate(whole):
        for rows, batches in zip(parts, loaded, strict=True):
            np.testing.assert_array_equal(batches[b]["x"], batch["x"][rows])
            np.testing.assert_array_equal(batches[b]["y"], batch["y"][rows])


def test_iterate_batches_rows_take_positions_of_every_batch():
    x = np.arange(20) * 10
    batches = list(iterate_batches(x, x, 8, drop_last=True, rows=np.array([6, 1])))
    assert [b["y"].tolist() for b in batches] == [[60, 10], [140, 90]]
    with pytest.raises(ValueError, match="drop_last"):
        iterate_batches(x, x, 8, rows=np.array([0]))
    with pytest.raises(ValueError, match=r"rows must be positions in \[0, 8\)"):
        iterate_batches(x, x, 8, drop_last=True, rows=np.array([8]))


def test_dataset_crop_pads_with_normalised_black():
    ds = ids_dataset()
    np.testing.assert_allclose(ds.pad_value, [-0.2, -0.8, -0.15], rtol=1e-6)
    aug = Augmentation(crop_padding=4, flip=False)
    x = np.concatenate([b["x"] for b in ds.train_batches(103, epoch=0, augmentation=aug)])
    border = np.isclose(x, ds.pad_value).all(axis=-1)
    assert border.any()  # some crops reach into the padding
    for image, pad in zip(x, border, strict=True):
        # Apart from the padding, an image shows only its own (constant) pixel value.
        assert len(np.unique(image[~pad], axis=0)) <= 1


def test_dataset_arrays_and_checks():
    ds = ids_dataset()
    x, y = ds.arrays("test")
    assert x.shape == (50, 6, 6, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, ds.normalize(ds.x_test))
    assert ds.input_shape == (6, 6, 3)
    with pytest.raises(ValueError, match="split must be one of"):
        ds.arrays("dev")
    with pytest.raises(ValueError, match="prefetch"):
        ds.test_batches(8, prefetch=-1)
    with pytest.raises(ValueError, match="mean and std"):
        dataclasses.replace(ds, std=None)
    with pytest.raises(ValueError, match="seed"):
        dataclasses.replace(ds, seed=-1)
