"""The examples end to end: each gives the verdict README and docs/ document for it, and the main
hierarchical-equality hypothesis beats every null and its rival."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from abstraction.experiment import run
from abstraction.report import validate

ROOT = Path(__file__).resolve().parents[2]


def _experiment(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, ROOT / "hypotheses" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.experiment


def test_standard_hypothesis_beats_nulls_and_rival() -> None:
    experiment = _experiment("hierarchical_equality")
    results = run(experiment, seed=0)
    validate(results)
    for name, variable in results.variables.items():
        assert set(variable.p_values) == {"random_subspace", "untrained", "control"}, name
        for null, p in variable.p_values.items():
            assert p < 0.05, (name, null, p)
            assert variable.baselines[null] < variable.iia
    reported = {b.name for b in results.baselines}
    assert {"random_subspace", "untrained", "control", "patch", "mean_ablation"} <= reported
    (rival,) = results.rivals
    assert rival.verdict != "faithful"
    assert rival.comparison.difference.value > 0
    assert rival.comparison.p_value < 0.05
    assert results.seeds is not None and len(results.seeds.per_seed) == 3
    # Both IIAs sit near the 0.90 threshold (README): which side each CI lands on moves
    # with the third decimal across machines and releases, so the test asserts what the
    # library guarantees: the verdict follows the CIs, and one that contains the
    # threshold is flagged borderline.
    for name, variable in results.variables.items():
        assert variable.iia > 0.85, name
        low, high = variable.ci
        if low > 0.90:
            assert variable.passed, name
        elif high < 0.90:
            assert not variable.passed, name
        else:
            assert "borderline" in variable.flags, name
    passed = [v.passed for v in results.variables.values()]
    expected = "faithful" if all(passed) else ("partial" if any(passed) else "unfaithful")
    assert results.verdict == expected, results.reasons


@pytest.mark.parametrize(
    ("name", "verdict"),
    [
        ("hierarchical_equality_wrong", "unfaithful"),
        ("hierarchical_equality_uniform", "faithful"),
    ],
)
def test_each_example_gives_its_documented_verdict(name: str, verdict: str) -> None:
    results = run(_experiment(name), seed=0)
    validate(results)
    assert results.verdict == verdict, results.reasons


def test_method_comparison_on_the_uniform_mlp_ranks_as_documented() -> None:
    """docs/howto/featurizers.md's "what ranks where": on the uniformly trained MLP's
    layer 0, a mask over a few neurons and DAS both align wx and yz (>= 0.95), the full
    patch and PCA do not, and no method's untrained-network null comes near its IIA."""
    results = run(_experiment("hierarchical_equality_methods"), seed=0)
    validate(results)
    methods = results.methods
    assert methods is not None and methods.verdict == "faithful"
    assert methods.best in ("das", "dbm")
    for v in ("wx", "yz"):
        rows = {row.method: row for row in methods.variables[v]}
        assert set(rows) == {"patch", "das", "dbm", "pca", "sae"}
        assert rows["dbm"].iia >= 0.95 and rows["dbm"].units < 16
        assert rows["das"].iia >= 0.95
        assert rows["patch"].iia < 0.9 and rows["pca"].iia < 0.9
        for row in rows.values():
            assert row.untrained_iia is not None and row.untrained_iia < 0.6


@pytest.mark.slow
def test_addition_carry_sweep_finds_the_carry_where_it_can_exist() -> None:
    """The carry example's guarantees, not its verdict: how much of the carry a rank-2
    alignment recovers depends on the zoo network's exact weights (0.96 on one
    retraining, 0.67 on the pinned reference network), so the test asserts what a correct
    sweep gives on any of them: a site at or after b0 (before it, causal attention
    leaves nothing to find), every null beaten, and the verdict that follows the CI."""
    results = run(_experiment("addition_carry"), seed=0)
    validate(results)
    assert results.sweep is not None
    assert results.sweep.chosen.position in ("b0", "equals")
    carry = results.variables["carry"]
    for null, p in carry.p_values.items():
        assert p < 0.05 and carry.baselines[null] < carry.iia, null
    low, high = carry.ci
    if high < 0.90:  # the CI lies wholly under the threshold
        assert not carry.passed and results.verdict != "faithful"
    elif low > 0.90 and carry.passed:
        assert results.verdict == "faithful"
