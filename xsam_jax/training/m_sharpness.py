"""m-sharpness on one device: per-group perturbations emulated with `jax.vmap`.

Foret et al. (ICLR 2021, "Sharpness-Aware Minimization for Efficiently Improving
Generalization", Sec. 4.1) observe that SAM generalises better when the batch is split
into groups of m examples and each group climbs with its *own* gradient, the averaged SAM
gradients forming the update ("m-sharpness"); the original data-parallel code did this
implicitly, one group per device.

Here the batch is reshaped to `[groups, m, ...]` and the ordinary train step is vmapped
over the groups with a named axis. The transformation, built with that `axis_name` and
`local_perturbation=True`, climbs from each group's local gradient and averages only its
output over the axis, exactly as it does across devices in `shard_map`/`pmap`; the base
optimizer then sees one averaged gradient. So this single-device step with group size m
equals the per-device step on m examples per device (`make_shard_map_train_step` or
`make_pmap_train_step` with `local_perturbation=True`), BatchNorm included: each group
normalises with its own batch statistics and the running statistics are the average of
the per-group updates.
"""

from __future__ import annotations

import functools

import jax
import optax
from flax import nnx

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


def _group(x: jax.Array, group_size: int) -> jax.Array:
    if x.shape[0] % group_size:
        raise ValueError(f"group_size={group_size} must divide the batch size {x.shape[0]}")
    return x.reshape(x.shape[0] // group_size, group_size, *x.shape[1:])


def make_m_sharpness_train_step(
    model_or_graphdef: nnx.Module | nnx.GraphDef,
    tx: optax.GradientTransformationExtraArgs,
    group_size: int,
    *,
    axis_name: str = "groups",
    loss_of_logits_and_labels: LossOfLogitsAndLabels = softmax_cross_entropy,
    apply_fn: ApplyFn = apply_model,
) -> TrainStep:
    """Builds a pure, jittable single-device train step with m-sharpness, m = `group_size`.

    Examples `[i * m, (i + 1) * m)` of the batch form group i. Every group computes its
    clean gradient and its own perturbation; `tx` averages the resulting sharpness-aware
    gradients (and XSAM's probe losses) over the groups before the base optimizer. All
    groups are computed at once, so memory grows with the batch, not with m.

    Args:
        model_or_graphdef: the model (or its graphdef); it is switched to train mode.
        tx: the full Optax chain whose sharpness-aware transformation is built with
            `axis_name=axis_name, local_perturbation=True`.
        group_size: m >= 1, a divisor of the batch size.
        axis_name: the name of the vmapped group axis, shared with `tx`.
        loss_of_logits_and_labels: `(logits, batch["y"]) -> scalar` mean loss.
        apply_fn: `(model, batch, key) -> logits`; every group gets the same key.

    Returns:
        The train step `(state, batch, *, perturb=None, search=None) -> (state, metrics)`;
        metrics are averaged over the groups; `perturb` and `search` as in `make_train_step`.

    Raises:
        ValueError: if `group_size` < 1 (at once), does not divide the batch size, or `tx`
            does not average over `axis_name` (when traced).
    """
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    step = make_train_step(
        model_or_graphdef,
        tx,
        loss_of_logits_and_labels=loss_of_logits_and_labels,
        apply_fn=apply_fn,
        axis_name=axis_name,
    )

    def m_sharpness_step(
        state: TrainState,
        batch: Batch,
        *,
        perturb: bool | None = None,
        search: bool | None = None,
    ) -> tuple[TrainState, Metrics]:
        groups = jax.tree.map(lambda x: _group(x, group_size), batch)
        grouped_step = jax.vmap(
            functools.partial(step, perturb=perturb, search=search),
            in_axes=(None, 0),
            out_axes=None,
            axis_name=axis_name,
        )
        try:
            return grouped_step(state, groups)
        except ValueError as error:
            # A transformation that does not average over the group axis leaves per-group
            # parameters behind, which vmap reports only as a "mapped output".
            if "out_axes is None" not in str(error):
                raise
            raise ValueError(
                f"tx must average over axis_name={axis_name!r}: build its sharpness-aware "
                f"transformation with axis_name={axis_name!r}, local_perturbation=True"
            ) from error

    return m_sharpness_step
