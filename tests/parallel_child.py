"""Data-parallel checks on 4 simulated CPU devices; run by tests/test_parallel.py.

Not a pytest module: it must own its process, because the device count is fixed when
the backend starts. It runs every case, compares each against an independent reference
(the SAM / GSAM / XSAM / F-SAM / LookSAM formulas written out below with NumPy float64
arithmetic on gradients and losses of the flattened model) and prints one JSON object
{case: {"param_err": ..., ...} or {"error": traceback}} on the last line of stdout.
"""

import jax

jax.config.update("jax_num_cpu_devices", 4)

import json  # noqa: E402
import traceback  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import xsam_jax as xs  # noqa: E402

N_DEV = 4
STEPS = 3
BATCH = 16  # global batch; 4 per device on 4 devices, 8 on 2
D_IN, D_HID, D_OUT = 3, 6, 2
LR = 0.2
RHO, RHO_MAX = 0.3, 1.0
GSAM_ALPHA = 0.4
ALPHA_MAX, ALPHA_STEP = 6.0, 0.5  # a wide grid, so the maxima are interior
GRID = np.arange(13) * ALPHA_STEP
SEARCH_EVERY = 2  # searches on steps 0 and 2, step 1 reuses alpha* of step 0
FSAM_SIGMA, FSAM_LAMBDA = 0.8, 0.6
LOOKSAM_EVERY, LOOKSAM_ALPHA = 2, 0.7  # full steps 0 and 2, step 1 reuses g_v

METHODS = {
    "sam": dict(kind="sam", make=lambda **kw: xs.sam(RHO, **kw)),
    "gsam": dict(kind="gsam", make=lambda **kw: xs.gsam(RHO, GSAM_ALPHA, **kw)),
    "xsam_k1": dict(
        kind="xsam",
        k=1,
        make=lambda **kw: xs.xsam(
            RHO,
            RHO_MAX,
            alpha_max=ALPHA_MAX,
            alpha_step=ALPHA_STEP,
            search_every=SEARCH_EVERY,
            **kw,
        ),
    ),
    "xsam_k2": dict(
        kind="xsam",
        k=2,
        make=lambda **kw: xs.xsam(
            RHO,
            RHO_MAX,
            ascent_steps=2,
            alpha_max=ALPHA_MAX,
            alpha_step=ALPHA_STEP,
            search_every=SEARCH_EVERY,
            **kw,
        ),
    ),
    "fsam": dict(kind="fsam", make=lambda **kw: xs.fsam(RHO, FSAM_SIGMA, FSAM_LAMBDA, **kw)),
    "looksam": dict(
        kind="looksam",
        make=lambda **kw: xs.looksam(RHO, every=LOOKSAM_EVERY, alpha=LOOKSAM_ALPHA, **kw),
    ),
}

# --------------------------------------------------------------------------- problem

_rng = np.random.default_rng(0)
PARAMS0 = {
    "w1": jnp.asarray(_rng.normal(size=(D_IN, D_HID)) / np.sqrt(D_IN), jnp.float32),
    "b1": jnp.asarray(0.1 * _rng.normal(size=(D_HID,)), jnp.float32),
    "w2": jnp.asarray(_rng.normal(size=(D_HID, D_OUT)) / np.sqrt(D_HID), jnp.float32),
    "b2": jnp.zeros((D_OUT,), jnp.float32),
}
X = jnp.asarray(_rng.normal(size=(STEPS, BATCH, D_IN)), jnp.float32)
Y = jnp.asarray(_rng.normal(size=(STEPS, BATCH, D_OUT)), jnp.float32)


def loss(params, x, y):
    """Mean squared error of a 1-hidden-layer tanh MLP (the local mean on a shard)."""
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return 0.5 * jnp.mean(jnp.sum((h @ params["w2"] + params["b2"] - y) ** 2, axis=-1))


FLAT0, UNRAVEL = ravel_pytree(PARAMS0)
_loss_flat = jax.jit(lambda w, x, y: loss(UNRAVEL(w), x, y))
_grad_flat = jax.jit(jax.grad(lambda w, x, y: loss(UNRAVEL(w), x, y)))


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0], np.float64)


# ------------------------------------------------------------------------- reference


def ref_grad(w, x, y):
    return np.asarray(_grad_flat(jnp.asarray(w, jnp.float32), x, y), np.float64)


