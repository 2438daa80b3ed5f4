"""The transformations composed with Optax, Flax NNX and JAX transformations.

Every check compares against a reference written here from the formulas (NumPy float64 on a
hand-differentiated L2-regularised logistic regression, or on jax.grad of a hand-written
forward pass for the NNX model), never the library against itself. Verified:

1. ``optax.chain(method, ...)`` accepts and ignores unknown extra arguments (``value=``,
   ``grad=``, ``foo=``), for every method; chaining SAM with a transformation that needs an
   extra argument of its own (``optax.polyak_sgd``, which needs ``value``) works alongside
   ``loss_fn``.
2. ``optax.inject_hyperparams``: ρ lives in ``state.hyperparams['rho']``; changing it between
   steps gives the step of the new ρ; ρ = 0 gives the base optimizer's update bit for bit;
   ``ascent_steps=2`` without ``static_args`` is a clear ValueError, and works with
   ``static_args=('ascent_steps',)``; the factories' defaults work under ``jax.jit``.
3. ``optax.MultiSteps`` (see `test_sam_outside_multisteps_perturbs_each_microbatch` for the
   right order and `test_sam_inside_multisteps_descends_on_last_microbatch_only` for the
   wrong one).
4. Flax NNX: ``nnx.Optimizer(model, tx, wrt=nnx.Param).update(model, grads, loss_fn=...)``
   with a ``loss_fn`` that rebuilds the model with ``nnx.merge(graphdef, params,
   nnx.as_pure(rest))`` does one SAM step, and BatchNorm running statistics are changed by the
   clean pass only.
5. ``jax.jit`` of the whole step and dtypes: bf16 params/grads give bf16 updates and float32
   give float32 for every method; ``update``'s output state has the same tree structure,
   shapes and dtypes as ``init``'s, so a ``lax.scan`` over steps works (3 steps vs reference).
6. ``optax.contrib.sam`` in opaque mode and ``chain(xs.sam(ρ), sgd(lr))`` follow the same
   trajectory, both equal to the mathematical SAM step w − lr·∇L(w + ρ g/‖g‖).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import lax

import xsam_jax as xs

LR = 0.3
LAMS = np.array([3.0, 0.1, 1.0, 0.01])  # anisotropic L2 term: the gradient turns on ascent
N_FEAT, BATCH, N_BATCHES = 4, 8, 4

_rng = np.random.default_rng(42)
XS = _rng.normal(size=(N_BATCHES, BATCH, N_FEAT))
YS = np.sign(_rng.normal(size=(N_BATCHES, BATCH)) + 0.3 * XS[..., 0])
V0 = _rng.normal(size=N_FEAT + 1)  # [kernel (4), bias (1)]


# ------------------------------------------------------------------ NumPy reference


def loss_np(v, x, y):
    margin = x @ v[:N_FEAT] + v[N_FEAT]
    return float(np.mean(np.logaddexp(0.0, -y * margin)) + 0.5 * v[:N_FEAT] @ (LAMS * v[:N_FEAT]))


def grad_np(v, x, y):
    margin = x @ v[:N_FEAT] + v[N_FEAT]
    dm = -y / (1.0 + np.exp(y * margin)) / len(y)  # d loss / d margin
    return np.concatenate([x.T @ dm + LAMS * v[:N_FEAT], [dm.sum()]])


def sam_grad_np(v, x, y, rho, scale=None):
    """(g_p, g0): gradient at v + ε, ε = ρ g/‖g‖ (or ASAM's ρ T² g/‖T g‖ with T = scale)."""
    g0 = grad_np(v, x, y)
    if scale is None:
        eps = rho * g0 / np.linalg.norm(g0)
    else:
        eps = rho * scale**2 * g0 / np.linalg.norm(scale * g0)
    return grad_np(v + eps, x, y), g0


def slerp_np(v0, v1, alpha):
    psi = np.arccos(np.clip(v0 @ v1, -1.0, 1.0))
    return (np.sin((1 - alpha) * psi) * v0 + np.sin(alpha * psi) * v1) / np.sin(psi)


XSAM_GRID = np.arange(9) * 0.5  # alpha_max=4.0, alpha_step=0.5: interior maxima here

METHODS = {
    "sam": lambda: xs.sam(0.1),
    "asam": lambda: xs.asam(0.5, eta=0.01),
    "gsam": lambda: xs.gsam(0.1, alpha=0.3),
    "wsam": lambda: xs.wsam(0.1, gamma=0.7),
    "xsam": lambda: xs.xsam(0.3, 1.0, alpha_max=4.0, alpha_step=0.5),
}


def direction_np(name, v, x, y, rho=None, rho_max=1.0, k=1, grid=XSAM_GRID):
    """The method's output direction at v (float64), written from the papers."""
    if name == "asam":
        g_p, g0 = sam_grad_np(v, x, y, 0.5, scale=np.abs(v) + 0.01)
        return g_p
    if rho is None:
        rho = 0.3 if name == "xsam" else 0.1
    if name == "sam" and k > 1:
        chord = np.zeros_like(v)
        for _ in range(k):
            g = grad_np(v + chord, x, y)
            chord = chord + rho / k * g / np.linalg.norm(g)
        return grad_np(v + chord, x, y)
    g_p, g0 = sam_grad_np(v, x, y, rho)
    if name == "sam":
        return g_p
    if name == "gsam":
        return g_p - 0.3 * (g0 - (g0 @ g_p) / (g_p @ g_p) * g_p)
    if name == "wsam":
        return (1 - 2 * 0.7) / (1 - 0.7) * g0 + 0.7 / (1 - 0.7) * g_p
    if name == "xsam":  # one ascent step: v0 = g0/‖g0‖; search every step
        v0, v1 = g0 / np.linalg.norm(g0), g_p / np.linalg.norm(g_p)
        losses = [loss_np(v + rho_max * slerp_np(v0, v1, a), x, y) for a in grid]
        alpha = grid[int(np.argmax(losses))]
        return np.linalg.norm(g_p) * slerp_np(v0, v1, alpha)
    raise ValueError(name)


# ----------------------------------------------------------------------- JAX side


def to_tree(v, dtype=jnp.float32):
    return {"kernel": jnp.asarray(v[:N_FEAT], dtype), "bias": jnp.asarray(v[N_FEAT:], dtype)}


def to_vec(tree):
    return np.concatenate(
        [np.asarray(tree["kernel"], np.float64), np.asarray(tree["bias"], np.float64)]
    )


def loss_jax(params, x, y):
    w = params["kernel"].astype(jnp.float32)
    b = params["bias"].astype(jnp.float32)
    margin = jnp.asarray(x, jnp.float32) @ w + b[0]
    data = jnp.mean(jnp.logaddexp(0.0, -jnp.asarray(y, jnp.float32) * margin))
    return data + 0.5 * w @ (jnp.asarray(LAMS, jnp.float32) * w)


def batch_loss(i):
    return lambda p: loss_jax(p, XS[i], YS[i])


def assert_vec_close(actual, expected, rtol):
    """Relative error measured against the reference's norm."""
    err = np.linalg.norm(np.asarray(actual) - expected) / np.linalg.norm(expected)
    assert err < rtol, f"relative error {err:.3g} >= {rtol}\n{actual}\n{expected}"


# ------------------------------------------------------------------- 1. extra args


@pytest.mark.parametrize("name", list(METHODS))
def test_unknown_extra_args_are_ignored(name):
    tx = optax.chain(METHODS[name](), optax.sgd(LR))
    params = to_tree(V0)
    loss_fn = batch_loss(0)
    grads = jax.grad(loss_fn)(params)
    updates, _ = tx.update(
        grads, tx.init(params), params, loss_fn=loss_fn, value=1.0, grad=grads, foo="bar"
    )
    expected = -LR * direction_np(name, V0, XS[0], YS[0])
    assert_vec_close(to_vec(updates), expected, 1e-5)


def test_chain_with_a_transformation_needing_its_own_extra_arg():
    """polyak_sgd needs `value`: update = −min(value/‖d‖², max_lr)·d with d SAM's output."""
    max_lr = 5.0
    tx = optax.chain(xs.sam(0.1), optax.polyak_sgd(max_learning_rate=max_lr))
    params = to_tree(V0)
    loss_fn = batch_loss(0)
    value, grads = jax.value_and_grad(loss_fn)(params)
    step = jax.jit(lambda g, s, p, v: tx.update(g, s, p, loss_fn=loss_fn, value=v, foo=None))
    updates, _ = step(grads, tx.init(params), params, value)
    d = direction_np("sam", V0, XS[0], YS[0])
    polyak = loss_np(V0, XS[0], YS[0]) / (d @ d)
    assert polyak < max_lr  # the value-dependent branch is the one exercised
    assert_vec_close(to_vec(updates), -polyak * d, 1e-5)


# ------------------------------------------------------------- 2. inject_hyperparams

# Structural arguments that must be Python values; today the factories' integer defaults
# (norm=2, ascent_steps=1) and xsam's float grid defaults are turned into traced
# hyperparameters by inject_hyperparams unless listed (see test_inject_hyperparams_defaults).
STATIC = {
    "sam": ("ascent_steps", "norm"),
    "xsam": ("ascent_steps", "alpha_max", "alpha_step"),
}


def jitted_update(tx, loss_fn):
    return jax.jit(lambda g, s, p: tx.update(g, s, p, loss_fn=loss_fn))


@pytest.mark.parametrize("name", ["sam", "xsam"])
def test_inject_hyperparams_rho_changes_between_steps(name):
    factory = getattr(xs, name)
    kwargs = dict(rho=0.05) if name == "sam" else dict(rho=0.05, rho_max=1.0)
    if name == "xsam":
        kwargs.update(alpha_max=4.0, alpha_step=0.5)
    tx = optax.chain(
        optax.inject_hyperparams(factory, static_args=STATIC[name])(**kwargs), optax.sgd(LR)
    )
    params = to_tree(V0)
    state = tx.init(params)
    np.testing.assert_allclose(state[0].hyperparams["rho"], 0.05)
    v = V0.copy()
    for i, rho in enumerate([0.05, 0.3, 0.0]):
        state[0].hyperparams["rho"] = jnp.asarray(rho, jnp.float32)
        loss_fn = batch_loss(i)
        grads = jax.grad(loss_fn)(params)
        updates, state = jitted_update(tx, loss_fn)(grads, state, params)
        if rho == 0.0:  # exactly the base optimizer's update
            base, _ = optax.sgd(LR).update(grads, optax.sgd(LR).init(params), params)
            for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(base), strict=True):
                np.testing.assert_array_equal(a, b)
        else:
            expected = -LR * direction_np(name, v, XS[i], YS[i], rho=rho)
            assert_vec_close(to_vec(updates), expected, 1e-5)
        params = optax.apply_updates(params, updates)
        v = to_vec(params)
        assert state[0].hyperparams["rho"] == np.float32(rho)


