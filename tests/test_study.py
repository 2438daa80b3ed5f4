"""The study: its smoke version end to end, the tuning split, the cache, and the README tables."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from xsam_jax import data, experiment, study
from xsam_jax.study import report, runs, spec

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
POOL_CHILD = ROOT / "tests" / "study_pool_child.py"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke study, with every test-split read during tuning recorded."""
    out = tmp_path_factory.mktemp("study")
    reads = []
    original = data.Dataset.arrays

    def arrays(self, split):
        reads.append((split, tuning[0]))
        return original(self, split)

    tuning = [True]
    stages = study.stages.Study

    class Recorded(stages):
        def final(self, *args):
            tuning[0] = False
            return super().final(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data.Dataset, "arrays", arrays)
        patch.setattr(study, "Study", Recorded)
        results = study.run_study(spec.smoke_plan(), out / "out", cache=out / "cache")
    return results, out, reads


def test_tuning_never_reads_the_test_split(smoke):
    _, _, reads = smoke
    assert ("val", True) in reads  # tuning evaluated on validation data...
    assert ("test", True) not in reads  # ...and never on test data
    assert ("test", False) in reads  # the final runs do


def test_the_choice_is_the_best_mean_validation_accuracy(smoke):
    results, out, _ = smoke
    plan = spec.smoke_plan()
    setting = plan.settings[0]
    cache = runs.Cache(out / "cache")
    for method in plan.methods:
        entry = results["tuning"][setting.name][method.label]
        means = []
        for params, point in zip(method.grid, entry["points"], strict=True):
            # Read the stored runs back independently of the stage's bookkeeping.
            accuracies = [
                cache.get(runs.Job(study.stages.config_for(setting, method, params, seed)))[
                    "final_val_accuracy"
                ]
                for seed in plan.tuning_seeds
            ]
            assert point["val_accuracies"] == accuracies
            means.append(np.mean(accuracies))
        assert entry["choice"] == method.grid[int(np.argmax(means))]
        final = results["final"][setting.name][method.label]
        assert final["params"] == entry["choice"]
        assert [r["config"]["seed"] for r in final["runs"]] == list(plan.final_seeds)
        # Final runs carry the diagnostics and the curves the figures draw.
        assert all(
            np.isfinite(r["lambda_max"]) and len(r["curves"]["test_accuracy"]) == 2
            for r in final["runs"]
        )


