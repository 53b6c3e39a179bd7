"""Running, intervening and inspecting causal models, and the builder."""

from __future__ import annotations

import warnings
from typing import Literal

import networkx as nx
import numpy as np
import pytest
import sympy

from abstraction import (
    CausalModel,
    DeclarationError,
    DomainError,
    UnknownNameError,
    VectorizationWarning,
    causal_model,
)

ENTITIES = range(20)


@causal_model(inputs={"w": ENTITIES, "x": ENTITIES, "y": ENTITIES, "z": ENTITIES})
def hierarchical_equality(w, x, y, z):  # type: ignore[no-untyped-def]
    wx = w == x
    yz = y == z
    return wx == yz


def test_structure() -> None:
    m = hierarchical_equality
    assert m.inputs == ("w", "x", "y", "z")
    assert m.intermediates == ("wx", "yz")
    assert m.outputs == ("output",)
    assert m.variables == ("w", "x", "y", "z", "wx", "yz", "output")
    assert m.parents["output"] == ("wx", "yz")
    assert m.children["wx"] == ("output",)
    assert m.descendants("w") == {"wx", "output"}
    g = m.graph()
    assert isinstance(g, nx.DiGraph)
    assert set(g.edges) == {
        ("w", "wx"),
        ("x", "wx"),
        ("y", "yz"),
        ("z", "yz"),
        ("wx", "output"),
        ("yz", "output"),
    }
    assert g.nodes["wx"]["kind"] == "intermediate"
    assert m.values("wx") == (False, True)


def test_run_and_interchange() -> None:
    m = hierarchical_equality
    base = {"w": 1, "x": 1, "y": 2, "z": 3}
    assert m.run(base)["output"] is False
    assert m.run(base, {"yz": True})["output"] is True
    source = {"w": 4, "x": 5, "y": 6, "z": 6}
    out = m.interchange(base, {"wx": source, "yz": source})
    assert out["wx"] is False and out["yz"] is True and out["output"] is False
    assert m(1, 1, 2, 2) is True


def test_bad_run_input() -> None:
    m = hierarchical_equality
    with pytest.raises(UnknownNameError, match="did you mean 'wx'"):
        m.run({"w": 1, "x": 1, "y": 2, "z": 3}, {"wxx": True})
    with pytest.raises(DomainError, match="outside its domain"):
        m.run({"w": 100, "x": 1, "y": 2, "z": 3})
    with pytest.raises(UnknownNameError, match="missing"):
        m.run({"w": 1})
    with pytest.raises(DomainError):
        m.run_batch({"w": [1, 25], "x": [1, 1], "y": [2, 2], "z": [3, 3]})


def test_builder_callables_and_sympy() -> None:
    a, b = sympy.symbols("a b")
    model = (
        CausalModel.builder("adder")
        .add_input("a", range(10))
        .add_input("b", range(10))
        .add_variable("carry", lambda a, b: (a + b) >= 10, parents=["a", "b"])
        .add_variable("ones", sympy.Mod(a + b, 10))
        .add_variable("total", lambda carry, ones: 10 * carry + ones)
        .build()
    )
    assert model.outputs == ("total",)
    assert model.run({"a": 7, "b": 8})["total"] == 15
    eq = model.equations("latex")["ones"]
    assert "bmod" in eq or "mod" in eq
    batch = model.run_batch({"a": np.arange(10), "b": np.full(10, 9)})
    assert batch["total"].tolist() == [a_ + 9 for a_ in range(10)]


def test_builder_rejects_unknown_parent_and_cycles() -> None:
    b = CausalModel.builder("m").add_input("a", [0, 1])
    b.add_variable("c", lambda a, q: a, parents=["a", "q"])
    with pytest.raises(DeclarationError, match="unknown parent 'q'") as info:
        b.build()
    assert info.value.line is not None and info.value.file == __file__

    b = CausalModel.builder("m").add_input("a", [0, 1])
    b.add_variable("c", lambda a, d: a, parents=["a", "d"])
    b.add_variable("d", lambda c: c, parents=["c"])
    b.add_variable("e", lambda d: d, parents=["d"])
    with pytest.raises(DeclarationError, match="cycle"):
        b.build()


def test_builder_values_checked_on_intervention() -> None:
    model = (
        CausalModel.builder("m")
        .add_input("a", [0, 1])
        .add_variable("b", lambda a: a + 1, values=[1, 2])
        .add_variable("c", lambda b: b * 2)
        .build()
    )
    with pytest.raises(DomainError, match="outside its domain"):
        model.run({"a": 0}, {"b": 7})


def test_helper_calls_run_once_per_distinct_input_without_warning() -> None:
    calls: list[int] = []

    def branchy(v: int) -> int:
        calls.append(v)
        if v > 2:  # a Python `if` cannot run on a column
            return 1
        return 0

    @causal_model(inputs={"a": range(5)})
    def m(a):  # type: ignore[no-untyped-def]
        b = branchy(a)
        return b

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = m.run_batch({"a": np.arange(5).repeat(1000)})
    assert out["b"].tolist() == [0] * 3000 + [1] * 2000
    assert sorted(calls) == [0, 1, 2, 3, 4]  # once per distinct value, as Python ints
    assert all(type(v) is int for v in calls)


