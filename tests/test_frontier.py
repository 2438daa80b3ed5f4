"""benchmarks/frontier.py: its plan is the study's where they overlap; a smoke run end to end."""

import dataclasses
import importlib.util
import json
import pathlib

from xsam_jax import data, experiment, study
from xsam_jax.study import spec

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("frontier", ROOT / "benchmarks" / "frontier.py")
frontier = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(frontier)


def test_the_plan_is_the_studys_setting_seeds_and_methods():
    plan = frontier.frontier_plan()
    full = spec.full_plan()
    assert plan.settings == (full.setting("mnist1d/cnn1d"),)
    assert (plan.tuning_seeds, plan.final_seeds) == (full.tuning_seeds, full.final_seeds)
    assert len(plan.final_seeds) >= 5
    # The study's very methods and grids: their runs are the study's cached runs.
    for label in ("sgd", "sam", "xsam"):
        assert plan.method(label) == full.method(label)
    assert {len(m.grid) for m in plan.methods} == {spec.GRID_SIZE}
    labels = [m.label for m in plan.methods]
    assert labels == [*frontier.STUDY_METHODS, *(m.label for m in frontier.OTHER_METHODS)]
    # Every method is one `xsam-train` runs, with fields `TrainConfig` has.
    fields = {f.name for f in dataclasses.fields(experiment.TrainConfig)}
    for method in plan.methods:
        assert method.fields.get("optimizer", "sgd") in experiment.METHODS
        assert set(method.fields) <= fields


def test_smoke_frontier_end_to_end(tmp_path):
    smoke = frontier.frontier_plan(smoke=True)
    methods = tuple(
        dataclasses.replace(smoke.method(label), grid=smoke.method(label).grid[:1])
        for label in ("sgd", "sam+every=2")
    )
    plan = dataclasses.replace(smoke, methods=methods, final_seeds=(0, 1))
    assert [m.label for m in plan.references] == [spec.RECIPE_SGD.label]
    results = frontier.run_frontier(
        plan, tmp_path / "out", cache=tmp_path / "cache", time_rounds=1, log=print
    )
    saved = json.loads((tmp_path / "out" / "frontier.json").read_text())
    assert saved["methods"] == json.loads(json.dumps(results["methods"]))
    sgd, every2 = saved["methods"]["sgd"], saved["methods"]["sam+every=2"]
    # digits with a fifth held out for validation, batches of 128, 2 epochs.
    train = data.load("digits", seed=0).split_validation(spec.VAL_FRACTION, seed=0)
    steps = 2 * (len(train.y_train) // 128)
    assert sgd["gradient_evaluations"] == steps
    assert every2["gradient_evaluations"] == steps + (steps + 1) // 2
    assert len(sgd["test_accuracies"]) == 2
    # SGD is strictly the cheapest by gradients: nothing can dominate it.
    assert sgd["on_gradient_frontier"]
    # The untuned reference as cheap as SGD is shown, never on a frontier.
    reference = saved["methods"][spec.RECIPE_SGD.label]
    assert reference["reference"] and not sgd["reference"]
    assert reference["gradient_evaluations"] == steps
    assert not (reference["on_gradient_frontier"] or reference["on_time_frontier"])
    # The time axis is the timing pass's (one run each), the runs' own kept apart.
    assert saved["timing"] == {"rounds": 1, "seed": 0}
    for entry in saved["methods"].values():
        assert entry["seconds"] > 0 and entry["seconds_in_runs"] > 0
        assert entry["seconds"] != entry["seconds_in_runs"]
    for name in ("frontier-gradients.png", "frontier-seconds.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = frontier.table(saved["methods"])
    assert table.count("\n") == 4 and "| sam+every=2 | rho=" in table
    assert f"| {spec.RECIPE_SGD.label} (untuned reference) | lr=0.05 |" in table
    readme = (ROOT / "README.md").read_text()
    refreshed = study.readme_with_tables(readme, {"table": table}, prefix="frontier")
    assert table in refreshed and refreshed != readme
