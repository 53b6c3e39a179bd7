"""Cross-variable interchanges (causalab's ``answer<-s1``) and fixed base-side values."""

from __future__ import annotations

import pandas as pd
import pytest

from abstraction import causal_model, counterfactual_dataset
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
