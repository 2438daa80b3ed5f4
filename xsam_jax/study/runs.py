"""Running the study's training runs: each cached on disk under a hash of what it depends on.

A job is a `TrainConfig` and two run options (whether it reads the test set, whether it
records diagnostics). Its result is stored as JSON under the SHA-256 of the resolved config,
the options and `CACHE_VERSION`, so the study can be stopped and resumed, run in parts, and
rerun without retraining anything it has already run. Missing jobs run in worker processes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import pathlib
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from xsam_jax.experiment import TrainConfig

# Bump when the meaning of a stored result changes (not for new fields).
CACHE_VERSION = 1
# Config fields added after results were first cached, with the value that means what the
# configs had before: left out of the key at that value, so those results keep their keys.
LATER_FIELDS = {
    "perturb_every": None,
    "perturb_probability": None,
    # The fields of fsam, vasso, fisher-sam, looksam and the perturbation masks (branch
    # g-methods), at their defaults; absent fields are skipped.
    "fsam_sigma": 1.0,
    "fsam_lambda": 0.9,
    "vasso_theta": 0.9,
    "fisher_eta": 1.0,
    "looksam_every": 5,
    "looksam_alpha": 0.7,
    "perturbation_mask": None,
}


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run of the study."""

    config: TrainConfig
    test: bool = False
    diagnostics: bool = False

    def key(self) -> str:
        """The cache key: SHA-256 of the resolved config, the options and the cache version."""
        config = dataclasses.asdict(self.config.resolved())
        for name, before in LATER_FIELDS.items():
            if name in config and config[name] == before:
                del config[name]
        payload = {
            "config": config,
            "test": self.test,
            "diagnostics": self.diagnostics,
            "version": CACHE_VERSION,
        }
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def describe(self) -> str:
        c = self.config
        label = c.optimizer + ("+adaptive" if c.adaptive else "")
        parts = [f"{c.dataset}/{c.model_name}", label, f"seed {c.seed}"]
        defaults = TrainConfig()
        for name in (
            "rho",
            "rho_max",
            "lr",
            "ascent_steps",
            "late_phase_start",
            "perturb_every",
            "perturb_probability",
        ):
            value = getattr(c, name)
            if value is not None and value != getattr(defaults, name):
                parts.append(f"{name}={value:g}")
        return " ".join(parts)


class Cache:
    """Results on disk, one JSON file per job key (written atomically)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = pathlib.Path(directory).expanduser()

    def path(self, job: Job) -> pathlib.Path:
        return self.directory / f"{job.key()}.json"

    def get(self, job: Job) -> dict[str, Any] | None:
        try:
            return json.loads(self.path(job).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, job: Job, result: dict[str, Any]) -> None:
        path = self.path(job)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(result))
        os.replace(tmp, path)


def use_jit_cache(directory: str | None) -> None:
    """Keep compiled programs on disk: the study compiles the same few programs many times."""
    if directory:
        import jax

        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def _train(job: Job, cache_dir: str, jit_cache: str | None) -> tuple[str, float]:
    """Train one job and store its result (in this process or a worker)."""
    use_jit_cache(jit_cache)
    from xsam_jax import experiment

    tic = time.perf_counter()
    result = experiment.run(job.config, progress=False, test=job.test, diagnostics=job.diagnostics)
    Cache(cache_dir).put(job, result)
    return job.key(), time.perf_counter() - tic


def execute(
    jobs: Sequence[Job],
    cache: Cache,
    *,
    workers: int = 1,
    jit_cache: str | None = None,
    log=print,
) -> dict[str, dict[str, Any]]:
    """Results of every job (key -> result), training those not in the cache.

    Args:
      jobs: the runs wanted (duplicates are run once).
      cache: where results live.
      workers: training processes at once (each a fresh Python started with "spawn").
      jit_cache: persistent XLA compilation cache for the workers, or None.
      log: prints one progress line per finished run.

    Returns:
      A dict from each job's key to its `experiment.run` result.
    """
    unique = {job.key(): job for job in jobs}
    missing = [job for key, job in unique.items() if cache.get(job) is None]

    def stored(job: Job) -> dict[str, Any]:
        result = cache.get(job)
        assert result is not None, f"{job.describe()} was trained but is not in the cache"
        return result

    if missing:
        log(
            f"{len(unique) - len(missing)} of {len(unique)} runs cached; training {len(missing)} "
            f"in {workers} process(es)"
        )
        started = time.perf_counter()
        for done, (job, seconds) in enumerate(_train_all(missing, cache, workers, jit_cache), 1):
            result = stored(job)
            score = " ".join(
                f"{split} {result[f'final_{split}_accuracy']:.4f}"
                for split in ("val", "test")
                if f"final_{split}_accuracy" in result
            )
            eta = (time.perf_counter() - started) / done * (len(missing) - done)
            log(
                f"[{done}/{len(missing)}] {job.describe()}: {score} ({seconds:.0f} s; "
                f"ETA {eta / 60:.0f} min)"
            )
            sys.stdout.flush()
    return {key: stored(job) for key, job in unique.items()}


def _train_all(jobs: list[Job], cache: Cache, workers: int, jit_cache: str | None):
    """Yields (job, seconds) as jobs finish: in this process for one worker, else in a pool."""
    if workers == 1:
        for job in jobs:
            yield job, _train(job, str(cache.directory), jit_cache)[1]
        return
    with worker_pool(workers) as pool:
        futures = {pool.submit(_train, job, str(cache.directory), jit_cache): job for job in jobs}
        for future in concurrent.futures.as_completed(futures):
            yield futures[future], future.result()[1]


def worker_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of `workers` training processes that end when the process that made it dies.

    Args:
      workers: processes in the pool.

    Returns:
      The pool; its workers are fresh interpreters ("spawn"): a forked JAX runtime is not safe
      to use.
    """
    context = multiprocessing.get_context("spawn")
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_exit_with_parent, initargs=(os.getpid(),)
    )


def _exit_with_parent(parent: int) -> None:
    """Pool initializer: end this worker once `parent` is gone, even in the middle of a job.

    A killed parent (SIGTERM, SIGKILL) cannot stop its workers, which would train on as orphans
    until their job ends. The parent's pid is passed in rather than read here, as the parent may
    already have died when this runs. Once it dies the worker is adopted by another process, so
    `os.getppid()` changes: that holds on Linux and macOS (POSIX), the systems the study runs on.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)  # skips cleanup: the parent waiting for it is gone

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
