"""Joining the other processes of a run on several hosts (`jax.distributed`).

A run is one of several processes when

- it is told so: `coordinator`, `num_processes` and `process_id` (`xsam-train --coordinator
  HOST:PORT --num-processes N --process-id I`), for any launcher;
- its environment says so, read as `jax.distributed.initialize()` reads it: SLURM (`srun`
  with several tasks), Open MPI (`mpirun` with several ranks), a TPU pod whose environment
  lists its workers (GKE, multislice); `jax.distributed.initialize()` then finds the
  coordinator, the count and the id itself;
- `detect` asks for that detection anyway (`xsam-train --distributed`): a Cloud TPU pod slice
  started with `gcloud ... --worker=all` lists its workers in the metadata server, which is
  read only then, not on every run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax

from xsam_jax._src.validation import InvalidArgumentError, check_int

# What jax.distributed.initialize() needs to recognise a SLURM job step (jax._src.clusters).
SLURM_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)
FLAGS = ("--coordinator", "--num-processes", "--process-id")


def _count(text: str | None) -> int:
    return int(text) if text is not None and text.strip().isdigit() else 0


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """The launcher that started this process as one of several, read from its environment.

    The variables are those `jax.distributed.initialize()` reads (`jax._src.clusters`), and
    a launcher counts only when it started more than one process, so that a single run
    inside a SLURM allocation or under `mpirun -n 1` stays a plain single-process run.

    Args:
      environ: the environment; None reads `os.environ`.

    Returns:
      "slurm" (the SLURM step variables, `SLURM_NTASKS` > 1), "openmpi"
      (`OMPI_MCA_orte_hnp_uri`, `OMPI_COMM_WORLD_SIZE` > 1), "tpu" (`TPU_PROCESS_ADDRESSES`
      or `TPU_WORKER_HOSTNAMES` listing several hosts, or `MEGASCALE_NUM_SLICES` > 1), or None.
    """
    env = os.environ if environ is None else environ
    if all(name in env for name in SLURM_VARIABLES) and _count(env["SLURM_NTASKS"]) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and _count(env.get("OMPI_COMM_WORLD_SIZE")) > 1:
        return "openmpi"
    workers = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len(workers.split(",")) > 1 or _count(env.get("MEGASCALE_NUM_SLICES")) > 1:
        return "tpu"
    return None


def distributed_arguments(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    *,
    detect: bool = False,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """What to pass to `jax.distributed.initialize`, or None for a single-process run.

    Args:
      coordinator: `HOST:PORT` of process 0 (its coordinator service listens there).
      num_processes: how many processes take part, >= 1.
      process_id: this one's number in [0, num_processes).
      detect: let JAX detect the cluster even if `detect_cluster` finds none.
      environ: the environment for `detect_cluster`; None reads `os.environ`.

    Returns:
      The three given values by keyword, `{}` to let JAX detect them (the three are None
      and `detect` or `detect_cluster` says so), else None.

    Raises:
      InvalidArgumentError: one of the three without the others, or a value out of range
        (named by its flag).
    """
    given = dict(zip(FLAGS, (coordinator, num_processes, process_id), strict=True))
    missing = [flag for flag, value in given.items() if value is None]
    if len(missing) == len(FLAGS):
        return {} if detect or detect_cluster(environ) is not None else None
    if coordinator is None or num_processes is None or process_id is None:
        raise InvalidArgumentError(
            missing[0], f"given with {', '.join(f for f in FLAGS if f not in missing)}", None
        )
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidArgumentError(
            "--coordinator", "HOST:PORT with a port in [1, 65535]", coordinator
        )
    check_int("--num-processes", num_processes, low=1)
    check_int("--process-id", process_id, low=0, high=num_processes - 1)
    return {
        "coordinator_address": coordinator,
        "num_processes": num_processes,
        "process_id": process_id,
    }


def join(arguments: dict[str, Any]) -> None:
    """Connects to the other processes; call before anything starts JAX's backend.

    On CPU the processes all-reduce over TCP with gloo (simulated devices, tests, CPU
    clusters); GPUs and TPUs keep their own collectives.

    Args:
      arguments: from `distributed_arguments`.

    Raises:
      ValueError: JAX was asked to detect the cluster and found none.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**arguments)
    except ValueError as err:
        if arguments:
            raise
        raise ValueError(
            f"--distributed: JAX found no cluster to join ({err}); give {', '.join(FLAGS)} instead"
        ) from err