def ref_loss(w, x, y):
    return float(_loss_flat(jnp.asarray(w, jnp.float32), x, y))


def ref_ascent(w, x, y, k):
    """k steps of length rho/k along g/||g||; returns (g_k, chord, g0)."""
    g0 = ref_grad(w, x, y)
    chord, g = np.zeros_like(w), g0
    for i in range(k):
        if i > 0:
            g = ref_grad(w + chord, x, y)
        chord = chord + RHO / k * g / np.linalg.norm(g)
    return ref_grad(w + chord, x, y), chord, g0


def ref_slerp(v0, v1, alpha):
    psi = np.arccos(np.clip(v0 @ v1, -1.0, 1.0))
    return (np.sin((1 - alpha) * psi) * v0 + np.sin(alpha * psi) * v1) / np.sin(psi)


def ref_step(kind, k, w, shards, alpha, search):
    """One step of the method, each shard climbing from its own gradient, outputs averaged.

    Global perturbation = a single shard holding the whole global batch; local
    perturbation (m-sharpness) = one shard per device. Returns (direction, alpha*,
    probe losses or None, mean cos psi).
    """
    climbs = [ref_ascent(w, x, y, k if kind == "xsam" else 1) for x, y in shards]
    if kind == "sam":
        return np.mean([g_k for g_k, _, _ in climbs], axis=0), alpha, None, None
    if kind == "gsam":
        dirs = []
        for g_p, _, g0 in climbs:
            g0_perp = g0 - (g0 @ g_p) / (g_p @ g_p) * g_p
            dirs.append(g_p - GSAM_ALPHA * g0_perp)
        return np.mean(dirs, axis=0), alpha, None, None
    planes = [
        (chord / np.linalg.norm(chord), g_k / np.linalg.norm(g_k), np.linalg.norm(g_k))
        for g_k, chord, _ in climbs
    ]
    losses = None
    if search:
        losses = np.array(
            [
                np.mean(
                    [
                        ref_loss(w + RHO_MAX * ref_slerp(v0, v1, a), x, y)
                        for (v0, v1, _), (x, y) in zip(planes, shards, strict=True)
                    ]
                )
                for a in GRID
            ]
        )
        alpha = float(GRID[int(np.argmax(losses))])  # argmax: first maximum wins
    direction = np.mean([n * ref_slerp(v0, v1, alpha) for v0, v1, n in planes], axis=0)
    cos_psi = float(np.mean([v0 @ v1 for v0, v1, _ in planes]))
    return direction, alpha, losses, cos_psi


def ref_stateful_step(kind, t, w, shards, memory):
    """One F-SAM or LookSAM step over the shards; returns (direction, new memory).

    The memory (F-SAM's average m, LookSAM's g_v) is one vector shared by all shards: the
    average of the mean gradient over the shards (F-SAM) or of the shards' own g_v
    (LookSAM). Each shard ascends from its own gradient.
    """
    grads = [ref_grad(w, x, y) for x, y in shards]
    if kind == "fsam":
        dirs = []
        for g, (x, y) in zip(grads, shards, strict=True):
            start = g if memory is None else g - FSAM_SIGMA * memory
            dirs.append(ref_grad(w + RHO * start / np.linalg.norm(start), x, y))
        mean = np.mean(grads, axis=0)
        memory = mean if memory is None else FSAM_LAMBDA * memory + (1 - FSAM_LAMBDA) * mean
        return np.mean(dirs, axis=0), memory
    if t % LOOKSAM_EVERY == 0:
        g_s = [ref_ascent(w, x, y, 1)[0] for x, y in shards]
        g_v = [s - (g @ s) / (g @ g) * g for g, s in zip(grads, g_s, strict=True)]
        return np.mean(g_s, axis=0), np.mean(g_v, axis=0)
    scale = LOOKSAM_ALPHA / np.linalg.norm(memory)
    return np.mean([g + scale * np.linalg.norm(g) * memory for g in grads], axis=0), memory