def test_mechanism_over_nearly_distinct_rows_warns_once_naming_it() -> None:
    def branchy(v: float) -> int:
        return 1 if v > 0.5 else 0

    @causal_model(inputs={"a": None})
    def m(a):  # type: ignore[no-untyped-def]
        b = branchy(a)
        return b

    values = np.random.default_rng(0).random(20_000)
    with pytest.warns(VectorizationWarning, match="'b'"):
        out = m.run_batch({"a": values}, validate=False)
    assert out["b"].tolist() == [int(v > 0.5) for v in values]


def test_logic_operators_vectorize_with_python_semantics() -> None:
    @causal_model(inputs={"a": range(-2, 3), "b": range(-2, 3)})
    def m(a, b):  # type: ignore[no-untyped-def]
        c = (a and b) or (not a)
        d = 0 < a <= b
        return c + d

    grid = m.input_grid()
    batch = m.run_batch(grid)
    for i in range(len(grid["a"])):
        row = m.run({"a": int(grid["a"][i]), "b": int(grid["b"][i])})
        assert batch["c"][i] == row["c"] and batch["d"][i] == row["d"]


def test_annotated_assignment_declares_a_checked_domain() -> None:
    from abstraction import DomainError

    @causal_model(inputs={"a": range(4)})
    def m(a):  # type: ignore[no-untyped-def]
        b: Literal[0, 1] = a % 2
        c = b + 1
        return c

    assert m.domain("b") == (0, 1)
    assert m.domain("c") is None
    assert m.run({"a": 3}, interventions={"b": 0})["c"] == 1
    with pytest.raises(DomainError, match="'b'"):
        m.run({"a": 3}, interventions={"b": 7})


def test_string_domain_is_rejected_with_the_fix_and_duplicates_are_dropped() -> None:
    from abstraction import DeclarationError
    from abstraction.causal_model import DomainWarning

    with pytest.raises(DeclarationError, match=r"list\('ABC'\)"):

        @causal_model(inputs={"a": "ABC"})
        def m(a):  # type: ignore[no-untyped-def]
            b = a + "!"
            return b

    with pytest.warns(DomainWarning, match="1 value"):

        @causal_model(inputs={"a": [1, 2, 2, True]})
        def n(a):  # type: ignore[no-untyped-def]
            b = a == 1
            return b

    assert n.domain("a") == (1, 2, True)  # True is kept: equal to 1, but not the same value


def test_mechanism_errors_name_variable_row_and_inputs() -> None:
    from abstraction.mechanism import MechanismError

    @causal_model(inputs={"a": [1, 2], "b": [1, 0]})
    def m(a, b):  # type: ignore[no-untyped-def]
        q = a // b
        return q

    with pytest.raises(MechanismError, match=r"'q'.*ZeroDivisionError.*a=1, b=0"):
        m.run({"a": 1, "b": 0})
    with pytest.raises(MechanismError, match=r"'q'.*ZeroDivisionError.*row 1.*a=1, b=0"):
        m.run_batch({"a": [1, 1], "b": [1, 0]})


GROUPS = 2


def test_bounded_loops_and_branches_compile_to_named_variables() -> None:
    @causal_model(inputs={"e0": range(3), "e1": range(3), "q": range(3)})
    def binding(e0, e1, q):  # type: ignore[no-untyped-def]
        for g in range(GROUPS):
            entity[g] = e0 if g == 0 else e1  # noqa: F821 - an indexed variable
            match[g] = entity[g] == q  # noqa: F821
        if match[0]:  # noqa: F821
            answer = 0
            found = True
        elif match[1]:  # noqa: F821
            answer = 1
            found = True
        else:
            answer = -1
            found = False
        best = entity[answer] if found else None  # noqa: F821 - indexed by a variable
        return best

    assert binding.variables == (
        "e0", "e1", "q", "entity_0", "match_0", "entity_1", "match_1", "answer", "found", "best",
    )  # fmt: skip
    graph = binding.graph()
    assert set(graph.predecessors("entity_0")) == {"e0"}  # the constant test was folded
    assert set(graph.predecessors("answer")) == {"match_0", "match_1"}
    assert binding.run({"e0": 2, "e1": 1, "q": 1})["best"] == 1
    assert binding.run({"e0": 2, "e1": 1, "q": 0})["best"] is None
    # an interchange on one unrolled variable: entity_1 taken from a source where it is 2
    out = binding.interchange({"e0": 2, "e1": 1, "q": 2}, {"entity_1": {"e0": 0, "e1": 2, "q": 0}})
    assert out["answer"] == 0 and out["best"] == 2
    grid = binding.input_grid()
    batch = binding.run_batch(grid)
    for i in range(len(grid["q"])):
        row = binding.run({k: grid[k][i].item() for k in grid})
        assert batch["best"][i] == row["best"] and batch["answer"][i] == row["answer"]


def test_unbounded_input_stops_only_the_variables_that_read_it() -> None:
    from abstraction import DomainError

    @causal_model(inputs={"prompt": None, "a": range(3), "b": range(3)})
    def m(prompt, a, b):  # type: ignore[no-untyped-def]
        s = a + b
        n = len(prompt)
        out = s if n > 3 else 0
        return out

    assert m.values("s") == (0, 1, 2, 3, 4)
    with pytest.raises(DomainError, match="'prompt'"):
        m.values("out")
    assert m.run({"prompt": "a long prompt", "a": 1, "b": 2})["out"] == 3
