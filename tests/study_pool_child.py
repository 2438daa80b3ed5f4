"""A parent of the study's worker pool, for tests/test_study.py to kill; not a pytest module.

``python tests/study_pool_child.py PID_FILE`` starts a one-worker pool with
`xsam_jax.study.runs.worker_pool` and gives it a job that writes the worker's pid to PID_FILE
and then runs for ten minutes; this process then waits, to be killed.
"""

import os
import pathlib
import sys
import time

from xsam_jax.study import runs

BUSY_SECONDS = 600


def record_pid_and_work(pid_file: str) -> None:
    """The job: publish this worker's pid (atomically, the test polls the file), then stay busy."""
    path = pathlib.Path(pid_file)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, path)
    time.sleep(BUSY_SECONDS)


if __name__ == "__main__":  # the spawned worker imports this file too
    pool = runs.worker_pool(1)
    pool.submit(record_pid_and_work, sys.argv[1])
    time.sleep(BUSY_SECONDS)
