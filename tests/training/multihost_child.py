"""One of two processes training with the sharded step over a 4-device global mesh.

Usage: multihost_child.py PROCESS_ID PORT OUTPUT.npz. Each process owns 2 simulated CPU
devices and feeds its half of every global batch; process 0 writes the final parameters
and running statistics (flattened, keyed by path) to OUTPUT.npz.
"""

import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_num_cpu_devices", 2)

import numpy as np  # noqa: E402
import optax  # noqa: E402
from training_helpers import as_dicts, make_batch, make_model  # noqa: E402

import xsam_jax as xs  # noqa: E402
from xsam_jax import training  # noqa: E402

PROCESSES, GLOBAL_BATCH, STEPS = 2, 16, 3
RHO, LR, MOMENTUM = 0.1, 0.05, 0.9


def main(process_id: int, port: int, output: str) -> None:
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=PROCESSES,
        process_id=process_id,
        initialization_timeout=60,
        heartbeat_timeout_seconds=30,
        shutdown_timeout_seconds=30,
    )
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    # Two devices in all: one from each process, each holding half of a batch.
    pair = training.data_mesh(2)
    assert [d.process_index for d in pair.devices.flat] == [0, 1]
    half = np.arange(process_id * 8, (process_id + 1) * 8)
    np.testing.assert_array_equal(training.process_batch_rows(pair, 16), half)
    # 3: not an equal share of each process's devices; 5: more devices than all processes have.
    for uneven, message in (
        (3, "multiple of the 2 processes with at most 2 devices"),
        (5, "integer in [1, 4]"),
    ):
        try:
            training.data_mesh(uneven)
        except ValueError as err:
            assert message in str(err), err
        else:
            raise AssertionError(f"data_mesh({uneven}) spans the processes unevenly")
    mesh = training.data_mesh()
    model = make_model()
    tx = optax.chain(xs.sam(RHO), optax.sgd(LR, momentum=MOMENTUM))
    state = training.replicate(training.TrainState.create(model, tx, rng=0), mesh)
    step = training.make_sharded_train_step(model, tx, mesh)
    share = GLOBAL_BATCH // PROCESSES
    rows = training.process_batch_rows(mesh, GLOBAL_BATCH)
    # The mesh lists process 0's devices first: each process holds a contiguous half.
    np.testing.assert_array_equal(rows, np.arange(process_id * share, (process_id + 1) * share))
    for seed in range(STEPS):
        batch = make_batch(seed, GLOBAL_BATCH)
        local = {k: v[rows] for k, v in batch.items()}
        # Awaited: queued all-reduce programs can deadlock XLA's CPU collectives.
        state = jax.block_until_ready(step(state, training.shard_batch(local, mesh))[0])
    flat = jax.tree_util.tree_flatten_with_path(as_dicts(state))[0]
    arrays = {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}
    if process_id == 0:
        np.savez(output, **arrays)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