def reference_run(name, n_shards):
    """Trajectory of SGD(LR) on the method's direction; n_shards=1 is global perturbation."""
    cfg = METHODS[name]
    w, alpha, memory = np.asarray(FLAT0, np.float64), 1.0, None
    out = dict(params=[], dirs=[], alphas=[], losses=[], cos=[], memory=[])
    for t in range(STEPS):
        shards = list(
            zip(
                np.split(np.asarray(X[t]), n_shards),
                np.split(np.asarray(Y[t]), n_shards),
                strict=True,
            )
        )
        if cfg["kind"] in ("fsam", "looksam"):
            d, memory = ref_stateful_step(cfg["kind"], t, w, shards, memory)
            losses, cos_psi = None, None
            out["memory"].append(memory)
        else:
            search = cfg["kind"] == "xsam" and t % SEARCH_EVERY == 0
            d, alpha, losses, cos_psi = ref_step(
                cfg["kind"], cfg.get("k", 1), w, shards, alpha, search
            )
        w = w - LR * d
        out["params"].append(w)
        out["dirs"].append(d)
        out["alphas"].append(alpha)
        out["losses"].append(losses)
        out["cos"].append(cos_psi)
    return out


# ------------------------------------------------------------------------ library runs


def make_tx(name, **kw):
    return optax.chain(METHODS[name]["make"](**kw), optax.sgd(LR))


def record(out, params, state, updates):
    inner = state[0]
    out["params"].append(flat(params))
    out["dirs"].append(-flat(updates) / LR)
    out["alphas"].append(float(inner.alpha) if hasattr(inner, "alpha") else None)
    out["losses"].append(np.asarray(inner.alpha_losses) if hasattr(inner, "alpha") else None)
    out["cos"].append(float(inner.cos_psi) if hasattr(inner, "cos_psi") else None)
    for name in ("average", "orthogonal"):  # F-SAM's m, LookSAM's g_v
        if hasattr(inner, name):
            out["memory"].append(flat(getattr(inner, name)))


def run_pmap(name, local):
    tx = make_tx(name, axis_name="d", local_perturbation=local)

    def step(params, state, x, y):
        loss_fn = lambda p: loss(p, x, y)
        grads = jax.grad(loss_fn)(params)  # pmap: params are per-device, grads are local
        updates, state = tx.update(grads, state, params, loss_fn=loss_fn)
        return optax.apply_updates(params, updates), state, updates

    pstep = jax.pmap(step, axis_name="d")
    replicate = lambda tree: jax.tree.map(lambda a: jnp.stack([a] * N_DEV), tree)
    params, state = replicate(PARAMS0), replicate(tx.init(PARAMS0))
    out = dict(params=[], dirs=[], alphas=[], losses=[], cos=[], memory=[], replica_spread=0.0)
    for t in range(STEPS):
        x = X[t].reshape(N_DEV, -1, D_IN)
        y = Y[t].reshape(N_DEV, -1, D_OUT)
        params, state, updates = pstep(params, state, x, y)
        # Every replica must hold bit-identical params, updates and state (alpha* included).
        for tree in (params, state, updates):
            for leaf in jax.tree.leaves(tree):
                leaf = np.asarray(leaf, np.float64)
                same = np.array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape), equal_nan=True)
                if not same:
                    out["replica_spread"] = max(
                        out["replica_spread"], float(np.nanmax(np.abs(leaf - leaf[:1])))
                    )
                    out["replicas_differ"] = True
        first = lambda tree: jax.tree.map(lambda a: a[0], tree)
        record(out, first(params), first(state), first(updates))
    return out


def run_shard_map(name, local, n_dev):
    mesh = jax.make_mesh((n_dev,), ("d",), devices=jax.devices()[:n_dev])
    tx = make_tx(name, axis_name="d", local_perturbation=local)

    def step(params, state, x, y):
        loss_fn = lambda p: loss(p, x, y)  # the LOCAL mean loss on this device's shard
        varying = jax.tree.map(lambda a: lax.pcast(a, "d", to="varying"), params)
        grads = jax.grad(loss_fn)(varying)  # local gradient (not the psum)
        updates, state = tx.update(grads, state, params, loss_fn=loss_fn)
        return optax.apply_updates(params, updates), state, updates

    # out_specs P() for everything: shard_map's vma check rejects any output that
    # is not provably identical on every device, so this also checks replication.
    sstep = jax.jit(
        jax.shard_map(
            step,
            mesh=mesh,
            in_specs=(P(), P(), P("d"), P("d")),
            out_specs=(P(), P(), P()),
        )
    )
    rep = NamedSharding(mesh, P())
    params = jax.device_put(PARAMS0, rep)
    state = jax.device_put(tx.init(PARAMS0), rep)
    out = dict(params=[], dirs=[], alphas=[], losses=[], cos=[], memory=[])
    for t in range(STEPS):
        x = jax.device_put(X[t], NamedSharding(mesh, P("d")))
        y = jax.device_put(Y[t], NamedSharding(mesh, P("d")))
        params, state, updates = sstep(params, state, x, y)
        record(out, params, state, updates)
    return out


