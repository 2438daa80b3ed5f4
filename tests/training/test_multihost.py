"""Two local processes (jax.distributed + gloo) train like one process on the global batch."""

import importlib
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from training_helpers import as_dicts, make_batch, make_model, ref_train

import xsam_jax as xs
from xsam_jax import training

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT_SECONDS = 150
GLOBAL_BATCH, STEPS = 16, 3
RHO, LR, MOMENTUM = 0.1, 0.05, 0.9


def _gloo_missing_reason() -> str | None:
    # jax builds its CPU gloo collectives from this jaxlib factory (jax._src.xla_bridge);
    # without it the processes could not all-reduce at all.
    jaxlib_core = importlib.import_module("jaxlib._jax")
    if hasattr(jaxlib_core, "make_gloo_tcp_collectives"):
        return None
    return "this jaxlib has no gloo CPU collectives (jaxlib._jax.make_gloo_tcp_collectives)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flat(tree) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}


@pytest.mark.slow
@pytest.mark.skipif(_gloo_missing_reason() is not None, reason=str(_gloo_missing_reason()))
def test_two_processes_match_one_process(tmp_path):
    output = tmp_path / "params.npz"
    port = _free_port()
    script = os.path.join(HERE, "multihost_child.py")
    children = [
        subprocess.Popen(
            [sys.executable, script, str(i), str(port), str(output)],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for child in children:
            logs.append(child.communicate(timeout=TIMEOUT_SECONDS)[0])
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
    for i, (child, log) in enumerate(zip(children, logs, strict=True)):
        assert child.returncode == 0, f"process {i} failed:\n{log[-4000:]}"

    distributed = dict(np.load(output))
    batches = [make_batch(seed, GLOBAL_BATCH) for seed in range(STEPS)]
    reference = _flat(ref_train(batches, rho=RHO, lr=LR, momentum=MOMENTUM))
    model = make_model()
    tx = optax.chain(xs.sam(RHO), optax.sgd(LR, momentum=MOMENTUM))
    state = training.TrainState.create(model, tx, rng=0)
    step = jax.jit(training.make_train_step(model, tx))
    for b in batches:
        state, _ = step(state, b)
    single = _flat(as_dicts(state))
    assert set(distributed) == set(reference) == set(single)
    for name, value in distributed.items():
        np.testing.assert_allclose(value, reference[name], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(value, single[name], rtol=1e-5, atol=1e-6, err_msg=name)
