"""Why XSAM fails where it fails: its geometry measured step by step (the study's "geometry" part).

The issue's failing run is XSAM with the authors' radii (ρ = 0.15, ρ_max = 0.3) on the wide
1-D CNN for MNIST-1D: it ends far below SGD. Three measurements explain it:

- `steps`: every step of the first epochs — the clean loss, the angle ψ between v0 and v1 and
  the turn α·ψ of the applied direction away from v0 — for SAM, the paper's XSAM and the two
  variants beyond the paper (`reuse="rotation"`, a 30° cap);
- `searches`: the probe-loss curve L(θ + ρ_max·v(α)) of every search over a whole run;
- `noise`: at one point of a SAM run, α* from the curves of single batches against α* from
  the whole training set: how much of α* is batch noise;
- `equivalence`: XSAM's direction ‖g_k‖·v(α) from radius ρ against SAM's gradient from radius
  α·ρ: to first order in ρ, v(α) extrapolates along the gradient's change g_k − g0, so α past
  1 acts like a larger SAM radius.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from xsam_jax import landscape, sharpness
from xsam_jax._src import ascent, search, tree_math
from xsam_jax.experiment import TrainConfig
from xsam_jax.experiment.train import _Run, current_xsam_state

# SAM is XSAM with α fixed at 1 (search_every 0: exactly g_k), so it records the same angles.
VARIANTS = {
    "sam": {"optimizer": "xsam", "rho": 0.15, "rho_max": 0.3, "search_every": 0},
    "xsam": {"optimizer": "xsam", "rho": 0.15, "rho_max": 0.3},
    "xsam+rotation": {"optimizer": "xsam", "rho": 0.15, "rho_max": 0.3, "xsam_reuse": "rotation"},
    "xsam+cap=30": {"optimizer": "xsam", "rho": 0.15, "rho_max": 0.3, "max_rotation": 30.0},
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the measurements run on (the issue's failing run by default) and how long."""

    dataset: str = "mnist1d"
    model: str = "cnn1d_wide"
    epochs: int = 60
    seeds: tuple[int, ...] = (0, 1, 2)
    traced_epochs: int = 3
    noise_epochs: int = 10
    noise_batches: int = 16


def _config(settings: Settings, seed: int, **fields: Any) -> TrainConfig:
    base = {"dataset": settings.dataset, "model": settings.model, "epochs": settings.epochs}
    return TrainConfig(**{**base, **fields}, seed=seed)


def _train(built: _Run, epochs: int, on_step=None, on_epoch=None) -> None:
    for epoch in range(epochs):
        for i, batch in enumerate(built.batches(epoch)):
            perturb, search = built.plan(epoch * built.steps_per_epoch + i)
            built.state, metrics = built.step(built.state, batch, perturb=perturb, search=search)
            if on_step is not None:
                on_step(metrics)
        if on_epoch is not None:
            on_epoch(epoch)


def steps(settings: Settings) -> dict[str, Any]:
    """Per step of the first epochs: loss, ψ and the applied turn α·ψ (degrees), per variant."""
    out: dict[str, Any] = {}
    for label, fields in VARIANTS.items():
        runs = []
        for seed in settings.seeds:
            built = _Run(_config(settings, seed, **fields).resolved())
            record: dict[str, list[float]] = {
                "loss": [],
                "psi_degrees": [],
                "rotation_degrees": [],
                "alpha": [],
            }

            def on_step(metrics, built=built, record=record):
                state = current_xsam_state(built.state.opt_state)
                record["loss"].append(float(metrics["loss"]))
                record["psi_degrees"].append(
                    math.degrees(math.acos(min(1.0, max(-1.0, float(state.cos_psi)))))
                )
                record["rotation_degrees"].append(math.degrees(float(state.rotation)))
                record["alpha"].append(float(state.alpha))

            _train(built, settings.traced_epochs, on_step)
            runs.append(record)
        out[label] = runs
    return out


def searches(settings: Settings) -> dict[str, Any]:
    """The probe-loss curve of every search of a whole run of the paper's XSAM, per epoch."""
    built = _Run(_config(settings, settings.seeds[0], **VARIANTS["xsam"]).resolved())
    curves, alphas, losses = [], [], []

    def on_step(metrics):
        losses.append(float(metrics["loss"]))

    def on_epoch(epoch):
        state = current_xsam_state(built.state.opt_state)
        curves.append(np.asarray(state.alpha_losses, np.float64).tolist())
        alphas.append(float(state.alpha))

    _train(built, built.config.epochs, on_step, on_epoch)
    per_epoch = built.steps_per_epoch
    return {
        "alpha_losses": curves,
        "alpha": alphas,
        "train_loss": [
            float(np.mean(losses[i : i + per_epoch])) for i in range(0, len(losses), per_epoch)
        ],
        "test_accuracy": built.evaluate("test")["accuracy"],
    }


