"""Statistics for interchange intervention accuracy: arrays in, numbers out.

Counterfactual pairs that share a base input are not independent, so every interval
and test here resamples or permutes whole clusters (one cluster per base input):

* :func:`iia` - IIA with a 95 % CI from a bootstrap clustered by base
  (``scipy.stats.bootstrap`` on cluster totals);
* :func:`breakdown` - the same per group (intervention set, changed-only, value of
  the intervened variable);
* :func:`paired_test` - two scorings of the same pairs (a hypothesis against a null
  baseline, two hypotheses, two locations): difference with a clustered CI, a
  sign-flip permutation p-value in the ``(b + 1) / (m + 1)`` form, McNemar's test
  (statsmodels) and Cohen's h;
* :func:`adjust` - Holm-Bonferroni or Benjamini-Hochberg (statsmodels);
* :func:`seed_summary` - spread across alignment seeds, and a multi-bootstrap over
  seeds x bases.

Nothing here knows about networks: inputs are boolean correctness arrays and
cluster ids.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

__all__ = [
    "Alternative",
    "Comparison",
    "Estimate",
    "SeedSummary",
    "adjust",
    "breakdown",
    "iia",
    "naive_ci",
    "paired_test",
    "seed_summary",
]

ArrayLike = Any

Alternative = Literal["greater", "two-sided"]
"""The alternative hypothesis of :func:`paired_test`."""


@dataclass(frozen=True)
class Estimate:
    """A proportion with a confidence interval.

    Attributes:
        value: the point estimate (mean correctness).
        low: lower bound of the interval.
        high: upper bound of the interval.
        n: number of pairs.
        clusters: number of distinct bases.
        confidence: the interval's level.
    """

    value: float
    low: float
    high: float
    n: int
    clusters: int
    confidence: float = 0.95

    @property
    def width(self) -> float:
        """``high - low``."""
        return self.high - self.low

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)


def _clusters(correct: np.ndarray, clusters: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster (sum of values, number of pairs)."""
    if clusters is None:
        return correct.astype(np.float64), np.ones(len(correct))
    codes = pd.factorize(np.asarray(clusters))[0]
    if len(codes) != len(correct):
        raise ValueError(
            f"{len(correct)} values but {len(codes)} cluster ids; give one cluster id per pair"
        )
    sums = np.bincount(codes, weights=correct.astype(np.float64))
    counts = np.bincount(codes).astype(np.float64)
    return sums, counts


def _as_values(correct: ArrayLike) -> np.ndarray:
    values = np.asarray(correct, dtype=np.float64).reshape(-1)
    if len(values) == 0:
        raise ValueError("no pairs to score: the correctness array is empty")
    return values


