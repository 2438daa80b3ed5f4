"""Reductions and linear combinations over parameter pytrees, and the package's dtype rule.

The rule: arithmetic on a leaf runs in its computation dtype,
``promote_types(dtype, float32)``, i.e. float32 for bf16, f16 and f32 leaves and float64 for
float64 ones. So bf16 parameters get float32 norms and directions, and float64 parameters
are exact to float64. Reductions over a tree end in the widest of its leaves' computation
dtypes (`compute_dtype`); combinations are cast back to the dtype of a reference tree, so
updates keep the dtype of the gradients they replace and points keep the params' dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any  # the one alias of the package: any nest of arrays (params, gradients, state)


def compute_dtype(tree: PyTree) -> jnp.dtype:
    """The dtype reductions over `tree` end in: float32, or float64 if a leaf is float64."""
    return jnp.result_type(jnp.float32, *jax.tree.leaves(tree))


def _up(x: jax.Array) -> jax.Array:
    """A leaf in its computation dtype."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def upcast(tree: PyTree) -> PyTree:
    """Every leaf in its computation dtype (float32 for narrower floats)."""
    return jax.tree.map(_up, tree)


def vdot(a: PyTree, b: PyTree) -> jax.Array:
    """Global inner product sum_i <a_i, b_i> over all leaves, in the computation dtype."""
    parts = jax.tree.map(lambda x, y: jnp.vdot(_up(x), _up(y)), a, b)
    return sum(jax.tree.leaves(parts), jnp.zeros((), jnp.float32))


def norm(tree: PyTree) -> jax.Array:
    """Global L2 norm over all leaves, in the computation dtype."""
    return jnp.sqrt(vdot(tree, tree))


def combine(
    coefficients: Sequence[jax.Array | float], trees: Sequence[PyTree], like: PyTree
) -> PyTree:
    """sum_j c_j * tree_j, leaf by leaf in the computation dtype, cast to `like`'s dtypes."""

    def leaf(ref, *xs):
        acc = sum(c * _up(x) for c, x in zip(coefficients, xs, strict=True))
        return acc.astype(ref.dtype)

    return jax.tree.map(leaf, like, *trees)


def add_scaled(
    base: PyTree, coefficients: Sequence[jax.Array | float], trees: Sequence[PyTree]
) -> PyTree:
    """base + sum_j c_j * tree_j, keeping base's dtypes (a point in parameter space)."""

    def leaf(b, *xs):
        acc = _up(b) + sum(c * _up(x) for c, x in zip(coefficients, xs, strict=True))
        return acc.astype(b.dtype)

    return jax.tree.map(leaf, base, *trees)


def to_float32(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: x.astype(jnp.float32), tree)
