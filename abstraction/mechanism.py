"""Mechanisms: how one variable of a causal model is computed from its parents.

A mechanism has two faces. ``fn`` computes one example with exact Python semantics
(what the researcher wrote). ``evaluate_batch`` computes a whole column of examples
at once with numpy, which is what makes million-pair counterfactual datasets take a
second. Program mechanisms get their vectorized form by rewriting the expression's
syntax tree (``a if c else b`` becomes an elementwise select, ``and``/``or``/``not``
become elementwise truth tests with Python's value semantics); sympy mechanisms are
lambdified. When a mechanism refuses arrays (a helper with an ``if`` inside, a
subscript, a call returning a scalar), evaluation falls back to a per-row loop and
warns once, naming the mechanism.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Mechanism", "VectorizationWarning", "as_column", "vector_namespace"]


class VectorizationWarning(UserWarning):
    """A mechanism could not run on numpy columns and fell back to a per-row loop."""


def as_column(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Turn a list of per-example values into a 1-D numpy column.

    Scalars become a native dtype (bool, int, float, str); anything else (tuples,
    vectors, objects) becomes a 1-D object array holding one value per example.
    """
    if isinstance(values, np.ndarray) and values.ndim == 1:
        return values
    try:
        native = np.asarray(values)
    except (ValueError, TypeError):
        native = None
    if native is not None and native.ndim == 1 and native.dtype != object:
        return native
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column


def _truthy(a: Any) -> Any:
    if isinstance(a, np.ndarray):
        if a.dtype == object:
            return np.asarray(np.frompyfunc(bool, 1, 1)(a), dtype=bool)
        return a.astype(bool)
    return bool(a)


def _where(test: Any, body: Any, orelse: Any) -> Any:
    return np.where(_truthy(test), body, orelse)


def _and(*operands: Any) -> Any:
    # Python's `a and b` is `b if a else a`, folded left to right.
    result = operands[0]
    for nxt in operands[1:]:
        result = np.where(_truthy(result), nxt, result)
    return result


def _or(*operands: Any) -> Any:
    result = operands[0]
    for nxt in operands[1:]:
        result = np.where(_truthy(result), result, nxt)
    return result


def _not(a: Any) -> Any:
    return np.logical_not(_truthy(a))


def _num(a: Any) -> Any:
    # Python does arithmetic on bools as ints (True + True == 2); numpy does logic.
    if isinstance(a, (np.ndarray, np.bool_)) and a.dtype == bool:
        return a.astype(np.int64)
    return a


_HELPERS: dict[str, Any] = {
    "__abstraction_where__": _where,
    "__abstraction_and__": _and,
    "__abstraction_or__": _or,
    "__abstraction_not__": _not,
    "__abstraction_num__": _num,
}

_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)


def vector_namespace(namespace: dict[str, Any]) -> dict[str, Any]:
    """The namespace a rewritten (vectorized) expression is evaluated in."""
    return {**namespace, **_HELPERS}


def _call(name: str, args: list[ast.expr]) -> ast.Call:
    return ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=args, keywords=[])


class _Vectorizer(ast.NodeTransformer):
    """Rewrite an expression so that it runs elementwise on numpy columns."""

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        self.generic_visit(node)
        return _call("__abstraction_where__", [node.test, node.body, node.orelse])

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        name = "__abstraction_and__" if isinstance(node.op, ast.And) else "__abstraction_or__"
        return _call(name, list(node.values))

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            return _call("__abstraction_not__", [node.operand])
        node.operand = _call("__abstraction_num__", [node.operand])
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, _ARITHMETIC):
            node.left = _call("__abstraction_num__", [node.left])
            node.right = _call("__abstraction_num__", [node.right])
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if len(node.ops) == 1:
            return node
        # a < b < c  ==  (a < b) and (b < c)
        parts: list[ast.expr] = []
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            parts.append(ast.Compare(left=left, ops=[op], comparators=[right]))
            left = right
        return _call("__abstraction_and__", parts)


def vectorize_expression(expr: ast.expr) -> ast.expr:
    """Return a copy of ``expr`` rewritten to run elementwise on numpy arrays."""
    import copy

    rewritten = _Vectorizer().visit(copy.deepcopy(expr))
    assert isinstance(rewritten, ast.expr)
    return ast.fix_missing_locations(rewritten)


_NOT_VECTORIZABLE = (ast.Subscript, ast.Attribute, ast.Starred, ast.JoinedStr)


def is_vectorizable(expr: ast.expr) -> bool:
    """Whether an expression can be trusted to mean the same thing on columns.

    Subscripts and attribute access mean something else on a column (``w[0]`` is the
    first row, not the first component of each value), so such expressions are
    evaluated per row.
    """
    return not any(isinstance(node, _NOT_VECTORIZABLE) for node in ast.walk(expr))


@dataclass(frozen=True)
class Mechanism:
    """How one variable is computed from its parents.

    Attributes:
        name: the variable this mechanism computes.
        parents: the variables it reads, in the order ``fn`` takes them.
        fn: computes one example, with exact Python semantics.
        vector_fn: computes a whole column at once, or ``None`` when the mechanism
            must run per row.
        source: the mechanism as the user wrote it (``"wx = w == x"``).
        kind: ``"program"``, ``"callable"`` or ``"sympy"``.
        latex: a LaTeX rendering of the equation, for sympy mechanisms.
        unicode: a Unicode rendering of the equation, for sympy mechanisms.
        file: the file that declared the mechanism, when known.
        line: the line that declared the mechanism, when known.
    """

    name: str
    parents: tuple[str, ...]
    fn: Callable[..., Any] = field(repr=False, compare=False)
    vector_fn: Callable[..., Any] | None = field(repr=False, compare=False)
    source: str
    kind: str = "program"
    latex: str | None = None
    unicode: str | None = None
    file: str | None = None
    line: int | None = None

    def __call__(self, *parent_values: Any) -> Any:
        return self.fn(*parent_values)

    def evaluate_batch(self, columns: Sequence[np.ndarray], n: int) -> np.ndarray:
        """Compute this mechanism for ``n`` examples given one column per parent."""
        if self.vector_fn is not None:
            try:
                with np.errstate(all="raise"), warnings.catch_warnings():
                    warnings.simplefilter("error", RuntimeWarning)
                    result = self.vector_fn(*columns)
            except Exception:
                result = None
            column = self._accept(result, n)
            if column is not None:
                return column
        warnings.warn(
            f"mechanism {self.name!r} ({self.source}) does not run on numpy arrays; "
            "evaluating it one row at a time, which is much slower. Write it with "
            "vectorizable operations (comparisons, arithmetic, `a if c else b`) to "
            "speed it up.",
            VectorizationWarning,
            stacklevel=3,
        )
        return self.evaluate_rows(columns, n)

    def evaluate_rows(self, columns: Sequence[np.ndarray], n: int) -> np.ndarray:
        """Compute this mechanism one example at a time (the reference semantics)."""
        rows = [self.fn(*(column[i] for column in columns)) for i in range(n)]
        return as_column([_to_python(v) for v in rows])

    def _accept(self, result: Any, n: int) -> np.ndarray | None:
        if isinstance(result, np.ndarray) and result.ndim == 1 and result.shape[0] == n:
            return result
        if not self.parents and not isinstance(result, (np.ndarray, list, tuple)):
            return as_column([result] * n)
        return None


def _to_python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
