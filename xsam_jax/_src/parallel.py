"""Where gradients are averaged across data-parallel replicas.

Global perturbation (default): the incoming clean gradient and every gradient the
transformation takes are averaged over `axis_name`, so each replica climbs along the
global-batch gradient and the result is that of single-device training on the global
batch. Local perturbation (m-sharpness, Foret et al. 2021, Sec. 4.1): each replica climbs
from its own local gradients; only the final direction (and XSAM's probe losses) are
averaged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from jax import lax


def _manual_axes() -> frozenset:
    """Axes of the enclosing `shard_map` (pmap is one too); empty under `vmap` or plain jit."""
    return frozenset(jax.sharding.get_abstract_mesh().manual_axes)


def _varying_axes(x: jax.Array) -> frozenset:
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    if manual is not None:
        return manual.varying
    return getattr(aval, "vma", frozenset())


@dataclasses.dataclass(frozen=True)
class Averaging:
    """Averaging policy over a mapped axis (`pmap` / `shard_map`); no-op when axis_name is None."""

    axis_name: str | None = None
    local_perturbation: bool = False

    def mean(self, tree: Any) -> Any:
        return tree if self.axis_name is None else lax.pmean(tree, self.axis_name)

    def incoming(self, grads: Any) -> Any:
        """The clean gradient the ascent starts from."""
        return grads if self.local_perturbation else self.mean(grads)

    def shared(self, incoming: Any) -> Any:
        """The replica average of what `incoming` returned: the global-batch clean gradient."""
        return self.mean(incoming) if self.local_perturbation else incoming

    def output(self, direction: Any) -> Any:
        """The direction handed to the base optimizer: identical on every replica."""
        return self.mean(direction) if self.local_perturbation else direction

    def gradient(self, loss_fn: Callable[[Any], jax.Array]) -> Callable[[Any], Any]:
        """p -> gradient of loss_fn at p, local or averaged according to the policy.

        Inside `shard_map`, differentiating with respect to a replicated (invariant) value
        returns the *sum* over replicas; casting the point to device-varying first yields
        the local gradient, which we then average ourselves. Under `vmap` with a named axis
        (groups of one device's batch) values are per-group already and no cast applies.
        """

        def to_varying(x):
            if self.axis_name not in _manual_axes() or self.axis_name in _varying_axes(x):
                return x
            return lax.pcast(x, self.axis_name, to="varying")

        def grad(p):
            if self.axis_name is not None:
                p = jax.tree.map(to_varying, p)
            g = jax.grad(loss_fn)(p)
            return g if self.local_perturbation else self.mean(g)

        return grad
