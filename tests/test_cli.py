"""`xsam-train` as a user runs it: outputs, resume, comparisons, devices and bad flags."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from xsam_jax import cli, experiment, training

FAST = ["--dataset", "digits", "--epochs", "2", "--no-progress"]


def read(path):
    return json.loads((path / "metrics.json").read_text())


def test_train_writes_metrics_plot_and_checkpoint(tmp_path):
    assert cli.main([*FAST, "--optimizer", "xsam", "--out", str(tmp_path)]) == 0
    metrics = read(tmp_path)
    assert set(metrics) == {"config", "history", "final_test_accuracy"}
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    keys = {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "alpha",
            "seconds"}
    assert all(set(h) == keys for h in metrics["history"])
    # XSAM searched once per epoch on a grid of 0.1 steps in [0, 2].
    assert all(0.0 <= h["alpha"] <= 2.0 for h in metrics["history"])
    assert metrics["final_test_accuracy"] == metrics["history"][-1]["test_accuracy"]
    assert metrics["final_test_accuracy"] > 0.3  # 10 classes: well above chance after 2 epochs
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "checkpoint").is_dir()


def test_interrupted_run_resumes_bit_exactly(tmp_path, monkeypatch):
    full, cut = tmp_path / "full", tmp_path / "cut"
    flags = [*FAST, "--epochs", "3", "--optimizer", "xsam"]
    assert cli.main([*flags, "--out", str(full)]) == 0

    saves = []
    original_save = training.Checkpointer.save

    def save_then_interrupt(self, state, **kw):
        original_save(self, state, **kw)
        saves.append(1)
        if len(saves) == 2:  # Ctrl-C after the second epoch's checkpoint
            self.wait_until_finished()
            raise KeyboardInterrupt

    monkeypatch.setattr(training.Checkpointer, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        cli.main([*flags, "--out", str(cut)])
    monkeypatch.setattr(training.Checkpointer, "save", original_save)
    assert cli.main([*flags, "--out", str(cut), "--resume"]) == 0

    def without_time(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert without_time(read(cut)["history"]) == without_time(read(full)["history"])
    config = experiment.TrainConfig(**read(full)["config"])
    restored = []
    for path in (full, cut):
        with training.Checkpointer(path / "checkpoint") as ckpt:
            template = experiment._Run(config).state
            restored.append(ckpt.restore(template))
    for a, b in zip(jax.tree.leaves(restored[0].params), jax.tree.leaves(restored[1].params),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_compare_with_seeds_prints_a_table(tmp_path, capsys):
    assert cli.main([*FAST, "--epochs", "1", "--compare", "sgd,late-sam", "--seeds", "0,1",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| sgd |" in out and "| late-sam |" in out
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert summary["sgd"]["seeds"] == 2
    runs = [read(tmp_path / f"sgd_seed{s}")["final_test_accuracy"] for s in (0, 1)]
    assert summary["sgd"]["mean"] == pytest.approx(np.mean(runs))
    assert (tmp_path / "compare.png").stat().st_size > 0


@pytest.mark.parametrize("flags,message", [
    (["--optimizer", "adamw"], "argument --optimizer: invalid choice: 'adamw'"),
    (["--compare", "sam,foo"], "argument --compare: unknown optimizer 'foo'"),
    (["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["--devices", "3"], "--batch-size must be divisible by --devices (3), got 128"),
    (["--m-sharpness", "7"], "--m-sharpness must be a divisor of --batch-size (128), got 7"),
    (["--optimizer", "sgd", "--m-sharpness", "16"],
     "--m-sharpness must be unset with --optimizer sgd (it needs a sharpness-aware optimizer), "
     "got 16"),
    (["--resume"], "--resume needs --out"),
    (["--rho", "-1"], "--rho must be a finite float >= 0, got -1.0"),
    (["--momentum", "1"], "--momentum must be a finite float in [0, 1), got 1.0"),
    (["--wsam-gamma", "1"], "--wsam-gamma must be a finite float in [0, 1), got 1.0"),
    (["--late-phase-start", "1.5"], "--late-phase-start must be a finite float in [0, 1], got 1.5"),
    (["--model", "resnet1000"], "--model must be one of 'cnn1d', 'densenet121', "),
])
def test_bad_flags_get_a_one_line_error(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*FAST, *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    # argparse prints its usage first; the error itself is the last line.
    assert err.splitlines()[-1].startswith("xsam-train: error: ")
    assert message in err.splitlines()[-1] and "Traceback" not in err


def test_missing_tfds_dataset_names_it_and_how_to_prepare(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert "cifar10" in err and "download_and_prepare" in err and "Traceback" not in err


@pytest.mark.slow
def test_module_entry_point_with_simulated_devices(tmp_path):
    """`python -m xsam_jax --devices 2` trains data-parallel on two simulated CPU devices."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "xsam_jax", *FAST, "--epochs", "1", "--devices", "2",
         "--optimizer", "sam", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "final test accuracy" in done.stdout
    assert read(tmp_path)["config"]["devices"] == 2