def noise(settings: Settings) -> dict[str, Any]:
    """α* from single batches against α* from the whole training set, after SAM epochs."""
    seed = settings.seeds[0]
    built = _Run(_config(settings, seed, optimizer="sam", rho=0.15).resolved())
    _train(built, settings.noise_epochs)
    x, y = built.dataset.arrays("train")

    def loss(model, batch):
        logits = model(batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    loss_fn, _ = sharpness.nnx_loss_fn(built.model, loss)

    def loss_on(batch: dict[str, Any]) -> Callable[[Any], jax.Array]:
        return lambda p: loss_fn(p, batch)

    params = built.host_state().params
    rng = np.random.default_rng(seed)
    per_batch = []
    for _ in range(settings.noise_batches):
        rows = rng.choice(len(y), size=built.config.batch_size, replace=False)
        batch = {"x": x[rows], "y": y[rows]}
        curve = landscape.alpha_curve(loss_on(batch), params, rho=0.15, rho_max=0.3, chunk=1)
        per_batch.append(
            {
                "alpha_star": float(curve.alpha_star),
                "losses": np.asarray(curve.losses, np.float64).tolist(),
            }
        )
    whole = landscape.alpha_curve(loss_on({"x": x, "y": y}), params, rho=0.15, rho_max=0.3, chunk=1)
    return {
        "epochs": settings.noise_epochs,
        "batch_size": built.config.batch_size,
        "per_batch": per_batch,
        "whole": {
            "alpha_star": float(whole.alpha_star),
            "losses": np.asarray(whole.losses, np.float64).tolist(),
        },
        "alphas": np.asarray(whole.alphas, np.float64).tolist(),
    }


def equivalence(settings: Settings, alphas=(0.5, 1.0, 1.5, 2.0), rho: float = 0.15):
    """cos and norm ratio of XSAM's ‖g_k‖·v(α) (radius ρ) and SAM's ∇L(θ + αρ·g0/‖g0‖).

    At the initial weights and after a few SAM epochs, on one training batch.
    """
    built = _Run(_config(settings, settings.seeds[0], optimizer="sam", rho=rho).resolved())

    def loss(model, batch):
        logits = model(batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    loss_fn, _ = sharpness.nnx_loss_fn(built.model, loss)
    batch = next(iter(built.batches(0)))
    out = {}
    later = f"after {settings.noise_epochs} SAM epochs"
    for label, epochs in (("initial", 0), (later, settings.noise_epochs)):
        _train(built, epochs)
        params = built.host_state().params
        on_batch = lambda p: loss_fn(p, batch)  # noqa: E731
        g0 = jax.grad(on_batch)(params)
        config = ascent.make_config()
        g_k, chord = ascent.ascend(jax.grad(on_batch), params, g0, jax.numpy.asarray(rho), config)
        plane = search.ascent_plane(chord, g_k, 1e-12)
        rows = []
        for alpha in alphas:
            c, d = search.along(plane, alpha, plane.grad_norm)
            xsam_dir = tree_math.combine([c, d], [chord, g_k], like=g0)
            sam_dir, _ = ascent.ascend(
                jax.grad(on_batch), params, g0, jax.numpy.asarray(alpha * rho), config
            )
            cos = tree_math.vdot(xsam_dir, sam_dir) / (
                tree_math.norm(xsam_dir) * tree_math.norm(sam_dir)
            )
            rows.append(
                {
                    "alpha": alpha,
                    "cos": float(cos),
                    "norm_ratio": float(tree_math.norm(xsam_dir) / tree_math.norm(sam_dir)),
                }
            )
        out[label] = rows
    return out


def measure(settings: Settings = Settings(), log=print) -> dict[str, Any]:
    """All four measurements, as JSON."""
    log("geometry: per-step angles of the first epochs")
    result: dict[str, Any] = {"settings": dataclasses.asdict(settings), "steps": steps(settings)}
    log("geometry: every search of a whole run")
    result["searches"] = searches(settings)
    log("geometry: batch noise of alpha*")
    result["noise"] = noise(settings)
    log("geometry: XSAM's alpha against SAM's radius")
    result["equivalence"] = equivalence(settings)
    return result
