"""Each class of malformed causal model is rejected at declaration, naming the line and a fix."""

from __future__ import annotations

import inspect
import random
import textwrap
from typing import Literal

import numpy as np
import pytest

from abstraction import CausalModel, DeclarationError, causal_model

HEADER = "def model(a, b):\n"


def reject(body: str, *, inputs: dict[str, object] | None = None) -> DeclarationError:
    source = HEADER + textwrap.indent(textwrap.dedent(body), "    ")
    with pytest.raises(DeclarationError) as info:
        CausalModel.from_source(
            source,
            inputs if inputs is not None else {"a": range(3), "b": range(3)},
            file="hyp.py",
        )
    return info.value


def line_of(body: str, needle: str) -> int:
    """The 1-based line in the full source (header is line 1) containing ``needle``."""
    for i, text in enumerate(textwrap.dedent(body).splitlines()):
        if needle in text:
            return i + 2
    raise AssertionError(needle)


CASES = [
    ("unbounded loop", "for i in range(a):\n    c[i] = 1\nreturn c\n", "for i", "range(K)"),
    ("while loop", "c = a\nwhile c:\n    pass\nreturn c\n", "while", "loop"),
    ("break", "for i in range(2):\n    break\nc = a\nreturn c\n", "break", "unrolled"),
    ("if without else", "if a:\n    c = 1\nreturn c\n", "if a", "else"),
    (
        "branches differ",
        "if a:\n    c = 1\nelse:\n    d = 2\nreturn c\n",
        "d = 2",
        "same names",
    ),
    ("index not constant", "for i in range(2):\n    c[a] = 1\nd = c\nreturn d\n", "c[a]", "index"),
    ("reassignment", "c = a + b\nc = c + 1\nreturn c\n", "c = c + 1", "new name"),
    ("reassign input", "a = b + 1\nc = a\nreturn c\n", "a = b + 1", "new name"),
    ("augmented", "c = a\nc += 1\nreturn c\n", "c += 1", "new name"),
    ("read before assignment", "c = d + 1\nd = a\nreturn c\n", "c = d + 1", "move the assignment"),
    ("undefined name", "c = a + undefined_thing\nreturn c\n", "undefined_thing", "define"),
    ("attribute assignment", "c = a\nc.x = 1\nreturn c\n", "c.x", "pure"),
    ("item assignment", "c = [a]\nc[0] = 1\nreturn c\n", "c[0]", "pure"),
    ("global", "global g\nc = a\nreturn c\n", "global", "pure"),
    ("nonlocal-like bare call", "c = a\nprint(c)\nreturn c\n", "print", "assign its value"),
    ("no return", "c = a + b\n", "c = a + b", "return"),
    ("return nothing", "c = a + b\nreturn\n", "return", "return the output"),
    ("return input", "c = a + b\nreturn a\n", "return a", "computed"),
    ("walrus", "c = (d := a) + 1\nreturn c\n", "c = (d", "own assignment"),
    ("comprehension", "c = [x for x in range(a)]\nreturn c\n", "c = [x", "helper"),
    ("unpacking", "c, d = a, b\nreturn c\n", "c, d", "own line"),
    ("code after return", "c = a\nreturn c\nd = c\n", "d = c", "above"),
    ("output clash", "output = a\nreturn output + b\n", "return output + b", "output"),
]


@pytest.mark.parametrize(("name", "body", "needle", "fix"), CASES, ids=[c[0] for c in CASES])
def test_rejected_with_line_and_fix(name: str, body: str, needle: str, fix: str) -> None:
    error = reject(body)
    expected = line_of(body, needle) if name != "no return" else 1
    assert error.line == expected, str(error)
    assert error.file == "hyp.py"
    assert f"hyp.py:{expected}:" in str(error)
    assert "fix:" in str(error)
    assert fix in error.fix


def test_missing_domain_names_the_input() -> None:
    error = reject("c = a + b\nreturn c\n", inputs={"a": range(3)})
    assert "'b'" in error.problem and "range(10)" in error.fix


def test_unknown_input_in_decorator() -> None:
    error = reject("c = a + b\nreturn c\n", inputs={"a": range(3), "b": range(3), "q": [1]})
    assert "'q'" in error.problem


def test_syntax_error_has_line() -> None:
    with pytest.raises(DeclarationError) as info:
        CausalModel.from_source("def m(a):\n    c = a +\n    return c\n", {"a": [1]}, file="f.py")
    assert info.value.line == 2


def test_decorator_reports_real_file_and_line() -> None:
    here = inspect.currentframe()
    assert here is not None
    start = here.f_lineno
    with pytest.raises(DeclarationError) as info:

        @causal_model(inputs={"a": range(3)})
        def bad(a):  # type: ignore[no-untyped-def]
            b = a + 1
            if b:  # this is line start + 6
                pass
            return b

    assert info.value.file == __file__
    assert info.value.line == start + 6


def test_returned_expression_becomes_output_variable() -> None:
    model = CausalModel.from_source(
        "def m(a, b):\n    c = a + b\n    return c * 2\n", {"a": range(3), "b": range(3)}
    )
    assert model.outputs == ("output",)
    assert model.parents["output"] == ("c",)
    assert model.run({"a": 1, "b": 2})["output"] == 6


def test_conditional_expression_and_helpers_allowed() -> None:
    def double(x: int) -> int:
        return 2 * x

    @causal_model(inputs={"a": range(4), "b": [True, False]})
    def m(a, b):  # type: ignore[no-untyped-def]
        c = double(a) if b else -a
        return c

    assert m(3, True) == 6 and m(3, False) == -3
    assert m.parents["c"] == ("a", "b")


def test_domains_from_annotations() -> None:
    @causal_model
    def m(a: range(3), b: bool, c: Literal["x", "y"]):  # type: ignore[valid-type,no-untyped-def]
        d = (a if b else 0, c)
        return d

    assert m.domain("a") == (0, 1, 2)
    assert m.domain("b") == (False, True)
    assert m.domain("c") == ("x", "y")


def _noisy(x: int) -> float:
    return x + random.random()


def _calls_noisy(x: int) -> float:
    return _noisy(x)


def _numpy_noise(x: int) -> float:
    return x + float(np.random.rand())


def _pure(x: int) -> int:
    return abs(x) + 1


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("c = _noisy(a)", "random module"),
        ("c = _calls_noisy(a)", "through _noisy"),
        ("c = _numpy_noise(a)", "numpy.random"),
        ("c = random.randint(0, a)", "random"),
        ("c = np.random.rand() + a", "numpy.random"),
        ("c = RNG.integers(a + 1)", "random generator"),
    ],
)
def test_randomness_is_rejected_with_the_fix(body: str, needle: str) -> None:
    namespace = {
        "_noisy": _noisy,
        "_calls_noisy": _calls_noisy,
        "_numpy_noise": _numpy_noise,
        "random": random,
        "np": np,
        "RNG": np.random.default_rng(0),
    }
    with pytest.raises(DeclarationError) as info:
        CausalModel.from_source(
            f"def model(a):\n    {body}\n    return c\n", {"a": range(3)}, namespace
        )
    assert needle in info.value.problem and "input variable" in info.value.fix
    assert info.value.line == 2


def test_pure_helpers_and_numpy_functions_are_accepted() -> None:
    model = CausalModel.from_source(
        "def model(a):\n    c = _pure(a) + int(np.abs(a))\n    return c\n",
        {"a": range(3)},
        {"_pure": _pure, "np": np},
    )
    assert model.run({"a": 2})["c"] == 5
