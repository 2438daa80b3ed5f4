"""The example scripts run on small settings and produce what they promise."""

import importlib.util
import pathlib

import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_late_phase_example(capsys):
    rows = load("late_phase").main(["--dataset", "digits", "--epochs", "3", "--switch", "0.67"])
    assert [r[0] for r in rows] == ["sgd", "late-sam", "sam"]
    assert all(0.5 < acc <= 1.0 for _, acc, _ in rows)  # 10 digit classes, well above chance
    assert "| late-sam |" in capsys.readouterr().out


def test_plain_jax_example(tmp_path):
    test_loss, xsam_state = load("plain_jax_xsam").main(["--epochs", "3",
                                                         "--plot", str(tmp_path / "a.png")])
    assert np.isfinite(test_loss) and test_loss < np.log(10)  # better than uniform guessing
    assert np.all(np.isfinite(np.asarray(xsam_state.alpha_losses)))  # a search ran
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
