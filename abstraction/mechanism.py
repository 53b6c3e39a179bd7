"""Mechanisms: how one variable of a causal model is computed from its parents.

A mechanism has two faces. ``fn`` computes one example with exact Python semantics
(what the researcher wrote). ``evaluate_batch`` computes a whole column of examples
at once, which is what makes million-pair counterfactual datasets take a second, and
it never gives an answer ``fn`` would not. It takes one of three roads:

1. **numpy**, only where numpy provably means what Python means: every parent column
   is bool, int or float, and the expression uses only names, numeric constants,
   arithmetic, comparisons, ``and``/``or``/``not`` and ``a if c else b`` (rewritten to
   elementwise operations with Python's value semantics). Anything numpy would
   answer differently (integer overflow, a division by zero, branches of different
   types) abandons this road for the next one.
2. **once per distinct input**: the parents' values are factorized, ``fn`` runs once
   per distinct combination and the results are spread back. This is exact (it *is*
   ``fn``) and fast whenever parents take few values, as in finite domains: identity
   tests, ``None``, strings, tuples, subscripts and helper calls take this road.
3. **row by row**, when values cannot be hashed or nearly every row is distinct; a
   :class:`VectorizationWarning` names the mechanism once.

An exception in a mechanism is raised as :class:`MechanismError`, naming the
variable, the row and its parents' values, on every road.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from abstraction.errors import AbstractionError

__all__ = [
    "Mechanism",
    "MechanismError",
    "VectorizationWarning",
    "as_column",
    "choose",
    "to_python",
    "vector_namespace",
]


class VectorizationWarning(UserWarning):
    """A mechanism could not run on numpy columns and fell back to a per-row loop."""


_NATIVE = (bool, int, float, str)


def as_column(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Turn a list of per-example values into a 1-D numpy column.

    Values of one scalar type (all bool, all int, all float or all str) become a
    native column; anything else (mixed types, ``None``, tuples, vectors, objects)
    becomes a 1-D object array holding each value as it is, so ``1`` stays an int
    beside ``"Error"`` and ``None`` stays ``None``.
    """
    if isinstance(values, np.ndarray) and values.ndim == 1:
        return values
    items = list(values)
    plain = [to_python(v) for v in items]
    kinds = {type(v) for v in plain}
    if len(kinds) == 1 and next(iter(kinds)) in _NATIVE:
        try:
            native = np.asarray(plain)
        except (OverflowError, ValueError):
            native = None
        if native is not None and native.ndim == 1 and native.dtype != object:
            return native
    column = np.empty(len(items), dtype=object)
    for i, value in enumerate(items):
        column[i] = value
    return column


def choose(mask: np.ndarray, chosen: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``chosen`` where ``mask`` holds, else ``other``, keeping every value's Python type.

    ``np.where`` would convert an int column meeting a str column to strings; columns
    of different dtypes are combined as objects instead.
    """
    if chosen.dtype == other.dtype and chosen.dtype != object:
        return np.where(mask, chosen, other)
    out = other.astype(object)  # a copy, holding Python scalars
    picked = np.asarray(mask, dtype=bool)
    out[picked] = chosen.astype(object)[picked]
    return out


class _NotNumpy(Exception):
    """numpy would not give Python's answer here: evaluate once per distinct input."""


_NUMERIC = "bif"  # numpy kinds whose elementwise semantics match Python's here
_INT_SAFE = 2**31  # operands below this cannot overflow int64 in one +, -, * or //


def _kind(a: Any) -> str:
    if isinstance(a, (np.ndarray, np.generic)):
        return str(a.dtype.kind)
    if isinstance(a, bool):
        return "b"
    if isinstance(a, int):
        return "i"
    if isinstance(a, float):
        return "f"
    raise _NotNumpy


def _same_kind(*operands: Any) -> None:
    if len({_kind(a) for a in operands}) != 1:
        raise _NotNumpy  # Python keeps each branch's type; numpy would upcast


def _truthy(a: Any) -> Any:
    if isinstance(a, np.ndarray):
        return a.astype(bool)
    return bool(a)


def _where(test: Any, body: Any, orelse: Any) -> Any:
    _same_kind(body, orelse)
    return np.where(_truthy(test), body, orelse)


def _and(*operands: Any) -> Any:
    # Python's `a and b` is `b if a else a`, folded left to right.
    _same_kind(*operands)
    result = operands[0]
    for nxt in operands[1:]:
        result = np.where(_truthy(result), nxt, result)
    return result


def _or(*operands: Any) -> Any:
    _same_kind(*operands)
    result = operands[0]
    for nxt in operands[1:]:
        result = np.where(_truthy(result), result, nxt)
    return result


def _not(a: Any) -> Any:
    return np.logical_not(_truthy(a))


def _num(a: Any) -> Any:
    # Python does arithmetic on bools as ints (True + True == 2); numpy does logic.
    kind = _kind(a)
    if kind == "b":
        return np.asarray(a).astype(np.int64)
    if kind == "i" and np.max(np.abs(np.asarray(a)), initial=0) >= _INT_SAFE:
        raise _NotNumpy  # int64 would wrap silently where Python's ints grow
    return a


def _pow(a: Any, b: Any) -> Any:
    if _kind(a) in "bi" and _kind(b) in "bi":
        raise _NotNumpy  # int64 powers overflow silently, negative ones raise
    return np.power(a, b)


_HELPERS: dict[str, Any] = {
    "__abstraction_where__": _where,
    "__abstraction_and__": _and,
    "__abstraction_or__": _or,
    "__abstraction_not__": _not,
    "__abstraction_num__": _num,
    "__abstraction_pow__": _pow,
}

_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)


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
        if isinstance(node.op, ast.Pow):
            return _call("__abstraction_pow__", [node.left, node.right])
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


