"""Parameter masks built from a model's structure, for a method's ``perturbation_mask``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

NORMALIZATION_LAYERS = (nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm)


def _key(entry: Any) -> Any:
    """The name or index a pytree path entry stands for (DictKey, SequenceKey, GetAttrKey)."""
    for attribute in ("key", "idx", "name"):
        if hasattr(entry, attribute):
            return getattr(entry, attribute)
    return entry


def normalization_mask(model: nnx.Module) -> Callable[[Any], Any]:
    """The SAM-ON mask of an NNX model: its normalisation layers' parameters.

    SAM-ON (Mueller et al. 2023) perturbs only the parameters of the normalisation layers
    (BatchNorm, LayerNorm, GroupNorm, RMSNorm: their scales and biases) and reaches SAM's
    generalisation or better at a fraction of the perturbed weights. Pass the result as any
    method's ``perturbation_mask``::

        tx = optax.chain(xs.sam(0.5, perturbation_mask=training.normalization_mask(model)),
                         optax.sgd(lr, momentum=0.9))
        state = training.TrainState.create(model, tx, rng=0)

    (with fewer weights moving, SAM-ON wants larger radii than SAM: the authors' example runs
    the ASAM ascent with ρ = 10).

    Args:
      model: the NNX model whose parameters the transformation will see.

    Returns:
      A callable params -> pytree of bools, True on the leaves that belong to a
      normalisation layer; it reads the params' key paths, so it fits `TrainState.params`
      and the ``nnx.Param`` state (or its pure dict) of the same model.
    """
    layers = {
        tuple(path)
        for path, node in nnx.iter_graph(model)
        if isinstance(node, NORMALIZATION_LAYERS)
    }

    def in_a_layer(path: tuple, _: Any) -> bool:
        keys = tuple(_key(entry) for entry in path)
        return any(keys[: len(layer)] == layer for layer in layers)

    return lambda params: jax.tree_util.tree_map_with_path(in_a_layer, params)
