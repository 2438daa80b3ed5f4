"""The example scripts run on small settings and produce what they promise."""

import importlib.util
import pathlib

import numpy as np
import pytest

import xsam_jax as xs
from xsam_jax import experiment

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_late_phase_example(capsys, monkeypatch):
    runs = {}
    original_run = experiment.run

    def recorded_run(config, **kwargs):
        name = "late-sam" if config.late_phase_start is not None else config.optimizer
        runs[name] = original_run(config, **kwargs)
        return runs[name]

    monkeypatch.setattr(experiment, "run", recorded_run)
    rows = load("late_phase").main(["--dataset", "digits", "--epochs", "3", "--switch", "0.67"])
    assert [r[0] for r in rows] == ["sgd", "late-sam", "sam"]
    for name, accuracy, seconds in rows:
        assert accuracy == runs[name]["final_test_accuracy"]
        assert seconds == runs[name]["seconds"]
    assert runs["late-sam"]["config"]["late_phase_start"] == 0.67
    assert "| late-sam |" in capsys.readouterr().out

    # 3 epochs of 11 steps, SAM from step int(0.67 * 33) = 22: late-phase SAM is SGD for two
    # epochs (rho = 0 returns the clean gradient), then leaves it; SAM leaves it at once.
    def losses(name):
        return np.array([h["train_loss"] for h in runs[name]["history"]])

    sgd, late, sam = losses("sgd"), losses("late-sam"), losses("sam")
    np.testing.assert_allclose(late[:2], sgd[:2], rtol=1e-6)
    assert abs(late[2] - sgd[2]) > 1e-4
    assert abs(sam[0] - sgd[0]) > 1e-4


def test_plain_jax_example(tmp_path):
    test_loss, xsam_state = load("plain_jax_xsam").main(
        ["--epochs", "3", "--plot", str(tmp_path / "a.png")]
    )
    assert np.isfinite(test_loss) and test_loss < np.log(10)  # better than uniform guessing
    # The last search: alpha* is the first maximum of its candidate losses on the grid.
    losses = np.asarray(xsam_state.alpha_losses)
    assert np.all(np.isfinite(losses))
    grid = np.asarray(xs.alpha_grid(2.0, 0.1))
    assert float(xsam_state.alpha) == pytest.approx(grid[np.argmax(losses)])
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
