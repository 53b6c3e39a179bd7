"""decide(): every branch of the verdict, on evidence written by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from abstraction import (
    Diagnostics,
    Estimate,
    Evidence,
    NullEvidence,
    Thresholds,
    VariableEvidence,
    decide,
)

GOOD = Estimate(0.97, 0.95, 0.99, n=2000, clusters=400)
HONEST = Diagnostics(
    dormant_effect=0.01, disconnection=0.1, subspace_iia=0.97, patch_iia=0.99, isolated_pairs=200
)


def variable(name: str = "wx", **changes: object) -> VariableEvidence:
    """Evidence that passes every requirement, with ``changes`` applied."""
    base = VariableEvidence(
        name=name,
        iia=GOOD,
        changed_pairs=800,
        nulls={
            "random_subspace": NullEvidence(0.55, p_value=0.001, raw_p_value=0.0005),
            "untrained": NullEvidence(0.60, p_value=0.001, raw_p_value=0.0005),
        },
        task_accuracy=1.0,
        ablated_accuracy=0.6,
        diagnostics=HONEST,
        output_agreement=0.7,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def evidence(*variables: VariableEvidence, accuracy: float = 0.99) -> Evidence:
    return Evidence(
        {v.name: v for v in variables}, Estimate(accuracy, accuracy - 0.01, 1.0, 400, 400)
    )


def test_faithful_when_every_variable_passes() -> None:
    decision = decide(evidence(variable("wx"), variable("yz")))
    assert decision.verdict == "faithful"
    assert decision.passed == {"wx": True, "yz": True}
    assert decision.flags == {"wx": [], "yz": []}
    assert any("no sign of an illusion" in r for r in decision.variable_reasons["wx"])
    assert any("necessary" in r for r in decision.variable_reasons["wx"])


def test_partial_when_some_variables_pass() -> None:
    low = Estimate(0.80, 0.78, 0.82, n=2000, clusters=400)
    decision = decide(evidence(variable("wx"), variable("yz", iia=low)))
    assert decision.verdict == "partial"
    assert decision.passed == {"wx": True, "yz": False}
    assert "does not clear the threshold" in decision.variable_reasons["yz"][0]


def test_unfaithful_by_iia() -> None:
    low = Estimate(0.88, 0.86, 0.90, n=2000, clusters=400)
    assert decide(evidence(variable(iia=low))).verdict == "unfaithful"


def test_the_lower_bound_decides_not_the_point_estimate() -> None:
    straddling = Estimate(0.91, 0.89, 0.93, n=2000, clusters=400)
    assert decide(evidence(variable(iia=straddling))).verdict == "unfaithful"
    assert decide(evidence(variable(iia=straddling)), Thresholds(iia=0.85)).verdict == "faithful"


def test_unfaithful_by_behaviour_even_when_variables_pass() -> None:
    decision = decide(evidence(variable(), accuracy=0.6))
    assert decision.verdict == "unfaithful"
    assert "does not describe the network's behaviour" in decision.reasons[0]


def test_unfaithful_by_a_null_that_is_not_beaten() -> None:
    nulls = {"untrained": NullEvidence(0.96, p_value=0.3, raw_p_value=0.3)}
    decision = decide(evidence(variable(nulls=nulls)))
    assert decision.verdict == "unfaithful"
    assert any("does not beat the untrained null" in r for r in decision.variable_reasons["wx"])


def test_a_null_that_is_not_informative_does_not_decide() -> None:
    nulls = {"random_subspace": NullEvidence(1.0, note="a random 1-dim subspace of a 1-wide site")}
    decision = decide(evidence(variable(nulls=nulls)))
    assert decision.verdict == "faithful"
    assert any("not informative here" in r for r in decision.variable_reasons["wx"])


@pytest.mark.parametrize(
    "diagnostics, unnecessary, words",
    [
        (replace(HONEST, dormant_effect=0.9), False, "dormant"),
        (replace(HONEST, subspace_iia=0.98, patch_iia=0.30), False, "full patch"),
        (replace(HONEST, disconnection=0.8), True, "gradients do not reach"),
    ],
    ids=["dormant", "full patch gap", "disconnected and unnecessary"],
)
def test_unfaithful_by_an_illusion(diagnostics: Diagnostics, unnecessary: bool, words: str) -> None:
    ablated = 0.995 if unnecessary else 0.6
    decision = decide(evidence(variable(diagnostics=diagnostics, ablated_accuracy=ablated)))
    assert decision.verdict == "unfaithful"
    assert "illusion" in decision.flags["wx"]
    assert any("illusion" in r and words in r for r in decision.variable_reasons["wx"])


def test_an_illusion_in_one_variable_makes_the_verdict_partial() -> None:
    illusory = replace(HONEST, dormant_effect=0.95, subspace_iia=1.0, patch_iia=0.0)
    decision = decide(evidence(variable("wx", diagnostics=illusory), variable("yz")))
    assert decision.verdict == "partial"
    assert decision.flags == {"wx": ["illusion"], "yz": []}


def test_disconnection_alone_is_not_an_illusion() -> None:
    decision = decide(evidence(variable(diagnostics=replace(HONEST, disconnection=0.9))))
    assert decision.verdict == "faithful"


def test_a_full_patch_gap_on_few_isolated_pairs_is_not_read() -> None:
    few = replace(HONEST, subspace_iia=1.0, patch_iia=0.0, isolated_pairs=5)
    assert decide(evidence(variable(diagnostics=few))).verdict == "faithful"


def test_no_illusion_is_raised_for_a_variable_that_fails_anyway() -> None:
    low = Estimate(0.5, 0.48, 0.52, n=2000, clusters=400)
    dormant = replace(HONEST, dormant_effect=0.9)
    decision = decide(evidence(variable(iia=low, diagnostics=dormant)))
    assert decision.flags["wx"] == []
    assert any(r.startswith("illusion diagnostics") for r in decision.variable_reasons["wx"])


def test_an_unnecessary_subspace_is_named_in_the_reasons() -> None:
    decision = decide(evidence(variable(ablated_accuracy=0.995)))
    assert decision.verdict == "faithful"
    assert decision.flags["wx"] == ["not_necessary"]
    assert any("redundant" in r and "illusory" in r for r in decision.variable_reasons["wx"])


def test_inconclusive_by_few_changed_pairs() -> None:
    decision = decide(evidence(variable(changed_pairs=40)))
    assert decision.verdict == "inconclusive"
    assert "only 40 test pairs change the label" in decision.reasons[0]


def test_inconclusive_by_a_wide_interval() -> None:
    wide = Estimate(0.93, 0.80, 0.99, n=2000, clusters=400)
    decision = decide(evidence(variable(iia=wide)))
    assert decision.verdict == "inconclusive"
    assert "wide" in decision.reasons[0]


def test_inconclusive_by_few_distinct_bases() -> None:
    few = Estimate(1.0, 1.0, 1.0, n=1000, clusters=11)
    decision = decide(evidence(variable(iia=few)))
    assert decision.verdict == "inconclusive"
    assert "only 11 distinct base inputs" in decision.reasons[0]


def test_an_output_in_disguise_does_not_count() -> None:
    low = Estimate(0.5, 0.48, 0.52, n=2000, clusters=400)
    decision = decide(evidence(variable("s", iia=low), variable("io", output_agreement=1.0)))
    assert decision.flags["io"] == ["output_in_disguise"]
    assert decision.verdict == "unfaithful"  # io's pass does not make it partial
    decision = decide(evidence(variable("s"), variable("io", iia=low, output_agreement=1.0)))
    assert decision.verdict == "faithful"  # nor does its failure make it partial


def test_inconclusive_when_every_variable_is_the_output_in_disguise() -> None:
    decision = decide(evidence(variable("out", output_agreement=1.0)))
    assert decision.verdict == "inconclusive"
    assert "function of the output alone" in decision.reasons[0]


def test_a_curve_still_rising_at_its_last_epoch_is_flagged_undertrained() -> None:
    from abstraction.verdict import still_rising

    rising = [{"val_iia": 0.71}, {"val_iia": 0.81}, {"val_iia": 0.84}]
    assert still_rising(rising, epochs=3) == (0.71, 0.84)
    assert still_rising(rising, epochs=5) is None  # stopped early: patience saw a plateau
    assert still_rising([{"val_iia": 0.8}, {"val_iia": 0.9}, {"val_iia": 0.902}], 3) is None
    assert still_rising([{"val_iia": None}, {"val_iia": None}], 2) is None
    # a passing variable keeps its verdict, flagged
    decision = decide(evidence(variable("wx", still_rising=(0.71, 0.97))))
    assert decision.verdict == "faithful"
    assert decision.flags["wx"] == ["undertrained"]
    assert any("still rising" in r for r in decision.variable_reasons["wx"])
    # a failing one is not read as a negative result
    low = Estimate(0.60, 0.55, 0.65, n=2000, clusters=400)
    failing = decide(evidence(variable("wx", iia=low, still_rising=(0.5, 0.6))))
    assert failing.verdict == "inconclusive"
    assert any("still improving" in r for r in failing.reasons)
    assert decide(evidence(variable("wx", iia=low))).verdict == "unfaithful"


def test_counterexamples_with_entity_labels_group_by_whether_the_label_changes() -> None:
    import numpy as np
    import pandas as pd

    from abstraction.verification import _counterexamples

    names = [f"name{i}" for i in range(40)]
    test = pd.DataFrame(
        {
            "intervened": ["s_position"] * 40,
            "value.s_position": [1, 2] * 20,
            "base_label": names,
            "label": names[1:] + names[:1],
            "changed": [True, False] * 20,
            "base.a": names,
        }
    )
    groups = _counterexamples(test, np.zeros(40, dtype=bool), ["s_position"], top=10)
    assert [g.pairs for g in groups] == [20, 20]  # not 40 groups of one name pair each
    assert all(set(g.group) == {"intervened", "value.s_position", "changed"} for g in groups)
    few = test.assign(base_label=["x", "y"] * 20, label=["y", "x"] * 20)
    grouped = _counterexamples(few, np.zeros(40, dtype=bool), ["s_position"], top=10)
    assert all("label" in g.group for g in grouped)  # few labels: grouped by them


def test_a_verdict_reached_without_a_standard_null_says_which() -> None:
    missing_control = decide(evidence(variable("wx")))  # the helper runs two of the three
    assert any(
        "decided without the control null" in r for r in missing_control.variable_reasons["wx"]
    )
    none = decide(evidence(variable("wx", nulls={})))
    assert any(
        "without the random_subspace, untrained, control nulls" in r
        for r in none.variable_reasons["wx"]
    )
    every = {
        n: NullEvidence(0.5, p_value=0.001, raw_p_value=0.0005)
        for n in ("random_subspace", "untrained", "control")
    }
    complete = decide(evidence(variable("wx", nulls=every)))
    assert not any("decided without" in r for r in complete.variable_reasons["wx"])