def test_inject_hyperparams_ascent_steps_needs_static_args():
    params = to_tree(V0)
    loss_fn = batch_loss(0)
    grads = jax.grad(loss_fn)(params)
    bare = optax.inject_hyperparams(xs.sam)(rho=0.1, ascent_steps=2)
    with pytest.raises(ValueError, match=r"static_args=\('ascent_steps',\)"):
        jitted_update(bare, loss_fn)(grads, bare.init(params), params)
    tx = optax.inject_hyperparams(xs.sam, static_args=("ascent_steps",))(rho=0.1, ascent_steps=2)
    updates, _ = jitted_update(tx, loss_fn)(grads, tx.init(params), params)
    assert_vec_close(to_vec(updates), direction_np("sam", V0, XS[0], YS[0], k=2), 1e-5)


@pytest.mark.parametrize("name", list(METHODS))
def test_inject_hyperparams_defaults(name):
    """`inject_hyperparams(xs.<method>)(rho=...)` with nothing else must work under jit."""
    kwargs = {
        "sam": dict(rho=0.1),
        "asam": dict(rho=0.5, eta=0.01),
        "gsam": dict(rho=0.1, alpha=0.3),
        "wsam": dict(rho=0.1, gamma=0.7),
        "xsam": dict(rho=0.3, rho_max=1.0),
    }[name]
    tx = optax.inject_hyperparams(getattr(xs, name))(**kwargs)
    params = to_tree(V0)
    loss_fn = batch_loss(0)
    grads = jax.grad(loss_fn)(params)
    updates, state = jitted_update(tx, loss_fn)(grads, tx.init(params), params)
    grid = np.arange(21) * 0.1  # xsam's default grid
    expected = direction_np(name, V0, XS[0], YS[0], grid=grid)
    assert_vec_close(to_vec(updates), expected, 1e-5)
    assert state.hyperparams["rho"] == np.float32(kwargs["rho"])