def run_jit_sharded(name):
    mesh = jax.make_mesh((N_DEV,), ("d",))
    tx = make_tx(name)  # axis_name=None: XLA inserts the all-reduces

    @jax.jit
    def step(params, state, x, y):
        loss_fn = lambda p: loss(p, x, y)
        grads = jax.grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, loss_fn=loss_fn)
        return optax.apply_updates(params, updates), state, updates

    rep = NamedSharding(mesh, P())
    params = jax.device_put(PARAMS0, rep)
    state = jax.device_put(tx.init(PARAMS0), rep)
    out = dict(params=[], dirs=[], alphas=[], losses=[], cos=[], memory=[])
    for t in range(STEPS):
        x = jax.device_put(X[t], NamedSharding(mesh, P("d")))
        y = jax.device_put(Y[t], NamedSharding(mesh, P("d")))
        params, state, updates = step(params, state, x, y)
        record(out, params, state, updates)
    out["params_replicated"] = all(
        leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(params)
    )
    return out


# -------------------------------------------------------------------------- compare


def compare(lib, ref):
    res = dict(
        param_err=max(
            float(np.max(np.abs(a - b))) for a, b in zip(lib["params"], ref["params"], strict=True)
        ),
        dir_err=max(
            float(np.max(np.abs(a - b) / (np.abs(b).max() + 1e-12)))
            for a, b in zip(lib["dirs"], ref["dirs"], strict=True)
        ),
        alphas_lib=lib["alphas"],
        alphas_ref=ref["alphas"],
    )
    if ref["losses"][0] is not None:
        res["loss_err"] = max(
            float(np.max(np.abs(np.asarray(a) - b) / np.abs(b)))
            for a, b in zip(lib["losses"], ref["losses"], strict=True)
            if b is not None
        )
        res["searched_alphas"] = [
            a for a, b in zip(ref["alphas"], ref["losses"], strict=True) if b is not None
        ]
        res["cos_err"] = max(abs(a - b) for a, b in zip(lib["cos"], ref["cos"], strict=True))
    if ref["memory"]:
        res["memory_err"] = max(
            float(np.max(np.abs(a - b) / (np.abs(b).max() + 1e-12)))
            for a, b in zip(lib["memory"], ref["memory"], strict=True)
        )
    for key in ("replica_spread", "replicas_differ", "params_replicated"):
        if key in lib:
            res[key] = lib[key]
    res["final_params"] = lib["params"][-1].tolist()
    return res


def main():
    assert len(jax.devices()) == N_DEV, jax.devices()
    refs = {}
    results = {}
    runs = {}
    for name in METHODS:
        runs[f"global-pmap-{name}"] = (name, 1, lambda n=name: run_pmap(n, local=False))
        runs[f"global-shard_map-{name}"] = (
            name,
            1,
            lambda n=name: run_shard_map(n, local=False, n_dev=N_DEV),
        )
        runs[f"global-jit_sharded-{name}"] = (name, 1, lambda n=name: run_jit_sharded(n))
        runs[f"global-shard_map_2dev-{name}"] = (
            name,
            1,
            lambda n=name: run_shard_map(n, local=False, n_dev=2),
        )
        runs[f"local-pmap-{name}"] = (name, N_DEV, lambda n=name: run_pmap(n, local=True))
        runs[f"local-shard_map-{name}"] = (
            name,
            N_DEV,
            lambda n=name: run_shard_map(n, local=True, n_dev=N_DEV),
        )
    for case, (name, n_shards, run) in runs.items():
        try:
            if (name, n_shards) not in refs:
                refs[name, n_shards] = reference_run(name, n_shards)
            results[case] = compare(run(), refs[name, n_shards])
        except Exception:  # report per case, keep going
            results[case] = {"error": traceback.format_exc()[-3000:]}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
