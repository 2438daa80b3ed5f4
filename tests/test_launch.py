"""Several processes: which environments start one, and the flags that name the others.

Running the processes is tested in tests/training/test_multihost.py.
"""

import pytest

from xsam_jax import cli, experiment
from xsam_jax.experiment import launch

SLURM_STEP = {
    "SLURM_JOB_ID": "4711",
    "SLURM_STEP_NODELIST": "node[001-004]",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "2",
    "SLURM_LOCALID": "0",
}
OPEN_MPI = {
    "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911",
    "OMPI_COMM_WORLD_SIZE": "2",
}


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"PATH": "/usr/bin", "HOSTNAME": "laptop"}, None),
        (SLURM_STEP, "slurm"),
        ({**SLURM_STEP, "SLURM_NTASKS": "1"}, None),  # one task of an allocation
        # A batch script outside srun has no step: JAX would not see a cluster either.
        ({k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}, None),
        (OPEN_MPI, "openmpi"),
        ({**OPEN_MPI, "OMPI_COMM_WORLD_SIZE": "1"}, None),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, None),  # not started by Open MPI's launcher
        ({"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3", "TPU_WORKER_ID": "1"}, "tpu"),
        ({"TPU_PROCESS_ADDRESSES": "10.0.0.2:8476,10.0.0.3:8476"}, "tpu"),
        ({"TPU_WORKER_HOSTNAMES": "t-0", "TPU_WORKER_ID": "0"}, None),  # a single host
        ({"MEGASCALE_NUM_SLICES": "2"}, "tpu"),
        ({"MEGASCALE_NUM_SLICES": "1"}, None),
    ],
)
def test_detect_cluster_names_the_launcher_of_several_processes(environ, expected):
    assert launch.detect_cluster(environ) == expected


@pytest.mark.parametrize(
    ("environ", "cluster", "processes"),
    [(SLURM_STEP, "SlurmCluster", 4), (OPEN_MPI, "OmpiCluster", 2)],
)
def test_detection_reads_the_variables_jax_reads(environ, cluster, processes, monkeypatch):
    """JAX's own detection (what jax.distributed.initialize() runs) sees the same cluster of
    the same size, and wherever it sees none after a variable is removed, neither do we."""
    clusters = pytest.importorskip("jax._src.clusters")
    jax_cluster = getattr(clusters, cluster)
    for name in [*SLURM_STEP, *OPEN_MPI]:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert jax_cluster.is_env_present() and jax_cluster.get_process_count() == processes
    assert launch.detect_cluster() is not None
    for name in environ:
        monkeypatch.delenv(name)
        if not jax_cluster.is_env_present():
            assert launch.detect_cluster() is None, name
        monkeypatch.setenv(name, environ[name])


def test_distributed_arguments_from_flags_or_the_environment():
    explicit = launch.distributed_arguments("10.0.0.1:1234", 4, 3, environ={})
    assert explicit == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    # Flags win over the environment; without flags JAX detects everything itself.
    assert launch.distributed_arguments("h:1", 2, 0, environ=SLURM_STEP)["num_processes"] == 2
    assert launch.distributed_arguments(None, None, None, environ=SLURM_STEP) == {}
    assert launch.distributed_arguments(None, None, None, detect=True, environ={}) == {}
    assert launch.distributed_arguments(None, None, None, environ={}) is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--coordinator", "10.0.0.1:1234"],
            "--num-processes must be given with --coordinator, got None",
        ),
        (
            ["--num-processes", "2", "--process-id", "0"],
            "--coordinator must be given with --num-processes, --process-id, got None",
        ),
        (
            ["--coordinator", "10.0.0.1", "--num-processes", "2", "--process-id", "0"],
            "--coordinator must be HOST:PORT with a port in [1, 65535], got '10.0.0.1'",
        ),
        (
            ["--coordinator", ":1234", "--num-processes", "2", "--process-id", "0"],
            "--coordinator must be HOST:PORT with a port in [1, 65535], got ':1234'",
        ),
        (
            ["--coordinator", "h:70000", "--num-processes", "2", "--process-id", "0"],
            "--coordinator must be HOST:PORT with a port in [1, 65535], got 'h:70000'",
        ),
        (
            ["--coordinator", "h:1234", "--num-processes", "0", "--process-id", "0"],
            "--num-processes must be an integer >= 1, got 0",
        ),
        (
            ["--coordinator", "h:1234", "--num-processes", "2", "--process-id", "2"],
            "--process-id must be an integer in [0, 1], got 2",
        ),
    ],
)
def test_bad_process_flags_get_a_one_line_error(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--dataset", "digits", "--no-progress", *flags])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == f"xsam-train: error: {message}"


def joined_as_two_processes(monkeypatch) -> list:
    """`cli.main` as process 0 of 2 (the join itself left out): the configs it would run."""
    monkeypatch.setattr(cli, "_configure_devices", lambda devices, distributed: 2)
    runs = []

    def run(config, **kwargs):
        runs.append(config)
        return {"final_test_accuracy": 0.5}

    monkeypatch.setattr(experiment, "run", run)
    return runs


JOINED = ["--coordinator", "h:1234", "--num-processes", "2", "--process-id", "0"]


def test_a_run_of_several_processes_counts_every_device(monkeypatch, capsys):
    """--devices is per process: m-sharpness per device is --batch-size / (2 x 2) = 16."""
    runs = joined_as_two_processes(monkeypatch)
    flags = ["--optimizer", "sam", "--batch-size", "64", "--devices", "2", "--m-sharpness", "16"]
    assert cli.main(["--dataset", "digits", "--no-progress", *flags, *JOINED]) == 0
    assert [(c.devices, c.m_sharpness, c.batch_size) for c in runs] == [(4, 16, 64)]
    assert capsys.readouterr().out == "sam seed 0: final test accuracy 0.5000\n"


def test_a_run_of_several_processes_needs_a_batch_for_every_device(monkeypatch, capsys):
    joined_as_two_processes(monkeypatch)
    with pytest.raises(SystemExit):
        cli.main(["--dataset", "digits", "--batch-size", "64", "--devices", "3", *JOINED])
    assert capsys.readouterr().err.splitlines()[-1] == (
        "xsam-train: error: --batch-size must be divisible by --devices × the 2 processes (6), "
        "got 64"
    )
