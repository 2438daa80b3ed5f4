"""`xsam-train` as a user runs it: outputs, resume, comparisons, devices and bad flags."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import xsam_jax as xs
from xsam_jax import cli, data, experiment, training
from xsam_jax._src.validation import InvalidArgumentError

FAST = ["--dataset", "digits", "--epochs", "2", "--no-progress"]


def read(path):
    return json.loads((path / "metrics.json").read_text())


def restore_all(run_dir):
    """{step: TrainState} of every checkpoint a run kept, read here with Checkpointer."""
    config = experiment.TrainConfig(**read(run_dir)["config"])
    with training.Checkpointer(run_dir / "checkpoint") as checkpointer:
        steps = sorted(checkpointer._manager.all_steps())
        return {s: checkpointer.restore(experiment.train._Run(config).state, step=s) for s in steps}


def xsam_state(state):
    (found,) = [s for s in state.opt_state if isinstance(s, xs.XSAMState)]
    return found


def test_train_writes_metrics_plot_and_checkpoint(tmp_path):
    assert cli.main([*FAST, "--optimizer", "xsam", "--out", str(tmp_path)]) == 0
    metrics = read(tmp_path)
    assert set(metrics) == {
        "config",
        "history",
        "final_test_accuracy",
        "final_train_accuracy",
        "seconds",
        "compile_seconds",
        "gradient_evaluations",
        "probe_evaluations",
    }
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    keys = {
        "epoch",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "alpha",
        "cos_psi",
        "rotation_degrees",
        "alpha_losses",
        "seconds",
    }
    assert all(set(h) == keys for h in metrics["history"])
    assert metrics["final_test_accuracy"] == metrics["history"][-1]["test_accuracy"]
    # Resolved hyperparameters are stored, so a later change of a default changes no old run.
    config = metrics["config"]
    # digits' MLP takes the study's XSAM radii (README, "Results": ρ = ρ_max = 0.05).
    assert (config["rho"], config["rho_max"], config["model"]) == (0.05, 0.05, "mlp")
    # 2 epochs of 11 steps, each a clean and an ascent gradient; one 21-probe search an epoch.
    assert metrics["gradient_evaluations"] == 2 * 22 and metrics["probe_evaluations"] == 2 * 21
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    # The last two checkpoints are kept: one per epoch here (digits: 11 steps of 128).
    states = restore_all(tmp_path)
    assert sorted(states) == [11, 22]
    grid = np.round(np.arange(21) * 0.1, 6)
    for h, state in zip(metrics["history"], states.values(), strict=True):
        # α* in metrics.json is the XSAMState's, the first maximum of its last search's losses.
        found = xsam_state(state)
        assert h["alpha"] == float(found.alpha)
        assert float(found.alpha) == pytest.approx(grid[np.argmax(found.alpha_losses)])
        np.testing.assert_array_equal(h["alpha_losses"], np.asarray(found.alpha_losses))
        assert h["cos_psi"] == float(found.cos_psi)
        psi = np.degrees(np.arccos(float(found.cos_psi)))
        assert h["rotation_degrees"] == pytest.approx(float(found.alpha) * psi, rel=1e-6)
    # The final test accuracy is that of the saved model on the whole test split.
    x, y = data.load("digits", seed=0).arrays("test")
    final = states[22]
    model = nnx.merge(final.graphdef, final.params, final.model_state)
    logits = nnx.view(
        model, use_running_average=True, deterministic=True, raise_if_not_found=False
    )(x)
    assert metrics["final_test_accuracy"] == pytest.approx(
        float(np.mean(np.argmax(logits, -1) == y)), abs=1e-6
    )


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    """An uninterrupted 3-epoch XSAM run: (flags, its directory)."""
    flags = [*FAST, "--epochs", "3", "--optimizer", "xsam"]
    full = tmp_path_factory.mktemp("full")
    assert cli.main([*flags, "--out", str(full)]) == 0
    return flags, full


def interrupt_after_two_epochs(flags, out, monkeypatch):
    saves = []
    original_save = training.Checkpointer.save

    def save_then_interrupt(self, state, **kw):
        original_save(self, state, **kw)
        saves.append(1)
        if len(saves) == 2:  # Ctrl-C after the second epoch's checkpoint
            self.wait_until_finished()
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(training.Checkpointer, "save", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            cli.main([*flags, "--out", str(out)])


@pytest.mark.parametrize("damaged", [False, True])
def test_interrupted_run_resumes_bit_exactly(
    three_epochs, tmp_path, monkeypatch, capfd, damage, damaged
):
    """Also when the latest checkpoint is damaged: one line, one epoch redone, same result."""
    flags, full = three_epochs
    cut = tmp_path / "cut"
    interrupt_after_two_epochs(flags, cut, monkeypatch)
    if damaged:
        first = damage(cut / "checkpoint" / "22" / "state")[0]
    capfd.readouterr()
    assert cli.main([*flags, "--out", str(cut), "--resume"]) == 0
    err = capfd.readouterr().err
    if damaged:
        assert err.splitlines() == [
            f"checkpoint step 22: {first} changed since it was saved; restoring step 11"
        ]
    else:
        assert err == ""

    def without_time(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert without_time(read(cut)["history"]) == without_time(read(full)["history"])
    restored = [restore_all(path)[33] for path in (full, cut)]
    for a, b in zip(
        jax.tree.leaves(restored[0].params), jax.tree.leaves(restored[1].params), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_every_saves_on_its_epochs_and_after_the_last(tmp_path, monkeypatch):
    saved = []
    original_save = training.Checkpointer.save

    def recording_save(self, state, **kw):
        saved.append(int(state.step))
        original_save(self, state, **kw)

    monkeypatch.setattr(training.Checkpointer, "save", recording_save)
    flags = [*FAST, "--epochs", "3", "--optimizer", "sgd", "--out", str(tmp_path / "run")]
    assert cli.main([*flags, "--checkpoint-every", "2"]) == 0
    assert saved == [22, 33]  # after epoch 2 (11 steps an epoch) and after the last, 3
    with pytest.raises(InvalidArgumentError, match="checkpoint_every must be an integer >= 1"):
        experiment.run(experiment.TrainConfig(dataset="digits"), checkpoint_every=0)


def test_resume_with_every_checkpoint_damaged_is_one_clear_error(
    three_epochs, tmp_path, monkeypatch, capfd, damage
):
    flags, _ = three_epochs
    cut = tmp_path / "cut"
    interrupt_after_two_epochs(flags, cut, monkeypatch)
    for step in ("11", "22"):
        damage(cut / "checkpoint" / step / "state")
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*flags, "--out", str(cut), "--resume"])
    assert exit_info.value.code == 2
    out = capfd.readouterr()
    fallback, error = out.err.splitlines()
    assert fallback.startswith("checkpoint step 22: ") and fallback.endswith("restoring step 11")
    assert error.startswith(
        f"xsam-train: error: no readable checkpoint in {cut / 'checkpoint'}: checkpoint step 22: "
    )
    assert "; checkpoint step 11: " in error and "Traceback" not in out.err + out.out


def test_load_run_falls_back_from_a_damaged_final_checkpoint(three_epochs, capfd, damage, tmp_path):
    _, full = three_epochs
    copy = tmp_path / "run"
    shutil.copytree(full, copy)
    damage(copy / "checkpoint" / "33" / "state")
    capfd.readouterr()
    config, built = experiment.load_run(copy)
    assert capfd.readouterr().err.endswith("changed since it was saved; restoring step 22\n")
    assert config == experiment.TrainConfig.from_dict(read(full)["config"])
    want = restore_all(full)[22]
    assert int(built.state.step) == 22
    for a, b in zip(jax.tree.leaves(built.state.params), jax.tree.leaves(want.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_compare_with_seeds_writes_intervals_paired_differences_and_plots(tmp_path, capsys):
    assert (
        cli.main(
            [
                *FAST,
                "--epochs",
                "1",
                "--compare",
                "sgd,late-sam,xsam+adaptive",
                "--seeds",
                "0-2",
                "--baseline",
                "sgd",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| sgd |" in out and "| late-sam |" in out and "| xsam+adaptive |" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["baseline"] == "sgd"
    sgd = summary["variants"]["sgd"]
    accs = [read(tmp_path / f"sgd_seed{s}")["final_test_accuracy"] for s in (0, 1, 2)]
    assert sgd["seeds"] == [0, 1, 2] and sgd["test_accuracies"] == accs
    assert sgd["mean_test_accuracy"] == pytest.approx(np.mean(accs))
    # Student t, 2 degrees of freedom: t_0.975 = 4.303 (a table's value).
    assert sgd["ci95"] == pytest.approx(4.303 * np.std(accs, ddof=1) / np.sqrt(3), rel=1e-3)
    late = [read(tmp_path / f"late-sam_seed{s}")["final_test_accuracy"] for s in (0, 1, 2)]
    paired = summary["paired"]["late-sam"]
    differences = np.subtract(late, accs)
    assert paired["differences"] == pytest.approx(differences.tolist())
    assert paired["mean_difference"] == pytest.approx(differences.mean())
    assert paired["ci95"] == pytest.approx(4.303 * differences.std(ddof=1) / np.sqrt(3), rel=1e-3)
    # The variant's modifiers reached its run: XSAM with the ASAM ascent.
    config = read(tmp_path / "xsam+adaptive_seed0")["config"]
    assert (config["optimizer"], config["adaptive"]) == ("xsam", True)
    for name in ("compare_curves.png", "compare_bars.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--optimizer", "adamw"], "argument --optimizer: unknown method 'adamw' in 'adamw'"),
        (["--compare", "sam,foo"], "argument --compare: unknown method 'foo' in 'foo'"),
        (["--compare", "sam+fast"], "argument --compare: unknown modifier 'fast' in 'sam+fast'"),
        (["--seeds", "0-x"], "argument --seeds: expected seeds like 0,1,2 or 0-4, got '0-x'"),
        (
            ["--compare", "sam,xsam", "--baseline", "sgd"],
            "--baseline must be one of the --compare variants, got 'sgd'",
        ),
        (
            ["--optimizer", "sgd", "--adaptive"],
            "--adaptive must be unset with --optimizer sgd (it modifies a sharpness-aware method), "
            "got True",
        ),
        (["--val-fraction", "1"], "--val-fraction must be a finite float in (0, 1), got 1.0"),
        (["--max-rotation", "0"], "--max-rotation must be a finite float in (0, 180], got 0.0"),
        (
            ["--optimizer", "sam", "--xsam-reuse", "rotation"],
            "--xsam-reuse must be unset unless --optimizer xsam, got 'rotation'",
        ),
        (["--test-size", "5000"], "--test-size must be unset for --dataset digits"),
        (["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["--devices", "3"], "--batch-size must be divisible by --devices (3), got 128"),
        (["--m-sharpness", "7"], "--m-sharpness must be a divisor of --batch-size (128), got 7"),
        (
            ["--optimizer", "sgd", "--m-sharpness", "16"],
            "--m-sharpness must be unset with --optimizer sgd (it modifies a sharpness-aware "
            "method), got 16",
        ),
        (["--resume"], "--resume needs --out"),
        (["--checkpoint-every", "0"], "--checkpoint-every must be an integer >= 1, got 0"),
        (["--perturb-every", "0"], "--perturb-every must be an integer >= 1, got 0"),
        (
            ["--perturb-probability", "0"],
            "--perturb-probability must be a finite float in (0, 1], got 0.0",
        ),
        (
            ["--perturb-every", "2", "--perturb-probability", "0.5"],
            "--perturb-probability must be unset with --perturb-every, got 0.5",
        ),
        (
            ["--optimizer", "sgd+every=2"],
            "--perturb-every must be unset with --optimizer sgd (it modifies a sharpness-aware "
            "method), got 2",
        ),
        (
            ["--optimizer", "sam+random=0.5", "--seed", "4294967296"],
            "--seed must be an integer in [0, 4294967295], got 4294967296",
        ),
        (
            ["--optimizer", "sam+every=2.5"],
            "argument --optimizer: +every=N needs a whole number of steps N, got 'every=2.5' in",
        ),
        (["--rho", "-1"], "--rho must be a finite float >= 0, got -1.0"),
        (["--momentum", "1"], "--momentum must be a finite float in [0, 1), got 1.0"),
        (["--wsam-gamma", "1"], "--wsam-gamma must be a finite float in [0, 1), got 1.0"),
        (["--fsam-sigma", "-1"], "--fsam-sigma must be a finite float >= 0, got -1.0"),
        (["--fsam-lambda", "2"], "--fsam-lambda must be a finite float in [0, 1], got 2.0"),
        (["--vasso-theta", "2"], "--vasso-theta must be a finite float in [0, 1], got 2.0"),
        (["--fisher-eta", "-1"], "--fisher-eta must be a finite float >= 0, got -1.0"),
        (["--looksam-every", "0"], "--looksam-every must be an integer >= 1, got 0"),
        (["--looksam-alpha", "-1"], "--looksam-alpha must be a finite float >= 0, got -1.0"),
        (
            ["--optimizer", "fisher-sam", "--adaptive"],
            "--adaptive must be unset with --optimizer fisher-sam (its ball is the Fisher's), "
            "got True",
        ),
        (
            ["--optimizer", "sgd", "--perturbation-mask", "norm"],
            "--perturbation-mask must be unset with --optimizer sgd",
        ),
        (
            ["--optimizer", "sam", "--model", "mlp", "--perturbation-mask", "norm"],
            "--perturbation-mask must be unset for --model mlp, which has no normalisation "
            "layer, got 'norm'",
        ),
        (
            ["--perturbation-mask", "all"],
            "argument --perturbation-mask: invalid choice: 'all'",
        ),
        (
            ["--late-phase-start", "1.5"],
            "--late-phase-start must be a finite float in [0, 1], got 1.5",
        ),
        (
            ["--model", "resnet1000"],
            "--model must be one of 'cnn1d', 'cnn1d_wide', 'densenet121', ",
        ),
        (
            ["--model", "resnet18"],
            "--model must be one of cnn1d, cnn1d_wide, mlp, transformer for "
            "digits, whose "
            "examples have shape (64,), got 'resnet18'",
        ),
        (
            ["--batch-size", "2000"],
            "--batch-size must be at most the 1437 training examples, got 2000",
        ),
    ],
)
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
    assert "cifar10" in err and "--download" in err and "Traceback" not in err


@pytest.mark.slow
def test_module_entry_point_with_simulated_devices(tmp_path):
    """`python -m xsam_jax --devices 2` trains data-parallel on two simulated CPU devices."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "xsam_jax",
            *FAST,
            "--epochs",
            "1",
            "--devices",
            "2",
            "--optimizer",
            "sam",
            "--out",
            str(tmp_path),
            "--jit-cache",
            str(tmp_path / "xla"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "final test accuracy" in done.stdout
    assert read(tmp_path)["config"]["devices"] == 2
    # The compiled train step was written to the persistent cache for the next run.
    assert any(p.name.startswith("jit_train_step") for p in (tmp_path / "xla").iterdir())
