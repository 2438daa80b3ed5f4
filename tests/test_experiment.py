"""How `xsam-train`'s flags reach the optimizer, checked against their documented meaning.

Each case runs the CLI's own run (`experiment.train._Run`, built from the parsed flags) for a
few steps next to an optimizer written out here from the README's description of the flags,
on the same model, data and batches; the parameters must agree. The transformations
themselves are checked against NumPy elsewhere.
"""

import dataclasses
import math

import jax
import numpy as np
import optax
import pytest

import xsam_jax as xs
from xsam_jax import cli, experiment, training
from xsam_jax.experiment.train import _Run

# digits with a 1-D CNN: a setting the study did not tune, so the papers' radii are the defaults.
FAST = ["--dataset", "digits", "--model", "cnn1d", "--epochs", "2", "--batch-size", "128"]
STEPS_PER_EPOCH = 11  # 1,437 training examples
TOTAL = 2 * STEPS_PER_EPOCH


def config_from_flags(flags):
    args = cli.build_parser().parse_args([*FAST, *flags])
    fields = {f.name for f in dataclasses.fields(experiment.TrainConfig)} - {"optimizer"}
    base = experiment.TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    return dataclasses.replace(base, **experiment.parse_variant(args.optimizer)).resolved()


def documented(method, *, lr=0.05, momentum=0.9, weight_decay=5e-4):
    """The README: the method, then weight decay, then SGD with momentum and cosine decay."""
    schedule = optax.cosine_decay_schedule(lr, TOTAL)
    chain = [optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum)]
    return optax.chain(*([] if method is None else [method]), *chain)


# The normalisation layers of `models.transformer`, by name (its LayerNorms).
LAYER_NORMS = ("ln1", "ln2", "final_ln")