# ------------------------------------------------------------------- 3. MultiSteps


@pytest.mark.parametrize("as_transformation", [False, True])
def test_sam_outside_multisteps_perturbs_each_microbatch(as_transformation):
    """Right order: ``chain(xs.sam(ρ), MultiSteps(sgd(lr), k))``.

    SAM sees every micro-batch with its own loss_fn, so each micro-batch gets its own
    perturbation; MultiSteps averages the k perturbed gradients and applies sgd once:
    w − lr·mean_j ∇L_j(w + ρ g_j/‖g_j‖). `MultiSteps` can be passed to `chain` directly
    (chain wraps it, dropping the extra args its inner sgd does not need) or as
    `.gradient_transformation()`; both behave the same. Note that SAM's own ``count`` (the
    argument of ρ schedules and XSAM's ``search_every``) then counts micro-steps.

    The other order, SAM inside MultiSteps, is wrong: see the next test.
    """
    k, rho = 3, 0.1
    multi = optax.MultiSteps(optax.sgd(LR), every_k_schedule=k)
    tx = optax.chain(xs.sam(rho), multi.gradient_transformation() if as_transformation else multi)
    params = to_tree(V0)
    state = tx.init(params)
    step = jax.jit(
        lambda p, s, x, y: tx.update(
            jax.grad(loss_jax)(p, x, y), s, p, loss_fn=lambda q: loss_jax(q, x, y)
        )
    )
    for j in range(k):
        updates, state = step(params, state, XS[j], YS[j])
        if j < k - 1:  # nothing applied before the k-th micro-step
            assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
        params = optax.apply_updates(params, updates)
    mean_sam = np.mean([sam_grad_np(V0, XS[j], YS[j], rho)[0] for j in range(k)], axis=0)
    assert_vec_close(to_vec(params), V0 - LR * mean_sam, 1e-6)
    assert int(state[0].count) == k


