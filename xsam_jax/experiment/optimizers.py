"""The optimizer of a run: its method chained before weight decay and SGD with momentum."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optax
from flax import nnx

import xsam_jax as xs
from xsam_jax import training
from xsam_jax._src.validation import InvalidArgumentError
from xsam_jax.experiment.config import TrainConfig, default_radii


def rho_schedule(config: TrainConfig, steps_per_epoch: int) -> float | optax.Schedule:
    """The ρ the method is built with: a float, or a schedule of the step count.

    ``perturb_every`` N climbs on the steps whose count is a multiple of N (`xs.periodic`),
    ``perturb_probability`` P on a random fraction P of the steps drawn from the run's seed
    (`xs.randomized`). A late phase trains with SGD until step ⌊late_phase_start · epochs ·
    steps_per_epoch⌋ and from that step on as the method (with its schedule) would; "sgd" has
    ρ = 0.
    """
    radius, _ = default_radii(config)
    if radius is None:
        return 0.0
    rho: float | optax.Schedule = radius
    if config.perturb_every is not None:
        rho = xs.periodic(radius, config.perturb_every)
    elif config.perturb_probability is not None:
        rho = xs.randomized(radius, config.perturb_probability, seed=config.seed)
    if config.late_phase_start is not None:
        total = config.epochs * steps_per_epoch
        return xs.late_phase(rho, int(config.late_phase_start * total))
    return rho


def perturbation_mask(config: TrainConfig, model: nnx.Module | None) -> Any:
    """The method's ``perturbation_mask``: None, or for "norm" the model's normalisation layers.

    Raises:
      InvalidArgumentError: naming --perturbation-mask if the model has no such layer (the
        run would be plain SGD).
    """
    if config.perturbation_mask is None:
        return None
    if model is None:
        raise ValueError("--perturbation-mask needs the model: make_optimizer(..., model=model)")
    norms = [n for _, n in nnx.iter_graph(model) if isinstance(n, training.NORMALIZATION_LAYERS)]
    if not norms:
        raise InvalidArgumentError(
            "--perturbation-mask",
            f"unset for --model {config.model_name}, which has no normalisation layer",
            config.perturbation_mask,
        )
    return training.normalization_mask(model)


def make_optimizer(
    config: TrainConfig,
    steps_per_epoch: int,
    *,
    axis_name: str | None = None,
    local_perturbation: bool = False,
    model: nnx.Module | None = None,
) -> optax.GradientTransformationExtraArgs:
    """The method chained before weight decay and SGD with momentum and a cosine schedule.

    `model` is needed for ``config.perturbation_mask`` only (see `perturbation_mask`).
    """
    total = config.epochs * steps_per_epoch
    schedule = optax.cosine_decay_schedule(config.lr, total)
    base = [
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum or None),
    ]
    if config.optimizer == "sgd":
        return optax.chain(*base)
    rho = rho_schedule(config, steps_per_epoch)
    _, rho_max = default_radii(config)
    shared = {
        "ascent_steps": config.ascent_steps,
        "axis_name": axis_name,
        "local_perturbation": local_perturbation,
        "perturbation_mask": perturbation_mask(config, model),
    }
    if config.optimizer != "fisher-sam":  # whose ball is the Fisher's, never ASAM's
        shared["adaptive"] = config.adaptive
    if config.optimizer == "xsam":
        assert rho_max is not None  # default_radii gives every XSAM run a probe radius
        every = _search_every(config, steps_per_epoch)
        cap = None if config.max_rotation is None else math.radians(config.max_rotation)
        method = xs.xsam(
            rho, rho_max, search_every=every, reuse=config.xsam_reuse, max_rotation=cap, **shared
        )
    elif config.optimizer == "sam":
        method = xs.sam(rho, **shared)
    elif config.optimizer == "gsam":
        method = xs.gsam(rho, config.gsam_alpha, **shared)
    elif config.optimizer == "wsam":
        method = xs.wsam(rho, config.wsam_gamma, **shared)
    elif config.optimizer == "fsam":
        method = xs.fsam(rho, config.fsam_sigma, config.fsam_lambda, **shared)
    elif config.optimizer == "vasso":
        method = xs.vasso(rho, config.vasso_theta, **shared)
    elif config.optimizer == "fisher-sam":
        method = xs.fisher_sam(rho, config.fisher_eta, **shared)
    else:
        method = xs.looksam(rho, config.looksam_every, config.looksam_alpha, **shared)
    return optax.chain(method, *base)


def perturb_plan(config: TrainConfig, steps_per_epoch: int) -> np.ndarray:
    """Which steps take the ascent's gradients, per step (see `xsam_jax.perturbed_steps`).

    LookSAM's full steps are also multiples of ``looksam_every`` (see `xsam_jax.looksam`).
    """
    total = config.epochs * steps_per_epoch
    plan = xs.perturbed_steps(rho_schedule(config, steps_per_epoch), total)
    if config.optimizer == "looksam":
        plan &= np.arange(total) % config.looksam_every == 0
    return plan


def _search_every(config: TrainConfig, steps_per_epoch: int) -> int | None:
    """XSAM's search period: ``--search-every`` (0 = never), once an epoch by default."""
    return steps_per_epoch if config.search_every is None else config.search_every or None


def search_plan(config: TrainConfig, plan: np.ndarray, steps_per_epoch: int) -> np.ndarray | None:
    """Which steps run XSAM's α search (`xsam_jax.search_steps`), or None for other methods.

    Args:
      config: the run's config.
      plan: `perturb_plan`'s result.
      steps_per_epoch: steps per epoch.
    """
    if config.optimizer != "xsam":
        return None
    return xs.search_steps(plan, _search_every(config, steps_per_epoch))


def cost(config: TrainConfig, plan: np.ndarray, steps_per_epoch: int) -> dict[str, int]:
    """Forward-backward passes (gradients) and forward-only passes (XSAM probes) of a run.

    Every step takes the clean gradient; a perturbed step takes ``ascent_steps`` more; XSAM
    evaluates one forward pass per α candidate on each search step (`search_plan`).
    """
    perturbed = int(np.sum(plan))
    gradients = int(plan.size) + config.ascent_steps * perturbed
    searches = search_plan(config, plan, steps_per_epoch)
    forwards = 0 if searches is None else int(searches.sum()) * len(xs.alpha_grid(2.0, 0.1))
    return {"gradient_evaluations": gradients, "probe_evaluations": forwards}
