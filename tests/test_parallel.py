"""Data parallelism on 4 simulated CPU devices, against single-device reference formulas.

Everything that needs several devices runs in ONE subprocess (tests/parallel_child.py, which
sets ``jax_num_cpu_devices=4`` before the backend starts), so this pytest session keeps its
single device. The child trains a tiny tanh MLP for 3 steps with ``chain(method, sgd)`` for
sam, gsam, xsam (ascent_steps 1 and 2, a search on steps 0 and 2, step 1 reusing step 0's
α*), fsam and looksam (full steps 0 and 2) and compares each run with a reference written out
in NumPy from the formulas (ε = ρ g/‖g‖, GSAM's projection, XSAM's slerp and grid search,
F-SAM's average, LookSAM's g_v), on gradients of the flattened model.

Verified:

1. Global perturbation (``axis_name='d'``, default): ``jax.pmap``; ``jax.shard_map`` (params
   ``P()``, batch ``P('d')``, local gradients w.r.t. ``lax.pcast(p, 'd', to='varying')``, a
   loss_fn returning the local mean loss); plain ``jax.jit`` with ``NamedSharding`` and
   ``axis_name=None``: params, directions, α* and probe losses all equal single-device
   training on the global batch.
2. Local perturbation (``local_perturbation=True``, m-sharpness): each device's ascent starts
   from its own shard's gradient and only the outputs are averaged; for XSAM the probe losses
   (each device probing its own plane) are averaged so α* is the argmax of the mean, and the
   output is the mean of the per-device ‖g_k‖·v(α*). Under pmap every replica holds
   bit-identical params, updates and state (α* included); under shard_map ``out_specs=P()``
   with the vma check proves the same. The state that follows the clean gradients (F-SAM's
   average, LookSAM's g_v) is the replica average, identical on every replica, while each
   replica ascends (F-SAM) or forms its estimate (LookSAM) from its own local gradient.
3. Device-count independence: shard_map over 2 devices gives the same params as over 4.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

CHILD = os.path.join(os.path.dirname(__file__), "parallel_child.py")
METHODS = ["sam", "gsam", "xsam_k1", "xsam_k2", "fsam", "looksam"]
GLOBAL_MODES = ["pmap", "shard_map", "jit_sharded", "shard_map_2dev"]
LOCAL_MODES = ["pmap", "shard_map"]
CASES = [f"global-{m}-{n}" for n in METHODS for m in GLOBAL_MODES] + [
    f"local-{m}-{n}" for n in METHODS for m in LOCAL_MODES
]

PARAM_ATOL = 1e-5  # after 3 steps; float32 library vs float64-combined reference
DIR_RTOL = 2e-5  # per-step direction, relative to its largest entry
LOSS_RTOL = 2e-5  # XSAM probe losses


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the child sets its own device count
    proc = subprocess.run(
        [sys.executable, CHILD], capture_output=True, text=True, timeout=480, env=env
    )
    assert proc.returncode == 0, f"child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_child_ran_every_case(results):
    assert sorted(results) == sorted(CASES)


def check_case(res, case):
    assert "error" not in res, f"{case} raised:\n{res['error']}"
    assert res["param_err"] < PARAM_ATOL, f"{case}: params differ by {res['param_err']:.3g}"
    assert res["dir_err"] < DIR_RTOL, f"{case}: directions differ by {res['dir_err']:.3g}"
    if "xsam" in case:
        assert res["alphas_lib"] == res["alphas_ref"], case
        assert res["loss_err"] < LOSS_RTOL, f"{case}: probe losses off by {res['loss_err']:.3g}"
        assert res["cos_err"] < 1e-5, f"{case}: cos psi off by {res['cos_err']:.3g}"
        # The check must be able to fail: two searches with different interior winners.
        searched = res["searched_alphas"]
        assert len(set(searched)) == 2 and all(0 < a < 6 for a in searched), searched
    if "memory_err" in res:  # F-SAM's average, LookSAM's g_v: the state every replica shares
        assert res["memory_err"] < DIR_RTOL, f"{case}: state off by {res['memory_err']:.3g}"
    assert not res.get("replicas_differ", False), f"{case}: replicas differ"
    if "replica_spread" in res:
        assert res["replica_spread"] == 0.0
    if "params_replicated" in res:
        assert res["params_replicated"], f"{case}: params lost their replicated sharding"


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("global")])
def test_global_perturbation_equals_single_device(results, case):
    check_case(results[case], case)


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("local")])
def test_local_perturbation_equals_per_device_reference(results, case):
    check_case(results[case], case)


@pytest.mark.parametrize("method", METHODS)
def test_local_differs_from_global(results, method):
    """Guard on the test itself: the two policies must give measurably different params."""
    local = np.asarray(results[f"local-shard_map-{method}"]["final_params"])
    glob = np.asarray(results[f"global-shard_map-{method}"]["final_params"])
    assert np.max(np.abs(local - glob)) > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_global_mode_independent_of_device_count(results, method):
    two = np.asarray(results[f"global-shard_map_2dev-{method}"]["final_params"])
    four = np.asarray(results[f"global-shard_map-{method}"]["final_params"])
    np.testing.assert_allclose(two, four, atol=PARAM_ATOL)
    for mode in ("pmap", "jit_sharded"):
        other = np.asarray(results[f"global-{mode}-{method}"]["final_params"])
        np.testing.assert_allclose(other, four, atol=PARAM_ATOL)
