"""Differential test: the batch path gives exactly what per-row Python gives, on random programs.

Hypothesis writes random causal models (identity tests, ``None``, strings, tuples,
mixed-type branches, boolean operators, arithmetic that may raise) over random finite
domains, and checks on every combination of inputs that ``run_batch`` equals per-row
``run`` value for value and type for type (or that both raise), and that the labels
of ``counterfactual_dataset`` equal per-row ``interchange``. ``benchmarks/
batch_semantics.py`` runs the same check on many more programs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abstraction import CausalModel, counterfactual_dataset
from abstraction.mechanism import MechanismError

SCALARS = st.one_of(
    st.integers(-3, 4),
    st.booleans(),
    st.sampled_from(["x", "y", "z"]),
    st.none(),
    st.tuples(st.integers(0, 2), st.integers(0, 2)),
    st.sampled_from([0.5, -1.5, 2.0]),
)


def _key(value: Any) -> tuple[str, str]:
    return (type(value).__name__, repr(value))


@st.composite
def domains(draw: st.DrawFn) -> list[Any]:
    values = draw(st.lists(SCALARS, min_size=1, max_size=4))
    unique: dict[tuple[str, str], Any] = {}
    for v in values:
        unique.setdefault(_key(v), v)
    # keep 1 and True (equal in Python) from sharing one domain: a domain is a set
    seen: list[Any] = []
    for v in unique.values():
        if not any(v == s and type(v) is not type(s) for s in seen):
            seen.append(v)
    return seen


@st.composite
def expressions(draw: st.DrawFn, names: list[str], depth: int = 0) -> str:
    leaf = st.one_of(st.sampled_from(names), SCALARS.map(repr))
    if depth >= 2:
        return draw(leaf)
    sub = expressions(names, depth + 1)
    kind = draw(
        st.sampled_from(["leaf", "cmp", "is", "in", "bool", "not", "if", "arith", "index", "chain"])
    )
    if kind == "leaf":
        return draw(leaf)
    if kind == "cmp":
        op = draw(st.sampled_from(["==", "!=", "<", ">=", ">"]))
        return f"({draw(sub)} {op} {draw(sub)})"
    if kind == "is":
        op = draw(st.sampled_from(["is", "is not"]))
        return f"({draw(sub)} {op} None)"
    if kind == "in":
        options = draw(st.lists(SCALARS, min_size=1, max_size=3))
        return f"({draw(sub)} in ({', '.join(map(repr, options))},))"
    if kind == "bool":
        op = draw(st.sampled_from(["and", "or"]))
        return f"({draw(sub)} {op} {draw(sub)})"
    if kind == "not":
        return f"(not {draw(sub)})"
    if kind == "if":
        return f"({draw(sub)} if {draw(sub)} else {draw(sub)})"
    if kind == "arith":
        op = draw(st.sampled_from(["+", "-", "*", "//", "%", "/", "**"]))
        return f"({draw(sub)} {op} {draw(sub)})"
    if kind == "index":
        return f"({draw(sub)})[{draw(st.integers(-1, 1))}]"
    return f"({draw(sub)} < {draw(sub)} <= {draw(sub)})"


@st.composite
def programs(draw: st.DrawFn) -> tuple[str, dict[str, list[Any]]]:
    inputs = ["a", "b", "c"][: draw(st.integers(1, 3))]
    domain = {name: draw(domains()) for name in inputs}
    names = list(inputs)
    body = []
    for i in range(draw(st.integers(1, 3))):
        body.append(f"    v{i} = {draw(expressions(names))}")
        names.append(f"v{i}")
    source = "def m({}):\n{}\n    return v{}\n".format(
        ", ".join(inputs), "\n".join(body), len(body) - 1
    )
    return source, domain


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def _reference(model: CausalModel, rows: list[dict[str, Any]]) -> list[Any]:
    out: list[Any] = []
    for row in rows:
        try:
            out.append(model.run(row))
        except MechanismError as error:
            out.append(error)
    return out


def _declare(source: str, domain: dict[str, list[Any]]) -> CausalModel | None:
    try:
        return CausalModel.from_source(source, inputs=domain)
    except Exception:
        return None  # e.g. a program that reads no input: rejected at declaration


def check_program(source: str, domain: dict[str, list[Any]]) -> str:
    """Assert batch == per-row on every input combination; returns what was checked."""
    model = _declare(source, domain)
    if model is None:
        return "rejected"
    grid = model.input_grid()
    n = len(next(iter(grid.values())))
    rows = [
        {k: grid[k][i].item() if hasattr(grid[k][i], "item") else grid[k][i] for k in grid}
        for i in range(n)
    ]
    reference = _reference(model, rows)
    raised = [r for r in reference if isinstance(r, Exception)]
    try:
        batch = model.run_batch(grid)
    except MechanismError:
        assert raised, f"run_batch raised but no row raises per row:\n{source}{domain}"
        return "raised"
    assert not raised, f"rows raise per row but run_batch did not:\n{source}{domain}"
    for i, expected in enumerate(reference):
        for var, value in expected.items():
            got = batch[var][i]
            got = got.item() if isinstance(got, np.generic) else got
            assert _same(got, value), (
                f"{var} on row {rows[i]}: batch {got!r} ({type(got).__name__}) vs per row "
                f"{value!r} ({type(value).__name__})\n{source}{domain}"
            )
    intermediates = [v for v in model.variables if v not in model.inputs and v not in model.outputs]
    if not intermediates:
        return "values"
    try:
        data = counterfactual_dataset(model, 40, [[intermediates[0]]], seed=0)
    except MechanismError:
        return "values"  # an intervened value made a downstream mechanism raise
    label = "label" if "label" in data else next(c for c in data if c.startswith("label"))
    for _, row in data.iterrows():
        base = {k: row[f"base.{k}"] for k in model.inputs}
        source_inputs = {k: row[f"source.{intermediates[0]}.{k}"] for k in model.inputs}
        expected = model.interchange(base, {intermediates[0]: source_inputs})[model.outputs[0]]
        got = row[label]
        got = got.item() if isinstance(got, np.generic) else got
        assert _same(got, expected), f"label {got!r} vs interchange {expected!r}\n{source}{domain}"
    return "labels"


@pytest.mark.filterwarnings("ignore::SyntaxWarning")  # generated `x is 1`, `None[0]`, ...
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_batch_equals_per_row_python(program: tuple[str, dict[str, list[Any]]]) -> None:
    check_program(*program)


def test_known_traps() -> None:
    """The cases that once gave a third answer."""
    assert (
        check_program(
            "def m(p, s):\n    y = None if p is None else s\n    return y\n",
            {"p": [None, 0, 1], "s": ["A", "B"]},
        )
        != "rejected"
    )
    assert (
        check_program(
            "def m(c):\n    v = 1 if c == 'a' else 0 if c == 'b' else 'Error'\n    return v\n",
            {"c": ["a", "b", "c"]},
        )
        != "rejected"
    )
    assert (
        check_program("def m(a, b):\n    q = a / b\n    return q\n", {"a": [1, 2], "b": [0, 1]})
        == "raised"
    )
    assert (
        check_program(
            "def m(a, b):\n    big = a * b * a * b * a * b\n    return big\n",
            {"a": [2**20, 3], "b": [2**21, 5]},
        )
        != "rejected"
    )
