"""A functional train state for Flax NNX models.

The model is split once into its static structure (the `GraphDef`, kept out of the pytree
so jit never traces it) and two pure states: the trainable `nnx.Param` leaves and the rest
(BatchNorm running statistics, RNG stream counters, ...). Keeping the state pure (plain
arrays, no `nnx.Variable` wrappers) is what lets the train step rebuild the model inside
`jax.grad` and under any transformation without trace-level errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


@struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree.

    Attributes:
        graphdef: the model's static structure (not a pytree leaf).
        params: pure `nnx.State` of the `nnx.Param` leaves; the optimizer acts on it.
        model_state: pure `nnx.State` of every other variable (BatchNorm `mean`/`var`,
            RNG stream keys and counts, ...).
        opt_state: the state of the Optax transformation (SAM/XSAM state included, e.g.
            XSAM's alpha*).
        step: int32 scalar, the number of train steps taken.
        rng: a typed PRNG key; step `t` hands `jax.random.fold_in(rng, t)` to `apply_fn`.
    """

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    params: nnx.State
    model_state: nnx.State
    opt_state: optax.OptState
    step: jax.Array
    rng: jax.Array

    if TYPE_CHECKING:  # added at run time by flax.struct.dataclass; declared for type checkers

        def replace(self, **updates: Any) -> TrainState: ...

    @classmethod
    def create(
        cls, model: nnx.Module, tx: optax.GradientTransformation, *, rng: jax.Array | int
    ) -> TrainState:
        """Splits `model` and initialises `tx` on its parameters.

        Args:
            model: the NNX model; its current variable values become the initial state.
            tx: the full optimizer, e.g. `optax.chain(xs.sam(0.05), optax.sgd(0.1))`.
            rng: a typed PRNG key (`jax.random.key`) or an integer seed for one.

        Returns:
            A `TrainState` at step 0.
        """
        graphdef, params, model_state = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
        params = nnx.as_pure(params)
        key = jax.random.key(rng) if isinstance(rng, int) else rng
        return cls(
            graphdef=graphdef,
            params=params,
            model_state=nnx.as_pure(model_state),
            opt_state=tx.init(params),
            step=jnp.zeros((), jnp.int32),
            rng=key,
        )

    def to_model(self) -> nnx.Module:
        """A live NNX module holding the current variables, in the mode it was created in."""
        return nnx.merge(self.graphdef, self.params, self.model_state)
