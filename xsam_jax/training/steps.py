"""Train and eval steps for Flax NNX models driven by a sharpness-aware Optax chain.

BatchNorm is handled the way SAM needs it:

- the clean forward/backward pass runs in train mode on the live state; it normalises with
  the batch statistics and is the *only* pass whose running-statistic updates are kept;
- the `loss_fn` handed to `tx.update` rebuilds the model from the pre-step state, also in
  train mode, for every point the transformation evaluates (ascent, final and XSAM probe
  points). Those passes therefore normalise with the batch statistics at the perturbed
  weights, as the SAM objective max_eps L_B(w + eps) requires, and whatever they write
  into the model state is thrown away. Eval mode (running averages) is never used there.

Because `loss_fn` starts from the same pre-step model state and receives the same key as
the clean pass, stochastic layers (dropout drawing from the model's `nnx.Rngs`) apply the
same mask at every point of one step, so `loss_fn` is a deterministic function of the
parameters, which the ascent and the XSAM line search rely on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax

from xsam_jax.training.accumulation import Objective, accumulate
from xsam_jax.training.state import TrainState

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
LossOfLogitsAndLabels = Callable[[jax.Array, jax.Array], jax.Array]
ApplyFn = Callable[[nnx.Module, Batch, jax.Array], jax.Array]
TrainStep = Callable[..., tuple[TrainState, Metrics]]
EvalStep = Callable[[TrainState, Batch], Metrics]


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer class labels.

    Args:
        logits: `[batch, ..., classes]` scores.
        labels: `[batch, ...]` integer class ids.

    Returns:
        The scalar mean loss over every labelled position.
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def apply_model(model: nnx.Module, batch: Batch, key: jax.Array) -> jax.Array:
    """Default `apply_fn`: `model(batch["x"])`.

    Args:
        model: the NNX model, already put in train or eval mode by the step.
        batch: a dict with at least `"x"`.
        key: the step's PRNG key, unused here because NNX models draw dropout masks from
            their own `nnx.Rngs` streams (kept in `TrainState.model_state`).

    Returns:
        The model's logits.
    """
    del key
    return model(batch["x"])


def _as_graphdef(model_or_graphdef: nnx.Module | nnx.GraphDef) -> nnx.GraphDef:
    """The static structure of an NNX model (or the graphdef itself)."""
    if isinstance(model_or_graphdef, nnx.GraphDef):
        return model_or_graphdef
    if isinstance(model_or_graphdef, nnx.Module):
        return nnx.graphdef(model_or_graphdef)
    raise TypeError(
        "model_or_graphdef must be an nnx.Module or an nnx.GraphDef, got "
        f"{type(model_or_graphdef).__name__}"
    )


def _mode(model: nnx.Module, *, train: bool) -> nnx.Module:
    # Models without BatchNorm or Dropout simply have nothing to switch.
    return nnx.view(
        model,
        use_running_average=not train,
        deterministic=not train,
        raise_if_not_found=False,
    )


def _metrics(loss: jax.Array, logits: jax.Array, labels: jax.Array) -> Metrics:
    metrics = {"loss": loss}
    if jnp.issubdtype(labels.dtype, jnp.integer) and logits.shape[:-1] == labels.shape:
        metrics["accuracy"] = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return metrics


def _make_objective(
    graphdef: nnx.GraphDef,
    loss_of_logits_and_labels: LossOfLogitsAndLabels,
    apply_fn: ApplyFn,
) -> Objective:
    """The train-mode loss as a pure function of the parameters and the model state.

    Args:
        graphdef: the model's static structure.
        loss_of_logits_and_labels: `(logits, batch["y"]) -> scalar` mean loss.
        apply_fn: `(model, batch, key) -> logits`.

    Returns:
        `objective(params, model_state, batch, key) -> (loss, (new_model_state, metrics))`,
        where `new_model_state` holds the running statistics updated by this pass.
    """

    def objective(params, model_state, batch, key):
        model = _mode(nnx.merge(graphdef, params, model_state), train=True)
        logits = apply_fn(model, batch, key)
        loss = loss_of_logits_and_labels(logits, batch["y"])
        new_model_state = nnx.as_pure(nnx.split(model, nnx.Param, ...)[2])
        return loss, (new_model_state, _metrics(loss, logits, batch["y"]))

    return objective


def _local_view(tree: object, axis_name: str | None) -> object:
    """`tree` as a device-varying value when `axis_name` is a `shard_map`/`pmap` mesh axis.

    Inside `shard_map` the gradient with respect to a replicated (device-invariant) value
    is the *sum* of the per-device gradients; casting to varying first yields the local
    gradient. `vmap` axes are not mesh axes and their gradients are per-member already.
    """
    if axis_name is None or axis_name not in jax.sharding.get_abstract_mesh().manual_axes:
        return tree
    return jax.tree.map(lambda x: lax.pcast(x, axis_name, to="varying"), tree)


def _mean_floating(tree: object, axis_name: str) -> object:
    # Running statistics are the floating-point model state; RNG keys and counters advance
    # identically on every replica and must not be averaged.
    def leaf(x):
        return lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.inexact) else x

    return jax.tree.map(leaf, tree)


def make_train_step(
    model_or_graphdef: nnx.Module | nnx.GraphDef,
    tx: optax.GradientTransformationExtraArgs,
    *,
    loss_of_logits_and_labels: LossOfLogitsAndLabels = softmax_cross_entropy,
    apply_fn: ApplyFn = apply_model,
    microbatches: int = 1,
    axis_name: str | None = None,
) -> TrainStep:
    """Builds a pure, jittable train step `(state, batch) -> (state, metrics)`.

    One step: the clean pass (train mode) gives the loss, the clean gradient g0 and the
    new running statistics; `tx.update(g0, opt_state, params, loss_fn=...)` turns g0 into
    the update, where `loss_fn` is the train-mode loss on the same batch with batch
    statistics and discarded state updates (see the module docstring); then the updates
    are applied and `step` is incremented.

    With `axis_name` the step is meant to run inside `jax.pmap`, `jax.shard_map` or
    `jax.vmap` over that axis, each member seeing its share of the global batch. It passes
    the member's *local* g0 to `tx` (which must be built with the same `axis_name`: it
    averages g0 and its gradients, or with `local_perturbation=True` only its output), and
    averages the running statistics and the metrics over the axis, so every replica ends
    with the same state. BatchNorm inside the mapped step normalises with per-member batch
    statistics unless the model's BatchNorm layers are built with the same `axis_name`.

    Args:
        model_or_graphdef: the model (or its graphdef) whose structure the step uses; it
            is switched to train mode (`use_running_average=False`, `deterministic=False`).
        tx: the full Optax chain, sharpness-aware transformation first.
        loss_of_logits_and_labels: `(logits, batch["y"]) -> scalar` mean loss.
        apply_fn: `(model, batch, key) -> logits`; `key` is `fold_in(state.rng, step)`.
        microbatches: k >= 1. With k > 1 the batch is cut into k micro-batches and every
            loss (clean and inside `tx`) is the mean of a rematerialised scan over them:
            the result is the full-batch SAM step at the activation memory of one
            micro-batch (see `xsam_jax.training.accumulation`).
        axis_name: the mapped axis, or None for a single device or jit-with-sharding.

    Returns:
        The train step `(state, batch, *, perturb=None, search=None) -> (state, metrics)`.
        Metrics are `loss` and, for integer labels, `accuracy`, both of the clean pass.
        `perturb` and `search` are handed to `tx.update`: Python bools saying whether this
        step's ρ is positive and whether XSAM searches on it, so that a schedule-gated method
        compiles its ascent, and XSAM its search, outside a conditional (see
        `xsam_jax.perturbed_steps` and `xsam_jax.search_steps`); jit the step with
        `static_argnames=("perturb", "search")` to use them.

    Raises:
        TypeError: if `model_or_graphdef` is neither an `nnx.Module` nor an `nnx.GraphDef`.
        ValueError: if `microbatches` < 1 (at once) or does not divide the batch size
            (when traced).
    """
    objective = _make_objective(
        _as_graphdef(model_or_graphdef), loss_of_logits_and_labels, apply_fn
    )
    if microbatches != 1:
        objective = accumulate(objective, microbatches)

    def train_step(
        state: TrainState,
        batch: Batch,
        *,
        perturb: bool | None = None,
        search: bool | None = None,
    ) -> tuple[TrainState, Metrics]:
        key = jax.random.fold_in(state.rng, state.step)

        def loss_and_aux(params):
            return objective(params, state.model_state, batch, key)

        (_, (model_state, metrics)), grads = jax.value_and_grad(loss_and_aux, has_aux=True)(
            _local_view(state.params, axis_name)
        )
        updates, opt_state = tx.update(
            grads,
            state.opt_state,
            state.params,
            loss_fn=lambda p: loss_and_aux(p)[0],
            perturb=perturb,
            search=search,
        )
        if axis_name is not None:
            model_state = _mean_floating(model_state, axis_name)
            metrics = lax.pmean(metrics, axis_name)
        new_state = state.replace(
            params=optax.apply_updates(state.params, updates),
            model_state=model_state,
            opt_state=opt_state,
            step=state.step + 1,
        )
        return new_state, metrics

    return train_step


def make_eval_step(
    model_or_graphdef: nnx.Module | nnx.GraphDef,
    *,
    loss_of_logits_and_labels: LossOfLogitsAndLabels = softmax_cross_entropy,
    apply_fn: ApplyFn = apply_model,
) -> EvalStep:
    """Builds a pure, jittable eval step `(state, batch) -> metrics`.

    The model runs in eval mode: BatchNorm normalises with its running averages and
    dropout is off; the state is not changed.

    Args:
        model_or_graphdef: the model (or its graphdef); it is switched to eval mode.
        loss_of_logits_and_labels: `(logits, batch["y"]) -> scalar` mean loss.
        apply_fn: `(model, batch, key) -> logits`.

    Returns:
        The eval step; metrics are `loss` and, for integer labels, `accuracy`.
    """
    graphdef = _as_graphdef(model_or_graphdef)

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        model = _mode(nnx.merge(graphdef, state.params, state.model_state), train=False)
        logits = apply_fn(model, batch, jax.random.fold_in(state.rng, state.step))
        return _metrics(loss_of_logits_and_labels(logits, batch["y"]), logits, batch["y"])

    return eval_step
