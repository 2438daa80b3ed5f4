"""The notebooks: committed with their outputs, and runnable top to bottom.

1. Every committed notebook (`notebooks/*.ipynb`) is Colab-ready and renders on the web: its
   first code cell installs xsam-jax when it is not importable, it reads ``XSAM_FAST``, every
   code cell was executed in order and holds no error, at least one figure is stored, and no
   timing metadata is (so re-running changes only what the results change).
2. Every notebook runs top to bottom with ``XSAM_FAST=1`` in a fresh kernel in a temporary
   directory (nbclient, through `notebooks/execute.py`), with one cell appended that prints,
   as JSON, the values its text promises; the checks compare them with references computed
   here: NumPy argmaxes over the stored candidate losses, the closed form of the quadratic toy,
   the cost of a run counted from its schedule, the single-device step for the data-parallel
   ones.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import time

import nbformat
import numpy as np
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NAMES = sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb"))
STEPS_PER_EPOCH = 4000 // 128  # MNIST-1D's training set in batches of 128
GRID = np.round(np.arange(21) * 0.1, 1)  # XSAM's default candidates 0, 0.1, ..., 2


def load_executor():
    spec = importlib.util.spec_from_file_location("execute", NOTEBOOKS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def first_argmax(losses):
    """The grid point of the first maximal loss, XSAM's rule."""
    return float(GRID[int(np.argmax(np.asarray(losses, np.float64)))])


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


# --------------------------------------------------------------------------- committed files


