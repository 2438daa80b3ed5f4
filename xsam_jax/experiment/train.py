"""One training run: build the data, model and optimizer, train, evaluate, save, resume."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import pathlib
import sys
import time
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

import xsam_jax as xs
from xsam_jax import data, landscape, models, plotting, sharpness, training
from xsam_jax._src.validation import InvalidArgumentError, check_int
from xsam_jax.data.dataset import Split
from xsam_jax.experiment.config import PAPER_RHO, TrainConfig, default_radii
from xsam_jax.experiment.optimizers import cost, make_optimizer, perturb_plan, search_plan

EVAL_BATCH = 1000
# Diagnostics (`run(..., diagnostics=True)`): Proposition 1 on this many training examples
# after every epoch, the Hessian of the final model on this many.
PROPOSITION1_EXAMPLES = 512
HESSIAN_EXAMPLES = 1000


def current_xsam_state(opt_state: Any) -> xs.XSAMState | None:
    """The `XSAMState` inside an optimizer state, or None."""
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, xs.XSAMState))
        if isinstance(s, xs.XSAMState)
    ]
    return found[0] if found else None


def current_alpha(opt_state: Any) -> float | None:
    """XSAM's α* if the optimizer holds an `XSAMState`, else None."""
    state = current_xsam_state(opt_state)
    return None if state is None else float(np.asarray(state.alpha).reshape(-1)[0])


