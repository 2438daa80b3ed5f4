"""Student-t intervals against hand computations with textbook quantiles."""

import math

import numpy as np
import pytest

from xsam_jax._src.stats import mean_ci95, paired_difference, pareto_front

# Two-sided 95 % quantiles t_{0.975, df} from a printed t table.
T_TABLE = {2: 4.303, 4: 2.776, 9: 2.262}


def test_three_values():
    # mean 2, s = 1 (deviations -1, 0, 1; squares sum 2; / (n - 1) = 1).
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(T_TABLE[2] * 1.0 / math.sqrt(3), rel=1e-3)


def test_five_accuracies():
    # mean 0.91; deviations -0.01, 0.01, 0, 0.04, -0.04; squares sum 34e-4; s^2 = 8.5e-4.
    mean, half = mean_ci95(np.array([0.90, 0.92, 0.91, 0.95, 0.87]))
    assert mean == pytest.approx(0.91)
    assert half == pytest.approx(T_TABLE[4] * math.sqrt(8.5e-4) / math.sqrt(5), rel=1e-3)


def test_ten_values_wider_than_the_normal_interval():
    values = np.arange(10.0)  # mean 4.5, s^2 = 82.5 / 9
    mean, half = mean_ci95(values)
    assert mean == pytest.approx(4.5)
    assert half == pytest.approx(T_TABLE[9] * math.sqrt(82.5 / 9) / math.sqrt(10), rel=1e-3)
    assert half > 1.96 * math.sqrt(82.5 / 9) / math.sqrt(10)


def test_single_value_has_nan_half_width():
    mean, half = mean_ci95([0.93])
    assert mean == pytest.approx(0.93) and math.isnan(half)
    mean, half = paired_difference([0.93], [0.90])
    assert mean == pytest.approx(0.03) and math.isnan(half)


def test_identical_values_have_zero_half_width():
    assert mean_ci95([0.5, 0.5, 0.5]) == (0.5, 0.0)


def test_paired_difference_by_hand():
    # Differences 2, 3, 1: mean 2, s = 1.
    mean, half = paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(T_TABLE[2] / math.sqrt(3), rel=1e-3)


def test_pairing_removes_a_shared_per_seed_offset():
    # Each seed moves both runs by the same large amount (sd 0.02); a beats b by 0.01 plus
    # a small independent noise (sd 0.001). Unpaired, the shared offsets swamp the gap.
    rng = np.random.default_rng(0)
    seed_effect = 0.02 * rng.normal(size=5)
    b = 0.90 + seed_effect
    a = b + 0.01 + 0.001 * rng.normal(size=5)
    mean, paired_half = paired_difference(a, b)
    assert abs(mean - 0.01) < paired_half < 0.005
    unpaired_half = math.hypot(mean_ci95(a)[1], mean_ci95(b)[1])
    assert paired_half < unpaired_half / 10
    # The order of the seeds matters: shuffling one side breaks the pairing.
    assert paired_difference(a, b[::-1])[1] > 5 * paired_half


def test_nan_propagates():
    assert all(math.isnan(v) for v in mean_ci95([0.9, float("nan"), 0.8]))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mean_ci95([]), r"values must be a non-empty 1-D sequence.*got shape \(0,\)"),
        (lambda: mean_ci95([[1.0, 2.0]]), r"values must be .*got shape \(1, 2\)"),
        (lambda: mean_ci95(3.0), r"values must be .*got shape \(\)"),
        (
            lambda: paired_difference([1.0, 2.0], [1.0]),
            "a and b must have the same length.*2 and 1",
        ),
        (lambda: paired_difference([], []), "a must be a non-empty"),
        (lambda: paired_difference([1.0], [[1.0]]), "b must be a non-empty 1-D"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_pareto_front_by_hand():
    # (cost, accuracy): SGD (100, 0.90); SAM (200, 0.93); every-2 (150, 0.93) beats SAM on cost
    # at equal accuracy; late (125, 0.89) is beaten by SGD; random (150, 0.91) by every-2; a tie
    # of two identical points keeps both.
    costs = [100, 200, 150, 125, 150, 300, 300]
    accuracies = [0.90, 0.93, 0.93, 0.89, 0.91, 0.95, 0.95]
    np.testing.assert_array_equal(
        pareto_front(costs, accuracies), [True, False, True, False, False, True, True]
    )
    assert pareto_front([1.0], [0.5]).tolist() == [True]
    with pytest.raises(ValueError, match="costs and values must have the same length"):
        pareto_front([1, 2], [0.5])