def iia(
    correct: ArrayLike,
    clusters: ArrayLike | None = None,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """IIA (mean correctness) with a bootstrap CI that resamples whole clusters.

    Args:
        correct: per-pair booleans (did the intervened network give the
            counterfactual label?).
        clusters: per-pair cluster ids (the base input); ``None`` treats pairs as
            independent.
        confidence: the interval's level.
        resamples: bootstrap resamples.
        seed: seeds the resampling.
    """
    values = _as_values(correct)
    sums, counts = _clusters(values, clusters)
    value = float(sums.sum() / counts.sum())
    if len(sums) < 2 or np.allclose(sums / counts, sums[0] / counts[0]):
        # every cluster has the same rate: the bootstrap distribution is a point
        return Estimate(value, value, value, len(values), len(sums), confidence)

    def ratio(s: np.ndarray, c: np.ndarray, axis: int = -1) -> np.ndarray:
        result: np.ndarray = s.sum(axis=axis) / c.sum(axis=axis)
        return result

    method = "BCa" if len(sums) <= 2000 else "percentile"
    result = stats.bootstrap(
        (sums, counts),
        ratio,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method=method,
        random_state=np.random.default_rng(seed),
        batch=max(1, 20_000_000 // max(len(sums), 1)),
    )
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = np.quantile(
            result.bootstrap_distribution, [(1 - confidence) / 2, (1 + confidence) / 2]
        )
    return Estimate(
        value, float(min(low, value)), float(max(high, value)), len(values), len(sums), confidence
    )


def naive_ci(correct: ArrayLike, confidence: float = 0.95) -> Estimate:
    """Wilson interval treating every pair as independent (for comparison only)."""
    values = _as_values(correct)
    successes = int(values.sum())
    low, high = proportion_confint(successes, len(values), alpha=1 - confidence, method="wilson")
    return Estimate(
        float(values.mean()), float(low), float(high), len(values), len(values), confidence
    )


def breakdown(
    correct: ArrayLike,
    clusters: ArrayLike,
    groups: ArrayLike,
    *,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Estimate]:
    """:func:`iia` separately for each value of ``groups`` (e.g. the intervention set)."""
    values = _as_values(correct)
    keys = np.asarray(groups)
    base = np.asarray(clusters)
    out = {}
    for key in pd.unique(keys):
        mask = keys == key
        out[str(key)] = iia(
            values[mask], base[mask], confidence=confidence, resamples=resamples, seed=seed
        )
    return out


@dataclass(frozen=True)
class Comparison:
    """Two scorings of the same pairs, ``a`` against ``b``.

    Attributes:
        a: IIA of ``a``.
        b: IIA of ``b``.
        difference: ``a - b`` with a clustered bootstrap CI.
        p_value: one-sided (``a > b``) or two-sided sign-flip permutation p-value
            over clusters, ``(b + 1) / (m + 1)``; exact when there are few clusters.
        mcnemar_p: McNemar's exact test on discordant pairs (ignores clustering).
        cohens_h: effect size ``2 asin(sqrt(a)) - 2 asin(sqrt(b))``.
        alternative: ``"greater"`` or ``"two-sided"``.
    """

    a: float
    b: float
    difference: Estimate
    p_value: float
    mcnemar_p: float
    cohens_h: float
    alternative: Alternative

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (the difference as a nested dict)."""
        return asdict(self)


def paired_test(
    a: ArrayLike,
    b: ArrayLike,
    clusters: ArrayLike | None = None,
    *,
    alternative: Alternative = "greater",
    permutations: int = 9999,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Compare two per-pair correctness arrays computed on the same pairs.

    The p-value comes from flipping, cluster by cluster, which of the two scorings
    each cluster's pairs belong to (exchangeable under the null of no difference);
    with at most 16 clusters every flip is enumerated.

    Args:
        a: per-pair correctness of the first scoring (e.g. the hypothesis).
        b: per-pair correctness of the second (e.g. a null baseline), same pairs.
        clusters: per-pair base ids.
        alternative: ``"greater"`` (a beats b) or ``"two-sided"``.
        permutations: random sign flips when not enumerated.
        confidence: level of the CI on the difference.
        seed: seeds the resampling.
    """
    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"alternative must be 'greater' or 'two-sided', not {alternative!r}")
    x, y = _as_values(a), _as_values(b)
    if len(x) != len(y):
        raise ValueError(f"a has {len(x)} pairs but b has {len(y)}; score the same pairs")
    diff_sums, counts = _clusters(x - y, clusters)
    total = counts.sum()
    observed = diff_sums.sum() / total
    rng = np.random.default_rng(seed)
    if len(diff_sums) <= 16:
        signs = np.array(list(itertools.product([1.0, -1.0], repeat=len(diff_sums))))
        null = signs @ diff_sums / total
        extreme = _extreme(null, observed, alternative)
        p_value = float(extreme.sum() / len(null))
    else:
        hits = 0
        for start in range(0, permutations, 500):
            m = min(500, permutations - start)
            signs = rng.choice(np.array([1.0, -1.0]), size=(m, len(diff_sums)))
            hits += int(_extreme(signs @ diff_sums / total, observed, alternative).sum())
        p_value = (hits + 1) / (permutations + 1)
    difference = iia(x - y, clusters, confidence=confidence, seed=seed)
    table = np.array(
        [
            [np.sum((x == 1) & (y == 1)), np.sum((x == 1) & (y == 0))],
            [np.sum((x == 0) & (y == 1)), np.sum((x == 0) & (y == 0))],
        ]
    )
    mcnemar_p = float(mcnemar(table, exact=True).pvalue)
    pa, pb = float(x.mean()), float(y.mean())
    h = 2 * math.asin(math.sqrt(pa)) - 2 * math.asin(math.sqrt(pb))
    return Comparison(pa, pb, difference, p_value, mcnemar_p, h, alternative)


def _extreme(null: np.ndarray, observed: float, alternative: str) -> np.ndarray:
    tolerance = 1e-12
    if alternative == "greater":
        result: np.ndarray = null >= observed - tolerance
        return result
    result = np.abs(null) >= abs(observed) - tolerance
    return result


def adjust(p_values: Sequence[float], method: str = "holm", alpha: float = 0.05) -> list[float]:
    """Adjust p-values for multiple comparisons: ``"holm"`` or ``"bh"`` (Benjamini-Hochberg)."""
    names = {"holm": "holm", "bh": "fdr_bh", "fdr_bh": "fdr_bh"}
    if method not in names:
        raise ValueError(f"method must be 'holm' or 'bh', not {method!r}")
    if len(p_values) == 0:
        return []
    _, adjusted, _, _ = multipletests(list(p_values), alpha=alpha, method=names[method])
    return [float(p) for p in adjusted]


@dataclass(frozen=True)
class SeedSummary:
    """IIA across alignment seeds.

    Attributes:
        per_seed: each seed's IIA.
        mean: mean across seeds.
        std: standard deviation across seeds (ddof=1; 0 for one seed).
        interval: a multi-bootstrap CI resampling seeds and bases together.
    """

    per_seed: list[float]
    mean: float
    std: float
    interval: Estimate

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (the interval as a nested dict)."""
        return asdict(self)


def seed_summary(
    correct_by_seed: ArrayLike,
    clusters: ArrayLike | None = None,
    *,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> SeedSummary:
    """Spread of IIA across seeds, and a multi-bootstrap over seeds x bases.

    Args:
        correct_by_seed: ``(seeds, pairs)`` correctness, every seed on the same pairs.
        clusters: per-pair base ids.
    """
    matrix = np.asarray(correct_by_seed, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError("correct_by_seed must be a (seeds, pairs) array with at least one pair")
    per_seed = matrix.mean(axis=1)
    codes = (
        pd.factorize(np.asarray(clusters))[0]
        if clusters is not None
        else np.arange(matrix.shape[1])
    )
    n_clusters = int(codes.max()) + 1
    sums = np.stack([np.bincount(codes, weights=row, minlength=n_clusters) for row in matrix])
    counts = np.bincount(codes, minlength=n_clusters).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for i in range(resamples):
        seeds = rng.integers(matrix.shape[0], size=matrix.shape[0])
        picked = rng.integers(n_clusters, size=n_clusters)
        draws[i] = sums[np.ix_(seeds, picked)].sum() / (matrix.shape[0] * counts[picked].sum())
    low, high = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2])
    value = float(per_seed.mean())
    interval = Estimate(
        value,
        float(min(low, value)),
        float(max(high, value)),
        matrix.shape[1],
        n_clusters,
        confidence,
    )
    std = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0
    return SeedSummary([float(v) for v in per_seed], value, std, interval)
