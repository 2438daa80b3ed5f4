"""The `Examples:` of the main factories run as written (doctest).

Each expected output was derived by hand in closed form, or with NumPy in float64, from the
method's definition (the derivation is in the example's text), not by running the code.
"""

import doctest

import pytest

import xsam_jax as xs
from xsam_jax import landscape, sharpness

DOCUMENTED = [
    xs.sam,
    xs.asam,
    xs.gsam,
    xs.wsam,
    xs.wsam_decoupled,
    xs.xsam,
    xs.fsam,
    xs.vasso,
    xs.fisher_sam,
    xs.looksam,
    xs.late_phase,
    xs.periodic,
    xs.randomized,
    xs.perturbed_steps,
    sharpness.hessian_eigenvalues,
    sharpness.hessian_trace,
    landscape.alpha_curve,
]


@pytest.mark.parametrize("function", DOCUMENTED, ids=lambda f: f.__name__)
def test_docstring_examples_run(function):
    (test,) = doctest.DocTestFinder(recurse=False).find(function, function.__name__, globs={})
    assert len(test.examples) >= 2, f"{function.__name__} lost its Examples: section"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed (above)"
