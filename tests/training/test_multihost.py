"""Two local processes (jax.distributed + gloo) train like one process on the global batch:
the library's sharded step, and `xsam-train` as a whole."""

import importlib
import json
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
from xsam_jax import data, experiment, training

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


def _run_together(commands: list[list[str]], *, timeout: float, **popen) -> list[str]:
    """Starts the commands at once, waits at most `timeout` seconds for each and returns
    their outputs; fails naming the first that exits with an error (all are killed)."""
    children = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
        )
        for command in commands
    ]
    logs = []
    try:
        for child in children:
            logs.append(child.communicate(timeout=timeout)[0])
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
    for i, (child, log) in enumerate(zip(children, logs, strict=True)):
        assert child.returncode == 0, f"process {i} failed:\n{log[-4000:]}"
    return logs


@pytest.mark.slow
@pytest.mark.skipif(_gloo_missing_reason() is not None, reason=str(_gloo_missing_reason()))
def test_two_processes_match_one_process(tmp_path):
    output = tmp_path / "params.npz"
    port = _free_port()
    script = os.path.join(HERE, "multihost_child.py")
    _run_together(
        [[sys.executable, script, str(i), str(port), str(output)] for i in range(2)],
        timeout=TIMEOUT_SECONDS,
        cwd=HERE,
    )

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


# XSAM after a plain-SGD first half: both compiled programs of the perturb plan, the α search.
CLI_RUN = ["--dataset", "digits", "--optimizer", "xsam+late=0.5", "--epochs", "2"]
CLI_RUN += ["--batch-size", "64", "--seed", "1", "--no-progress"]
CLI_TIMEOUT_SECONDS = 480


def _xsam_train(*flags: str) -> list[str]:
    return [sys.executable, "-m", "xsam_jax", *CLI_RUN, *flags]


@pytest.mark.slow
@pytest.mark.skipif(_gloo_missing_reason() is not None, reason=str(_gloo_missing_reason()))
def test_xsam_train_on_two_processes_matches_one_process(tmp_path):
    """`xsam-train` as 2 processes x 2 simulated devices, each loading half of every global
    batch, against 1 process x 4 devices on the same global batch of 64."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cache = ["--jit-cache", str(tmp_path / "xla")]
    port = _free_port()
    two = tmp_path / "two"
    joined = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    logs = _run_together(
        [
            _xsam_train(*cache, "--devices", "2", "--out", str(two), *joined, "--process-id", i)
            for i in ("0", "1")
        ],
        timeout=CLI_TIMEOUT_SECONDS,
        env=env,
    )
    one = tmp_path / "one"
    _run_together(
        [_xsam_train(*cache, "--devices", "4", "--out", str(one))],
        timeout=CLI_TIMEOUT_SECONDS,
        env=env,
    )

    # Process 0 alone reports.
    assert logs[0].count("final test accuracy") == 1 and "final test accuracy" not in logs[1]
    split, single = (json.loads((d / "metrics.json").read_text()) for d in (two, one))
    assert split["config"] == single["config"] and split["config"]["devices"] == 4
    assert len(split["history"]) == len(single["history"]) == 2
    final, reference = split["history"][-1], single["history"][-1]
    np.testing.assert_allclose(final["test_loss"], reference["test_loss"], rtol=1e-4)
    test_examples = len(data.load("digits").y_test)
    assert abs(final["test_accuracy"] - reference["test_accuracy"]) * test_examples <= 1 + 1e-6
    # The checkpoint both processes wrote together restores whole, in one process.
    restored = [_flat(as_dicts(experiment.load_run(d)[1].state)) for d in (two, one)]
    assert set(restored[0]) == set(restored[1])
    for name, value in restored[0].items():
        np.testing.assert_allclose(value, restored[1][name], rtol=1e-4, atol=1e-6, err_msg=name)