def test_sam_inside_multisteps_descends_on_last_microbatch_only():
    """Wrong order: ``MultiSteps(chain(xs.sam(ρ), sgd(lr)), k)``. Do not do this.

    optax's MultiSteps (transforms/_accumulation.py) calls the inner update on EVERY
    micro-step, with the running mean of the gradients so far and the extra args of the
    current call only, and keeps the result only on the k-th one. So the inner SAM perturbs
    along the accumulated mean ḡ but takes the gradient at w + ρ ḡ/‖ḡ‖ with the LAST
    micro-batch's loss_fn: the step is w − lr·∇L_k(w + ρ ḡ/‖ḡ‖), the other k−1 micro-batches
    only steer the perturbation, and the extra gradients of micro-steps 1..k−1 are computed
    and thrown away.
    """
    k, rho = 3, 0.1
    tx = optax.MultiSteps(optax.chain(xs.sam(rho), optax.sgd(LR)), every_k_schedule=k)
    params = to_tree(V0)
    state = tx.init(params)
    for j in range(k):
        grads = jax.grad(batch_loss(j))(params)
        updates, state = tx.update(grads, state, params, loss_fn=batch_loss(j))
        params = optax.apply_updates(params, updates)
    g_bar = np.mean([grad_np(V0, XS[j], YS[j]) for j in range(k)], axis=0)
    last = grad_np(V0 + rho * g_bar / np.linalg.norm(g_bar), XS[k - 1], YS[k - 1])
    assert_vec_close(to_vec(params), V0 - LR * last, 1e-6)
    mean_sam = np.mean([sam_grad_np(V0, XS[j], YS[j], rho)[0] for j in range(k)], axis=0)
    assert np.linalg.norm(to_vec(params) - (V0 - LR * mean_sam)) > 1e-3


