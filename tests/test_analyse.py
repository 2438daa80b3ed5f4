"""`xsam-analyse` on real digits runs, every number checked against an independent computation.

The runs are restored here without `experiment.load_run` (model and optimizer rebuilt by hand,
the checkpoint read with `Checkpointer`), and the loss is written directly on the flattened
parameters over the examples the report says it used. The digits MLP has no BatchNorm, so the
train-mode loss on equal batches is just the mean cross-entropy over those examples and eval
mode equals train mode.
"""

import json

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import optax
import pytest
import scipy.sparse.linalg
from flax import nnx
from jax.flatten_util import ravel_pytree

import xsam_jax as xs
from xsam_jax import analyse, cli, data, experiment, models, training
from xsam_jax.analyse import compute

FAST = ["--dataset", "digits", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name in ("sgd", "xsam"):
        assert cli.main([*FAST, "--optimizer", name, "--out", str(root / name)]) == 0
    return root


def restore(run_dir):
    """(config, dataset, state) of a run, rebuilt independently of `load_run`."""
    config = experiment.TrainConfig(**json.loads((run_dir / "metrics.json").read_text())["config"])
    dataset = data.load(config.dataset, seed=config.seed)
    model = models.create("mlp", dataset.num_classes, in_features=64, rngs=nnx.Rngs(config.seed))
    # The schedule length does not change the optimizer state's structure.
    state = training.TrainState.create(model, experiment.make_optimizer(config, 1), rng=config.seed)
    with training.Checkpointer(run_dir / "checkpoint") as checkpointer:
        return config, dataset, checkpointer.restore(state)


def flat_loss(state, x, y):
    """(loss of the flat parameter vector on (x, y), θ as a flat vector), eval = train mode."""
    flat, unravel = ravel_pytree(state.params)

    def loss(w):
        logits = nnx.merge(state.graphdef, unravel(w), state.model_state)(jnp.asarray(x))
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean()

    return loss, flat


def accuracy(state, w, x, y):
    flat, unravel = ravel_pytree(state.params)
    logits = nnx.merge(state.graphdef, unravel(w), state.model_state)(jnp.asarray(x))
    return float(jnp.mean(jnp.argmax(logits, -1) == y))


@pytest.fixture(scope="module")
def report(runs):
    """`xsam-analyse run RUN_DIR` on the XSAM run, through the CLI: its analysis.json."""
    run_dir = runs / "xsam"
    status = analyse.main(["run", str(run_dir), "--no-progress", "--trace-samples", "200"])
    assert status == 0
    return json.loads((run_dir / "analysis" / "analysis.json").read_text())


def test_report_files_and_settings(runs, report):
    # What the figures show is checked in test_plotting; here, that all three were written.
    out = runs / "xsam" / "analysis"
    for name in ("alpha_curve.png", "proposition1.png", "alpha_per_epoch.png"):
        assert matplotlib.image.imread(out / name).ndim == 3
    settings = report["settings"]
    # XSAM's radii on digits, the study's (README "Results"); 1000 examples in 8 batches of 125.
    assert (settings["rho"], settings["rho_max"]) == (0.05, 0.05)
    assert (settings["examples"], settings["batches"], settings["batch_size"]) == (1000, 8, 125)
    indices = report["train_indices"]
    assert len(set(indices)) == 1000 and max(indices) < 1437  # digits: 1437 training examples
    metrics = json.loads((runs / "xsam" / "metrics.json").read_text())
    assert report["config"] == metrics["config"]
    assert report["final_test_accuracy"] == metrics["final_test_accuracy"]


def test_final_accuracy_and_alpha_star_are_those_of_the_saved_state(runs, report):
    """The run's numbers against the checkpoint, evaluated and read here independently."""
    _, dataset, state = restore(runs / "xsam")
    x_test, y_test = dataset.arrays("test")
    flat = ravel_pytree(state.params)[0]
    metrics = json.loads((runs / "xsam" / "metrics.json").read_text())
    assert metrics["final_test_accuracy"] == pytest.approx(
        accuracy(state, flat, x_test, y_test), abs=1e-6
    )
    (xsam_state,) = [s for s in state.opt_state if isinstance(s, xs.XSAMState)]
    assert report["run_alpha_star"] == float(xsam_state.alpha)
    assert metrics["history"][-1]["alpha"] == float(xsam_state.alpha)


def test_hessian_matches_arpack_and_an_independent_hutchinson(runs, report):
    _, dataset, state = restore(runs / "xsam")
    assert report["step"] == int(state.step)
    x, y = dataset.arrays("train")
    idx = np.array(report["train_indices"])
    loss, flat = flat_loss(state, x[idx], y[idx])
    hvp = jax.jit(lambda v: jax.jvp(jax.grad(loss), (flat,), (v,))[1])

    # ARPACK's implicitly restarted Lanczos on the same HVPs (the late-phase paper's eigsh).
    n = flat.size
    operator = scipy.sparse.linalg.LinearOperator(
        (n, n),
        dtype=np.float64,
        matvec=lambda v: np.asarray(hvp(jnp.asarray(v.ravel(), jnp.float32)), np.float64),
    )
    reference = np.sort(
        scipy.sparse.linalg.eigsh(operator, k=3, which="LA", tol=1e-6, return_eigenvectors=False)
    )[::-1]
    eigenvalues = np.array(report["hessian"]["eigenvalues"])
    assert np.all(np.diff(eigenvalues) <= 0)
    np.testing.assert_allclose(eigenvalues, reference, rtol=1e-3)
    assert report["hessian"]["lambda_max"] == eigenvalues[0]

    # 1000 fresh Rademacher probes (the exact diagonal, 17k HVPs, takes 1.5 min on 2 cores):
    # the two estimates of tr H must agree within 4 standard errors of their difference.
    probes = jax.random.rademacher(jax.random.key(1234), (1000, n), jnp.float32)
    quads = np.asarray(
        jax.jit(lambda z: jax.lax.map(lambda v: v @ hvp(v), z, batch_size=100))(probes), np.float64
    )
    stderr = np.hypot(report["hessian"]["trace_stderr"], quads.std(ddof=1) / np.sqrt(1000))
    assert abs(report["hessian"]["trace"] - quads.mean()) <= 4 * stderr
    assert len(report["hessian"]["trace_samples"]) == 200


def test_proposition1_and_alpha_curve_match_direct_evaluation(runs, report):
    _, dataset, state = restore(runs / "xsam")
    x, y = dataset.arrays("train")
    idx = np.array(report["train_indices"])
    loss, theta = flat_loss(state, x[idx], y[idx])
    rho, rho_m = report["settings"]["rho"], report["settings"]["rho_max"]
    g0 = jax.grad(loss)(theta)
    v0 = g0 / jnp.linalg.norm(g0)
    g1 = jax.grad(loss)(theta + rho * v0)
    v1 = g1 / jnp.linalg.norm(g1)
    prop = report["proposition1"]
    np.testing.assert_allclose(report["loss"], float(loss(theta)), rtol=1e-5)
    np.testing.assert_allclose(prop["loss_along_g0"], float(loss(theta + rho_m * v0)), rtol=1e-5)
    np.testing.assert_allclose(prop["loss_along_g1"], float(loss(theta + rho_m * v1)), rtol=1e-5)
    assert prop["ratio"] == pytest.approx(prop["loss_along_g1"] / prop["loss_along_g0"])
    # Every radius of the figure, along g0.
    along_g0 = [float(loss(theta + r * v0)) for r in prop["radii"]]
    np.testing.assert_allclose(prop["along_g0"], along_g0, rtol=1e-5)

    # The slerp v(alpha) = [sin((1 - alpha) psi) v0 + sin(alpha psi) v1] / sin psi, by hand.
    psi = float(jnp.arccos(jnp.clip(v0 @ v1, -1.0, 1.0)))
    curve = report["alpha_curve"]
    expected = []
    for alpha in curve["alphas"]:
        v = (np.sin((1 - alpha) * psi) * v0 + np.sin(alpha * psi) * v1) / np.sin(psi)
        expected.append(float(loss(theta + rho_m * v)))
    np.testing.assert_allclose(curve["losses"], expected, rtol=1e-4)
    assert curve["alpha_star"] == pytest.approx(curve["alphas"][int(np.argmax(expected))])


def test_interpolation_endpoints_and_midpoint_are_the_runs(runs, capsys):
    capsys.readouterr()
    out = runs / "interp"
    assert (
        analyse.main(
            ["valley", str(runs / "sgd"), str(runs / "xsam"), "--out", str(out), "--no-progress"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert matplotlib.image.imread(out / "interpolation.png").ndim == 3
    result = json.loads((out / "interpolation.json").read_text())
    # The printed report carries the JSON's numbers.
    assert f"= {result['train_loss_barrier']:.4g}" in printed
    assert f"{result['curvature_at_a']:.4g} at A, {result['curvature_at_b']:.4g} at B" in printed
    lambdas = np.array(result["lambdas"])
    assert len(lambdas) == 29 and lambdas[0] == pytest.approx(-0.2)
    assert lambdas[-1] == pytest.approx(1.2)

    _, dataset, state_a = restore(runs / "sgd")
    _, _, state_b = restore(runs / "xsam")
    theta_a, theta_b = ravel_pytree(state_a.params)[0], ravel_pytree(state_b.params)[0]
    split = {
        s: (
            dataset.arrays(s)[0][result[f"{s}_indices"]],
            dataset.arrays(s)[1][result[f"{s}_indices"]],
        )
        for s in ("train", "test")
    }
    assert len(split["test"][1]) == 360  # capped at the test split

    def evaluate(w):
        values = {}
        for s, (x, y) in split.items():
            values[f"{s}_loss"] = float(flat_loss(state_a, x, y)[0](w))
            values[f"{s}_accuracy"] = accuracy(state_a, w, x, y)
        return values

    for lam, w in ((0.0, theta_a), (1.0, theta_b), (0.5, 0.5 * (theta_a + theta_b))):
        i = int(np.flatnonzero(np.isclose(lambdas, lam))[0])
        for name, value in evaluate(w).items():
            assert result["values"][name][i] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    for name, row in (("at_a", evaluate(theta_a)), ("at_b", evaluate(theta_b))):
        assert result[name] == pytest.approx(row, rel=1e-5)

    # The valley test's curvature at A: a second difference of losses evaluated here.
    h = 0.05
    around_a = [
        flat_loss(state_a, *split["train"])[0](theta_a + t * (theta_b - theta_a))
        for t in (-h, 0.0, h)
    ]
    curvature = float(around_a[0] - 2 * around_a[1] + around_a[2]) / h**2
    assert result["curvature_at_a"] == pytest.approx(curvature, rel=2e-2, abs=1e-3)
    assert result["distance"] == pytest.approx(float(jnp.linalg.norm(theta_b - theta_a)), rel=1e-5)


def test_interpolating_different_models_is_a_one_line_error(runs, capsys):
    other = runs / "cnn"
    assert cli.main([*FAST, "--optimizer", "sgd", "--model", "cnn1d", "--out", str(other)]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        analyse.main(["valley", str(runs / "sgd"), str(other), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "same model and dataset" in err


def test_old_forms_still_work_with_a_deprecation_notice(runs, capsys):
    capsys.readouterr()
    cheap = ["--examples", "20", "--no-progress"]
    old_run = [str(runs / "sgd"), *cheap, "--trace-samples", "2", "--num-iters", "3", "--out"]
    assert analyse.main([*old_run, str(runs / "old_run")]) == 0
    assert (
        analyse.main(
            [
                "--compare",
                str(runs / "sgd"),
                str(runs / "xsam"),
                *cheap,
                "--num",
                "3",
                "--out",
                str(runs / "old_valley"),
            ]
        )
        == 0
    )
    notices = capsys.readouterr().err.splitlines()
    assert notices == [
        "xsam-analyse: `xsam-analyse RUN_DIR` is deprecated, use `xsam-analyse run RUN_DIR`",
        "xsam-analyse: `xsam-analyse --compare DIR_A DIR_B` is deprecated, use "
        "`xsam-analyse valley DIR_A DIR_B`",
    ]
    old = json.loads((runs / "old_run" / "analysis.json").read_text())
    assert (old["run_dir"], old["settings"]["trace_samples"]) == (str(runs / "sgd"), 2)
    valley = json.loads((runs / "old_valley" / "interpolation.json").read_text())
    assert (valley["run_a"]["dir"], valley["run_b"]["dir"]) == (
        str(runs / "sgd"),
        str(runs / "xsam"),
    )
    assert valley["lambdas"] == pytest.approx([-0.2, 0.5, 1.2])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "{root}/missing"], "xsam-analyse: error: {root}/missing: no such directory"),
        (["run", "{root}"], "pass one of"),  # a directory of runs, not a run
        (
            ["run", "{root}/xsam", "--examples", "0"],
            "xsam-analyse: error: --examples must be an integer >= 1, got 0",
        ),
        (
            ["run", "{root}/xsam", "--rho", "-1"],
            "xsam-analyse: error: --rho must be a finite float > 0, got -1.0",
        ),
        (
            ["run", "{root}/xsam", "--num-iters", "2"],
            "xsam-analyse: error: --num-iters must be an integer >= 3, got 2",
        ),
        (
            ["valley", "{root}/sgd", "{root}/xsam", "--num", "2"],
            "xsam-analyse: error: --num must be an integer >= 3, got 2",
        ),
        (
            ["valley", "{root}/sgd", "{root}/xsam", "--chunk", "0"],
            "xsam-analyse: error: --chunk must be an integer >= 1, got 0",
        ),
        (
            ["run", "{root}/xsam", "--trace-samples", "x"],
            "xsam-analyse run: error: argument --trace-samples: invalid int value: 'x'",
        ),
        # Each subcommand has only its own flags.
        (
            ["run", "{root}/xsam", "--num", "5"],
            "xsam-analyse: error: unrecognized arguments: --num 5",
        ),
        (
            ["valley", "{root}/sgd", "{root}/xsam", "--rho", "0.1"],
            "xsam-analyse: error: unrecognized arguments: --rho 0.1",
        ),
        (["valley", "{root}/sgd"], "the following arguments are required: DIR_B"),
        ([], "xsam-analyse: error: the following arguments are required: {{run,valley}}"),
    ],
)
def test_bad_directory_or_flag_is_a_one_line_error(runs, capsys, argv, message):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        analyse.main([a.format(root=runs) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("xsam-analyse") and err.count("\n") == 1
    assert message.format(root=runs) in err and "Traceback" not in err


def test_only_floating_model_state_is_interpolated():
    # The digits MLP has no BatchNorm: check the split on a model that has running statistics
    # (floating, interpolated) and an RNG stream (a key and a count, kept from run A).
    model = nnx.Sequential(
        nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
        nnx.BatchNorm(4, rngs=nnx.Rngs(0)),
        nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1)),
    )
    model_state = nnx.as_pure(nnx.split(model, nnx.Param, ...)[2])
    batchnorm, rngs = model_state["layers"][1], model_state["layers"][2]["rngs"]
    stats, rebuild = compute.split_floating(model_state)
    assert {id(s) for s in stats} == {id(batchnorm["mean"]), id(batchnorm["var"])}
    rebuilt = rebuild([s + 1.0 for s in stats])
    for name in ("mean", "var"):
        np.testing.assert_array_equal(rebuilt["layers"][1][name], batchnorm[name] + 1.0)
    assert rebuilt["layers"][2]["rngs"]["key"] is rngs["key"]
    assert rebuilt["layers"][2]["rngs"]["count"] is rngs["count"]
