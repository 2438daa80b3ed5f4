"""Orbax checkpoints of a `TrainState` that resume bit-exactly and survive a damaged one.

A checkpoint holds every array of the state (parameters, BatchNorm statistics and other
model state, the optimizer state with SAM/XSAM's own state such as alpha*, the step and
the PRNG key) plus a small JSON of metadata, e.g. the run's config. The static graphdef is
not saved: rebuild a fresh state from the same config and restore into it, which also
gives Orbax the shapes, dtypes and shardings to restore to.

Orbax writes checkpoint ``s`` to ``directory/<s>/``: the arrays under ``state/`` (an OCDBT
database: ``manifest.ocdbt`` and ``d/<hash>`` data files, ``_METADATA`` and
``array_metadatas/`` JSON describing the tree, ``_sharding``; ``ocdbt.process_<i>/`` holds
each process's part before it is merged), the JSON under ``metadata/``, and
``_CHECKPOINT_METADATA`` and ``commit_success.txt`` markers. Once a save is on disk, the
`Checkpointer` adds ``sha256sums.json``, the SHA-256 of every file of the checkpoint, and
checks them before restoring: a flipped byte, a truncated or a missing file is reported by
name instead of surfacing as a TensorStore, ZSTD or JSON error (some of which TensorStore
does not even detect), and `Checkpointer.restore_latest_readable` falls back to the
previous checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp

from xsam_jax.training.state import TrainState

DIGESTS = "sha256sums.json"
# What Orbax and TensorStore raise on damaged files: DATA_LOSS and decoding errors (ValueError,
# UnicodeDecodeError, JSONDecodeError) and missing files (OSError).
_READ_ERRORS = (ValueError, OSError)


class CheckpointUnreadableError(ValueError):
    """A checkpoint's files are damaged or missing; the message names the step and the file."""


class Restored(NamedTuple):
    """What `Checkpointer.restore_latest_readable` read.

    Attributes:
        state: the restored `TrainState`.
        step: the checkpoint it came from.
        metadata: the JSON metadata saved with that checkpoint.
    """

    state: TrainState
    step: int
    metadata: dict[str, Any]


def _arrays(state: TrainState) -> dict[str, Any]:
    return {
        "params": state.params,
        "model_state": state.model_state,
        "opt_state": state.opt_state,
        "step": state.step,
        "rng": state.rng,
    }