def test_late_phase_and_multistep_reuse_the_final_runs(smoke):
    results, _, _ = smoke
    name = spec.smoke_plan().settings[0].name
    full_sam = [
        {k: v for k, v in r.items() if k != "curves"} for r in results["final"][name]["sam"]["runs"]
    ]
    assert results["late_phase"]["sam"]["0.0"] == full_sam
    assert results["multistep"]["sam"]["1"] == full_sam
    late = results["late_phase"]["sam"]["0.5"]
    # Half the steps take one gradient, half take two.
    steps = full_sam[0]["gradient_evaluations"] // 2
    assert all(r["gradient_evaluations"] == steps + steps // 2 for r in late)


def test_rerunning_trains_nothing_and_writes_the_same_results(smoke, monkeypatch):
    results, out, _ = smoke

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(runs, "_train", no_training)
    parts = ("tune", "final", "multistep", "late")  # the geometry part is not cached
    again = study.run_study(spec.smoke_plan(), out / "again", cache=out / "cache", parts=parts)
    for key in ("tuning", "final", "multistep", "late_phase"):
        assert again[key] == results[key]
    first, second = report.tables(results), report.tables(again)
    assert {k: v for k, v in first.items() if k in second} == second
    for name in (
        "accuracy-digits-mlp.png",
        "geometry-digits-mlp.png",
        "late-phase.png",
        "multistep.png",
    ):
        assert (out / "again" / name).read_bytes()[:8] == PNG


def test_the_geometry_part_measures_every_step(smoke):
    results, out, _ = smoke
    geometry = results["geometry"]
    settings = spec.smoke_plan().geometry
    steps_per_epoch = 1437 // 128  # digits, the whole training split
    for label, measured in geometry["steps"].items():
        assert len(measured) == len(settings.seeds)
        for run in measured:
            assert len(run["loss"]) == settings.traced_epochs * steps_per_epoch
            # The turn is α·ψ: α = 1 for SAM (never searched), the searched α for XSAM.
            turn = np.asarray(run["rotation_degrees"])
            expected = np.asarray(run["alpha"]) * np.asarray(run["psi_degrees"])
            if label in ("sam", "xsam"):
                np.testing.assert_allclose(turn, expected, rtol=1e-4, atol=1e-3)
            if label == "sam":
                assert set(run["alpha"]) == {1.0}
            if label == "xsam+cap=30":
                assert turn.max() <= 30.0 + 1e-3
    assert len(geometry["searches"]["alpha_losses"]) == settings.epochs
    assert len(geometry["noise"]["per_batch"]) == settings.noise_batches
    alpha_one = [row for row in geometry["equivalence"]["initial"] if row["alpha"] == 1.0][0]
    assert alpha_one["cos"] == pytest.approx(1.0, abs=1e-6)  # α = 1 is SAM at ρ itself
    assert alpha_one["norm_ratio"] == pytest.approx(1.0, abs=1e-6)
    for name in ("geometry-steps.png", "geometry-searches.png", "geometry-noise.png"):
        assert (out / "out" / name).read_bytes()[:8] == PNG


def test_the_cache_key_follows_the_resolved_config():
    # digits with the 1-D CNN: not tuned by the study, so the papers' radii are the defaults.
    base = experiment.TrainConfig(dataset="digits", model="cnn1d", optimizer="xsam")
    key = runs.Job(base).key()
    # Spelling out a default is the same run; changing anything else is another.
    assert runs.Job(dataclasses.replace(base, rho=0.15, rho_max=0.3)).key() == key
    assert runs.Job(dataclasses.replace(base, rho=0.1)).key() != key
    assert runs.Job(dataclasses.replace(base, seed=1)).key() != key
    assert runs.Job(base, test=True).key() != key


def test_cached_results_keep_their_keys_when_config_fields_are_added():
    """Keys computed by the version that cached the running study's results (5a68771): a
    field added to TrainConfig since must be left out of the key at its old meaning."""
    tuning = experiment.TrainConfig(
        optimizer="xsam",
        model="cnn1d",
        test_size=10_000,
        val_fraction=0.2,
        rho=0.1,
        rho_max=0.2,
        seed=100,
    )
    assert runs.Job(tuning).key() == "3a1056a99d9d763d492d"
    final = experiment.TrainConfig(
        optimizer="sam", dataset="digits", model="mlp", epochs=2, val_fraction=0.2, rho=0.05
    )
    assert runs.Job(final, test=True, diagnostics=True).key() == "7dadc59a0dac2965b19a"
    assert runs.Job(dataclasses.replace(final, perturb_every=2), test=True).key() != (
        runs.Job(final, test=True).key()
    )


def test_every_method_has_a_grid_of_the_same_size():
    assert {len(m.grid) for m in spec.METHODS} == {spec.GRID_SIZE}
    assert not set(spec.TUNING_SEEDS) & set(spec.FINAL_SEEDS)


def test_readme_tables_are_the_committed_results():
    path = ROOT / "benchmarks" / "results" / "study" / "results.json"
    if not path.exists():
        pytest.skip("the study's results are not committed yet")
    results = json.loads(path.read_text())
    readme = (ROOT / "README.md").read_text()
    assert study.readme_with_tables(readme, report.tables(results)) == readme
    assert "<!-- study:results-mnist1d-cnn1d_wide -->" in readme


def test_xsam_train_defaults_are_the_radii_the_study_chose():
    path = ROOT / "benchmarks" / "results" / "study" / "results.json"
    if not path.exists():
        pytest.skip("the study's results are not committed yet")
    results = json.loads(path.read_text())
    assert experiment.TUNED_RADII == report.tuned_radii(results)
    # ... and they reach the runs: MNIST-1D's default run uses the study's XSAM radii.
    choice = results["tuning"]["mnist1d/cnn1d"]["xsam"]["choice"]
    resolved = experiment.TrainConfig().resolved()
    assert (resolved.rho, resolved.rho_max) == (choice["rho"], choice["rho_max"])


def _running(pid: int) -> bool:
    """Whether process `pid` exists and, where /proc says (Linux), is not an unreaped zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): it exists
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # the state follows "(command)"


@pytest.mark.slow
def test_pool_workers_exit_when_their_parent_is_killed(tmp_path):
    """A killed `xsam-study` must not leave its workers training on as orphans."""
    pid_file = tmp_path / "worker.pid"
    parent = subprocess.Popen([sys.executable, str(POOL_CHILD), str(pid_file)])
    worker = None
    try:
        deadline = time.monotonic() + 180  # the worker imports JAX first
        while not pid_file.exists():
            assert parent.poll() is None, f"the pool's parent exited with {parent.returncode}"
            assert time.monotonic() < deadline, "the worker never started its job"
            time.sleep(0.2)
        worker = int(pid_file.read_text())
        assert _running(worker)
        parent.send_signal(signal.SIGKILL)  # no chance to stop its workers
        parent.wait()
        deadline = time.monotonic() + 10  # the worker looks for its parent every second
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(worker), "the worker outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if worker is not None and _running(worker):
            os.kill(worker, signal.SIGKILL)
