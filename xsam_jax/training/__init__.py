"""Training Flax NNX models with sharpness-aware Optax transformations.

A functional `TrainState`, train/eval steps with BatchNorm handled for SAM, data-parallel
variants (jit + `NamedSharding`, `shard_map`, `pmap`, multi-host ready), m-sharpness on one
device, gradient accumulation, the SAM-ON mask (`normalization_mask`), and Orbax checkpoints
(`Checkpointer`, imported lazily so that Orbax is only needed when checkpointing).
"""

from typing import Any

from xsam_jax.training.m_sharpness import make_m_sharpness_train_step
from xsam_jax.training.masks import NORMALIZATION_LAYERS, normalization_mask
from xsam_jax.training.parallel import (
    data_mesh,
    make_pmap_train_step,
    make_shard_map_train_step,
    make_sharded_train_step,
    process_batch_rows,
    replicate,
    replicate_for_pmap,
    shard_batch,
    shard_for_pmap,
    unreplicate,
)
from xsam_jax.training.state import TrainState
from xsam_jax.training.steps import (
    apply_model,
    make_eval_step,
    make_train_step,
    softmax_cross_entropy,
)

__all__ = [
    "CheckpointUnreadableError",
    "Checkpointer",
    "NORMALIZATION_LAYERS",
    "Restored",
    "TrainState",
    "apply_model",
    "data_mesh",
    "make_eval_step",
    "make_m_sharpness_train_step",
    "make_pmap_train_step",
    "make_shard_map_train_step",
    "make_sharded_train_step",
    "make_train_step",
    "normalization_mask",
    "process_batch_rows",
    "replicate",
    "replicate_for_pmap",
    "shard_batch",
    "shard_for_pmap",
    "softmax_cross_entropy",
    "unreplicate",
]


def __getattr__(name: str) -> Any:
    if name in ("CheckpointUnreadableError", "Checkpointer", "Restored"):
        from xsam_jax.training import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
