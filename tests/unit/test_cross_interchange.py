"""Cross-variable interchanges (causalab's ``answer<-s1``) and fixed base-side values."""

from __future__ import annotations

import pandas as pd
import pytest

from abstraction import UnknownNameError, causal_model, counterfactual_dataset
from abstraction.counterfactuals import relabel, split_by_base

NAMES = ["ann", "bob", "cat"]


@causal_model(inputs={"a": NAMES, "b": NAMES, "first": [True, False]})
def ioi(a, b, first):
    s1 = a if first else b  # noqa: F841 - a variable of the model, read by origins
    s2 = b if first else a
    answer = s2
    return answer


def test_interchange_takes_another_variables_value_from_the_source() -> None:
    base = {"a": "ann", "b": "bob", "first": True}  # s1 = ann, s2 = bob -> answer bob
    source = {"a": "cat", "b": "ann", "first": True}  # on the source s1 = cat
    assert ioi.interchange(base, {"answer": source})["answer"] == "ann"  # its own answer
    assert ioi.interchange(base, {"answer": source}, origins={"answer": "s1"})["answer"] == "cat"
    fixed = ioi.interchange(base, {"answer": source}, origins={"answer": "s1"}, fixed={"s1": "x"})
    assert fixed["answer"] == "cat" and fixed["s1"] == "x"
    with pytest.raises(ValueError, match="no source"):
        ioi.interchange(base, {}, origins={"answer": "s1"})


def _check_labels(data: pd.DataFrame) -> None:
    assert (data["origin.answer"] == "s1").all()
    for _, row in data.iterrows():
        base = {k: row[f"base.{k}"] for k in ioi.inputs}
        source = {k: row[f"source.answer.{k}"] for k in ioi.inputs}
        expected = ioi.interchange(base, {"answer": source}, origins={"answer": "s1"})
        assert row["label"] == expected["answer"]
        assert row["value.answer"] == ioi.run(source)["s1"]


def test_dataset_labels_follow_the_origin_and_survive_relabel_and_splits() -> None:
    data = counterfactual_dataset(ioi, 300, [["answer<-s1"]], seed=0)
    _check_labels(data)
    assert data.attrs["interventions"] == [["answer<-s1"]]
    assert data["changed"].any() and not data["changed"].all()
    _, _, test = split_by_base(data, (0.6, 0.2, 0.2), seed=0)
    _check_labels(relabel(test, ioi))
    exhaustive = counterfactual_dataset(ioi, interventions=[["answer<-s1"]], exhaustive=True)
    assert len(exhaustive) == 18 * 18
    _check_labels(exhaustive)


def test_one_origin_per_variable_per_dataset() -> None:
    with pytest.raises(ValueError, match="different variables"):
        counterfactual_dataset(ioi, 10, [["answer<-s1"], ["answer<-s2"]])
    with pytest.raises(ValueError, match="both from itself"):
        counterfactual_dataset(ioi, 10, [["answer<-s1"], ["answer"]])


def test_fixed_base_side_values_apply_to_base_and_counterfactual_and_survive_relabel() -> None:
    data = counterfactual_dataset(ioi, 200, [["answer<-s1"]], seed=2, fixed={"first": False})
    assert (data["fixed.first"] == False).all()  # noqa: E712 - a column of Python bools
    for _, row in data.head(50).iterrows():
        base = {k: row[f"base.{k}"] for k in ioi.inputs}
        source = {k: row[f"source.answer.{k}"] for k in ioi.inputs}
        assert row["base_label"] == ioi.run(base, {"first": False})["answer"]
        expected = ioi.interchange(
            base, {"answer": source}, origins={"answer": "s1"}, fixed={"first": False}
        )
        assert row["label"] == expected["answer"]
    again = relabel(data, ioi)
    assert (again["label"].to_numpy() == data["label"].to_numpy()).all()
    with pytest.raises(ValueError, match="both fixed and interchanged"):
        counterfactual_dataset(ioi, 10, [["answer"]], fixed={"answer": "ann"})


@causal_model(inputs={"prompt": None, "name": NAMES, "other": NAMES})
def mentions(prompt, name, other):
    said = name in prompt
    answer = name if said else other
    return answer


def test_inputs_from_rows_with_the_others_sampled() -> None:
    rows = pd.DataFrame(
        {"prompt": ["ann met bob", "cat left", "bob and cat"], "name": ["ann", "cat", "ann"]}
    )
    data = counterfactual_dataset(mentions, 300, [["said"]], sampler=rows, seed=0)
    pairs = set(zip(data["base.prompt"], data["base.name"], strict=True))
    assert pairs <= set(zip(rows["prompt"], rows["name"], strict=True))  # drawn together
    assert set(data["base.other"]) == set(NAMES)  # sampled from its domain
    for _, row in data.head(40).iterrows():
        base = {k: row[f"base.{k}"] for k in mentions.inputs}
        source = {k: row[f"source.said.{k}"] for k in mentions.inputs}
        assert row["label"] == mentions.interchange(base, {"said": source})["answer"]
    with pytest.raises(UnknownNameError, match="'promt'"):
        counterfactual_dataset(
            mentions, 10, [["said"]], sampler=rows.rename(columns={"prompt": "promt"})
        )
