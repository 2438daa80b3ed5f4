"""Reductions and linear combinations over parameter pytrees.

Reductions accumulate in float32 whatever the leaf dtype, so bf16 parameters get
accurate norms; combinations are formed in float32 and cast back to the dtype of a
reference tree, so updates keep the dtype of the gradients they replace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any  # the one alias of the package: any nest of arrays (params, gradients, state)


def vdot(a: PyTree, b: PyTree) -> jax.Array:
    """Global inner product sum_i <a_i, b_i> over all leaves, in float32."""
    parts = jax.tree.map(lambda x, y: jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32)), a, b)
    return sum(jax.tree.leaves(parts), jnp.zeros((), jnp.float32))


def norm(tree: PyTree) -> jax.Array:
    """Global L2 norm over all leaves, in float32."""
    return jnp.sqrt(vdot(tree, tree))


def combine(
    coefficients: Sequence[jax.Array | float], trees: Sequence[PyTree], like: PyTree
) -> PyTree:
    """sum_j c_j * tree_j, leaf by leaf, computed in float32 and cast to `like`'s dtypes."""

    def leaf(ref, *xs):
        acc = sum(c * x.astype(jnp.float32) for c, x in zip(coefficients, xs, strict=True))
        return acc.astype(ref.dtype)

    return jax.tree.map(leaf, like, *trees)


def add_scaled(
    base: PyTree, coefficients: Sequence[jax.Array | float], trees: Sequence[PyTree]
) -> PyTree:
    """base + sum_j c_j * tree_j, keeping base's dtypes (a point in parameter space)."""

    def leaf(b, *xs):
        acc = b.astype(jnp.float32) + sum(
            c * x.astype(jnp.float32) for c, x in zip(coefficients, xs, strict=True)
        )
        return acc.astype(b.dtype)

    return jax.tree.map(leaf, base, *trees)


def to_float32(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: x.astype(jnp.float32), tree)
