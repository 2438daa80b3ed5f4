"""Bad arguments are rejected at construction with the argument's name and allowed range."""

import pytest

import xsam_jax as xs

CASES = [
    (lambda: xs.sam(rho=-0.1), r"rho must be a finite float >= 0"),
    (lambda: xs.sam(rho=float("nan")), r"rho must be"),
    (lambda: xs.sam(ascent_steps=0), r"ascent_steps must be an integer >= 1"),
    (lambda: xs.sam(ascent_steps=1.5), r"ascent_steps must be an integer >= 1"),
    (lambda: xs.sam(norm=1), r"norm must be a number p > 1 or 'inf'"),
    (lambda: xs.sam(norm="l2"), r"norm must be a number p > 1 or 'inf'"),
    (lambda: xs.sam(eta=-1.0, adaptive=True), r"eta must satisfy 0.0 <= eta"),
    (lambda: xs.sam(adaptive_mask={"w": True}), r"adaptive_mask only applies with adaptive"),
    (lambda: xs.asam(rho=-1.0), r"rho must be"),
    (lambda: xs.xsam(rho_max=-0.3), r"rho_max must be"),
    (lambda: xs.xsam(alpha_step=0.0), r"alpha_step must satisfy 0.0 < alpha_step"),
    (lambda: xs.xsam(alpha_max=-1.0), r"alpha_max must satisfy 0.0 <= alpha_max"),
    (lambda: xs.xsam(search_every=0), r"search_every must be an integer >= 1"),
    (lambda: xs.xsam(search_chunk=0), r"search_chunk must be an integer >= 1"),
    (lambda: xs.xsam(ascent_steps=0), r"ascent_steps must be an integer >= 1"),
    (lambda: xs.xsam(alpha_init=float("inf")), r"alpha_init must satisfy"),
    (lambda: xs.gsam(alpha=-0.1), r"alpha must satisfy 0.0 <= alpha"),
    (lambda: xs.wsam(gamma=1.0), r"gamma must satisfy 0.0 <= gamma < 1.0"),
    (lambda: xs.wsam(gamma=-0.1), r"gamma must satisfy 0.0 <= gamma < 1.0"),
    (lambda: xs.late_phase(0.05, -1), r"start_step must be an integer >= 0"),
    (lambda: xs.late_phase(-0.05, 10), r"rho must be"),
]


@pytest.mark.parametrize("build,message", CASES)
def test_rejected_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_schedules_are_accepted():
    xs.sam(rho=lambda count: 0.05)
    xs.xsam(rho=xs.late_phase(0.1, 5), rho_max=lambda count: 0.3)