def _model_kwargs(name: str, input_shape: tuple[int, ...]) -> dict[str, int]:
    if name == "mlp":
        return {"in_features": int(np.prod(input_shape))}
    if name in ("cnn1d", "cnn1d_wide", "transformer"):
        # Sequence models read (L,) or (L, C); images (H, W, C) become H*W tokens of C values.
        channels = int(input_shape[-1]) if len(input_shape) > 1 else 1
        return {"input_length": int(np.prod(input_shape)) // channels, "in_channels": channels}
    return {}


def _load_data(config: TrainConfig) -> data.Dataset:
    options = {} if config.test_size is None else {"test_size": config.test_size}
    dataset = data.load(
        config.dataset,
        seed=config.seed,
        data_dir=config.data_dir,
        download=config.download,
        **options,
    )
    if config.val_fraction is not None:
        dataset = dataset.split_validation(config.val_fraction, seed=config.seed)
    return dataset


class _Run:
    """The pieces of one run, built once (see `run`)."""

    def __init__(self, config: TrainConfig):
        config.validate()
        self.config = config
        self.dataset = _load_data(config)
        self.steps_per_epoch = len(self.dataset.y_train) // config.batch_size
        if self.steps_per_epoch < 1:
            raise InvalidArgumentError(
                "--batch-size",
                f"at most the {len(self.dataset.y_train)} training examples",
                config.batch_size,
            )
        name = config.model_name
        shape = self.dataset.input_shape
        if name not in models.available(shape):
            fits = ", ".join(models.available(shape))
            raise InvalidArgumentError(
                "--model",
                f"one of {fits} for {config.dataset}, whose examples have shape {shape}",
                name,
            )
        self.model = models.create(
            name, self.dataset.num_classes, rngs=nnx.Rngs(config.seed), **_model_kwargs(name, shape)
        )
        images = len(shape) == 3
        augment = images if config.augment is None else config.augment
        self.augmentation = data.Augmentation(cutout_size=16 if images else 0) if augment else None
        self.mesh = None
        # The rows of every global batch this process loads (None: all, on one process).
        self.rows = None
        model = self.model
        optimizer = functools.partial(make_optimizer, config, self.steps_per_epoch, model=model)
        if config.m_sharpness is not None and config.devices == 1:
            tx = optimizer(axis_name="groups", local_perturbation=True)
            step = training.make_m_sharpness_train_step(model, tx, config.m_sharpness)
        elif config.m_sharpness is not None:
            self.mesh = training.data_mesh(config.devices)
            tx = optimizer(axis_name="data", local_perturbation=True)
            step = training.make_shard_map_train_step(model, tx, self.mesh)
        elif config.devices > 1:
            self.mesh = training.data_mesh(config.devices)
            tx = optimizer()
            step = training.make_sharded_train_step(model, tx, self.mesh)
        else:
            tx = optimizer()
            step = training.make_train_step(model, tx)
        if self.mesh is None:
            step = jax.jit(step, static_argnames=("perturb", "search"))
        self.step = step
        # Which steps take the second gradient and which run XSAM's search, decided on the
        # host so that each compiles as a specialised step instead of a conditional (see
        # xs.perturbed_steps and xs.search_steps).
        self.perturb_plan = perturb_plan(config, self.steps_per_epoch)
        self.search_plan = search_plan(config, self.perturb_plan, self.steps_per_epoch)
        self.eval_step = jax.jit(training.make_eval_step(model))
        self.state = training.TrainState.create(model, tx, rng=config.seed)
        if self.mesh is not None:
            self.state = training.replicate(self.state, self.mesh)
            if jax.process_count() > 1:
                self.rows = training.process_batch_rows(self.mesh, config.batch_size)

    def compile_programs(self, first_step: int) -> float:
        """Compiles every program the plan runs from step `first_step` on; returns the seconds.

        Each distinct (perturb, search) pair of the plan is a statically specialised step (see
        `plan`): a late phase has two, XSAM with its search plan two, SAM one. Compiling them
        all before the first step, in parallel threads (XLA's compiler releases the
        interpreter), keeps compilation out of the epochs' timed steps (`run` reports it apart,
        as "compile_seconds") and costs no pause at a late phase's switch. With a mesh (several
        devices) each program compiles at its first step instead and nothing is counted here.
        """
        step = self.step
        programs = {self.plan(t) for t in range(first_step, len(self.perturb_plan))}
        if self.mesh is not None or not programs:
            return 0.0
        assert isinstance(step, jax.stages.Wrapped)  # jitted in __init__ without a mesh
        shape = (self.config.batch_size, *self.dataset.input_shape)
        batch = {
            "x": jax.ShapeDtypeStruct(shape, np.float32),
            "y": jax.ShapeDtypeStruct(shape[:1], np.int32),
        }

        def compile_program(program: tuple[bool, bool | None]) -> None:
            perturb, search = program
            step.lower(self.state, batch, perturb=perturb, search=search).compile()

        tic = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(len(programs)) as pool:
            list(pool.map(compile_program, programs))
        return time.perf_counter() - tic

    def plan(self, t: int) -> tuple[bool, bool | None]:
        """The static arguments of step t: whether it climbs and, for XSAM, searches."""
        search = None if self.search_plan is None else bool(self.search_plan[t])
        return bool(self.perturb_plan[t]), search

    def batches(self, epoch: int):
        for batch in self.dataset.train_batches(
            self.config.batch_size, epoch=epoch, augmentation=self.augmentation, rows=self.rows
        ):
            yield batch if self.mesh is None else training.shard_batch(batch, self.mesh)

    def host_state(self) -> training.TrainState:
        return self.state if self.mesh is None else jax.device_get(self.state)

    def evaluate(self, split: Split = "test") -> dict[str, float]:
        """Mean loss and accuracy of the current model (eval mode) on a split.

        Every process evaluates the whole split on one of its devices with its copy of the
        replicated state: no collective, and every process gets the same numbers (those of a
        single-process run with these parameters), so all of them stop alike on a non-finite
        loss.
        """
        x, y = self.dataset.arrays(split)
        state = self.host_state()
        totals = {"loss": 0.0, "accuracy": 0.0}
        for start in range(0, len(y), EVAL_BATCH):
            batch = {"x": x[start : start + EVAL_BATCH], "y": y[start : start + EVAL_BATCH]}
            metrics = self.eval_step(state, batch)
            for key in totals:
                totals[key] += float(metrics[key]) * len(batch["y"])
        return {key: value / len(y) for key, value in totals.items()}


class _Diagnostics:
    """Geometry along training and sharpness at the end (`run(..., diagnostics=True)`).

    After every epoch: Proposition 1's ratio (L(θ + r·v1) − L(θ)) / (L(θ + r·v0) − L(θ)) on a
    fixed set of training examples, with the run's ρ and r = ρ_max (2ρ for methods without a
    probe radius, SAM's 0.05 and 0.1 for SGD); above 1 means the SAM gradient points further
    uphill than the clean one. At the end: λ_max (Lanczos) and the Hessian trace (Hutchinson)
    of the training loss on a fixed set of training examples, BatchNorm in train mode.
    """

    def __init__(self, built: _Run):
        self.built = built
        x, y = built.dataset.arrays("train")
        prop_batch = {"x": x[:PROPOSITION1_EXAMPLES], "y": y[:PROPOSITION1_EXAMPLES]}
        hessian_batch = {"x": x[:HESSIAN_EXAMPLES], "y": y[:HESSIAN_EXAMPLES]}

        def loss(model, batch):
            logits = model(batch["x"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

        # Built once: the estimators compile per function object.
        loss_fn, _ = sharpness.nnx_loss_fn(built.model, loss)
        self.prop_loss = lambda p: loss_fn(p, prop_batch)
        self.hessian_loss = lambda p: loss_fn(p, hessian_batch)
        rho, rho_max = default_radii(built.config)
        self.rho = PAPER_RHO["sam"] if rho is None else rho
        self.radius = 2 * self.rho if rho_max is None else rho_max

    def epoch(self) -> dict[str, float]:
        params = self.built.host_state().params
        result = landscape.proposition1(self.prop_loss, params, [self.radius], rho=self.rho)
        rise_v0 = float(result.along_v0[0] - result.loss)
        rise_v1 = float(result.along_v1[0] - result.loss)
        ratio = rise_v1 / rise_v0 if rise_v0 != 0 else math.nan
        return {"proposition1_ratio": ratio, "proposition1_cos_psi": float(result.cos_psi)}

    def final(self, seed: int) -> dict[str, float]:
        params = self.built.host_state().params
        key = jax.random.key(seed)
        top = sharpness.hessian_eigenvalues(
            self.hessian_loss, params, key=jax.random.fold_in(key, 0), k=1, num_iters=20
        )
        trace = sharpness.hessian_trace(
            self.hessian_loss, params, key=jax.random.fold_in(key, 1), num_samples=50
        )
        return {
            "lambda_max": float(top[0]),
            "hessian_trace": float(trace.mean),
            "hessian_trace_stderr": float(trace.stderr),
        }


def _xsam_record(opt_state: Any) -> dict[str, Any]:
    """XSAM's α* (the last search's winner), the last step's cos ψ and the probe losses."""
    state = current_xsam_state(opt_state)
    if state is None:
        return {"alpha": None}
    alpha = float(np.asarray(state.alpha).reshape(-1)[0])
    cos_psi = float(np.asarray(state.cos_psi).reshape(-1)[0])
    psi = math.degrees(math.acos(min(1.0, max(-1.0, cos_psi)))) if math.isfinite(cos_psi) else None
    return {
        "alpha": alpha,
        "cos_psi": cos_psi,
        "rotation_degrees": None if psi is None else alpha * psi,
        "alpha_losses": np.asarray(state.alpha_losses, np.float64).reshape(-1).tolist(),
    }


def run(
    config: TrainConfig,
    *,
    out: str | pathlib.Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 1,
    progress: bool = True,
    test: bool = True,
    diagnostics: bool = False,
) -> dict[str, Any]:
    """Train, evaluating after every epoch.

    In a run of several JAX processes (after `jax.distributed.initialize`, with
    `config.devices` counting the devices of all of them) every process calls `run` alike:
    each loads and feeds its rows of every global batch, all write the checkpoint together
    (so `out` must be on a file system they share), and process 0 alone shows the progress
    bar and writes `metrics.json` and `curves.png`. Every process returns the result.

    Args:
      config: the run's configuration (validated first: ValueError on bad values); it is
        stored resolved (`TrainConfig.resolved`).
      out: directory for `metrics.json`, `curves.png` and `checkpoint/`, or None.
      resume: continue from the latest readable checkpoint in `out` (its config must match).
      checkpoint_every: with `out`, save a checkpoint after every this many epochs and after
        the last. Each save writes in background threads while the next epoch trains, which
        on small, fast steps slows them (see the README's performance section); a resumed
        run redoes the epochs since the last save.
      progress: show a progress bar (steps, rate, ETA, loss, accuracy, α*) on stderr.
      test: evaluate on the test split. Tuning passes False (with a validation split), so the
        test set is never read while anything is chosen.
      diagnostics: also record Proposition 1's ratio after every epoch and λ_max and the
        Hessian trace of the final model (see `_Diagnostics`).

    Returns:
      `{"config", "history", "seconds", "compile_seconds", "gradient_evaluations",
      "probe_evaluations", "final_train_accuracy"}` plus `"final_val_accuracy"` with a
      validation split and `"final_test_accuracy"` with `test`, and the final sharpness with
      `diagnostics`. "seconds" is the training time: compiling the train step's programs
      before the first step ("compile_seconds", see `_Run.compile_programs`; 0 with a mesh,
      where they compile in the first epochs) plus the epochs' training steps (evaluation
      excluded). Each history entry has epoch, train_loss, train_accuracy, val_* and test_*
      likewise, seconds (wall time of the epoch's training steps), and for XSAM alpha (α*),
      cos_psi (of the last step), rotation_degrees (α*·ψ) and alpha_losses (the last
      search's probe losses).
    """
    from tqdm.auto import tqdm

    check_int("checkpoint_every", checkpoint_every, low=1)
    config = config.resolved()
    built = _Run(config)
    lead = jax.process_index() == 0  # the process that reports and writes the outputs
    saved_config = dataclasses.asdict(config)
    out = None if out is None else pathlib.Path(out)
    history: list[dict[str, Any]] = []
    checkpointer = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        # Two, so that a damaged latest checkpoint costs one period, not the run.
        checkpointer = training.Checkpointer(out / "checkpoint", max_to_keep=2)
        if resume and checkpointer.latest_step() is not None:

            def same_config(saved: dict[str, Any]) -> training.TrainState:
                if saved.get("config") != saved_config:
                    raise ValueError(
                        f"--resume: the checkpoint in {out} was written with a "
                        "different config; use the same flags or another --out"
                    )
                return built.state

            built.state, _, saved = checkpointer.restore_latest_readable(same_config)
            history = saved.get("history", [])
        elif resume:
            raise ValueError(f"--resume: no checkpoint in {out / 'checkpoint'}")
    splits: list[Split] = []
    if config.val_fraction is not None:
        splits.append("val")
    if test:
        splits.append("test")
    probe = _Diagnostics(built) if diagnostics else None
    start_epoch = len(history)
    label = config.optimizer + ("+adaptive" if config.adaptive else "")
    if progress and lead:
        print(f"{label} {config.dataset}: compiling the train step", file=sys.stderr, flush=True)
    compile_seconds = built.compile_programs(start_epoch * built.steps_per_epoch)
    # Simulated CPU devices can deadlock in XLA's collectives when many steps are queued.
    wait_every_step = built.mesh is not None and jax.default_backend() == "cpu"
    bar = tqdm(
        total=config.epochs * built.steps_per_epoch,
        initial=start_epoch * built.steps_per_epoch,
        unit="step",
        disable=not (progress and lead),
        dynamic_ncols=True,
        desc=f"{label} {config.dataset}",
    )
    for epoch in range(start_epoch, config.epochs):
        tic = time.perf_counter()
        step_metrics = []
        for i, batch in enumerate(built.batches(epoch)):
            perturb, search = built.plan(epoch * built.steps_per_epoch + i)
            built.state, metrics = built.step(built.state, batch, perturb=perturb, search=search)
            step_metrics.append(metrics)
            if wait_every_step:
                jax.block_until_ready(metrics)
            bar.update(1)
        train = {
            k: float(np.mean([jax.device_get(m[k]) for m in step_metrics]))
            for k in ("loss", "accuracy")
        }
        seconds = time.perf_counter() - tic
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
        }
        for split in splits:
            for key, value in built.evaluate(split).items():
                entry[f"{split}_{key}"] = value
        entry.update(_xsam_record(built.state.opt_state))
        entry["seconds"] = seconds
        if probe is not None:
            entry.update(probe.epoch())
        history.append(entry)
        postfix = {"loss": f"{train['loss']:.3f}", "acc": f"{train['accuracy']:.3f}"}
        postfix |= {f"{s}_acc": f"{entry[f'{s}_accuracy']:.3f}" for s in splits}
        if entry["alpha"] is not None:
            postfix["alpha"] = f"{entry['alpha']:.1f}"
        bar.set_postfix(postfix)
        losses = [train["loss"], *(entry[f"{s}_loss"] for s in splits)]
        if not all(math.isfinite(v) for v in losses):
            if lead:
                bar.write(f"epoch {epoch + 1}: the loss is not finite; stopping")
            break
        due = (epoch + 1) % checkpoint_every == 0 or epoch + 1 == config.epochs
        if checkpointer is not None and due:
            checkpointer.save(built.state, metadata={"config": saved_config, "history": history})
    bar.close()
    result: dict[str, Any] = {
        "config": saved_config,
        "history": history,
        "seconds": compile_seconds + sum(h["seconds"] for h in history),
        "compile_seconds": compile_seconds,
        **cost(config, built.perturb_plan, built.steps_per_epoch),
        "final_train_accuracy": history[-1]["train_accuracy"] if history else math.nan,
    }
    for split in splits:
        final = history[-1][f"{split}_accuracy"] if history else math.nan
        result[f"final_{split}_accuracy"] = final
    if probe is not None and history:
        result.update(probe.final(config.seed))
    if checkpointer is not None:  # there is one exactly when there is an `out`
        checkpointer.wait_until_finished()
        checkpointer.close()
    if out is not None and lead:
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        plotting.plot_training_curves({label: history}, path=out / "curves.png")
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
    config: TrainConfig | None = None
    built: _Run | None = None

    def rebuilt(saved: dict[str, Any]) -> training.TrainState:
        nonlocal config, built
        if built is None:  # every checkpoint of a run holds the same config
            try:
                config = TrainConfig.from_dict(saved["config"])
            except ValueError as err:
                raise ValueError(f"{directory}: the saved config is {err}") from None
            built = _Run(dataclasses.replace(config, devices=1))
        return built.state

    with training.Checkpointer(directory, max_to_keep=None) as checkpointer:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(f"{directory} holds no checkpoint")
        state = checkpointer.restore_latest_readable(rebuilt).state
    # Restoring called `rebuilt`, which set both.
    assert config is not None and built is not None
    built.state = state
    return config, built
