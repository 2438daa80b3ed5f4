"""One training run from a flat config: what `xsam-train` and the reproduction studies call.

`TrainConfig` names everything a run depends on; `run(config)` builds the data, the model and
the optimizer, trains with a progress bar, evaluates every epoch and, with `out`, writes
`metrics.json`, `curves.png` and an Orbax checkpoint that `resume` continues bit-exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import threading
import time
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

import xsam_jax as xs
from xsam_jax import data, models, plotting, training
from xsam_jax._src.validation import InvalidArgumentError, check_choice, check_int, check_range

OPTIMIZERS = ("sgd", "sam", "asam", "xsam", "gsam", "wsam", "late-sam")
DEFAULT_RHO = {"sam": 0.05, "asam": 0.5, "xsam": 0.15, "gsam": 0.05, "wsam": 0.05,
               "late-sam": 0.05}
DEFAULT_MODEL = {"mnist1d": "cnn1d", "digits": "mlp", "cifar10": "resnet18",
                 "cifar100": "resnet18", "svhn": "resnet18", "fashion_mnist": "resnet18"}
EVAL_BATCH = 1000


def _flag(field: str) -> str:
    """The `xsam-train` flag of a `TrainConfig` field: batch_size -> --batch-size."""
    return "--" + field.replace("_", "-")


@dataclasses.dataclass
class TrainConfig:
    """Everything one run depends on (defaults: XSAM, 1-D CNN, MNIST-1D, about a minute on CPU).

    `rho` None takes the method's default (`DEFAULT_RHO`), `rho_max` None is 2ρ (the XSAM
    authors' 0.15 / 0.3), `search_every` None searches α* once an epoch, `model` None takes the
    dataset's default model, `augment` None augments image datasets only (crop, flip, Cutout).
    """

    optimizer: str = "xsam"
    dataset: str = "mnist1d"
    model: str | None = None
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    rho: float | None = None
    rho_max: float | None = None
    ascent_steps: int = 1
    search_every: int | None = None
    gsam_alpha: float = 0.4
    wsam_gamma: float = 0.9
    late_phase_start: float = 0.8
    m_sharpness: int | None = None
    devices: int = 1
    augment: bool | None = None
    seed: int = 0
    data_dir: str | None = None
    download: bool = False

    def validate(self) -> None:
        """InvalidArgumentError (a ValueError) naming the flag of the first bad field.

        The messages name `xsam-train`'s flags (`--batch-size must be ...`): the fields are its
        flags, with dashes for underscores.
        """
        check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        check_choice("--dataset", self.dataset, data.available())
        if self.model is not None:
            check_choice("--model", self.model, models.available())
        for name in ("epochs", "batch_size", "ascent_steps", "devices"):
            check_int(_flag(name), getattr(self, name), low=1)
        if self.search_every is not None:
            check_int("--search-every", self.search_every, low=1)
        check_range("--lr", self.lr, low=0.0, low_open=True)
        check_range("--momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        check_range("--weight-decay", self.weight_decay, low=0.0)
        for name in ("rho", "rho_max"):
            if getattr(self, name) is not None:
                check_range(_flag(name), getattr(self, name), low=0.0)
        check_range("--gsam-alpha", self.gsam_alpha, low=0.0)
        check_range("--wsam-gamma", self.wsam_gamma, low=0.0, high=1.0, high_open=True)
        check_range("--late-phase-start", self.late_phase_start, low=0.0, high=1.0)
        check_int("--seed", self.seed, low=0)
        if self.batch_size % self.devices:
            raise InvalidArgumentError(
                "--batch-size", f"divisible by --devices ({self.devices})", self.batch_size)
        if self.m_sharpness is not None:
            self._validate_m_sharpness()

    def _validate_m_sharpness(self) -> None:
        check_int("--m-sharpness", self.m_sharpness, low=1)
        if self.optimizer == "sgd":
            raise InvalidArgumentError(
                "--m-sharpness", "unset with --optimizer sgd (it needs a sharpness-aware "
                "optimizer)", self.m_sharpness)
        per_device = self.batch_size // self.devices
        if self.devices > 1 and self.m_sharpness != per_device:
            raise InvalidArgumentError(
                "--m-sharpness", f"--batch-size / --devices = {per_device} with --devices > 1 "
                "(it is per device)", self.m_sharpness)
        if self.batch_size % self.m_sharpness:
            raise InvalidArgumentError(
                "--m-sharpness", f"a divisor of --batch-size ({self.batch_size})",
                self.m_sharpness)

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODEL[self.dataset]


def resolved_radii(config: TrainConfig) -> tuple[float | None, float | None]:
    """The ascent radius ρ and XSAM's probe radius ρ_max a run uses, None where it has none.

    ρ is the flag or the method's default (`DEFAULT_RHO`); ρ_max is the flag or 2ρ (the XSAM
    authors' 0.15 / 0.3) for XSAM and None for the other methods; SGD has neither.
    """
    if config.optimizer == "sgd":
        return None, None
    rho = DEFAULT_RHO[config.optimizer] if config.rho is None else config.rho
    if config.optimizer != "xsam":
        return rho, None
    return rho, 2 * rho if config.rho_max is None else config.rho_max


def rho_schedule(config: TrainConfig, steps_per_epoch: int) -> float | optax.Schedule:
    """The ρ the method is built with: a float, or for late-sam a `late_phase` schedule.

    late-sam trains with SGD until step ⌊late_phase_start · epochs · steps_per_epoch⌋ and with
    SAM from that step on; "sgd" has ρ = 0.
    """
    rho, _ = resolved_radii(config)
    if rho is None:
        return 0.0
    if config.optimizer == "late-sam":
        total = config.epochs * steps_per_epoch
        return xs.late_phase(rho, int(config.late_phase_start * total))
    return rho


def make_optimizer(
    config: TrainConfig, steps_per_epoch: int, *, axis_name: str | None = None,
    local_perturbation: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """The method chained before weight decay and SGD with momentum and a cosine schedule."""
    total = config.epochs * steps_per_epoch
    schedule = optax.cosine_decay_schedule(config.lr, total)
    base = [optax.add_decayed_weights(config.weight_decay),
            optax.sgd(schedule, momentum=config.momentum or None)]
    name = config.optimizer
    if name == "sgd":
        return optax.chain(*base)
    rho = rho_schedule(config, steps_per_epoch)
    _, rho_max = resolved_radii(config)
    shared = {"ascent_steps": config.ascent_steps, "axis_name": axis_name,
              "local_perturbation": local_perturbation}
    if name == "xsam":
        method = xs.xsam(rho, rho_max, search_every=config.search_every or steps_per_epoch,
                         **shared)
    elif name in ("sam", "late-sam"):
        method = xs.sam(rho, **shared)
    elif name == "asam":
        method = xs.asam(rho, **shared)
    elif name == "gsam":
        method = xs.gsam(rho, config.gsam_alpha, **shared)
    else:
        method = xs.wsam(rho, config.wsam_gamma, **shared)
    return optax.chain(method, *base)


def current_alpha(opt_state: Any) -> float | None:
    """XSAM's α* if the optimizer holds an `XSAMState`, else None."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, xs.XSAMState))
             if isinstance(s, xs.XSAMState)]
    return float(np.asarray(found[0].alpha).reshape(-1)[0]) if found else None


