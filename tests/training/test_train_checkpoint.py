"""Orbax checkpoints: N steps + save + restore + N steps == 2N steps, bit for bit."""

import jax
import numpy as np
import optax
import pytest
from training_helpers import make_batch, make_model

import xsam_jax as xs
from xsam_jax import training

pytest.importorskip("orbax.checkpoint", reason="checkpoints need orbax-checkpoint")

N = 3


def _tx() -> optax.GradientTransformationExtraArgs:
    # XSAM with a search every other step, so alpha* and its step counter matter on resume.
    sharpness = xs.xsam(0.1, 0.2, search_every=2, alpha_step=0.25)
    return optax.chain(sharpness, optax.sgd(0.05, momentum=0.9))


def _noisy_inputs(model, batch, key):
    # Uses the step's key, so the trajectory also depends on the saved PRNG key and step.
    return model(batch["x"] + 0.1 * jax.random.normal(key, batch["x"].shape))


def _fresh_state(seed: int) -> training.TrainState:
    return training.TrainState.create(make_model(seed=seed), _tx(), rng=seed)


def _leaves(state: training.TrainState) -> list[np.ndarray]:
    def as_numpy(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return np.asarray(jax.random.key_data(x))
        return np.asarray(x)

    return [as_numpy(x) for x in jax.tree.leaves(state)]


def test_resume_is_bit_exact(tmp_path):
    step = jax.jit(training.make_train_step(make_model(), _tx(), apply_fn=_noisy_inputs))
    batches = [make_batch(seed, 16) for seed in range(2 * N)]

    straight = _fresh_state(0)
    for b in batches:
        straight, _ = step(straight, b)

    first = _fresh_state(0)
    for b in batches[:N]:
        first, _ = step(first, b)
    config = {"optimizer": "xsam", "rho": 0.1, "rho_max": 0.2, "batches": [1, 2]}
    with training.Checkpointer(tmp_path / "ckpt") as checkpointer:
        checkpointer.save(first, metadata=config)
    # A state built from another seed: every value must come from the checkpoint.
    with training.Checkpointer(tmp_path / "ckpt") as checkpointer:
        assert checkpointer.latest_step() == N
        resumed = checkpointer.restore(_fresh_state(99))
        assert checkpointer.metadata() == config
    for a, b in zip(_leaves(resumed), _leaves(first), strict=True):
        np.testing.assert_array_equal(a, b)
    for b in batches[N:]:
        resumed, _ = step(resumed, b)

    assert jax.tree.structure(resumed) == jax.tree.structure(straight)
    for a, b in zip(_leaves(resumed), _leaves(straight), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(resumed.step) == 2 * N


def test_restore_picks_the_requested_step_and_keeps_the_latest(tmp_path):
    step = jax.jit(training.make_train_step(make_model(), _tx()))
    state = _fresh_state(0)
    with training.Checkpointer(tmp_path, max_to_keep=2) as checkpointer:
        saved = {}
        for seed in range(3):
            state, _ = step(state, make_batch(seed, 16))
            checkpointer.save(state, metadata={"seed": seed})
            saved[int(state.step)] = state
        checkpointer.wait_until_finished()
        assert checkpointer.latest_step() == 3
        restored = checkpointer.restore(_fresh_state(1), step=2)
        assert checkpointer.metadata(step=2) == {"seed": 1}
        with pytest.raises(FileNotFoundError, match="step 1"):
            checkpointer.restore(_fresh_state(1), step=1)
    for a, b in zip(_leaves(restored), _leaves(saved[2]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpointer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep"):
        training.Checkpointer(tmp_path, max_to_keep=0)
    with training.Checkpointer(tmp_path / "empty") as checkpointer:
        assert checkpointer.latest_step() is None
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            checkpointer.restore(_fresh_state(0))


# ------------------------------------------------------------------ damaged checkpoints
#
# Orbax writes checkpoint s to <directory>/<s>/: the arrays under state/ (an OCDBT database:
# manifest.ocdbt, d/<hash> data files, _METADATA, array_metadatas/, _sharding), the JSON
# under metadata/. `damage` flips a byte in every file under state/.


def _three_saves(directory):
    """Steps 1, 2, 3 saved with max_to_keep=2 (so 2 and 3 remain): {step: state}."""
    step = jax.jit(training.make_train_step(make_model(), _tx()))
    state, saved = _fresh_state(0), {}
    with training.Checkpointer(directory, max_to_keep=2) as checkpointer:
        for seed in range(3):
            state, _ = step(state, make_batch(seed, 16))
            checkpointer.save(state, metadata={"seed": seed})
            saved[int(state.step)] = state
    return saved


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd, damage):
    saved = _three_saves(tmp_path)
    damaged = damage(tmp_path / "3" / "state")
    capfd.readouterr()
    with training.Checkpointer(tmp_path, max_to_keep=2) as checkpointer:
        state, step, metadata = checkpointer.restore_latest_readable(_fresh_state(1))
    assert (step, metadata) == (2, {"seed": 1})
    for a, b in zip(_leaves(state), _leaves(saved[2]), strict=True):
        np.testing.assert_array_equal(a, b)
    err = capfd.readouterr().err
    # One line: the step, the first damaged file (in sorted order), the step restored instead.
    assert err == f"checkpoint step 3: {damaged[0]} changed since it was saved; restoring step 2\n"


def test_restoring_a_step_with_a_missing_file_names_the_file(tmp_path):
    _three_saves(tmp_path)
    missing = tmp_path / "3" / "state" / "_METADATA"
    missing.unlink()
    with training.Checkpointer(tmp_path) as checkpointer:
        with pytest.raises(training.CheckpointUnreadableError) as info:
            checkpointer.restore(_fresh_state(1))
        assert str(info.value) == f"checkpoint step 3: {missing} is missing"
        assert checkpointer.metadata() == {"seed": 2}  # the metadata files are intact


def test_no_readable_checkpoint_is_one_clear_error(tmp_path, capfd, damage):
    _three_saves(tmp_path)
    for step in (2, 3):
        damage(tmp_path / str(step) / "state")
    capfd.readouterr()
    with training.Checkpointer(tmp_path) as checkpointer:
        with pytest.raises(training.CheckpointUnreadableError) as info:
            checkpointer.restore_latest_readable(_fresh_state(1))
    message = str(info.value)
    assert message.startswith(f"no readable checkpoint in {tmp_path}: checkpoint step 3: ")
    assert "; checkpoint step 2: " in message and "\n" not in message
    out = capfd.readouterr()
    # TensorStore never saw the damaged files: nothing but the fallback line.
    assert out.err.count("\n") == 1 and out.err.startswith("checkpoint step 3: ")
    assert "Traceback" not in out.err + out.out


def test_without_digests_orbax_read_errors_also_fall_back(tmp_path, damage):
    # A checkpoint saved before digests existed (or interrupted before they were written).
    saved = _three_saves(tmp_path)
    (tmp_path / "3" / "sha256sums.json").unlink()
    damage(tmp_path / "3" / "state")
    with training.Checkpointer(tmp_path) as checkpointer:
        state, step, _ = checkpointer.restore_latest_readable(_fresh_state(1))
    assert step == 2
    np.testing.assert_array_equal(_leaves(state)[0], _leaves(saved[2])[0])


def test_an_intact_checkpoint_of_another_structure_is_not_called_damaged(tmp_path):
    _three_saves(tmp_path)
    other = training.TrainState.create(make_model(batch_norm=False), _tx(), rng=0)
    with training.Checkpointer(tmp_path) as checkpointer:
        with pytest.raises(ValueError, match="tree structures do not match") as info:
            checkpointer.restore_latest_readable(other)
    assert not isinstance(info.value, training.CheckpointUnreadableError)


def test_saving_a_step_again_replaces_it(tmp_path):
    saved = _three_saves(tmp_path)
    with training.Checkpointer(tmp_path, max_to_keep=2) as checkpointer:
        checkpointer.save(saved[2], metadata={"seed": "again"})
        assert checkpointer.metadata(step=2) == {"seed": "again"}
        assert sorted(checkpointer._manager.all_steps()) == [2, 3]
