"""Gradient accumulation over micro-batches, and what it means for SAM.

A SAM step on a batch B climbs from the gradient of L_B, so "accumulating" can mean two
different things, and this library offers both:

1. **Full-batch SAM at micro-batch memory** (`make_train_step(..., microbatches=k)`, this
   module). Every loss of the step, the clean one and each one the transformation
   differentiates through `loss_fn`, is the mean over the k micro-batches, computed by a
   `lax.scan` whose body is rematerialised (`jax.checkpoint`): the backward pass keeps the
   activations of one micro-batch only. The perturbation is the single global one of the
   whole batch (m = batch size), so the update equals that of the un-accumulated step, up
   to float rounding. BatchNorm normalises each micro-batch with its own statistics (as k
   devices would), and the clean pass updates the running statistics once per
   micro-batch, in order, like k consecutive forward passes.
2. **SAM per micro-batch, then average** (m = micro-batch size): chain the sharpness-aware
   transformation *outside* `optax.MultiSteps`,
   `optax.chain(xs.sam(rho), optax.MultiSteps(base, every_k_schedule=k))`, and call the
   ordinary train step once per micro-batch. Each call perturbs with its own micro-batch
   gradient; `MultiSteps` averages the k SAM gradients and applies the base optimizer on
   every k-th call (the transformation's own `count` then advances per micro-batch).
   `xsam_jax.training.m_sharpness` computes the same average in one step, in parallel.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

Objective = Callable[..., tuple[jax.Array, tuple[object, dict[str, jax.Array]]]]


def _split(x: jax.Array, microbatches: int) -> jax.Array:
    if x.shape[0] % microbatches:
        raise ValueError(f"microbatches={microbatches} must divide the batch size {x.shape[0]}")
    # Micro-batch j takes examples j, j + k, j + 2k, ...: under data parallelism (contiguous
    # blocks per device) every micro-batch is then spread over all devices.
    return jnp.swapaxes(x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]), 0, 1)


def accumulate(objective: Objective, microbatches: int) -> Objective:
    """The mean of `objective` over micro-batches, by a rematerialised scan.

    Args:
        objective: `(params, model_state, batch, key) -> (loss, (model_state, metrics))`.
        microbatches: k >= 1, a divisor of the batch size. Micro-batch j holds examples
            j, j + k, j + 2k, ...; it gets the key `fold_in(key, j)`.

    Returns:
        An objective with the same signature whose loss and metrics are the means over the
        micro-batches and whose model state has been threaded through them in order.

    Raises:
        ValueError: if `microbatches` < 1 (at once) or does not divide the batch size
            (when traced).
    """
    if not isinstance(microbatches, int) or microbatches < 1:
        raise ValueError(f"microbatches must be an integer >= 1, got {microbatches!r}")
    micro_objective = jax.checkpoint(objective)

    def accumulated(params, model_state, batch, key):
        micro = jax.tree.map(lambda x: _split(x, microbatches), batch)

        def body(model_state, inputs):
            index, micro_batch = inputs
            loss, (model_state, metrics) = micro_objective(
                params, model_state, micro_batch, jax.random.fold_in(key, index)
            )
            return model_state, (loss, metrics)

        model_state, (losses, metrics) = lax.scan(
            body, model_state, (jnp.arange(microbatches), micro)
        )
        return losses.mean(), (model_state, jax.tree.map(lambda m: m.mean(0), metrics))

    return accumulated