def _model_kwargs(name: str, input_shape: tuple[int, ...]) -> dict[str, int]:
    if name == "mlp":
        return {"in_features": int(np.prod(input_shape))}
    if name in ("cnn1d", "cnn1d_wide", "transformer"):
        # Sequence models read (L,) or (L, C); images (H, W, C) become H*W tokens of C values.
        channels = int(input_shape[-1]) if len(input_shape) > 1 else 1
        return {"input_length": int(np.prod(input_shape)) // channels, "in_channels": channels}
    return {}


class _Run:
    """The pieces of one run, built once (see `run`)."""

    def __init__(self, config: TrainConfig):
        config.validate()
        self.config = config
        self.dataset = data.load(config.dataset, seed=config.seed, data_dir=config.data_dir,
                                 download=config.download)
        self.steps_per_epoch = len(self.dataset.y_train) // config.batch_size
        if self.steps_per_epoch < 1:
            raise InvalidArgumentError("--batch-size", f"at most the {len(self.dataset.y_train)} "
                                       "training examples", config.batch_size)
        name = config.model_name
        shape = self.dataset.input_shape
        if name not in models.available(shape):
            fits = ", ".join(models.available(shape))
            raise InvalidArgumentError(
                "--model", f"one of {fits} for {config.dataset}, whose examples have shape "
                f"{shape}", name)
        model = models.create(name, self.dataset.num_classes, rngs=nnx.Rngs(config.seed),
                              **_model_kwargs(name, self.dataset.input_shape))
        images = len(self.dataset.input_shape) == 3
        augment = images if config.augment is None else config.augment
        self.augmentation = data.Augmentation(cutout_size=16 if images else 0) if augment else None
        self.mesh = None
        if config.m_sharpness is not None and config.devices == 1:
            tx = make_optimizer(config, self.steps_per_epoch, axis_name="groups",
                                local_perturbation=True)
            step = training.make_m_sharpness_train_step(model, tx, config.m_sharpness)
        elif config.m_sharpness is not None:
            self.mesh = training.data_mesh(config.devices)
            tx = make_optimizer(config, self.steps_per_epoch, axis_name="data",
                                local_perturbation=True)
            step = training.make_shard_map_train_step(model, tx, self.mesh)
        elif config.devices > 1:
            self.mesh = training.data_mesh(config.devices)
            tx = make_optimizer(config, self.steps_per_epoch)
            step = training.make_sharded_train_step(model, tx, self.mesh)
        else:
            tx = make_optimizer(config, self.steps_per_epoch)
            step = training.make_train_step(model, tx)
        self.step = jax.jit(step, static_argnames="perturb") if self.mesh is None else step
        # Which steps take the second gradient, decided on the host so that a ρ schedule
        # compiles two specialised steps instead of a conditional (see xs.perturbed_steps).
        self.perturb_plan = xs.perturbed_steps(
            rho_schedule(config, self.steps_per_epoch), config.epochs * self.steps_per_epoch
        )
        self.eval_step = jax.jit(training.make_eval_step(model))
        self.state = training.TrainState.create(model, tx, rng=config.seed)
        if self.mesh is not None:
            self.state = training.replicate(self.state, self.mesh)

    def compile_ahead(self, first_step: int) -> None:
        """Compile the programs the plan needs later in background threads, on one device.

        late-sam runs the plain program first and the perturbed one after the switch; built
        while the first runs, the second costs no pause at the switch. (Simulated devices are
        left alone: a second thread driving their collectives can deadlock.)
        """
        plan = self.perturb_plan[first_step:]
        if self.mesh is not None or len(plan) == 0:
            return
        later = {bool(p) for p in plan} - {bool(plan[0])}
        shape = (self.config.batch_size, *self.dataset.input_shape)
        batch = {"x": jax.ShapeDtypeStruct(shape, np.float32),
                 "y": jax.ShapeDtypeStruct(shape[:1], np.int32)}
        for perturb in later:
            threading.Thread(
                target=lambda p=perturb: self.step.lower(self.state, batch, perturb=p).compile(),
                daemon=True,
            ).start()

    def batches(self, epoch: int):
        for batch in self.dataset.train_batches(self.config.batch_size, epoch=epoch,
                                                augmentation=self.augmentation):
            yield batch if self.mesh is None else training.shard_batch(batch, self.mesh)

    def evaluate(self) -> dict[str, float]:
        x, y = self.dataset.arrays("test")
        state = self.state if self.mesh is None else jax.device_get(self.state)
        totals = {"loss": 0.0, "accuracy": 0.0}
        for start in range(0, len(y), EVAL_BATCH):
            batch = {"x": x[start:start + EVAL_BATCH], "y": y[start:start + EVAL_BATCH]}
            metrics = self.eval_step(state, batch)
            for key in totals:
                totals[key] += float(metrics[key]) * len(batch["y"])
        return {key: value / len(y) for key, value in totals.items()}


def run(config: TrainConfig, *, out: str | pathlib.Path | None = None, resume: bool = False,
        progress: bool = True) -> dict[str, Any]:
    """Train, evaluating on the test split after every epoch.

    Args:
      config: the run's configuration (validated first: ValueError on bad values).
      out: directory for `metrics.json`, `curves.png` and `checkpoint/`, or None.
      resume: continue from the latest checkpoint in `out` (its config must match).
      progress: show a progress bar (steps, rate, ETA, loss, accuracy, α*) on stderr.

    Returns:
      `{"config": ..., "history": [per-epoch dicts], "final_test_accuracy": float}`; each
      history entry has epoch, train_loss, train_accuracy, test_loss, test_accuracy, alpha
      (XSAM's α*, else None) and seconds (wall time of the epoch's training steps).
    """
    from tqdm.auto import tqdm

    built = _Run(config)
    out = None if out is None else pathlib.Path(out)
    history: list[dict[str, Any]] = []
    checkpointer = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        # Two, so that a damaged latest checkpoint costs one epoch, not the run.
        checkpointer = training.Checkpointer(out / "checkpoint", max_to_keep=2)
        if resume and checkpointer.latest_step() is not None:

            def same_config(saved: dict[str, Any]) -> training.TrainState:
                if saved.get("config") != dataclasses.asdict(config):
                    raise ValueError(f"--resume: the checkpoint in {out} was written with a "
                                     "different config; use the same flags or another --out")
                return built.state

            built.state, _, saved = checkpointer.restore_latest_readable(same_config)
            history = saved.get("history", [])
        elif resume:
            raise ValueError(f"--resume: no checkpoint in {out / 'checkpoint'}")
    start_epoch = len(history)
    built.compile_ahead(start_epoch * built.steps_per_epoch)
    # Simulated CPU devices can deadlock in XLA's collectives when many steps are queued.
    wait_every_step = built.mesh is not None and jax.default_backend() == "cpu"
    bar = tqdm(total=config.epochs * built.steps_per_epoch,
               initial=start_epoch * built.steps_per_epoch, unit="step", disable=not progress,
               dynamic_ncols=True, desc=f"{config.optimizer} {config.dataset}")
    for epoch in range(start_epoch, config.epochs):
        tic = time.perf_counter()
        step_metrics = []
        for i, batch in enumerate(built.batches(epoch)):
            perturb = bool(built.perturb_plan[epoch * built.steps_per_epoch + i])
            built.state, metrics = built.step(built.state, batch, perturb=perturb)
            step_metrics.append(metrics)
            if wait_every_step:
                jax.block_until_ready(metrics)
            bar.update(1)
        train = {k: float(np.mean([jax.device_get(m[k]) for m in step_metrics]))
                 for k in ("loss", "accuracy")}
        seconds = time.perf_counter() - tic
        test = built.evaluate()
        alpha = current_alpha(built.state.opt_state)
        history.append({"epoch": epoch + 1, "train_loss": train["loss"],
                        "train_accuracy": train["accuracy"], "test_loss": test["loss"],
                        "test_accuracy": test["accuracy"], "alpha": alpha, "seconds": seconds})
        postfix = {"loss": f"{train['loss']:.3f}", "acc": f"{train['accuracy']:.3f}",
                   "test_acc": f"{test['accuracy']:.3f}"}
        if alpha is not None:
            postfix["alpha"] = f"{alpha:.1f}"
        bar.set_postfix(postfix)
        if not all(math.isfinite(h) for h in (train["loss"], test["loss"])):
            bar.write(f"epoch {epoch + 1}: the loss is not finite; stopping")
            break
        if checkpointer is not None:
            checkpointer.save(built.state, metadata={"config": dataclasses.asdict(config),
                                                     "history": history})
    bar.close()
    result = {"config": dataclasses.asdict(config), "history": history,
              "final_test_accuracy": history[-1]["test_accuracy"] if history else float("nan")}
    if out is not None:
        checkpointer.wait_until_finished()
        checkpointer.close()
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        plotting.plot_training_curves({config.optimizer: history}, path=out / "curves.png")
    return result


def load_run(out: str | pathlib.Path) -> tuple[TrainConfig, _Run]:
    """What `run(config, out=out)` saved: its config and the run rebuilt with the final state.

    The config is the one stored with the latest readable checkpoint in `out/checkpoint` (a
    damaged latest one costs a line on stderr and the previous one is restored); the data,
    model and optimizer are rebuilt from it on one device (the saved arrays do not depend on
    the device count) and every array of the state is restored.

    Args:
      out: the run's output directory (`xsam-train --out DIR`).

    Returns:
      `(config, built)`: the saved `TrainConfig` and a `_Run` whose `state` is the restored
      `TrainState` and whose `dataset` is the run's data.

    Raises:
      FileNotFoundError: `out` or its checkpoint is missing.
      CheckpointUnreadableError: no checkpoint can be read (a ValueError).
      ValueError: the saved config is not one this version can rebuild.
    """
    directory = pathlib.Path(out) / "checkpoint"
    if not pathlib.Path(out).is_dir():
        raise FileNotFoundError(f"{out}: no such directory")
    if not directory.is_dir():
        raise FileNotFoundError(f"{out} has no checkpoint/ (written by xsam-train --out DIR)")
    config, built = None, None

    def rebuilt(saved: dict[str, Any]) -> training.TrainState:
        nonlocal config, built
        if built is None:  # every checkpoint of a run holds the same config
            try:
                config = TrainConfig(**saved.get("config"))
            except TypeError as err:
                raise ValueError(f"{directory}: the saved config is not a TrainConfig of this "
                                 f"version ({err})") from None
            built = _Run(dataclasses.replace(config, devices=1))
        return built.state

    with training.Checkpointer(directory, max_to_keep=None) as checkpointer:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(f"{directory} holds no checkpoint")
        state = checkpointer.restore_latest_readable(rebuilt).state
    built.state = state
    return config, built


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Mean and sample std of the final test accuracy per optimizer over seeds."""
    summary = {}
    for name, runs in results.items():
        accs = np.array([r["final_test_accuracy"] for r in runs])
        summary[name] = {"mean": float(accs.mean()),
                         "std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
                         "seeds": len(accs),
                         "seconds": float(np.mean([sum(h["seconds"] for h in r["history"])
                                                   for r in runs]))}
    return summary


__all__ = ["OPTIMIZERS", "TrainConfig", "current_alpha", "load_run", "make_optimizer",
           "resolved_radii", "rho_schedule", "run", "summarise"]
