"""Bad arguments are rejected at construction with the argument's name and allowed range.

Every message reads ``<name> must be <constraint>, got <value>``; the cases match it whole.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xsam_jax as xs
from xsam_jax._src import validation

CASES = [
    (lambda: xs.sam(rho=-0.1), "rho must be a finite float >= 0 or an optax schedule, got -0.1"),
    (
        lambda: xs.sam(rho=float("nan")),
        "rho must be a finite float >= 0 or an optax schedule, got nan",
    ),
    (lambda: xs.sam(ascent_steps=0), "ascent_steps must be an integer >= 1, got 0"),
    (lambda: xs.sam(ascent_steps=1.5), "ascent_steps must be an integer >= 1, got 1.5"),
    (lambda: xs.sam(norm=1), "norm must be a number p > 1 or 'inf', got 1"),
    (lambda: xs.sam(norm="l2"), "norm must be a number p > 1 or 'inf', got 'l2'"),
    (lambda: xs.sam(eta=-1.0, adaptive=True), "eta must be a finite float >= 0, got -1.0"),
    (lambda: xs.sam(adaptive_mask={"w": True}), "adaptive_mask only applies with adaptive"),
    (lambda: xs.asam(rho=-1.0), "rho must be a finite float >= 0 or an optax schedule, got -1.0"),
    (
        lambda: xs.xsam(rho_max=-0.3),
        "rho_max must be a finite float >= 0 or an optax schedule, got -0.3",
    ),
    (lambda: xs.xsam(alpha_step=0.0), "alpha_step must be a finite float > 0, got 0.0"),
    (lambda: xs.xsam(alpha_max=-1.0), "alpha_max must be a finite float >= 0, got -1.0"),
    (lambda: xs.xsam(search_every=0), "search_every must be an integer >= 1, got 0"),
    (lambda: xs.xsam(search_chunk=0), "search_chunk must be an integer >= 1, got 0"),
    (lambda: xs.xsam(ascent_steps=0), "ascent_steps must be an integer >= 1, got 0"),
    (lambda: xs.xsam(alpha_init=float("inf")), "alpha_init must be a finite float, got inf"),
    (lambda: xs.gsam(alpha=-0.1), "alpha must be a finite float >= 0, got -0.1"),
    (lambda: xs.wsam(gamma=1.0), "gamma must be a finite float in [0, 1), got 1.0"),
    (lambda: xs.wsam(gamma=-0.1), "gamma must be a finite float in [0, 1), got -0.1"),
    (lambda: xs.fsam(sigma=-0.1), "sigma must be a finite float >= 0, got -0.1"),
    (lambda: xs.fsam(lmbda=1.5), "lmbda must be a finite float in [0, 1], got 1.5"),
    (lambda: xs.fsam(rho=-1.0), "rho must be a finite float >= 0 or an optax schedule, got -1.0"),
    (lambda: xs.vasso(theta=-0.5), "theta must be a finite float in [0, 1], got -0.5"),
    (lambda: xs.vasso(ascent_steps=0), "ascent_steps must be an integer >= 1, got 0"),
    (lambda: xs.fisher_sam(eta=-1.0), "eta must be a finite float >= 0, got -1.0"),
    (lambda: xs.fisher_sam(eta=float("nan")), "eta must be a finite float >= 0, got nan"),
    (lambda: xs.looksam(every=0), "every must be an integer >= 1, got 0"),
    (lambda: xs.looksam(every=2.5), "every must be an integer >= 1, got 2.5"),
    (lambda: xs.looksam(alpha=-0.1), "alpha must be a finite float >= 0, got -0.1"),
    (
        lambda: xs.looksam(rho=-0.1),
        "rho must be a finite float >= 0 or an optax schedule, got -0.1",
    ),
    (
        lambda: xs.gsam(perturbation_mask={"w": 1}),
        "perturbation_mask must be a pytree of Python bools (possibly a prefix of the params, "
        "like an optax mask) or a callable returning one, got 1",
    ),
    (lambda: xs.late_phase(0.05, -1), "start_step must be an integer >= 0, got -1"),
    (lambda: xs.late_phase(0.05, 2.0), "start_step must be an integer >= 0, got 2.0"),
    (
        lambda: xs.late_phase(-0.05, 10),
        "rho must be a finite float >= 0 or an optax schedule, got -0.05",
    ),
    (lambda: xs.periodic(0.05, 0), "every must be an integer >= 1, got 0"),
    (lambda: xs.periodic(0.05, 2.0), "every must be an integer >= 1, got 2.0"),
    (
        lambda: xs.periodic(-1.0, 2),
        "rho must be a finite float >= 0 or an optax schedule, got -1.0",
    ),
    (
        lambda: xs.randomized(0.05, 1.5, seed=0),
        "probability must be a finite float in [0, 1], got 1.5",
    ),
    (
        lambda: xs.randomized(0.05, 0.5, seed=-1),
        "seed must be an integer in [0, 4294967295], got -1",
    ),
    (
        lambda: xs.randomized(0.05, 0.5, seed=2**32),
        "seed must be an integer in [0, 4294967295], got 4294967296",
    ),
]


@pytest.mark.parametrize("build,message", CASES)
def test_rejected_at_construction(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


def test_schedules_are_accepted():
    xs.sam(rho=lambda count: 0.05)
    xs.xsam(rho=xs.late_phase(0.1, 5), rho_max=lambda count: 0.3)


# ------------------------------------------------------------------ the checks themselves


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (
            lambda: validation.check_int("k", 11, low=1, high=10),
            "k must be an integer in [1, 10], got 11",
        ),
        (lambda: validation.check_int("k", True, low=0), "k must be an integer >= 0, got True"),
        (
            lambda: validation.check_int("k", np.int64(-2), low=0),
            "k must be an integer >= 0, got -2",
        ),
        (
            lambda: validation.check_int("chunk", 0, low=1, optional=True),
            "chunk must be None or an integer >= 1, got 0",
        ),
        (
            lambda: validation.check_range("rho", None, low=0.0, low_open=True),
            "rho must be a finite float > 0, got None",
        ),
        (
            lambda: validation.check_range("rho", "0.1", low=0.0),
            "rho must be a finite float >= 0, got '0.1'",
        ),
        (
            lambda: validation.check_range("rho", -1.0, low=0, low_open=True, optional=True),
            "rho must be None or a finite float > 0, got -1.0",
        ),
        (
            lambda: validation.check_range("x", np.float32(2.5), high=2.0),
            "x must be a finite float <= 2, got 2.5",
        ),
        (
            lambda: validation.check_choice("method", "qr", ("lanczos", "power")),
            "method must be one of 'lanczos', 'power', got 'qr'",
        ),
        (
            lambda: validation.check_grid("radii", [0.1, -0.1], low=0.0),
            "radii must be a non-empty 1-D array of finite floats >= 0, got [0.1, -0.1]",
        ),
        (
            lambda: validation.check_grid("x", [[0.0]]),
            "x must be a non-empty 1-D array of finite floats, got [[0.0]]",
        ),
        (
            lambda: validation.check_grid("x", [0.0, np.inf]),
            "x must be a non-empty 1-D array of finite floats, got [0.0, inf]",
        ),
    ],
)
def test_checks_reject_with_the_message_style(check, message):
    with pytest.raises(validation.InvalidArgumentError, match=re.escape(message) + "$"):
        check()


def test_checks_accept_their_range_and_pass_traced_values():
    validation.check_int("k", 10, low=1, high=10)
    validation.check_int("k", jnp.asarray(3), low=1)  # optax.inject_hyperparams passes arrays
    validation.check_int("chunk", None, low=1, optional=True)
    validation.check_range("gamma", 0.0, low=0.0, high=1.0, high_open=True)
    np.testing.assert_array_equal(
        validation.check_grid("x", [1, np.nan], finite=False), [1.0, np.nan]
    )

    @jax.jit
    def traced(x):
        # Traced values cannot be checked without a host sync: they pass.
        validation.check_int("k", x.astype(jnp.int32), low=5)
        validation.check_range("rho", x, low=5.0)
        return x

    traced(jnp.float32(1.0))


def test_the_message_can_name_a_flag_instead():
    with pytest.raises(validation.InvalidArgumentError) as info:
        validation.check_range("rho_max", -1.0, low=0.0, low_open=True)
    assert (info.value.name, info.value.value) == ("rho_max", -1.0)
    assert info.value.message("--rho-max") == "--rho-max must be a finite float > 0, got -1.0"