def in_layers(params, names):
    """True on the leaves of `params` below a module named in `names`."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(getattr(entry, "key", None) in names for entry in path), params
    )


CASES = {
    "default xsam: rho 0.15, rho_max 2 rho, one search an epoch": (
        [],
        xs.xsam(0.15, 0.3, search_every=STEPS_PER_EPOCH),
    ),
    "--rho sets rho_max to twice it": (
        ["--rho", "0.1"],
        xs.xsam(0.1, 0.2, search_every=STEPS_PER_EPOCH),
    ),
    "--rho-max": (
        ["--rho", "0.1", "--rho-max", "0.4"],
        xs.xsam(0.1, 0.4, search_every=STEPS_PER_EPOCH),
    ),
    "--search-every": (["--search-every", "3"], xs.xsam(0.15, 0.3, search_every=3)),
    "--search-every 0: never searches, alpha stays 1": (
        ["--search-every", "0"],
        xs.xsam(0.15, 0.3, search_every=None),
    ),
    "--ascent-steps": (
        ["--ascent-steps", "2"],
        xs.xsam(0.15, 0.3, ascent_steps=2, search_every=STEPS_PER_EPOCH),
    ),
    "--xsam-reuse rotation": (
        ["--xsam-reuse", "rotation"],
        xs.xsam(0.15, 0.3, search_every=STEPS_PER_EPOCH, reuse="rotation"),
    ),
    "xsam+cap=30: at most 30 degrees": (
        ["--optimizer", "xsam+cap=30"],
        xs.xsam(0.15, 0.3, search_every=STEPS_PER_EPOCH, max_rotation=math.pi / 6),
    ),
    "sam default 0.05": (["--optimizer", "sam"], xs.sam(0.05)),
    "asam is sam with the adaptive ascent, rho 0.5": (["--optimizer", "asam"], xs.asam(0.5)),
    "--adaptive on xsam": (
        ["--adaptive", "--rho", "0.5", "--rho-max", "0.2"],
        xs.xsam(0.5, 0.2, adaptive=True, search_every=STEPS_PER_EPOCH),
    ),
    "late-sam: SGD for the first 80 % of the steps": (
        ["--optimizer", "late-sam"],
        xs.sam(xs.late_phase(0.05, int(0.8 * TOTAL))),
    ),
    "--late-phase-start on xsam": (
        ["--late-phase-start", "0.25"],
        xs.xsam(xs.late_phase(0.15, int(0.25 * TOTAL)), 0.3, search_every=STEPS_PER_EPOCH),
    ),
    "sam+late=0.5": (["--optimizer", "sam+late=0.5"], xs.sam(xs.late_phase(0.05, TOTAL // 2))),
    "--gsam-alpha": (["--optimizer", "gsam", "--gsam-alpha", "0.2"], xs.gsam(0.05, 0.2)),
    "--wsam-gamma": (["--optimizer", "wsam", "--wsam-gamma", "0.7"], xs.wsam(0.05, 0.7)),
    "fsam, --fsam-sigma, --fsam-lambda": (
        ["--optimizer", "fsam", "--fsam-sigma", "0.5", "--fsam-lambda", "0.6"],
        xs.fsam(0.05, 0.5, 0.6),
    ),
    "vasso, --vasso-theta": (
        ["--optimizer", "vasso", "--vasso-theta", "0.4"],
        xs.vasso(0.05, 0.4),
    ),
    "fisher-sam: rho 0.1, --fisher-eta": (
        ["--optimizer", "fisher-sam", "--fisher-eta", "2"],
        xs.fisher_sam(0.1, 2.0),
    ),
    "looksam, --looksam-every, --looksam-alpha: the plan skips the steps in between": (
        ["--optimizer", "looksam", "--looksam-every", "3", "--looksam-alpha", "0.5"],
        xs.looksam(0.05, 3, 0.5),
    ),
    "looksam+late=0.5": (
        ["--optimizer", "looksam+late=0.5"],
        xs.looksam(xs.late_phase(0.05, TOTAL // 2), 5, 0.7),
    ),
    "--perturbation-mask norm: the LayerNorms of the transformer (SAM-ON)": (
        ["--optimizer", "sam", "--model", "transformer", "--perturbation-mask", "norm"],
        xs.sam(0.05, perturbation_mask=lambda params: in_layers(params, LAYER_NORMS)),
    ),
    "sam+every=2: SAM on the even steps": (
        ["--optimizer", "sam+every=2"],
        xs.sam(xs.periodic(0.05, 2)),
    ),
    "--perturb-every on xsam: the epoch's search moves to a climbing step": (
        ["--perturb-every", "3"],
        xs.xsam(xs.periodic(0.15, 3), 0.3, search_every=STEPS_PER_EPOCH),
    ),
    "gsam+random=0.5: draws from --seed": (
        ["--optimizer", "gsam+random=0.5", "--seed", "7"],
        xs.gsam(xs.randomized(0.05, 0.5, seed=7), 0.4),
    ),
    "--perturb-probability with a late phase: SGD, then random SAM steps": (
        ["--optimizer", "sam+late=0.5", "--perturb-probability", "0.4"],
        xs.sam(xs.late_phase(xs.randomized(0.05, 0.4, seed=0), TOTAL // 2)),
    ),
    "sgd": (["--optimizer", "sgd"], None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_flags_reach_the_optimizer_as_documented(case):
    flags, method = CASES[case]
    config = config_from_flags(flags)
    built = _Run(config)
    reference = documented(method)
    # The reference takes the run's plan too, so both sides compile the same programs: the
    # conditional's convolutions round differently on XLA:CPU, and XSAM's α = 2 amplifies that
    # past any useful tolerance (test_gate and test_search_plan check the plan against the
    # conditional). A plan that disagrees with the documented schedule still fails:
    # perturb=False on a step whose ρ is positive, or search=False on a step where XSAM's
    # search is due, makes the reference's update NaN.
    step = jax.jit(
        training.make_train_step(built.model, reference), static_argnames=("perturb", "search")
    )
    state = training.TrainState.create(built.model, reference, rng=config.seed)
    for epoch in range(2):
        for i, batch in enumerate(built.batches(epoch)):
            perturb, search = built.plan(epoch * STEPS_PER_EPOCH + i)
            built.state, _ = built.step(built.state, batch, perturb=perturb, search=search)
            state, _ = step(state, batch, perturb=perturb, search=search)
    for a, b in zip(
        jax.tree.leaves(built.state.params), jax.tree.leaves(state.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(
    "flags,lr,momentum,weight_decay",
    [
        (["--lr", "0.2"], 0.2, 0.9, 5e-4),
        (["--momentum", "0.5"], 0.05, 0.5, 5e-4),
        (["--weight-decay", "0.01"], 0.05, 0.9, 0.01),
    ],
)
def test_base_optimizer_flags(flags, lr, momentum, weight_decay):
    config = config_from_flags(["--optimizer", "sgd", *flags])
    built = _Run(config)
    reference = documented(None, lr=lr, momentum=momentum, weight_decay=weight_decay)
    step = jax.jit(training.make_train_step(built.model, reference))
    state = training.TrainState.create(built.model, reference, rng=config.seed)
    for batch in built.batches(0):
        built.state, _ = built.step(built.state, batch)
        state, _ = step(state, batch)
    for a, b in zip(
        jax.tree.leaves(built.state.params), jax.tree.leaves(state.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_looksam_takes_the_second_gradient_on_its_full_steps_only():
    config = config_from_flags(["--optimizer", "looksam+late=0.5", "--looksam-every", "3"])
    built = _Run(config)
    steps = np.arange(TOTAL)
    np.testing.assert_array_equal(built.perturb_plan, (steps >= TOTAL // 2) & (steps % 3 == 0))
    cost = experiment.cost(config, built.perturb_plan, STEPS_PER_EPOCH)
    assert cost["gradient_evaluations"] == TOTAL + int(np.sum(built.perturb_plan))


@pytest.mark.parametrize(
    "flags,gradients,probes",
    [
        # SAM on the 11 even steps of 22: one extra gradient each.
        (["--optimizer", "sam+every=2"], 22 + 11, 0),
        # XSAM on steps 0, 3, ..., 21 (8 steps); one search an epoch (steps 0-10, 11-21): at
        # step 0 and at step 12, the first that climbs in the second epoch.
        (["--perturb-every", "3"], 22 + 8, 2 * 21),
        # SGD until step 11, then XSAM on the even steps 12, ..., 20; one search, at step 12.
        (["--optimizer", "xsam+late=0.5+every=2"], 22 + 5, 21),
        # Every step climbs twice; searches at steps 0 and 11.
        (["--ascent-steps", "2"], 22 + 2 * 22, 2 * 21),
    ],
)
def test_cost_counts_the_gradients_and_probes_of_the_plan(flags, gradients, probes):
    config = config_from_flags(flags)
    plan = experiment.perturb_plan(config, STEPS_PER_EPOCH)
    assert experiment.cost(config, plan, STEPS_PER_EPOCH) == {
        "gradient_evaluations": gradients,
        "probe_evaluations": probes,
    }


@pytest.mark.parametrize(
    "flags,programs",
    [
        (["--optimizer", "sgd"], 1),
        # SGD's program until the switch, SAM's after it.
        (["--optimizer", "sam+late=0.5"], 2),
        # Plain steps, then XSAM's search step (step 11) and its non-search steps.
        (["--optimizer", "xsam+late=0.5"], 3),
    ],
)
def test_run_compiles_the_planned_programs_before_the_timed_steps(monkeypatch, flags, programs):
    """Every program of the plan compiles before the first step, and no train step traces or
    compiles while the epochs are timed (a late phase's second program included)."""
    events = []
    phase = ["building"]
    original = _Run.compile_programs

    def compile_programs(self, first_step):
        phase[0] = "compiling"
        seconds = original(self, first_step)
        phase[0] = "training"
        return seconds

    def listen(event, duration, **kwargs):
        # Tracing names the function, lowering and compiling its jit.
        if kwargs.get("fun_name") in ("train_step", "jit(train_step)"):
            events.append((phase[0], event.rsplit("/", 1)[-1]))

    monkeypatch.setattr(_Run, "compile_programs", compile_programs)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        result = experiment.run(config_from_flags(flags), progress=False, test=False)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert events.count(("compiling", "backend_compile_duration")) == programs
    assert [e for e in events if e[0] != "compiling"] == []
    assert result["compile_seconds"] > 0
    assert result["seconds"] == pytest.approx(
        result["compile_seconds"] + sum(h["seconds"] for h in result["history"])
    )


def test_variants_and_aliases():
    assert experiment.parse_variant("xsam+adaptive+late=0.75") == {
        "optimizer": "xsam",
        "adaptive": True,
        "late_phase_start": 0.75,
    }
    assert experiment.parse_variant("xsam+late") == {"optimizer": "xsam", "late_phase_start": 0.8}
    assert experiment.parse_variant("sam+every=2+late=0.5") == {
        "optimizer": "sam",
        "perturb_every": 2,
        "late_phase_start": 0.5,
    }
    assert experiment.parse_variant("gsam+random=0.25") == {
        "optimizer": "gsam",
        "perturb_probability": 0.25,
    }
    late = experiment.TrainConfig(optimizer="late-sam")
    assert (late.optimizer, late.adaptive, late.late_phase_start) == ("sam", False, 0.8)
    early = experiment.TrainConfig(optimizer="late-sam", late_phase_start=0.3)
    assert early.late_phase_start == 0.3
    asam = experiment.TrainConfig(optimizer="asam")
    assert (asam.optimizer, asam.adaptive) == ("sam", True)
    for bad, message in (
        ("adamw", "unknown method 'adamw'"),
        ("sam+late=x", r"\+late=F needs"),
        ("sam+slow", "unknown modifier 'slow'"),
        ("sam+random=half", r"\+random=P needs a probability P, got 'random=half'"),
    ):
        with pytest.raises(ValueError, match=message):
            experiment.parse_variant(bad)


def test_configs_saved_by_the_previous_version_keep_their_meaning():
    """Before the variants, every config stored late_phase_start (0.8), used by late-sam only."""
    old = dataclasses.asdict(experiment.TrainConfig())
    del old["adaptive"], old["val_fraction"], old["test_size"]
    for name, expect in (
        ("xsam", ("xsam", False, None)),
        ("late-sam", ("sam", False, 0.8)),
        ("asam", ("sam", True, None)),
    ):
        config = experiment.TrainConfig.from_dict(
            {**old, "optimizer": name, "late_phase_start": 0.8}
        )
        assert (config.optimizer, config.adaptive, config.late_phase_start) == expect
    with pytest.raises(ValueError, match="not a TrainConfig of this version"):
        experiment.TrainConfig.from_dict({**old, "colour": "red"})


def test_default_radii_prefer_the_study_then_the_papers(monkeypatch):
    monkeypatch.setitem(
        experiment.TUNED_RADII,
        ("digits", "mlp"),
        {"xsam": {"rho": 0.1, "rho_max": 0.1}, "sam+adaptive": {"rho": 1.0}},
    )
    tuned = experiment.TrainConfig(dataset="digits")
    assert experiment.default_radii(tuned) == (0.1, 0.1)
    assert experiment.default_radii(dataclasses.replace(tuned, rho=0.2)) == (0.2, 0.4)
    assert experiment.default_radii(dataclasses.replace(tuned, optimizer="asam")) == (1.0, None)
    other = experiment.TrainConfig(dataset="digits", model="cnn1d")  # not in the study
    assert experiment.default_radii(other) == (0.15, 0.3)
    assert experiment.default_radii(dataclasses.replace(other, optimizer="gsam")) == (0.05, None)
    assert experiment.default_radii(dataclasses.replace(other, optimizer="sgd")) == (None, None)


def test_summary_statistics_by_hand():
    def result(seed, test, val, train=1.0, seconds=2.0):
        return {
            "config": {"seed": seed},
            "final_test_accuracy": test,
            "final_val_accuracy": val,
            "final_train_accuracy": train,
            "seconds": seconds,
            "gradient_evaluations": 10,
        }

    results = {
        "sgd": [result(0, 0.90, 0.80), result(1, 0.92, 0.82), result(2, 0.94, 0.81)],
        "sam": [
            result(0, 0.93, 0.83),
            result(1, 0.94, 0.84),
            result(2, 0.98, 0.83),
            result(3, 0.99, 0.99),
        ],
    }
    summary = experiment.summarise(results)
    sgd = summary["variants"]["sgd"]
    assert sgd["mean_test_accuracy"] == pytest.approx(0.92)
    # sd 0.02, t_{0.975, 2} = 4.303 (from a table)
    assert sgd["ci95"] == pytest.approx(4.303 * 0.02 / math.sqrt(3), rel=1e-3)
    assert sgd["mean_val_accuracy"] == pytest.approx(0.81)
    assert sgd["val_ci95"] == pytest.approx(4.303 * 0.01 / math.sqrt(3), rel=1e-3)
    paired = summary["paired"]["sam"]
    # Paired on the seeds both ran (0, 1, 2): differences 0.03, 0.02, 0.04.
    assert paired["seeds"] == [0, 1, 2]
    assert paired["differences"] == pytest.approx([0.03, 0.02, 0.04])
    assert paired["mean_difference"] == pytest.approx(0.03)
    assert paired["ci95"] == pytest.approx(4.303 * 0.01 / math.sqrt(3), rel=1e-3)
    assert paired["val_mean_difference"] == pytest.approx((0.03 + 0.02 + 0.02) / 3)
    assert summary["variants"]["sam"]["seeds"] == [0, 1, 2, 3]
    assert math.isnan(experiment.summarise({"a": [result(0, 0.5, 0.5)]})["variants"]["a"]["ci95"])
    with pytest.raises(ValueError, match="baseline must be one of sgd, sam"):
        experiment.summarise(results, baseline="adam")
