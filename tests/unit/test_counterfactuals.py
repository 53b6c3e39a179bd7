"""Factual and counterfactual datasets: columns, samplers, seeds and filtering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from abstraction import (
    CausalModel,
    DomainError,
    balanced,
    causal_model,
    counterfactual_dataset,
    exhaustive_size,
    factual_dataset,
    from_function,
)

ENTITIES = range(20)


@causal_model(inputs={"w": ENTITIES, "x": ENTITIES, "y": ENTITIES, "z": ENTITIES})
def hierarchical_equality(w, x, y, z):  # type: ignore[no-untyped-def]
    wx = w == x
    yz = y == z
    return wx == yz


HE = hierarchical_equality
SETS = [["wx"], ["yz"], ["wx", "yz"]]


def test_columns_and_labels_match_scalar_interchange() -> None:
    frame = counterfactual_dataset(HE, 300, SETS, seed=3)
    assert len(frame) == 300
    for col in [
        "base_id",
        "base.w",
        "source.wx.w",
        "source.yz.z",
        "do.wx",
        "do.yz",
        "intervened",
        "value.wx",
        "label",
        "base_label",
        "changed",
    ]:
        assert col in frame.columns
    assert set(frame["intervened"]) == {"wx", "yz", "wx+yz"}
    assert frame["intervened"].value_counts().tolist() == [100, 100, 100]
    for _, row in frame.iterrows():
        base = {v: int(row[f"base.{v}"]) for v in HE.inputs}
        sets = row["intervened"].split("+")
        sources = {s: {v: int(row[f"source.{s}.{v}"]) for v in HE.inputs} for s in sets}
        expected = HE.interchange(base, sources)
        assert row["label"] == expected["output"]
        assert row["base_label"] == HE.run(base)["output"]
        assert row["changed"] == (row["label"] != row["base_label"])
        for s in ("wx", "yz"):
            assert row[f"do.{s}"] == (s in sets)
            assert row[f"value.{s}"] == expected[s]
            if s not in sets:  # the unused source is the base itself
                assert all(row[f"source.{s}.{v}"] == row[f"base.{v}"] for v in HE.inputs)


def test_same_seed_same_data_different_seed_different_data() -> None:
    a = counterfactual_dataset(HE, 500, SETS, seed=1)
    b = counterfactual_dataset(HE, 500, SETS, seed=1)
    c = counterfactual_dataset(HE, 500, SETS, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_base_id_identifies_base_inputs() -> None:
    frame = counterfactual_dataset(HE, 5000, SETS, seed=0, sampler="value")
    keys = frame[[f"base.{v}" for v in HE.inputs]].astype(str).agg("|".join, axis=1)
    assert keys.groupby(frame["base_id"]).nunique().max() == 1
    assert frame["base_id"].groupby(keys).nunique().max() == 1


def test_balanced_by_value_and_output() -> None:
    frame = counterfactual_dataset(HE, 40_000, SETS, sampler="value", seed=0)
    wx_rows = frame[frame["do.wx"]]
    assert abs(wx_rows["value.wx"].mean() - 0.5) < 0.02
    base_wx = frame[[f"base.{v}" for v in "wx"]].nunique(axis=1).eq(1)
    assert abs(base_wx.mean() - 0.5) < 0.02  # bases balanced on the joint (wx, yz)
    uniform = counterfactual_dataset(HE, 40_000, SETS, sampler="uniform", seed=0)
    assert uniform[uniform["do.wx"]]["value.wx"].mean() < 0.1
    facts = factual_dataset(HE, 20_000, sampler="output", seed=0)
    assert abs(facts["output"].mean() - 0.5) < 0.02
    joint = factual_dataset(HE, 40_000, sampler=balanced(["wx", "yz"]), seed=0)
    shares = joint.groupby(["wx", "yz"]).size() / len(joint)
    assert np.allclose(shares.to_numpy(), 0.25, atol=0.02)


def test_changed_only() -> None:
    frame = counterfactual_dataset(HE, 2000, SETS, seed=0, changed_only=True)
    assert len(frame) == 2000 and frame["changed"].all()


def test_no_change_possible_is_an_error() -> None:
    model = (
        CausalModel.builder("constant")
        .add_input("a", [0, 1])
        .add_variable("b", lambda a: a)
        .add_variable("out", lambda b: b * 0)
        .build()
    )
    with pytest.raises(DomainError, match="cannot be tested"):
        counterfactual_dataset(model, 100, ["b"], changed_only=True)


def test_exhaustive_enumeration() -> None:
    @causal_model(inputs={"a": range(3), "b": range(2)})
    def small(a, b):  # type: ignore[no-untyped-def]
        s = a + b
        return s > 1

    frame = counterfactual_dataset(small, interventions=["s"], exhaustive=True)
    assert len(frame) == 6 * 6
    assert frame[["base_id", "source.s.a", "source.s.b"]].drop_duplicates().shape[0] == 36
    facts = factual_dataset(small, exhaustive=True)
    assert len(facts) == 6 and facts["input_id"].nunique() == 6


def test_exhaustive_enumeration_of_held_out_bases() -> None:
    @causal_model(inputs={"a": range(3), "b": range(2)})
    def two(a, b):  # type: ignore[no-untyped-def]
        s = a + b
        d = a - b
        return s > d

    frame = counterfactual_dataset(two, interventions=["s"], exhaustive=True)
    used = frame["base_id"].unique()[:2]
    held_out = counterfactual_dataset(
        two, interventions=["s", "d"], exhaustive=True, exclude_bases=used
    )
    assert exhaustive_size(two, ["s", "d"], exclude_bases=used) == len(held_out) == 2 * 4 * 6
    assert set(held_out["base_id"]) == set(frame["base_id"]) - set(used)
    for label, rows in held_out.groupby("intervened", observed=True):
        sources = rows[[f"source.{label}.a", f"source.{label}.b"]].drop_duplicates()
        assert len(sources) == 6
    with pytest.raises(ValueError, match="exhaustive"):
        counterfactual_dataset(two, 10, ["s"], exclude_bases=used)


def test_user_sampler_is_validated() -> None:
    def always_same(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {v: np.full(n, 3) for v in HE.inputs}

    frame = counterfactual_dataset(HE, 50, ["wx"], sampler=from_function(always_same))
    assert (frame["base.w"] == 3).all() and not frame["changed"].any()

    def bad(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {v: np.full(n, 99) for v in HE.inputs}

    with pytest.raises(DomainError, match="outside its domain"):
        counterfactual_dataset(HE, 50, ["wx"], sampler=bad)


def test_bad_arguments() -> None:
    with pytest.raises(KeyError, match="did you mean 'wx'"):
        counterfactual_dataset(HE, 10, ["wxx"])
    with pytest.raises(ValueError, match="positive"):
        counterfactual_dataset(HE, 0, ["wx"])
    with pytest.raises(ValueError, match="unknown sampler"):
        counterfactual_dataset(HE, 10, ["wx"], sampler="nope")


def test_entities_as_tuples() -> None:
    vectors = [tuple(np.round(np.random.default_rng(i).uniform(-1, 1, 4), 2)) for i in range(5)]

    @causal_model(inputs={"w": vectors, "x": vectors})
    def eq(w, x):  # type: ignore[no-untyped-def]
        same = w == x
        return not same

    frame = counterfactual_dataset(eq, 200, ["same"], seed=0)
    assert isinstance(frame["base.w"].iloc[0], tuple)
    for _, row in frame.head(30).iterrows():
        assert row["base_label"] == (row["base.w"] != row["base.x"])


def test_combination_ids_identify_input_combinations() -> None:
    from abstraction.counterfactuals import combination_ids

    columns = {"w": np.array([0, 1, 0]), "x": np.array([2, 2, 2]), "y": np.zeros(3, int)}
    columns["z"] = np.array([5, 5, 5])
    ids = combination_ids(HE, columns)
    assert ids[0] == ids[2] != ids[1]
    # a mixed-radix number of domain indices, the first input lowest: w + 20 x + 8000 z
    assert ids.tolist() == [0 + 20 * 2 + 8000 * 5, 1 + 20 * 2 + 8000 * 5, 0 + 20 * 2 + 8000 * 5]
    frame = counterfactual_dataset(HE, 200, SETS, seed=0)
    base = {v: frame[f"base.{v}"].to_numpy() for v in HE.inputs}
    assert np.array_equal(frame["base_id"].to_numpy(), combination_ids(HE, base))
    facts = factual_dataset(HE, 50, seed=0)
    inputs = {v: facts[v].to_numpy() for v in HE.inputs}
    assert np.array_equal(facts["input_id"].to_numpy(), combination_ids(HE, inputs))


# -- control tasks ---------------------------------------------------------------------------


def _pick_model():  # type: ignore[no-untyped-def]
    from abstraction import causal_model

    @causal_model(inputs={"a": range(30), "b": range(30), "q": range(30)})
    def pick(a, b, q):  # type: ignore[no-untyped-def]
        first = q == a
        return first

    return pick


def test_control_on_an_enumerable_grid_permutes_the_true_values() -> None:
    from abstraction import control_model

    model = _pick_model()
    control = control_model(model, "first", seed=3)
    grid = model.input_grid()
    true = model.run_batch(grid)["first"]
    shuffled = control.run_batch(grid)["first"]
    assert sorted(true.tolist()) == sorted(shuffled.tolist())  # same distribution exactly
    assert not np.array_equal(true, shuffled)


def test_control_on_a_large_grid_is_consistent_and_follows_the_given_distribution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from abstraction import control_model
    from abstraction import counterfactuals as cf

    model = _pick_model()
    monkeypatch.setattr(cf, "GRID_LIMIT", 100)  # 27,000 combinations: the hashed road
    rng = np.random.default_rng(0)
    n = 20_000
    a, b = rng.integers(30, size=n), rng.integers(30, size=n)
    inputs = {"a": a, "b": b, "q": np.where(rng.random(n) < 0.5, a, b)}  # q is a or b
    control = control_model(model, "first", seed=3, distribution=inputs)
    values = control.run_batch(inputs)["first"]
    assert np.array_equal(values, control.run_batch(inputs)["first"])
    one = [control.run({k: int(v[i]) for k, v in inputs.items()})["first"] for i in range(40)]
    assert one == values[:40].tolist()  # row by row and vectorised agree
    true = model.run_batch(inputs)["first"]
    assert abs(values.mean() - true.mean()) < 0.03  # about half, as in `inputs`
    assert abs((values == true).mean() - 0.5) < 0.03  # and unrelated to the true value
    uniform = control_model(model, "first", seed=3).run_batch(inputs)["first"]
    assert uniform.mean() < 0.1  # under uniform inputs q is rarely a: why `distribution` exists
    other_seed = control_model(model, "first", seed=4, distribution=inputs)
    assert not np.array_equal(values, other_seed.run_batch(inputs)["first"])


def test_control_needs_finite_domains() -> None:
    from abstraction import DomainError, causal_model, control_model

    @causal_model(inputs={"a": None, "b": range(3)})
    def open_ended(a, b):  # type: ignore[no-untyped-def]
        c = a + b
        return c

    with pytest.raises(DomainError, match="finite domain"):
        control_model(open_ended, "c")
