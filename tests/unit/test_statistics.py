"""Statistics against closed forms and scipy/statsmodels reference values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from abstraction.statistics import adjust, breakdown, iia, naive_ci, paired_test, seed_summary


def test_iia_point_estimate_and_degenerate_interval() -> None:
    est = iia([1, 1, 0, 1], [0, 0, 1, 1])
    assert est.value == 0.75 and est.n == 4 and est.clusters == 2
    perfect = iia(np.ones(50), np.arange(50) // 5)
    assert (perfect.low, perfect.value, perfect.high) == (1.0, 1.0, 1.0)


def test_unclustered_bootstrap_matches_normal_approximation() -> None:
    rng = np.random.default_rng(0)
    correct = rng.random(4000) < 0.8
    est = iia(correct, None, resamples=3000)
    se = np.sqrt(0.8 * 0.2 / 4000)
    assert est.low == pytest.approx(correct.mean() - 1.96 * se, abs=0.004)
    assert est.high == pytest.approx(correct.mean() + 1.96 * se, abs=0.004)
    wilson = naive_ci(correct)
    assert wilson.low == pytest.approx(est.low, abs=0.004)


def test_clustered_interval_is_wider_when_pairs_share_bases() -> None:
    rng = np.random.default_rng(1)
    bases = np.repeat(np.arange(200), 20)  # 20 pairs per base
    base_rate = rng.beta(2, 1, size=200)[bases]  # strongly correlated within a base
    correct = rng.random(len(bases)) < base_rate
    clustered, naive = iia(correct, bases), naive_ci(correct)
    assert clustered.width > 2 * naive.width


def test_breakdown_by_group() -> None:
    correct = np.array([1, 1, 0, 0, 1, 0])
    groups = np.array(["wx", "wx", "yz", "yz", "wx", "yz"])
    out = breakdown(correct, np.arange(6), groups)
    assert out["wx"].value == 1.0 and out["yz"].value == 0.0


def test_exact_sign_flip_p_value_closed_form() -> None:
    # three clusters, each with one pair where a is right and b wrong: of the 2^3 sign
    # flips only the identity reaches the observed difference, so p = 1/8.
    result = paired_test([1, 1, 1], [0, 0, 0], [0, 1, 2])
    assert result.p_value == pytest.approx(1 / 8)
    two_sided = paired_test([1, 1, 1], [0, 0, 0], [0, 1, 2], alternative="two-sided")
    assert two_sided.p_value == pytest.approx(2 / 8)
    assert result.cohens_h == pytest.approx(np.pi)


def test_mcnemar_matches_exact_binomial() -> None:
    a = np.array([1] * 9 + [0] * 1 + [1] * 30)
    b = np.array([0] * 9 + [1] * 1 + [1] * 30)
    result = paired_test(a, b, np.arange(40))
    assert result.mcnemar_p == pytest.approx(stats.binomtest(1, 10, 0.5).pvalue)


def test_monte_carlo_p_value_form() -> None:
    rng = np.random.default_rng(2)
    a = rng.random(2000) < 0.6
    b = rng.random(2000) < 0.6
    same = paired_test(a, b, np.arange(2000) // 4, permutations=999)
    assert 0.0 < same.p_value <= 1.0
    assert (same.p_value * 1000) == pytest.approx(round(same.p_value * 1000))  # (b+1)/(m+1)
    better = paired_test(np.ones(2000), b, np.arange(2000) // 4, permutations=999)
    assert better.p_value == pytest.approx(1 / 1000)


def test_holm_and_bh_closed_forms() -> None:
    p = [0.01, 0.04, 0.03]
    assert adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert adjust(p, "bh") == pytest.approx([0.03, 0.04, 0.04])
    with pytest.raises(ValueError, match="holm"):
        adjust(p, "bonferonni")


def test_seed_summary() -> None:
    matrix = np.array([[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]])
    summary = seed_summary(matrix, [0, 0, 1, 1], resamples=500)
    assert summary.per_seed == [0.75, 0.5, 1.0]
    assert summary.mean == pytest.approx(0.75)
    assert summary.std == pytest.approx(np.std([0.75, 0.5, 1.0], ddof=1))
    assert summary.interval.low <= summary.mean <= summary.interval.high


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        iia([])
    with pytest.raises(ValueError, match="cluster ids"):
        iia([1, 0], [1])
    with pytest.raises(ValueError, match="same pairs"):
        paired_test([1, 0], [1])
