"""Properties of the clustered confidence intervals."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from abstraction.statistics import iia, naive_ci


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(5, 60), st.integers(1, 8), st.floats(0.05, 0.95))
def test_interval_contains_the_estimate(seed: int, bases: int, per_base: int, rate: float) -> None:
    rng = np.random.default_rng(seed)
    clusters = np.repeat(np.arange(bases), per_base)
    correct = rng.random(len(clusters)) < rate
    est = iia(correct, clusters, resamples=300, seed=seed)
    assert est.low <= est.value <= est.high
    assert est.low >= 0.0 and est.high <= 1.0


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_interval_shrinks_with_more_bases(seed: int) -> None:
    rng = np.random.default_rng(seed)
    widths = []
    for bases in (50, 800):
        clusters = np.repeat(np.arange(bases), 5)
        rates = rng.beta(3, 1, size=bases)[clusters]
        widths.append(iia(rng.random(len(clusters)) < rates, clusters, resamples=400).width)
    assert widths[1] < widths[0]


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_clustered_wider_than_naive_when_bases_shared(seed: int) -> None:
    rng = np.random.default_rng(seed)
    clusters = np.repeat(np.arange(150), 12)
    rates = rng.choice([0.05, 0.95], size=150)[clusters]  # bases mostly all-right or all-wrong
    correct = rng.random(len(clusters)) < rates
    assert iia(correct, clusters, resamples=400).width > naive_ci(correct).width