# ----------------------------------------------------------------------- 4. Flax NNX


class BNNet(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(3, 5, rngs=rngs)
        self.bn = nnx.BatchNorm(5, use_running_average=False, momentum=0.9, rngs=rngs)
        self.l2 = nnx.Linear(5, 1, rngs=rngs)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.bn(self.l1(x))))


def test_nnx_optimizer_sam_step_and_batchnorm_stats():
    rho, lr, momentum, bn_eps = 0.2, 0.1, 0.9, 1e-5
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(8, 1)), jnp.float32)
    model = BNNet(nnx.Rngs(0))
    names = [("l1", "kernel"), ("l1", "bias"), ("bn", "scale"), ("bn", "bias")]
    names += [("l2", "kernel"), ("l2", "bias")]
    start = {n: np.asarray(getattr(getattr(model, n[0]), n[1])[...]) for n in names}
    # BN starts from mean 0 / var 1 but push it elsewhere, so "unchanged" is meaningful.
    model.bn.mean[...] = jnp.full((5,), 0.3)
    model.bn.var[...] = jnp.full((5,), 2.0)

    # Independent reference: a hand-written forward pass (train-mode BN: batch statistics).
    def ref_loss(flat):
        p, i = {}, 0
        for n in names:
            size = start[n].size
            p[n] = flat[i : i + size].reshape(start[n].shape)
            i += size
        h = x @ p["l1", "kernel"] + p["l1", "bias"]
        mu, var = h.mean(0), h.var(0)
        h = (h - mu) / jnp.sqrt(var + bn_eps) * p["bn", "scale"] + p["bn", "bias"]
        return jnp.mean((jnp.tanh(h) @ p["l2", "kernel"] + p["l2", "bias"] - y) ** 2)

    w0 = np.concatenate([start[n].ravel() for n in names]).astype(np.float64)
    grad_ref = jax.jit(jax.grad(ref_loss))
    g = np.asarray(grad_ref(jnp.asarray(w0, jnp.float32)), np.float64)
    g_p = np.asarray(grad_ref(jnp.asarray(w0 + rho * g / np.linalg.norm(g), jnp.float32)))
    w1_expected = w0 - lr * g_p
    h0 = np.asarray(x, np.float64) @ start["l1", "kernel"] + start["l1", "bias"]
    mean_expected = momentum * 0.3 + (1 - momentum) * h0.mean(0)
    var_expected = momentum * 2.0 + (1 - momentum) * h0.var(0)

    optimizer = nnx.Optimizer(model, optax.chain(xs.sam(rho), optax.sgd(lr)), wrt=nnx.Param)

    def model_loss(m):
        return jnp.mean((m(x) - y) ** 2)

    @nnx.jit
    def train_step(model, optimizer):
        graphdef, _, rest = nnx.split(model, nnx.Param, ...)
        rest = nnx.as_pure(rest)  # perturbed passes update a throw-away copy of BN stats

        def loss_fn(params):  # params: the nnx.State of nnx.Param (pure arrays)
            return model_loss(nnx.merge(graphdef, params, rest))

        loss, grads = nnx.value_and_grad(model_loss)(model)  # the clean pass: stats updated
        optimizer.update(model, grads, loss_fn=loss_fn)
        return loss

    train_step(model, optimizer)
    w1 = np.concatenate([np.asarray(getattr(getattr(model, a), b)[...]).ravel() for a, b in names])
    assert_vec_close(w1, w1_expected, 1e-5)
    np.testing.assert_allclose(model.bn.mean[...], mean_expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.bn.var[...], var_expected, rtol=1e-5, atol=1e-6)
    assert int(optimizer.step[...]) == 1


# ---------------------------------------------------------- 5. jit, dtypes, lax.scan