def _sha256(path: pathlib.Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Checkpointer:
    """Saves and restores `TrainState`s under `directory/<step>/` with Orbax.

    Saving is asynchronous (training continues while files are written); `restore`,
    `metadata`, `wait_until_finished` and `close` wait for pending saves. In multi-host
    runs every process must call `save` and `restore`.

    Args:
        directory: where checkpoints live; created if missing.
        max_to_keep: how many of the latest checkpoints to keep (None keeps all).
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3) -> None:
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(f"max_to_keep must be None or an integer >= 1, got {max_to_keep!r}")
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "metadata"),
        )
        self._unsealed: int | None = None  # the step saved last, before its digests exist

    def save(self, state: TrainState, *, metadata: Mapping[str, Any] | None = None) -> None:
        """Saves `state` as checkpoint number `state.step`.

        A checkpoint of the same step is replaced: a run resumed from an earlier checkpoint
        (because the latest could not be read) redoes the step and saves it again.

        Args:
            state: the train state.
            metadata: JSON-serialisable information stored next to it (e.g. the config).
        """
        step = int(jax.device_get(state.step))
        self.wait_until_finished()
        if step in self._manager.all_steps():
            self._manager.delete(step)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_arrays(state)),
                metadata=ocp.args.JsonSave(dict(metadata or {})),
            ),
            force=True,
        )
        self._unsealed = step

    def latest_step(self) -> int | None:
        """The step of the newest checkpoint, or None if there is none."""
        return self._manager.latest_step()

    def _path(self, step: int) -> pathlib.Path:
        return pathlib.Path(self.directory) / str(step)

    def _seal(self) -> None:
        """Writes the digests of the last save's files, once they are all on disk."""
        step, self._unsealed = self._unsealed, None
        if step is None or jax.process_index() != 0 or not self._path(step).is_dir():
            return
        path = self._path(step)
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != DIGESTS)
        digests = {str(p.relative_to(path)): _sha256(p) for p in files}
        partial = path / f"{DIGESTS}.partial"
        partial.write_text(json.dumps(digests, indent=0))
        os.replace(partial, path / DIGESTS)  # atomic: a digest file is complete or absent

    def _digests(self, step: int) -> dict[str, str] | None:
        """The digests saved with ``step``; None without (saved by an older version, or
        interrupted before they were written: Orbax then reads the step unchecked)."""
        try:
            return json.loads((self._path(step) / DIGESTS).read_text())
        except (OSError, ValueError):
            return None

    def _verify(self, step: int, item: str) -> None:
        """Checks the files of ``item`` (and the step's markers) against the saved digests.

        Raises:
            CheckpointUnreadableError: a file is missing or changed since it was saved.
        """
        path = self._path(step)
        for name, digest in (self._digests(step) or {}).items():
            if "/" in name and not name.startswith(f"{item}/"):
                continue
            file = path / name
            if not file.is_file():
                raise CheckpointUnreadableError(f"checkpoint step {step}: {file} is missing")
            if _sha256(file) != digest:
                raise CheckpointUnreadableError(
                    f"checkpoint step {step}: {file} changed since it was saved"
                )

    @contextlib.contextmanager
    def _read_errors_as_damage(self, step: int) -> Iterator[None]:
        """Orbax's read errors on a step without digests: CheckpointUnreadableError.

        With digests, the files are intact, and an Orbax error is something else (e.g. a
        target of another structure): it stays as it is.
        """
        try:
            yield
        except CheckpointUnreadableError:
            raise
        except _READ_ERRORS as err:
            if self._digests(step) is not None:
                raise
            raise CheckpointUnreadableError(
                f"checkpoint step {step} ({self._path(step)}): {_first_line(err)}"
            ) from err

    def _step(self, step: int | None) -> int:
        self.wait_until_finished()
        chosen = self._manager.latest_step() if step is None else step
        if chosen is None or chosen not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step!r} in {self.directory}")
        return chosen

    def restore(self, target: TrainState, *, step: int | None = None) -> TrainState:
        """Restores a checkpoint into a state built like the one that was saved.

        Args:
            target: a freshly built state with the same structure; its arrays give the
                shapes, dtypes and shardings to restore to, their values are replaced.
            step: which checkpoint; None takes the latest.

        Returns:
            `target` with every array replaced by the saved one.

        Raises:
            FileNotFoundError: no such checkpoint.
            CheckpointUnreadableError: one of its files is missing or damaged.
        """
        step = self._step(step)
        self._verify(step, "state")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(target))
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
        return target.replace(**restored.state)

    def metadata(self, *, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata saved with a checkpoint (None: the latest)."""
        step = self._step(step)
        self._verify(step, "metadata")
        restored = self._manager.restore(
            step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
        )
        return dict(restored.metadata)

    def _restore_readable(
        self, target: TrainState | Callable[[dict[str, Any]], TrainState], step: int
    ) -> Restored:
        """`metadata` and `restore` of one step; damage is a CheckpointUnreadableError."""
        with self._read_errors_as_damage(step):
            metadata = self.metadata(step=step)
        template = target(metadata) if callable(target) else target
        with self._read_errors_as_damage(step):
            return Restored(self.restore(template, step=step), step, metadata)

    def restore_latest_readable(
        self, target: TrainState | Callable[[dict[str, Any]], TrainState]
    ) -> Restored:
        """The newest checkpoint that can be read, falling back to older ones.

        Each checkpoint that cannot be read (a file missing or changed since it was saved,
        or, without digests, one Orbax fails to read) costs one line on stderr naming the
        step and the file, e.g. ``checkpoint step 44: .../44/state/d/62ab changed since it
        was saved; restoring step 33``, and the previous one is tried.

        Args:
            target: the state to restore into (see `restore`), or a function of a
                checkpoint's metadata returning it (when the metadata says how to build it);
                it is called before that checkpoint's arrays are read, so the errors it
                raises (e.g. about a config that does not match) propagate unchanged.

        Returns:
            `Restored(state, step, metadata)`: the metadata is that checkpoint's own.

        Raises:
            FileNotFoundError: there is no checkpoint.
            CheckpointUnreadableError: none can be read; the message lists why for each.
        """
        self.wait_until_finished()
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        failures = []
        for step, older in zip(steps, [*steps[1:], None], strict=True):
            try:
                return self._restore_readable(target, step)
            except CheckpointUnreadableError as err:
                failures.append(str(err))
                if older is not None:
                    print(f"{err}; restoring step {older}", file=sys.stderr, flush=True)
        raise CheckpointUnreadableError(
            f"no readable checkpoint in {self.directory}: {'; '.join(failures)}"
        )

    def wait_until_finished(self) -> None:
        """Blocks until pending saves are on disk (and their digests written)."""
        self._manager.wait_until_finished()
        self._seal()

    def close(self) -> None:
        """Waits for pending saves and releases Orbax's resources."""
        self.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
