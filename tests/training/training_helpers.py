"""A tiny NNX model and hand-written reference training math for the training tests.

The references re-implement the model's forward pass (Linear -> BatchNorm -> ReLU ->
Linear) in plain JAX on nested dicts, with SAM, BatchNorm statistics and SGD with momentum
written out, so the tests never compare the library against itself. Subprocess scripts
import this module too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree

IN_FEATURES, HIDDEN, CLASSES = 6, 8, 3
BN_MOMENTUM, BN_EPSILON = 0.99, 1e-5


class TinyMLP(nnx.Module):
    """Linear -> BatchNorm (optional) -> ReLU -> Linear."""

    def __init__(self, *, rngs: nnx.Rngs, batch_norm: bool = True, bn_axis_name=None):
        self.l1 = nnx.Linear(IN_FEATURES, HIDDEN, rngs=rngs)
        self.bn = (
            nnx.BatchNorm(
                HIDDEN, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, axis_name=bn_axis_name, rngs=rngs
            )
            if batch_norm
            else None
        )
        self.l2 = nnx.Linear(HIDDEN, CLASSES, rngs=rngs)

    def __call__(self, x):
        h = self.l1(x)
        if self.bn is not None:
            h = self.bn(h)
        return self.l2(nnx.relu(h))


def make_model(seed: int = 0, **kwargs) -> TinyMLP:
    model = TinyMLP(rngs=nnx.Rngs(seed), **kwargs)
    # Non-trivial BN affine parameters and running statistics make the tests discriminating.
    if model.bn is not None:
        key = jax.random.key(seed + 100)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        model.bn.scale[...] = 1.0 + 0.3 * jax.random.normal(k1, (HIDDEN,))
        model.bn.bias[...] = 0.2 * jax.random.normal(k2, (HIDDEN,))
        model.bn.mean[...] = 0.5 * jax.random.normal(k3, (HIDDEN,))
        model.bn.var[...] = 0.5 + jax.random.uniform(k4, (HIDDEN,))
    return model


def make_batch(seed: int, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(size, IN_FEATURES)).astype(np.float32),
        "y": rng.integers(0, CLASSES, size=size).astype(np.int32),
    }


def as_dicts(state) -> tuple[dict, dict]:
    """(params, model_state) of a TrainState as nested dicts of arrays."""
    return nnx.to_pure_dict(state.params), nnx.to_pure_dict(state.model_state)


def ref_logits(params: dict, x, stats: dict | None = None):
    """The model's forward pass; BatchNorm uses the batch statistics when `stats` is None.

    Returns (logits, (batch mean, batch var) or None).
    """
    h = x @ params["l1"]["kernel"] + params["l1"]["bias"]
    batch_stats = None
    if "bn" in params:
        if stats is None:
            mean = h.mean(0)
            var = jnp.maximum((h * h).mean(0) - mean * mean, 0.0)
            batch_stats = (mean, var)
        else:
            mean, var = stats["bn"]["mean"], stats["bn"]["var"]
        h = (h - mean) / jnp.sqrt(var + BN_EPSILON) * params["bn"]["scale"] + params["bn"]["bias"]
    logits = jax.nn.relu(h) @ params["l2"]["kernel"] + params["l2"]["bias"]
    return logits, batch_stats


def ref_cross_entropy(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def ref_train_loss(params: dict, x, y):
    """Train-mode loss: BatchNorm with the statistics of this batch."""
    return ref_cross_entropy(ref_logits(params, x)[0], y)


def ref_updated_stats(stats: dict, params: dict, x) -> dict:
    """Running statistics after one train-mode forward pass on x."""
    if "bn" not in stats:
        return stats
    mean, var = ref_logits(params, x)[1]
    old = stats["bn"]
    return {
        "bn": {
            "mean": BN_MOMENTUM * old["mean"] + (1 - BN_MOMENTUM) * mean,
            "var": BN_MOMENTUM * old["var"] + (1 - BN_MOMENTUM) * var,
        }
    }


def ref_sam_gradient(loss, params: dict, rho: float):
    """grad loss(w + rho * g / ||g||), g = grad loss(w) (Foret et al. 2021, Eq. 2)."""
    g0 = jax.grad(loss)(params)
    norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(g0)))
    perturbed = jax.tree.map(lambda w, g: w + rho * g / norm, params, g0)
    return jax.grad(loss)(perturbed)


def ref_sgd_momentum(params: dict, trace: dict | None, grads: dict, lr: float, momentum: float):
    """optax.sgd(lr, momentum): trace = g + momentum * trace; w -= lr * trace."""
    trace = grads if trace is None else jax.tree.map(lambda g, t: g + momentum * t, grads, trace)
    return jax.tree.map(lambda w, t: w - lr * t, params, trace), trace


def mean_trees(trees):
    return jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)


def assert_trees_close(actual, expected, *, rtol=2e-5, atol=2e-6):
    flat_a, tree_a = jax.tree.flatten_with_path(actual)
    flat_e, tree_e = jax.tree.flatten_with_path(expected)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_e], (tree_a, tree_e)
    for (path, a), (_, e) in zip(flat_a, flat_e, strict=True):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(e), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path)
        )


def max_abs_difference(actual, expected) -> float:
    diffs = jax.tree.map(
        lambda a, e: float(np.max(np.abs(np.asarray(a) - np.asarray(e)))), actual, expected
    )
    return max(jax.tree.leaves(diffs))


def ref_m_sharpness_gradient(params: dict, stats: dict, x, y, group_size: int, rho: float):
    """Per-group SAM (each group perturbs with its own gradient), averaged over the groups.

    Returns (averaged SAM gradient, running statistics averaged over the groups' updates).
    """
    starts = range(0, x.shape[0], group_size)
    grads, new_stats = [], []
    for i in starts:
        xg, yg = x[i : i + group_size], y[i : i + group_size]
        grads.append(
            ref_sam_gradient(lambda p, xg=xg, yg=yg: ref_train_loss(p, xg, yg), params, rho)
        )
        new_stats.append(ref_updated_stats(stats, params, xg))
    return mean_trees(grads), mean_trees(new_stats)


def _slerp(v0, v1, alpha):
    psi = jnp.arccos(jnp.clip(v0 @ v1, -1.0, 1.0))
    return (jnp.sin((1 - alpha) * psi) * v0 + jnp.sin(alpha * psi) * v1) / jnp.sin(psi)


def ref_xsam_m_sharpness(params: dict, stats: dict, x, y, group_size: int, xsam: dict):
    """XSAM with m-sharpness: each group climbs one step of length rho from its own gradient
    and probes its own plane; the probe losses are averaged over the groups before the first
    argmax over `grid` (Chen & Zhou 2026, with Foret et al.'s per-group perturbations).

    `xsam` holds rho, rho_max, grid, alpha (α* in use) and search (whether to search).
    Returns (direction averaged over the groups, running statistics averaged over the groups,
    α*, the mean probe losses, cos ψ averaged over the groups, each group's own argmax).
    """
    flat, unravel = ravel_pytree(params)
    grid, rho, rho_max = xsam["grid"], xsam["rho"], xsam["rho_max"]
    planes, losses, new_stats = [], [], []
    for i in range(0, x.shape[0], group_size):
        xg, yg = x[i : i + group_size], y[i : i + group_size]

        def loss(w, xg=xg, yg=yg):
            return ref_train_loss(unravel(w), xg, yg)

        g0 = jax.grad(loss)(flat)
        chord = rho * g0 / jnp.linalg.norm(g0)
        g_k = jax.grad(loss)(flat + chord)
        v0, v1 = chord / jnp.linalg.norm(chord), g_k / jnp.linalg.norm(g_k)
        planes.append((v0, v1, jnp.linalg.norm(g_k)))
        losses.append(np.array([float(loss(flat + rho_max * _slerp(v0, v1, a))) for a in grid]))
        new_stats.append(ref_updated_stats(stats, params, xg))
    mean_losses = np.mean(losses, axis=0)
    alpha = grid[int(np.argmax(mean_losses))] if xsam["search"] else xsam["alpha"]
    direction = np.mean([n * _slerp(v0, v1, alpha) for v0, v1, n in planes], axis=0)
    cos_psi = np.mean([float(v0 @ v1) for v0, v1, _ in planes])
    own = [grid[int(np.argmax(group_losses))] for group_losses in losses]
    return unravel(direction), mean_trees(new_stats), alpha, mean_losses, cos_psi, own


def ref_train(batches, *, rho: float, lr: float, momentum: float, group_size: int | None = None):
    """Hand-written SAM + SGD with momentum from `make_model()`'s initial state.

    `group_size=None` perturbs along the global-batch gradient; otherwise each group of
    `group_size` consecutive examples perturbs with its own gradient (m-sharpness).
    Returns the final (params, running statistics).
    """
    model = make_model()
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    trace = None
    for b in batches:
        if group_size is None:
            grad = ref_sam_gradient(lambda p, b=b: ref_train_loss(p, b["x"], b["y"]), params, rho)
            stats = ref_updated_stats(stats, params, b["x"])
        else:
            grad, stats = ref_m_sharpness_gradient(params, stats, b["x"], b["y"], group_size, rho)
        params, trace = ref_sgd_momentum(params, trace, grad, lr, momentum)
    return params, stats