_SAFE_NODES = (
    ast.Expression,
    ast.Name,
    ast.Load,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.IfExp,
    *_ARITHMETIC,
    ast.Pow,
    ast.BitAnd,
    ast.BitOr,
    ast.BitXor,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.Invert,
    ast.And,
    ast.Or,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
)


def is_vectorizable(expr: ast.expr) -> bool:
    """Whether numpy can be trusted to compute ``expr`` as Python does on numeric columns.

    Only names, bool/int/float constants, arithmetic, comparisons (not ``is``/``in``),
    boolean operators and conditional expressions qualify. Subscripts mean something
    else on a column (``w[0]`` is the first row), calls may do anything, and ``is``,
    ``in``, strings and ``None`` have no elementwise numpy meaning; such expressions
    are evaluated once per distinct input instead.
    """
    for node in ast.walk(expr):
        if isinstance(node, ast.Constant):
            if type(node.value) not in (bool, int, float):
                return False
        elif not isinstance(node, _SAFE_NODES):
            return False
    return True


class MechanismError(AbstractionError, ValueError):
    """A mechanism raised an exception on some example."""


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

    def compute(self, parent_values: Sequence[Any], row: int | None = None) -> Any:
        """``fn`` on one example; an exception becomes a :class:`MechanismError`."""
        try:
            return self.fn(*parent_values)
        except Exception as error:
            where = f" on row {row}" if row is not None else ""
            shown = ", ".join(
                f"{p}={v!r}" for p, v in zip(self.parents, parent_values, strict=True)
            )
            raise MechanismError(
                f"variable {self.name!r} ({self.source}) raised {type(error).__name__}: "
                f"{error}{where} with {shown or 'no parents'}. Guard the mechanism "
                "(e.g. `x / y if y != 0 else 0`) or restrict the domains that reach it"
            ) from error

    def evaluate_batch(self, columns: Sequence[np.ndarray], n: int) -> np.ndarray:
        """Compute this mechanism for ``n`` examples given one column per parent.

        The result equals :meth:`evaluate_rows` on every row (see the module docstring
        for the three roads it may take).
        """
        if self.vector_fn is not None and all(c.dtype.kind in _NUMERIC for c in columns):
            try:
                with np.errstate(all="raise"), warnings.catch_warnings():
                    warnings.simplefilter("error", RuntimeWarning)
                    result = self.vector_fn(*columns)
            except Exception:
                result = None
            column = self._accept(result, n)
            if column is not None:
                return column
        distinct = _distinct(columns, n)
        if distinct is not None:
            codes, first = distinct
            if len(first) <= max(_FEW, n // 4):
                values = [
                    self.compute([to_python(c[i]) for c in columns], i) for i in first.tolist()
                ]
                spread: np.ndarray = as_column(values)[codes]
                return spread
        warnings.warn(
            f"mechanism {self.name!r} ({self.source}) evaluates one row at a time: its "
            "parents take nearly as many values as there are rows (or values that cannot "
            "be hashed), which is much slower. Give its parents finite domains to speed "
            "it up.",
            VectorizationWarning,
            stacklevel=3,
        )
        return self.evaluate_rows(columns, n)

    def evaluate_rows(self, columns: Sequence[np.ndarray], n: int) -> np.ndarray:
        """Compute this mechanism one example at a time (the reference semantics)."""
        rows = [self.compute([to_python(c[i]) for c in columns], i) for i in range(n)]
        return as_column([to_python(v) for v in rows])

    def _accept(self, result: Any, n: int) -> np.ndarray | None:
        if isinstance(result, (np.generic, bool, int, float)) and not self.parents:
            result = np.full(n, result)
        if (
            isinstance(result, np.ndarray)
            and result.ndim == 1
            and result.shape[0] == n
            and result.dtype.kind in _NUMERIC
        ):
            return result
        return None


_FEW = 4096
"""Up to this many distinct parent combinations are always evaluated once each."""


def _distinct(columns: Sequence[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per row, the code of its distinct combination of parent values; and each code's
    first row. ``None`` when some value cannot be hashed.

    Values equal in Python but of different types (``1``, ``1.0`` and ``True``) get
    different codes, because a mechanism may tell them apart.
    """
    if not columns:
        return np.zeros(n, dtype=np.int64), np.zeros(min(n, 1), dtype=np.int64)
    key = np.zeros(n, dtype=np.int64)
    size = 1
    try:
        for column in columns:
            parts = [column]
            if column.dtype == object:
                parts.append(np.frompyfunc(lambda v: type(v).__qualname__, 1, 1)(column))
            for part in parts:
                codes, uniques = pd.factorize(part, use_na_sentinel=False)
                if size * max(len(uniques), 1) >= 2**62:
                    key, _ = pd.factorize(key)  # keep the mixed-radix key in int64
                    size = int(key.max(initial=0)) + 1
                key = key * max(len(uniques), 1) + codes
                size *= max(len(uniques), 1)
    except TypeError:
        return None
    codes, _ = pd.factorize(key)
    # factorize numbers combinations in order of first appearance, so a row is its
    # combination's first exactly where the running maximum of the codes rises
    rising = np.diff(np.maximum.accumulate(codes), prepend=-1) > 0
    return codes, np.flatnonzero(rising)


def to_python(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (mechanisms see Python values)."""
    return value.item() if isinstance(value, np.generic) else value
