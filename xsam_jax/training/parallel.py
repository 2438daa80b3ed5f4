"""Data-parallel train steps: jit with `NamedSharding`, `shard_map`, and `pmap`.

All three replicate the train state and split the global batch along its leading axis.

- `make_sharded_train_step` (recommended): the single-device step under `jax.jit` with the
  state replicated (`P()`) and the batch sharded (`P('data')`); XLA inserts the
  all-reduces. The program is the global-batch program, so the result equals
  single-device training on the global batch (BatchNorm statistics included), and `tx`
  takes no `axis_name`. Per-device perturbations cannot be expressed this way.
- `make_shard_map_train_step`: the step runs per device with explicit collectives over
  `axis_name`; `tx` must be built with the same `axis_name`. With
  `local_perturbation=False` the update equals the global-batch one; with
  `local_perturbation=True` each device perturbs with its local gradient (m-sharpness
  with m = per-device batch, Foret et al. ICLR 2021).
- `make_pmap_train_step`: the same per-device step under `jax.pmap` (maintenance mode in
  JAX, kept for compatibility); state and batch carry a leading device axis.

In the per-device variants BatchNorm normalises with per-device statistics unless the
model's BatchNorm layers are built with the same `axis_name` (then with global ones); the
running statistics are averaged over devices after the clean pass.

Multi-host: after `jax.distributed.initialize`, build the mesh with `data_mesh` (the same
number of devices from every process), give `replicate` the same values in every process and
`shard_batch` each process's own rows of the global batch (`process_batch_rows`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from xsam_jax._src.base import check_static_flag
from xsam_jax.training.state import TrainState
from xsam_jax.training.steps import (
    ApplyFn,
    Batch,
    LossOfLogitsAndLabels,
    Metrics,
    TrainStep,
    apply_model,
    make_train_step,
    softmax_cross_entropy,
)

_Tree = TypeVar("_Tree")


def data_mesh(num_devices: int | None = None, *, axis_name: str = "data") -> Mesh:
    """A 1-D mesh over `num_devices` devices: the first `num_devices / P` of each of the P
    processes (on one process, its first `num_devices`).

    The axis is `Auto`: XLA propagates the batch sharding through any model, where
    `Explicit` axes would make sharded ops inside user models demand annotations.

    Args:
        num_devices: 1 <= n <= `jax.device_count()`, a multiple of `jax.process_count()`
            whose share fits every process's local devices; None uses every device.
        axis_name: the name of the data axis.

    Returns:
        The mesh.
    """
    available = jax.device_count()
    n = available if num_devices is None else num_devices
    if not isinstance(n, int) or not 1 <= n <= available:
        raise ValueError(f"num_devices must be an integer in [1, {available}], got {n!r}")
    processes = jax.process_count()
    by_process = [[d for d in jax.devices() if d.process_index == p] for p in range(processes)]
    fewest = min(len(local) for local in by_process)
    if n % processes or n // processes > fewest:
        raise ValueError(
            f"num_devices must be a multiple of the {processes} processes with at most "
            f"{fewest} devices from each, got {n}"
        )
    devices = [d for local in by_process for d in local[: n // processes]]
    return jax.make_mesh((n,), (axis_name,), axis_types=(AxisType.Auto,), devices=devices)


def replicate(tree: _Tree, mesh: Mesh) -> _Tree:
    """Places a pytree (e.g. a `TrainState`) fully replicated on `mesh`.

    Args:
        tree: the same values in every process.
        mesh: the target mesh.

    Returns:
        The pytree of global arrays with sharding `P()`.
    """
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), tree)


def shard_batch(
    batch: Mapping[str, jax.Array | np.ndarray], mesh: Mesh, *, axis_name: str = "data"
) -> Batch:
    """Builds the global batch from each process's local slice, sharded on its leading axis.

    Args:
        batch: this process's examples (the whole batch on a single host); every process
            passes the same number of them.
        mesh: the target mesh.
        axis_name: the mesh axis the batch is split over.

    Returns:
        A dict of global arrays with sharding `P(axis_name)`.
    """
    sharding = NamedSharding(mesh, P(axis_name))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def process_batch_rows(mesh: Mesh, batch_size: int, *, axis_name: str = "data") -> np.ndarray:
    """The rows of a global batch that this process's devices hold when it is split over
    `axis_name`: what this process loads and passes to `shard_batch`.

    Args:
        mesh: the mesh the batch is sharded over (e.g. `data_mesh(...)`).
        batch_size: the global batch size, divisible by the size of `axis_name`.
        axis_name: the mesh axis the batch is split over.

    Returns:
        The positions in the global batch, increasing (the order `shard_batch` expects);
        all of them on a single process.
    """
    parts = mesh.shape[axis_name]
    if batch_size % parts:
        raise ValueError(
            f"batch_size must be divisible by the {parts} devices of axis {axis_name!r}, "
            f"got {batch_size}"
        )
    sharding = NamedSharding(mesh, P(axis_name))
    held = sharding.addressable_devices_indices_map((batch_size,)).values()
    return np.unique(np.concatenate([np.arange(batch_size)[index] for index in held]))


def _one_program_per_plan(
    build: Callable[..., Callable[[TrainState, Batch], tuple[TrainState, Metrics]]],
) -> TrainStep:
    """A step `(state, batch, *, perturb=None, search=None)` running `build(perturb, search)`.

    `perturb` and `search` select a compiled program (see `make_train_step`); `jax.jit` with
    shardings takes no keyword arguments, so the choice is made here, on the host, and each
    program is built once.
    """
    programs = {}

    def step(
        state: TrainState,
        batch: Batch,
        *,
        perturb: bool | None = None,
        search: bool | None = None,
    ):
        check_static_flag("perturb", perturb)
        check_static_flag("search", search)
        if (perturb, search) not in programs:
            programs[perturb, search] = build(perturb, search)
        return programs[perturb, search](state, batch)

    return step


def make_sharded_train_step(
    model_or_graphdef: nnx.Module | nnx.GraphDef,
    tx: optax.GradientTransformationExtraArgs,
    mesh: Mesh,
    *,
    axis_name: str = "data",
    loss_of_logits_and_labels: LossOfLogitsAndLabels = softmax_cross_entropy,
    apply_fn: ApplyFn = apply_model,
    microbatches: int = 1,
) -> TrainStep:
    """The train step jitted for data parallelism with `NamedSharding`.

    Args:
        model_or_graphdef: the model (or its graphdef); see `make_train_step`.
        tx: the full Optax chain, built *without* `axis_name` (the program is global).
        mesh: the device mesh, e.g. `data_mesh()`.
        axis_name: the mesh axis the batch is split over.
        loss_of_logits_and_labels: `(logits, batch["y"]) -> scalar` mean loss.
        apply_fn: `(model, batch, key) -> logits`.
        microbatches: see `make_train_step`.

    Returns:
        The jitted step; it takes a `replicate`d state and a `shard_batch`ed batch (and the
        static keywords `perturb` and `search`, see `make_train_step`) and returns a
        replicated state and metrics.
    """
    step = make_train_step(
        model_or_graphdef,
        tx,
        loss_of_logits_and_labels=loss_of_logits_and_labels,
        apply_fn=apply_fn,
        microbatches=microbatches,
    )
    replicated = NamedSharding(mesh, P())
    return _one_program_per_plan(
        lambda perturb, search: jax.jit(
            functools.partial(step, perturb=perturb, search=search),
            in_shardings=(replicated, NamedSharding(mesh, P(axis_name))),
            out_shardings=(replicated, replicated),
        )
    )


def make_shard_map_train_step(
    model_or_graphdef: nnx.Module | nnx.GraphDef,
    tx: optax.GradientTransformationExtraArgs,
    mesh: Mesh,
    *,
    axis_name: str = "data",
    loss_of_logits_and_labels: LossOfLogitsAndLabels = softmax_cross_entropy,
    apply_fn: ApplyFn = apply_model,
    microbatches: int = 1,
) -> TrainStep:
    """The per-device train step under `jax.shard_map`, jitted.

    Each device takes its clean gradient with respect to its local view of the
    parameters (`lax.pcast(..., to='varying')`) and hands it, unaveraged, to `tx`.

    Args:
        model_or_graphdef: the model (or its graphdef); see `make_train_step`.
        tx: the full Optax chain whose sharpness-aware transformation is built with
            `axis_name=axis_name` (and `local_perturbation=True` for m-sharpness).
        mesh: the device mesh, e.g. `data_mesh()`.
        axis_name: the mesh axis the batch is split over.
        loss_of_logits_and_labels: `(logits, batch["y"]) -> scalar` mean loss.
        apply_fn: `(model, batch, key) -> logits`.
        microbatches: micro-batches per device; see `make_train_step`.

    Returns:
        The jitted step on a `replicate`d state and a `shard_batch`ed batch (and the static
        keywords `perturb` and `search`, see `make_train_step`).
    """
    step = make_train_step(
        model_or_graphdef,
        tx,
        loss_of_logits_and_labels=loss_of_logits_and_labels,
        apply_fn=apply_fn,
        microbatches=microbatches,
        axis_name=axis_name,
    )
    replicated = NamedSharding(mesh, P())
    return _one_program_per_plan(
        lambda perturb, search: jax.jit(
            jax.shard_map(
                functools.partial(step, perturb=perturb, search=search),
                mesh=mesh,
                in_specs=(P(), P(axis_name)),
                out_specs=(P(), P()),
            ),
            in_shardings=(replicated, NamedSharding(mesh, P(axis_name))),
            out_shardings=(replicated, replicated),
        )
    )


def make_pmap_train_step(
    model_or_graphdef: nnx.Module | nnx.GraphDef,
    tx: optax.GradientTransformationExtraArgs,
    *,
    axis_name: str = "batch",
    loss_of_logits_and_labels: LossOfLogitsAndLabels = softmax_cross_entropy,
    apply_fn: ApplyFn = apply_model,
    microbatches: int = 1,
) -> TrainStep:
    """The per-device train step under `jax.pmap` (compatibility path).

    Args:
        model_or_graphdef: the model (or its graphdef); see `make_train_step`.
        tx: the full Optax chain whose sharpness-aware transformation is built with
            `axis_name=axis_name` (and `local_perturbation=True` for m-sharpness).
        axis_name: the pmap axis name.
        loss_of_logits_and_labels: `(logits, batch["y"]) -> scalar` mean loss.
        apply_fn: `(model, batch, key) -> logits`.
        microbatches: micro-batches per device; see `make_train_step`.

    Returns:
        The pmapped step on a `replicate_for_pmap`ped state and a `shard_for_pmap`ped
        batch (and the keywords `perturb` and `search`, see `make_train_step`: one program
        is compiled per pair of values); outputs keep the leading device axis (see `unreplicate`).
    """
    step = make_train_step(
        model_or_graphdef,
        tx,
        loss_of_logits_and_labels=loss_of_logits_and_labels,
        apply_fn=apply_fn,
        microbatches=microbatches,
        axis_name=axis_name,
    )
    return _one_program_per_plan(
        lambda perturb, search: jax.pmap(
            functools.partial(step, perturb=perturb, search=search), axis_name=axis_name
        )
    )


def replicate_for_pmap(tree: object, num_devices: int | None = None) -> object:
    """Stacks `num_devices` copies of every leaf (default: all local devices) for pmap."""
    n = jax.local_device_count() if num_devices is None else num_devices
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), tree)


def unreplicate(tree: object) -> object:
    """The first replica of a pmapped pytree (all replicas are equal after a step)."""
    return jax.tree.map(lambda x: x[0], tree)


def shard_for_pmap(batch: Batch, num_devices: int | None = None) -> Batch:
    """Reshapes a batch `[b, ...]` to `[n, b / n, ...]`, device i taking a contiguous block.

    Args:
        batch: the local batch; n must divide its size.
        num_devices: n, default all local devices.

    Returns:
        The reshaped batch.
    """
    n = jax.local_device_count() if num_devices is None else num_devices

    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"the number of devices {n} must divide the batch size {x.shape[0]}")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree.map(split, batch)