def avals(tree):
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(METHODS))
def test_jit_dtypes_state_stability_and_scan(name, dtype):
    steps = 3
    tx = optax.chain(METHODS[name](), optax.sgd(LR))
    params = to_tree(V0, dtype)
    state = tx.init(params)

    def step(carry, batch):
        params, state = carry
        x, y = batch
        loss_fn = lambda p: loss_jax(p, x, y)
        grads = jax.grad(loss_fn)(params)
        assert all(g.dtype == dtype for g in jax.tree.leaves(grads))
        updates, state = tx.update(grads, state, params, loss_fn=loss_fn)
        return (optax.apply_updates(params, updates), state), updates

    # One jitted step: dtypes of updates, and the state's structure, shapes and dtypes.
    (p1, s1), u1 = jax.jit(step)((params, state), (XS[0], YS[0]))
    assert all(u.dtype == dtype for u in jax.tree.leaves(u1))
    assert all(p.dtype == dtype for p in jax.tree.leaves(p1))
    assert avals(s1) == avals(state)
    update = functools.partial(tx.update, loss_fn=batch_loss(0))
    assert avals(jax.eval_shape(update, u1, s1, p1)[1]) == avals(state)

    # lax.scan over steps (needs exactly that type stability), against the reference.
    (params_n, _), _ = jax.jit(lambda c, b: lax.scan(step, c, b))(
        (params, state), (XS[:steps], YS[:steps])
    )
    assert all(p.dtype == dtype for p in jax.tree.leaves(params_n))
    v = to_vec(params)  # the (possibly bf16-rounded) start
    expected_u1 = -LR * direction_np(name, v, XS[0], YS[0])
    for i in range(steps):
        v = v - LR * direction_np(name, v, XS[i], YS[i])
    rtol = 1e-5
    if dtype == jnp.bfloat16:
        # bf16 rounding (~4e-3) of the ascent point; for XSAM the rounded probe points can
        # also move alpha* by one grid step (0.5), turning the output by ~0.5 psi (psi ~ 0.06).
        rtol = 6e-2 if name == "xsam" else 2e-2
    assert_vec_close(to_vec(u1), expected_u1, rtol)
    assert_vec_close(to_vec(params_n), v, rtol)


# -------------------------------------------------------- 6. optax.contrib.sam (opaque)


def test_trajectory_matches_optax_contrib_sam_opaque():
    """contrib's adversarial optimizer chain(normalize(), sgd(ρ)) returns −ρ g/‖g‖ and
    contrib negates it (adv_updates = −adv_updates), so its adversarial point is w + ρ g/‖g‖:
    both libraries are the mathematical SAM step w − lr·∇L(w + ρ g/‖g‖)."""
    rho, steps = 0.1, 10
    contrib = optax.contrib.sam(
        optax.sgd(LR),
        optax.chain(optax.contrib.normalize(), optax.sgd(rho)),
        sync_period=2,
        opaque_mode=True,
    )
    ours = optax.chain(xs.sam(rho), optax.sgd(LR))

    def trajectory(tx, use_grad_fn):
        params = to_tree(V0)
        state = tx.init(params)

        @jax.jit
        def step(params, state, x, y):
            loss_fn = lambda p: loss_jax(p, x, y)
            grads = jax.grad(loss_fn)(params)
            if use_grad_fn:  # contrib's update has no **extra_args: pass grad_fn only
                extra = dict(grad_fn=lambda p, _: jax.grad(loss_fn)(p))
            else:
                extra = dict(loss_fn=loss_fn)
            updates, state = tx.update(grads, state, params, **extra)
            return optax.apply_updates(params, updates), state

        out = []
        for t in range(steps):
            params, state = step(params, state, XS[t % N_BATCHES], YS[t % N_BATCHES])
            out.append(to_vec(params))
        return out

    theirs = trajectory(contrib, use_grad_fn=True)
    mine = trajectory(ours, use_grad_fn=False)
    v, expected = V0.copy(), []
    for t in range(steps):
        v = v - LR * sam_grad_np(v, XS[t % N_BATCHES], YS[t % N_BATCHES], rho)[0]
        expected.append(v)
    for a, b, e in zip(mine, theirs, expected, strict=True):
        assert_vec_close(a, b, 1e-6)
        assert_vec_close(a, e, 1e-5)
        assert_vec_close(b, e, 1e-5)
