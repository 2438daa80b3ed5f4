"""Orbax checkpoints of a `TrainState` that resume bit-exactly.

A checkpoint holds every array of the state (parameters, BatchNorm statistics and other
model state, the optimizer state with SAM/XSAM's own state such as alpha*, the step and
the PRNG key) plus a small JSON of metadata, e.g. the run's config. The static graphdef is
not saved: rebuild a fresh state from the same config and restore into it, which also
gives Orbax the shapes, dtypes and shardings to restore to.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from xsam_jax.training.state import TrainState


def _arrays(state: TrainState) -> dict[str, Any]:
    return {
        "params": state.params,
        "model_state": state.model_state,
        "opt_state": state.opt_state,
        "step": state.step,
        "rng": state.rng,
    }


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

    def save(self, state: TrainState, *, metadata: Mapping[str, Any] | None = None) -> None:
        """Saves `state` as checkpoint number `state.step`.

        Args:
            state: the train state.
            metadata: JSON-serialisable information stored next to it (e.g. the config).
        """
        self._manager.save(
            int(jax.device_get(state.step)),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_arrays(state)),
                metadata=ocp.args.JsonSave(dict(metadata or {})),
            ),
            force=True,
        )

    def latest_step(self) -> int | None:
        """The step of the newest checkpoint, or None if there is none."""
        return self._manager.latest_step()

    def _step(self, step: int | None) -> int:
        self._manager.wait_until_finished()
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
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays(target))
        restored = self._manager.restore(
            self._step(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
        return target.replace(**restored.state)

    def metadata(self, *, step: int | None = None) -> dict[str, Any]:
        """The JSON metadata saved with a checkpoint (None: the latest)."""
        restored = self._manager.restore(
            self._step(step), args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
        )
        return dict(restored.metadata)

    def wait_until_finished(self) -> None:
        """Blocks until pending saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases Orbax's resources."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
