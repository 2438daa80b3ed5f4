"""Student-t confidence intervals for results over a few seeds.

A study repeats every configuration over n seeds (typically 3 to 10) and reports the
mean with a 95 % interval. With so few runs the normal quantile 1.96 understates the
uncertainty, so the half-width uses Student's t with n - 1 degrees of freedom:
`t_{0.975, n-1} * s / sqrt(n)`, `s` the sample standard deviation (ddof = 1).

Comparing two optimizers run on the same seeds, `paired_difference` works on the per-seed
differences: what a seed shares between the two runs (initialisation, data order) then
cancels, and the interval is usually much tighter than one built from the two means.

The quantiles come from `scipy.stats.t`. SciPy is always installed alongside this
package: it is a requirement of jax and jaxlib, and of scikit-learn (the `[examples]`
extra).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

_CONFIDENCE = 0.95


def _as_vector(name: str, values: ArrayLike) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {x.shape}")
    return x


def mean_ci95(values: ArrayLike) -> tuple[float, float]:
    """Mean and half-width of its two-sided 95 % Student-t confidence interval.

    The interval is `mean +- t_{0.975, n-1} * s / sqrt(n)` with `s` the sample standard
    deviation (ddof = 1): exact for normally distributed values, and the usual choice for
    a handful of seeds (Student 1908).

    Args:
        values: one number per run (e.g. the final test accuracy of each seed), n >= 1.
            NaNs are not dropped: they make the result NaN.

    Returns:
        `(mean, half_width)` as floats. For a single value the half-width is NaN: one run
        gives no estimate of the spread, and 0 would claim a certainty it does not have.

    Raises:
        ValueError: if `values` is empty or not one-dimensional.
    """
    x = _as_vector("values", values)
    mean = float(x.mean())
    n = x.size
    if n == 1:
        return mean, math.nan
    from scipy import stats  # imported here: scipy.stats takes seconds to import

    quantile = stats.t.ppf(0.5 + _CONFIDENCE / 2, df=n - 1)
    return mean, float(quantile * x.std(ddof=1) / math.sqrt(n))


def paired_difference(a: ArrayLike, b: ArrayLike) -> tuple[float, float]:
    """Mean of the per-seed differences `a[i] - b[i]` and its 95 % half-width.

    `mean_ci95` applied to the differences: the paired t interval. Pair only runs that
    share their seed (and everything it fixes); the order of the seeds must match.

    Args:
        a: one number per seed, e.g. XSAM's test accuracies.
        b: the same seeds' numbers for the baseline, in the same order.

    Returns:
        `(mean_difference, half_width)`; the half-width is NaN for a single pair.

    Raises:
        ValueError: if `a` and `b` differ in length, or either is empty or not 1-D.
    """
    x, y = _as_vector("a", a), _as_vector("b", b)
    if x.size != y.size:
        raise ValueError(
            f"a and b must have the same length (one value per seed each), got {x.size} "
            f"and {y.size}"
        )
    return mean_ci95(x - y)


def pareto_front(costs: ArrayLike, values: ArrayLike) -> np.ndarray:
    """Which points are Pareto-optimal for a low cost and a high value.

    Point i is on the front unless another point j dominates it: costs no more and is worth
    no less, and is strictly better in one of the two (so ties keep both points).

    Args:
        costs: one cost per point (e.g. gradient evaluations per run).
        values: one value per point, in the same order (e.g. mean test accuracy).

    Returns:
        A boolean array: True where the point is on the front.

    Raises:
        ValueError: if `costs` and `values` differ in length, or either is empty or not 1-D.
    """
    c, v = _as_vector("costs", costs), _as_vector("values", values)
    if c.size != v.size:
        raise ValueError(f"costs and values must have the same length, got {c.size} and {v.size}")
    # dominates[i, j]: point j dominates point i.
    no_worse = (c[None, :] <= c[:, None]) & (v[None, :] >= v[:, None])
    better = (c[None, :] < c[:, None]) | (v[None, :] > v[:, None])
    return ~(no_worse & better).any(axis=1)