def test_there_are_at_least_five_notebooks():
    assert len(NAMES) >= 5, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_colab_ready_and_keeps_its_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    cells = code_cells(notebook)
    install = cells[0].source
    assert "import xsam_jax" in install and '%pip install "xsam-jax[examples]"' in install
    assert any('os.environ.get("XSAM_FAST") == "1"' in cell.source for cell in cells)
    counts = [cell.execution_count for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), f"not executed top to bottom: {counts}"
    outputs = [output for cell in cells for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure stored"
    assert not any("execution" in cell.metadata for cell in notebook.cells)


def test_scale_out_sets_the_device_count_before_anything_else():
    cells = code_cells(nbformat.read(NOTEBOOKS / "05_scale_out.ipynb", as_version=4))
    assert 'jax.config.update("jax_num_cpu_devices", 4)' in cells[1].source


# --------------------------------------------------------------------------- fast execution

# Appended to each notebook: prints, as one JSON line, what the checks below read.
PROBES = {
    "01_quick_start": """
import json
states = {"plain": opt_state[0], "sgd": state_sgd, "adamw": state_adamw}
print(json.dumps({
    "epochs": EPOCHS,
    "states": {
        name: {
            "alpha": float(s.alpha),
            "alpha_losses": np.asarray(s.alpha_losses).tolist(),
            "cos_psi": float(s.cos_psi),
            "rotation": float(s.rotation),
            "count": int(s.count),
        }
        for name, s in states.items()
    },
    "histories": {"plain": history_plain, "sgd": history_sgd, "adamw": history_adamw},
}))
""",
    "02_why_xsam": """
import json
print(json.dumps({
    "H": np.asarray(H).tolist(), "theta": np.asarray(theta).tolist(),
    "rho": RHO, "rho_max": RHO_MAX,
    "alpha_star": alpha_star, "true_max": true_max,
    "epochs": EPOCHS, "history": history,
    "final_alpha_star": float(final_curve.alpha_star),
    "final_losses": np.asarray(final_curve.losses).tolist(),
}))
""",
    "03_compare_methods": """
import json
print(json.dumps({
    "epochs": EPOCHS, "seeds": SEEDS,
    "runs": {
        v: [{k: r[k] for k in ("final_test_accuracy", "gradient_evaluations",
                               "probe_evaluations")}
            | {"epochs": len(r["history"]), "rho": r["config"]["rho"]}
            for r in runs]
        for v, runs in results.items()
    },
    "summary": summary,
}))
""",
    "04_sharpness_landscapes": """
import json
import jax.numpy as jnp
x_all, y_all = built.dataset.arrays("train")
indices = np.asarray(valley["train_indices"])
endpoint_losses = {}
for variant in ("sgd", "late-sam"):
    model = experiment.load_run(workdir / variant)[1].state.to_model()
    logits = model(jnp.asarray(x_all[indices]))
    endpoint_losses[variant] = float(
        optax.softmax_cross_entropy_with_integer_labels(logits, y_all[indices]).mean()
    )
first = {"x": jnp.asarray(x_all[:EXAMPLES]), "y": jnp.asarray(y_all[:EXAMPLES])}
sgd_model = experiment.load_run(workdir / "sgd")[1].state.to_model()
direct = float(
    optax.softmax_cross_entropy_with_integer_labels(sgd_model(first["x"]), first["y"]).mean()
)
sgd_params = params["SGD"]
def hvp(v):  # forward-over-reverse on the loss of all EXAMPLES at once
    return jax.jvp(jax.grad(lambda p: loss_fn(p, first)), (sgd_params,), (v,))[1]
rayleigh = []
for i in range(3):
    v = jax.tree.map(lambda p: jax.random.normal(jax.random.key(10 + i), p.shape), sgd_params)
    num = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(hvp(v))))
    den = sum(float(jnp.vdot(a, a)) for a in jax.tree.leaves(v))
    rayleigh.append(num / den)
direction = landscape.filter_normalized_direction(first_key, sgd_params)
at_zero = landscape.loss_surface_1d(mean_loss, sgd_params, direction, np.array([0.0]))
print(json.dumps({
    "epochs": EPOCHS,
    "eigenvalues": {n: s["eigenvalues"].tolist() for n, s in sharp.items()},
    "traces": {n: s["trace"] for n, s in sharp.items()},
    "rayleigh": rayleigh,
    "histories": {n: [h["train_loss"] for h in r["history"]] for n, r in finals.items()},
    "lambdas": valley["lambdas"], "at_a": valley["at_a"], "at_b": valley["at_b"],
    "endpoint_losses": endpoint_losses,
    "direct_loss": direct, "surface_at_zero": float(np.asarray(at_zero)[0]),
}))
""",
    "05_scale_out": """
import json
print(json.dumps({
    "devices": jax.device_count(), "backend": jax.default_backend(),
    "distance": distance, "alpha": alpha,
    "histories": {k: len(v) for k, v in histories.items()}, "epochs": EPOCHS,
}))
""",
}


@pytest.fixture(scope="module")
def run_fast(tmp_path_factory):
    """``run_fast(name)``: executes a notebook with XSAM_FAST=1 and its probe appended.

    Returns the probe's JSON. The kernels share a compilation cache, so a program that an
    earlier notebook compiled (the same run with the same settings) is not compiled again.
    """
    executor = load_executor()
    cache = tmp_path_factory.mktemp("jax_cache")

    def run(name):
        notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        notebook.cells.append(nbformat.v4.new_code_cell(PROBES[name]))
        tic = time.perf_counter()
        cwd = tmp_path_factory.mktemp(name)
        executor.execute(notebook, fast=True, cwd=cwd, compilation_cache=cache)
        print(f"{name}: {time.perf_counter() - tic:.0f} s with XSAM_FAST=1")
        text = "".join(o.get("text", "") for o in notebook.cells[-1].outputs)
        return json.loads(text.strip().splitlines()[-1])

    return run


def test_every_notebook_has_a_probe():
    assert sorted(PROBES) == NAMES


@pytest.mark.slow
def test_quick_start(run_fast):
    out = run_fast("01_quick_start")
    for name, state in out["states"].items():
        # alpha* is the first argmax of the last search's losses; the rotation is alpha * psi.
        assert state["alpha"] == pytest.approx(first_argmax(state["alpha_losses"])), name
        assert np.isfinite(state["alpha_losses"]).all()
        psi = np.arccos(np.clip(state["cos_psi"], -1.0, 1.0))
        assert state["rotation"] == pytest.approx(state["alpha"] * psi, rel=1e-4), name
        assert state["count"] == out["epochs"] * STEPS_PER_EPOCH
    for name, history in out["histories"].items():
        assert [h["epoch"] for h in history] == list(range(1, out["epochs"] + 1))
        assert history[-1]["test_accuracy"] > 0.15, name  # ten classes: chance is 0.1
        assert history[-1]["train_loss"] < np.log(10), name


def quadratic_on_arc(H, theta, rho, rho_max, alphas):
    """L(theta + rho_max v(alpha)) of the toy, with v(alpha) written out in NumPy."""
    loss = lambda p: 0.5 * p @ H @ p  # noqa: E731
    g0 = H @ theta
    v0 = g0 / np.linalg.norm(g0)
    g1 = H @ (theta + rho * v0)
    v1 = g1 / np.linalg.norm(g1)
    psi = np.arccos(np.clip(v0 @ v1, -1.0, 1.0))
    v = lambda a: (np.sin((1 - a) * psi) * v0 + np.sin(a * psi) * v1) / np.sin(psi)  # noqa: E731
    return np.array([loss(theta + rho_max * v(a)) for a in alphas]), v0, psi


@pytest.mark.slow
def test_why_xsam(run_fast):
    out = run_fast("02_why_xsam")
    H, theta = np.array(out["H"]), np.array(out["theta"])
    losses, v0, psi = quadratic_on_arc(H, theta, out["rho"], out["rho_max"], GRID)
    assert out["alpha_star"] == pytest.approx(first_argmax(losses))
    # The true maximum on the circle, by brute force in NumPy, to 0.01 degrees.
    angles = np.radians(np.arange(0.0, 360.0, 0.01))
    circle = theta + out["rho_max"] * np.stack([np.cos(angles), np.sin(angles)], 1)
    true_max = np.degrees(angles[np.argmax(0.5 * np.einsum("ni,ij,nj->n", circle, H, circle))])
    assert out["true_max"] == pytest.approx(true_max, abs=0.1)
    # The promise: XSAM's candidate lands within half a grid step of the true maximum.
    from_v0 = true_max - np.degrees(np.arctan2(v0[1], v0[0]))
    assert abs(out["alpha_star"] * np.degrees(psi) - from_v0) <= 0.05 * np.degrees(psi) + 0.1
    history = out["history"]
    assert len(history) == out["epochs"]
    for h in history:
        assert np.isfinite(h["ratio"]) and np.min(np.abs(GRID - h["alpha"])) < 1e-6, h
    assert out["final_alpha_star"] == pytest.approx(first_argmax(out["final_losses"]))


def run_cost(variant, epochs):
    """Gradients and probe passes of a run, counted from its schedule (one seed)."""
    steps = epochs * STEPS_PER_EPOCH
    if variant == "sgd":
        return steps, 0
    if variant == "late-sam":  # SGD until step int(0.8 * steps), then SAM
        return steps + (steps - int(0.8 * steps)), 0
    return 2 * steps, 21 * epochs if variant.startswith("xsam") else 0  # one search an epoch


# The notebook's labels and the ascent radius each should have run with.
COMPARED = {"sgd": None, "sam": 0.05, "xsam": 0.15, "xsam ρ=0.05": 0.05, "late-sam": 0.05}


@pytest.mark.slow
def test_compare_methods(run_fast):
    out = run_fast("03_compare_methods")
    assert list(out["runs"]) == list(COMPARED)
    for variant, runs in out["runs"].items():
        assert len(runs) == len(out["seeds"])
        row = out["summary"]["variants"][variant]
        accuracies = [r["final_test_accuracy"] for r in runs]
        assert row["mean_test_accuracy"] == pytest.approx(np.mean(accuracies))
        for run in runs:
            assert run["rho"] == COMPARED[variant], variant
            assert run["epochs"] == out["epochs"]
            expected = run_cost(variant, out["epochs"])
            assert (run["gradient_evaluations"], run["probe_evaluations"]) == expected
    assert out["summary"]["baseline"] == "sgd"


@pytest.mark.slow
def test_sharpness_landscapes(run_fast):
    out = run_fast("04_sharpness_landscapes")
    for name, eigenvalues in out["eigenvalues"].items():
        assert eigenvalues == sorted(eigenvalues, reverse=True), name
    # Lanczos' top Ritz value bounds every Rayleigh quotient from above (up to its accuracy).
    assert out["eigenvalues"]["SGD"][0] >= max(out["rayleigh"]) - 1e-3
    # Late SAM is the SGD run until the switch at 80 % of the steps (inside the last epoch).
    sgd, late = out["histories"]["SGD"], out["histories"]["late SAM"]
    np.testing.assert_allclose(late[:-1], sgd[:-1], rtol=1e-6)
    assert late[-1] != sgd[-1]
    # The path's ends are the two solutions: their training losses, evaluated directly.
    assert out["lambdas"][0] == pytest.approx(-0.2) and out["lambdas"][-1] == pytest.approx(1.2)
    assert out["at_a"]["train_loss"] == pytest.approx(out["endpoint_losses"]["sgd"], rel=1e-4)
    assert out["at_b"]["train_loss"] == pytest.approx(out["endpoint_losses"]["late-sam"], rel=1e-4)
    # The surfaces pass through the solution: t = 0 is the loss of the SGD weights.
    assert out["surface_at_zero"] == pytest.approx(out["direct_loss"], rel=1e-4)


@pytest.mark.slow
def test_scale_out(run_fast):
    out = run_fast("05_scale_out")
    assert (out["devices"], out["backend"]) == (4, "cpu")
    # Global perturbation is the single-device step; per-device ascent is another method.
    for name in ("jit + NamedSharding", "shard_map, global"):
        assert max(out["distance"][name]) < 1e-5, name
        assert out["alpha"][name] == out["alpha"]["single device"], name
    assert out["distance"]["shard_map, per device"][-1] > 1e-4
    assert list(out["histories"].values()) == [out["epochs"]] * 2
