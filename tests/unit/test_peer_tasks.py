"""Four of causalab's task models, rewritten as programs and checked end to end.

Each model below was written here from reading causalab's task definition (repository
``goodfire-ai/causalab``); only facts (variables, parents, mechanisms' meaning)
carry over, the code is ours. What was read, per task:

* two-digit addition: ``tasks/two_digit_addition_task/arithmetic.py`` (the older
  layout of the repository; the current ``causalab/tasks/`` has no addition task).
* IOI: ``tasks/IOI_task/ioi_task.py`` (older: output_token, output_position,
  logit_diff) and ``causalab/tasks/IOI/causal_models.py`` (current: one ``IO``
  variable, an input filter requiring A != B and C in {A, B}).
* MCQA: ``tasks/simple_MCQA/simple_MCQA.py`` (simple MCQA: a (color, object)
  question, 4 choices, 4 symbols, answer_pointer, answer) and
  ``causalab/tasks/MCQA/causal_models.py`` (current: 2 choices, answer_position,
  answer).
* entity binding: ``causalab/tasks/entity_binding/causal_models.py`` and
  ``causalab/tasks/entity_binding/README.md`` (the positional model of the 2 x 2
  "Pete loves jam" configuration).

Simplifications (this language models the algorithm's variables, so every prompt,
template and token is left out: raw_input, raw_output, templates, the leading space
of answer tokens, token positions, scoring specs):

* addition: none in the graph (same 4 inputs, same 4 computed variables, the three
  output digits returned together); digits keep the full range(10).
* IOI: 4 names, 2 places, 2 objects instead of the JSON lists; no template input.
  Where theirs returns the string "Error" (name_C is neither name_A nor name_B) ours
  gives None, and logit_diff is None when a signal is None (theirs would raise on
  ``0.63 * None``). The current causalab model's ``IO`` equals our output_token on
  the inputs its filter admits (it is name_B, not an error, on the others); their
  input filter is not modelled, the grid covers every combination.
* MCQA: 3 colors, 2 objects and the symbols A/B/C instead of the pools and the
  alphabet, so the grid (39,366 rows) is sampled (3,000 seeded rows). Where theirs
  draws a random pointer when no choice is the question's color, ours gives None and
  the answer None (randomness cannot live in a mechanism). Their uniqueness filter on
  choices and symbols is not modelled. The current 2-choice MCQA, whose
  ``choices.index(color)`` raises in that case, has the same graph shape.
* entity binding: pools of 2 people and 2 foods (plus None, which their entity
  domains include); query_indices is (0,) or (1,); question_template and the
  statement template are left out. Theirs returns positional_answer (the target of
  analyses) and computes the answer entity beside it; ours returns that answer, so
  positional_answer is an intermediate an interchange can target.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest

from abstraction import CausalModel, causal_model, counterfactual_dataset

# -- helpers ------------------------------------------------------------------------------


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type (tuples element by element)."""
    a, b = _py(a), _py(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _rows(columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(next(iter(columns.values())))
    return [{k: _py(v[i]) for k, v in columns.items()} for i in range(n)]


def _check_batch_matches_rows(model: CausalModel, columns: dict[str, np.ndarray]) -> int:
    batch = model.run_batch(columns)
    assert set(batch) == set(model.variables)
    rows = _rows(columns)
    bad = []
    for i, row in enumerate(rows):
        expected = model.run(row)
        for var in model.variables:
            if not _same(batch[var][i], expected[var]):
                bad.append((i, var, batch[var][i], expected[var]))
    assert not bad, bad[:5]
    return len(rows)


def _check_dataset_matches_interchange(model: CausalModel, var: str) -> None:
    frame = counterfactual_dataset(model, 500, [[var]], seed=0)
    assert len(frame) == 500
    labels = ["label"] if len(model.outputs) == 1 else [f"label.{o}" for o in model.outputs]
    bad = []
    for i in range(len(frame)):
        base = {k: _py(frame[f"base.{k}"].iloc[i]) for k in model.inputs}
        source = {k: _py(frame[f"source.{var}.{k}"].iloc[i]) for k in model.inputs}
        expected = model.interchange(base, {var: source})
        for out, label in zip(model.outputs, labels, strict=True):
            got = frame[label].to_numpy()[i]
            if not _same(got, expected[out]):
                bad.append((i, out, got, expected[out]))
        if not _same(frame[f"value.{var}"].to_numpy()[i], expected[var]):
            bad.append((i, var, frame[f"value.{var}"].iloc[i], expected[var]))
    assert not bad, bad[:5]


def _edges(model: CausalModel) -> set[tuple[str, str]]:
    return set(model.graph().edges)


# -- two-digit addition -------------------------------------------------------------------

DIGIT = range(10)


@causal_model(inputs={"op1_tens": DIGIT, "op1_ones": DIGIT, "op2_tens": DIGIT, "op2_ones": DIGIT})
def addition(op1_tens, op1_ones, op2_tens, op2_ones):  # type: ignore[no-untyped-def]
    ones_carry: Literal[0, 1] = 1 if op1_ones + op2_ones > 9 else 0
    ones_out = (op1_ones + op2_ones) % 10
    tens_out = (op1_tens + op2_tens + ones_carry) % 10
    hundreds_out: Literal[0, 1] = 1 if op1_tens + op2_tens + ones_carry > 9 else 0
    return hundreds_out, tens_out, ones_out


def test_addition_graph() -> None:
    m = addition
    assert set(m.inputs) == {"op1_tens", "op1_ones", "op2_tens", "op2_ones"}
    assert set(m.variables) == set(m.inputs) | {
        "ones_carry",
        "ones_out",
        "tens_out",
        "hundreds_out",
    }
    assert m.outputs == ("hundreds_out", "tens_out", "ones_out")
    assert _edges(m) == {
        ("op1_ones", "ones_carry"),
        ("op2_ones", "ones_carry"),
        ("op1_ones", "ones_out"),
        ("op2_ones", "ones_out"),
        ("op1_tens", "tens_out"),
        ("op2_tens", "tens_out"),
        ("ones_carry", "tens_out"),
        ("op1_tens", "hundreds_out"),
        ("op2_tens", "hundreds_out"),
        ("ones_carry", "hundreds_out"),
    }


def test_addition_batch_equals_rows_on_the_grid() -> None:
    grid = addition.input_grid()
    assert _check_batch_matches_rows(addition, grid) == 10_000
    # and the model adds: the three digits spell the sum on every row
    out = addition.run_batch(grid)
    total = 100 * out["hundreds_out"] + 10 * out["tens_out"] + out["ones_out"]
    expected = 10 * (grid["op1_tens"] + grid["op2_tens"]) + grid["op1_ones"] + grid["op2_ones"]
    assert (total == expected).all()


def test_addition_hand_interchanges() -> None:
    m = addition

    def digits(a: int, b: int) -> dict[str, int]:
        return {"op1_tens": a // 10, "op1_ones": a % 10, "op2_tens": b // 10, "op2_ones": b % 10}

    out = m.interchange(digits(23, 45), {"ones_carry": digits(7, 8)})
    # 23 + 45 = 068 has no carry; 7 + 8 carries, so the tens become 2 + 4 + 1 = 7 while
    # the ones stay (3 + 5) % 10 = 8: 078
    assert (out["hundreds_out"], out["tens_out"], out["ones_out"]) == (0, 7, 8)
    out = m.interchange(digits(55, 45), {"ones_carry": digits(11, 11)})
    # 55 + 45 = 100 only through the carry; 11 + 11 carries nothing, so the tens are
    # 5 + 4 + 0 = 9 and there is no hundred: 090
    assert (out["hundreds_out"], out["tens_out"], out["ones_out"]) == (0, 9, 0)
    out = m.interchange(digits(12, 34), {"ones_out": digits(9, 9), "tens_out": digits(50, 40)})
    # ones from 9 + 9 (8), tens from 50 + 40 (9); hundreds still from 1 + 3 + 0: 098
    assert (out["hundreds_out"], out["tens_out"], out["ones_out"]) == (0, 9, 8)


@pytest.mark.parametrize("var", ["ones_carry", "tens_out"])
def test_addition_dataset_labels(var: str) -> None:
    _check_dataset_matches_interchange(addition, var)


# -- IOI ----------------------------------------------------------------------------------

NAMES = ["Mary", "John", "Alice", "Bob"]
PLACES = ["store", "park"]
OBJECTS = ["drink", "ring"]


def _logit_diff(name_A: str, name_B: str, name_C: str, token: Any, position: Any) -> Any:
    """Their logit-difference proxy: +1/-1 for answering the other/the same name, and
    for pointing at the other/the same position; None when a signal is undefined."""
    token_signal = position_signal = None
    if (name_C == name_A and token == name_B) or (name_C == name_B and token == name_A):
        token_signal = 1
    elif (name_C == name_A and token == name_A) or (name_C == name_B and token == name_B):
        token_signal = -1
    if (name_C == name_A and position == 1) or (name_C == name_B and position == 0):
        position_signal = 1
    elif (name_C == name_A and position == 0) or (name_C == name_B and position == 1):
        position_signal = -1
    if token_signal is None or position_signal is None:
        return None
    return 0.295 + 0.63 * token_signal + 2.235 * position_signal


@causal_model(
    inputs={"name_A": NAMES, "name_B": NAMES, "name_C": NAMES, "place": PLACES, "object": OBJECTS}
)
def ioi(name_A, name_B, name_C, place, object):  # type: ignore[no-untyped-def]
    # the indirect object is the introduced name that is not the subject
    if name_C == name_A:
        output_token = name_B
        output_position: Literal[0, 1, None] = 1
    elif name_C == name_B:
        output_token = name_A
        output_position = 0
    else:
        output_token = None
        output_position = None
    logit_diff = _logit_diff(name_A, name_B, name_C, output_token, output_position)
    return output_token, logit_diff


def test_ioi_graph() -> None:
    m = ioi
    names = {"name_A", "name_B", "name_C"}
    assert set(m.inputs) == names | {"place", "object"}
    assert set(m.variables) == set(m.inputs) | {"output_token", "output_position", "logit_diff"}
    assert m.outputs == ("output_token", "logit_diff")
    # place and object only shape the prompt: isolated inputs
    assert set(m.graph().nodes) == set(m.variables)
    assert _edges(m) == (
        {(n, v) for n in names for v in ("output_token", "output_position")}
        | {(v, "logit_diff") for v in names | {"output_token", "output_position"}}
    )
    assert set(m.values("output_position")) == {0, 1, None}


def test_ioi_batch_equals_rows_on_the_grid() -> None:
    assert _check_batch_matches_rows(ioi, ioi.input_grid()) == 4**3 * 2 * 2


def test_ioi_hand_interchanges() -> None:
    m = ioi
    base = {"name_A": "Mary", "name_B": "John", "name_C": "Mary", "place": "park", "object": "ring"}
    plain = m.run(base)
    # Mary gave the ring to John: token John at position 1, both signals +1
    assert plain["output_token"] == "John" and plain["output_position"] == 1
    assert plain["logit_diff"] == 3.16  # 0.295 + 0.63 + 2.235, as Python rounds it
    source = {**base, "name_C": "John"}  # the source's subject is John: position 0
    out = m.interchange(base, {"output_position": source})
    # position 0 while the subject is name_A: position signal -1, token unchanged
    assert out["output_token"] == "John"
    assert out["logit_diff"] == -1.3099999999999998  # 0.295 + 0.63 - 2.235
    other = {
        "name_A": "John",
        "name_B": "Mary",
        "name_C": "John",
        "place": "park",
        "object": "ring",
    }
    out = m.interchange(base, {"output_token": other})  # the source's answer is Mary
    # answering the subject Mary: token signal -1, position signal still +1
    assert out["output_token"] == "Mary"
    assert out["logit_diff"] == 1.9  # 0.295 + 0.63 * -1 + 2.235, as Python rounds it
    unrelated = {**base, "name_A": "Alice", "name_B": "Bob", "name_C": "Alice"}
    out = m.interchange(base, {"output_token": unrelated})  # the source's answer is Bob
    # Bob is neither base name: no token signal, so no logit difference
    assert out["output_token"] == "Bob" and out["logit_diff"] is None
    broken = {**base, "name_C": "Alice"}  # the subject is neither introduced name
    assert m.run(broken)["output_token"] is None and m.run(broken)["logit_diff"] is None


@pytest.mark.parametrize("var", ["output_position", "output_token"])
def test_ioi_dataset_labels(var: str) -> None:
    _check_dataset_matches_interchange(ioi, var)


# -- simple MCQA --------------------------------------------------------------------------

COLORS = ["red", "blue", "green"]
QUESTIONS = [(color, obj) for color in COLORS for obj in ("ball", "car")]  # (color, object)
SYMBOLS = ["A", "B", "C"]


@causal_model(
    inputs={
        "question": QUESTIONS,
        **{f"choice{i}": COLORS for i in range(4)},
        **{f"symbol{i}": SYMBOLS for i in range(4)},
    }
)
def simple_mcqa(question, choice0, choice1, choice2, choice3, symbol0, symbol1, symbol2, symbol3):  # type: ignore[no-untyped-def]
    # the first choice naming the question's color; None when no choice does
    if choice0 == question[0]:
        answer_pointer = 0
    elif choice1 == question[0]:
        answer_pointer = 1
    elif choice2 == question[0]:
        answer_pointer = 2
    elif choice3 == question[0]:
        answer_pointer = 3
    else:
        answer_pointer = None
    answer = (
        None if answer_pointer is None else (symbol0, symbol1, symbol2, symbol3)[answer_pointer]
    )
    return answer


def _sample_inputs(model: CausalModel, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    columns = {}
    for name in model.inputs:
        domain = list(model.values(name))
        picks = rng.integers(0, len(domain), size=n)
        column = np.empty(n, dtype=object)
        column[:] = [domain[k] for k in picks]
        columns[name] = column
    return columns


def test_simple_mcqa_graph() -> None:
    m = simple_mcqa
    choices = {f"choice{i}" for i in range(4)}
    symbols = {f"symbol{i}" for i in range(4)}
    assert set(m.inputs) == {"question"} | choices | symbols
    assert set(m.variables) == set(m.inputs) | {"answer_pointer", "answer"}
    assert m.outputs == ("answer",)
    assert _edges(m) == (
        {(c, "answer_pointer") for c in choices | {"question"}}
        | {(s, "answer") for s in symbols | {"answer_pointer"}}
    )
    assert set(m.values("answer_pointer")) == {0, 1, 2, 3, None}


def test_simple_mcqa_batch_equals_rows_on_a_sample() -> None:
    columns = _sample_inputs(simple_mcqa, 3_000, seed=0)
    assert _check_batch_matches_rows(simple_mcqa, columns) == 3_000
    pointers = simple_mcqa.run_batch(columns)["answer_pointer"]
    assert any(p is None for p in pointers) and {0, 1, 2, 3} <= set(pointers)


def test_simple_mcqa_hand_interchanges() -> None:
    m = simple_mcqa
    base = {
        "question": ("red", "ball"),
        **dict(
            zip(
                ["choice0", "choice1", "choice2", "choice3"],
                ["blue", "red", "green", "red"],
                strict=True,
            )
        ),
        **dict(
            zip(["symbol0", "symbol1", "symbol2", "symbol3"], ["A", "B", "C", "A"], strict=True)
        ),
    }
    assert m.run(base)["answer_pointer"] == 1 and m.run(base)["answer"] == "B"  # first red
    source = {**base, "question": ("green", "car")}  # green is choice 2
    # the pointer moves to 2; the base's own symbol there is C
    assert m.interchange(base, {"answer_pointer": source})["answer"] == "C"
    # the whole question swapped in is the same here: only answer_pointer reads it
    assert m.interchange(base, {"question": source})["answer"] == "C"
    no_match = {**base, "choice1": "blue", "choice3": "blue"}  # no red among the choices
    assert m.run(no_match)["answer"] is None
    # an interchange restores a pointer the base lacks: pointer 1 -> base symbol B
    assert m.interchange(no_match, {"answer_pointer": base})["answer"] == "B"
    # and a source without a match takes the base's answer away
    assert m.interchange(base, {"answer_pointer": no_match})["answer"] is None


def test_simple_mcqa_dataset_labels() -> None:
    _check_dataset_matches_interchange(simple_mcqa, "answer_pointer")


# -- entity binding -----------------------------------------------------------------------

GROUPS = 2
ROLES = 2  # slot 0: a person, slot 1: a food
PEOPLE = ["Pete", "Ann", None]
FOODS = ["jam", "pie", None]


def _groups_holding(
    role: int,
    asked: tuple[int, ...],
    query: Any,
    active: int,
    entities: tuple[Any, ...],
    positions: tuple[Any, ...],
) -> tuple[int, ...]:
    """The positions (among active groups) whose entity in this role is the query."""
    if role not in asked or query is None:
        return ()
    return tuple(
        p
        for g, (e, p) in enumerate(zip(entities, positions, strict=True))
        if g < active and e == query and p is not None
    )


def _only_common(found: tuple[tuple[int, ...], ...], asked: tuple[int, ...]) -> Any:
    """The one group every asked role points to, or None (no role, or not one group)."""
    sets = [set(found[r]) for r in asked if found[r]]
    if not sets:
        return None
    common = set.intersection(*sets)
    return next(iter(common)) if len(common) == 1 else None


@causal_model(
    inputs={
        "e00": PEOPLE,  # their entities[g, r] is our e{g}{r}
        "e01": FOODS,
        "e10": PEOPLE,
        "e11": FOODS,
        "query_group": range(GROUPS),
        "query_indices": [(0,), (1,)],
        "answer_index": range(ROLES),
        "active_groups": range(GROUPS + 1),
        "entities_per_group": range(ROLES + 1),
    }
)
def entity_binding(  # type: ignore[no-untyped-def]
    e00, e01, e10, e11, query_group, query_indices, answer_index, active_groups, entities_per_group
):
    for r in range(ROLES):
        # the entity in role r of the queried group: what the question names
        if query_group >= active_groups:
            query[r] = None  # noqa: F821 - indexed variables (query_0, query_1)
        elif query_group == 0:
            query[r] = e00 if r == 0 else e01  # noqa: F821
        else:
            query[r] = e10 if r == 0 else e11  # noqa: F821
    for g in range(GROUPS):
        for r in range(ROLES):
            # where the entity sits: its group, or None when the slot is empty
            if ((e00 if r == 0 else e01) if g == 0 else (e10 if r == 0 else e11)) is None:
                position[g][r] = None  # noqa: F821
            else:
                position[g][r] = g  # noqa: F821
    for r in range(ROLES):
        # the groups whose role-r entity is the query
        positional_query[r] = _groups_holding(  # noqa: F821
            r,
            query_indices,
            query[r],  # noqa: F821
            active_groups,
            (e00, e10) if r == 0 else (e01, e11),
            (position[0][r], position[1][r]),  # noqa: F821
        )
    positional_answer: Literal[0, 1, None] = _only_common(positional_query, query_indices)  # noqa: F821
    if (
        positional_answer is None
        or positional_answer >= active_groups
        or answer_index >= entities_per_group
    ):
        answer = None
    else:
        answer = ((e00, e01), (e10, e11))[positional_answer][answer_index]
    return answer


def test_entity_binding_graph() -> None:
    m = entity_binding
    entities = {f"e{g}{r}" for g in range(2) for r in range(2)}
    assert set(m.inputs) == entities | {
        "query_group",
        "query_indices",
        "answer_index",
        "active_groups",
        "entities_per_group",
    }
    computed = (
        {"query_0", "query_1", "positional_query_0", "positional_query_1"}
        | {f"position_{g}_{r}" for g in range(2) for r in range(2)}
        | {"positional_answer", "answer"}
    )
    assert set(m.variables) == set(m.inputs) | computed
    assert m.outputs == ("answer",)
    edges = set()
    for r in range(2):
        edges |= {(f"e{g}{r}", f"query_{r}") for g in range(2)}
        edges |= {("query_group", f"query_{r}"), ("active_groups", f"query_{r}")}
        edges |= {(f"e{g}{r}", f"position_{g}_{r}") for g in range(2)}
        # the role's entities and positions (only that role's), its query, the pattern
        edges |= {(f"e{g}{r}", f"positional_query_{r}") for g in range(2)}
        edges |= {(f"position_{g}_{r}", f"positional_query_{r}") for g in range(2)}
        edges |= {(f"query_{r}", f"positional_query_{r}")}
        edges |= {(v, f"positional_query_{r}") for v in ("query_indices", "active_groups")}
        edges |= {(f"positional_query_{r}", "positional_answer")}
    edges |= {("query_indices", "positional_answer")}
    edges |= {(e, "answer") for e in entities}
    edges |= {
        (v, "answer")
        for v in ("positional_answer", "active_groups", "answer_index", "entities_per_group")
    }
    assert _edges(m) == edges
    assert set(m.values("positional_answer")) == {0, 1, None}


def test_entity_binding_batch_equals_rows_on_the_grid() -> None:
    grid = entity_binding.input_grid()
    assert _check_batch_matches_rows(entity_binding, grid) == 3**4 * 2 * 2 * 2 * 3 * 3


LOVE = {
    "e00": "Pete",
    "e01": "jam",
    "e10": "Ann",
    "e11": "pie",
    "query_indices": (0,),  # the question names a person ...
    "answer_index": 1,  # ... and asks for a food
    "active_groups": 2,
    "entities_per_group": 2,
}


def test_entity_binding_hand_interchanges() -> None:
    m = entity_binding
    base = {**LOVE, "query_group": 1}  # "Pete loves jam, and Ann loves pie. What does Ann love?"
    run = m.run(base)
    assert run["query_0"] == "Ann" and run["positional_query_0"] == (1,)
    assert run["positional_query_1"] == ()  # the food role is not asked about
    assert run["positional_answer"] == 1 and run["answer"] == "pie"
    # the same statement asked about Pete: positional answer 0, so the base retrieves
    # group 0's food
    assert m.interchange(base, {"positional_answer": {**LOVE, "query_group": 0}})["answer"] == "jam"
    # the groups swapped (Ann loves pie, Pete loves jam) asking about Ann: Ann now sits
    # in group 0, and the base follows the position, not the name: jam, not pie
    swapped = {
        **LOVE,
        "e00": "Ann",
        "e01": "pie",
        "e10": "Pete",
        "e11": "jam",
        "query_group": 0,
    }
    assert m.interchange(base, {"positional_answer": swapped})["answer"] == "jam"
    # the query entity taken from that same source is Ann again: nothing changes
    assert m.interchange(base, {"query_0": swapped})["answer"] == "pie"
    # a source asking about an empty slot has no positional answer: the answer is None
    empty = {**LOVE, "e00": None, "query_group": 0}
    assert m.run(empty)["positional_answer"] is None
    assert m.interchange(base, {"positional_answer": empty})["answer"] is None
    # a base with one active group cannot retrieve from group 1
    one_group = {**base, "active_groups": 1}
    assert m.run(one_group)["answer"] is None
    assert m.interchange(one_group, {"positional_answer": base})["answer"] is None
    # the same person in both groups: two positions, no single answer
    assert m.run({**base, "e00": "Ann"})["positional_query_0"] == (0, 1)
    assert m.run({**base, "e00": "Ann"})["answer"] is None


@pytest.mark.parametrize("var", ["positional_answer", "query_0"])
def test_entity_binding_dataset_labels(var: str) -> None:
    _check_dataset_matches_interchange(entity_binding, var)


def test_dataset_frames_are_frames() -> None:
    frame = counterfactual_dataset(addition, 10, [["ones_carry"]], seed=0)
    assert isinstance(frame, pd.DataFrame)
    assert {"label.hundreds_out", "label.tens_out", "label.ones_out"} <= set(frame.columns)


def _add(x: int, y: int) -> int:
    return x + y


def test_multiline_mechanism_declares() -> None:
    """A mechanism wrapped over several lines (as ruff wraps a long call) declares and runs."""

    @causal_model(inputs={"a": range(3), "b": range(3)})
    def wrapped(a, b):  # type: ignore[no-untyped-def]
        s = _add(
            a,
            b,
        )
        return s

    assert wrapped.run({"a": 2, "b": 1})["s"] == 3
