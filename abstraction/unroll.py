"""Compiling bounded loops and branches away: a model body as straight-line assignments.

Causal models are straight-line code, but the field's tasks are often written with a
loop over entities or an ``if`` on a case. This module rewrites a function body
before it is parsed:

* ``for i in range(K):`` (``K`` a constant or module-level int) and ``for x in
  (a, b, c):`` over a literal tuple are unrolled. Inside the loop, assignments to
  ``name[i]`` (any constant index after substitution, nested loops give
  ``name[i][j]``) declare indexed variables ``name_0``, ``name_1``, ... (``name_0_1``
  for two indices); reads of ``name[<constant>]`` anywhere after them read those
  variables, and a bare ``name`` reads the tuple ``(name_0, name_1, ...)``, which may
  be indexed by another variable (``name[k]``).
* ``if`` / ``elif`` / ``else`` statements whose branches all assign the same names
  become one conditional expression per name: ``y = a if c else (b if d else e)``.
  A branch may use names it assigned itself; they are substituted.

What is still rejected (by the parser, with file, line and a fix): ``while`` loops,
loops whose bound is not a constant, ``break``/``continue``, a branch that assigns a
name another branch does not, and anything that is not an assignment.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable, Mapping
from typing import Any

from abstraction.errors import DeclarationError

__all__ = ["unroll"]

Raise = Callable[[ast.AST, str, str], DeclarationError]


def unroll(body: list[ast.stmt], namespace: Mapping[str, Any], error: Raise) -> list[ast.stmt]:
    """``body`` with loops unrolled, branches turned into conditional expressions and
    indexed names resolved; ``error(node, problem, fix)`` builds the rejections."""
    plain = {
        t.id
        for stmt in body
        for node in ast.walk(stmt)
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(t, ast.Name)
    }
    return _Unroller(namespace, error, plain).body(body, {})


class _Unroller:
    def __init__(self, namespace: Mapping[str, Any], error: Raise, plain: set[str]) -> None:
        self.namespace = namespace
        self.error = error
        self.plain = plain  # names assigned whole somewhere: never indexed targets
        self.arrays: dict[str, list[str]] = {}  # indexed base name -> declared names

    # -- statements ---------------------------------------------------------------------

    def body(self, stmts: list[ast.stmt], constants: dict[str, Any]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for stmt in stmts:
            if isinstance(stmt, ast.For):
                out.extend(self.loop(stmt, constants))
            elif isinstance(stmt, ast.If):
                out.extend(self.branch(stmt, constants))
            elif isinstance(stmt, (ast.Break, ast.Continue)):
                raise self.error(
                    stmt,
                    f"`{type(stmt).__name__.lower()}` in a loop",
                    "loops are unrolled whole: compute each iteration's values, and choose "
                    "between them with a conditional expression",
                )
            else:
                out.append(self.statement(stmt, constants))
        return out

    def statement(self, stmt: ast.stmt, constants: dict[str, Any]) -> ast.stmt:
        stmt = copy.deepcopy(stmt)
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for i, target in enumerate(targets):
                name = self.indexed_target(target, constants)
                if name is not None:
                    new = ast.copy_location(ast.Name(id=name, ctx=ast.Store()), target)
                    if isinstance(stmt, ast.Assign):
                        stmt.targets[i] = new
                    else:
                        stmt.target = new
            if stmt.value is not None:
                stmt.value = self.expression(stmt.value, constants)
        elif isinstance(stmt, ast.Return) and stmt.value is not None:
            stmt.value = self.expression(stmt.value, constants)
        return stmt

    def loop(self, stmt: ast.For, constants: dict[str, Any]) -> list[ast.stmt]:
        if stmt.orelse:
            raise self.error(stmt, "a `for ... else`", "remove the `else` block")
        if not isinstance(stmt.target, ast.Name):
            raise self.error(
                stmt, "a loop that unpacks several names", "loop over one name: `for i in ...`"
            )
        values = self.bounded(stmt.iter, constants)
        if values is None:
            raise self.error(
                stmt,
                "a loop whose length is not known at declaration",
                "loop over `range(K)` with a constant K, or over a literal tuple of "
                "constants, so it can be unrolled",
            )
        out: list[ast.stmt] = []
        for value in values:
            out.extend(self.body(stmt.body, {**constants, stmt.target.id: value}))
        return out

    def bounded(self, it: ast.expr, constants: dict[str, Any]) -> list[Any] | None:
        try:
            value = eval(
                compile(ast.Expression(self.expression(it, constants)), "<loop>", "eval"),
                {**dict(self.namespace), **constants},
            )
        except Exception:
            return None
        if isinstance(value, range) or (
            isinstance(value, tuple) and all(_is_constant(v) for v in value)
        ):
            return list(value)
        return None

    def branch(self, stmt: ast.If, constants: dict[str, Any]) -> list[ast.stmt]:
        arms: list[tuple[ast.expr | None, list[ast.stmt]]] = []
        node: ast.stmt | None = stmt
        while isinstance(node, ast.If):
            arms.append((node.test, node.body))
            if len(node.orelse) == 1 and isinstance(node.orelse[0], ast.If):
                node = node.orelse[0]
            else:
                if node.orelse:
                    arms.append((None, node.orelse))
                node = None
        if arms[-1][0] is not None:
            raise self.error(
                stmt,
                "an `if` without an `else`",
                "add an `else` branch assigning the same names (a variable needs a value "
                "in every case)",
            )
        assigned = [self.assignments(self.body(b, constants)) for _, b in arms]
        names = list(assigned[0])
        for (_, b), values in zip(arms, assigned, strict=True):
            if set(values) != set(names):
                missing = sorted(set(names) ^ set(values))
                raise self.error(
                    b[0],
                    f"branches of one `if` assign different names ({', '.join(missing)})",
                    "assign the same names in every branch, so each has a value in every case",
                )
        out: list[ast.stmt] = []
        for name in names:
            value: ast.expr = assigned[-1][name][1]
            for (test, _), values in zip(reversed(arms[:-1]), reversed(assigned[:-1]), strict=True):
                assert test is not None
                value = ast.IfExp(
                    test=self.expression(test, constants), body=values[name][1], orelse=value
                )
            annotation = assigned[0][name][0]
            target = ast.Name(id=name, ctx=ast.Store())
            new: ast.stmt
            if annotation is not None:
                new = ast.AnnAssign(target=target, annotation=annotation, value=value, simple=1)
            else:
                new = ast.Assign(targets=[target], value=value)
            out.append(ast.fix_missing_locations(ast.copy_location(new, stmt)))
        return out

    def assignments(self, stmts: list[ast.stmt]) -> dict[str, tuple[ast.expr | None, ast.expr]]:
        """A branch's names -> (annotation, expression), earlier names substituted."""
        found: dict[str, tuple[ast.expr | None, ast.expr]] = {}
        for stmt in stmts:
            value: ast.expr | None = None
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target, annotation, value = stmt.targets[0], None, stmt.value
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                target, annotation, value = stmt.target, stmt.annotation, stmt.value
            else:
                raise self.error(
                    stmt,
                    "a statement other than an assignment inside an `if`",
                    "branches may only assign variables",
                )
            if not isinstance(target, ast.Name):
                raise self.error(
                    stmt, "an assignment to something other than a name", "assign a name"
                )
            if target.id in found:
                raise self.error(
                    stmt,
                    f"reassigns `{target.id}` inside one branch",
                    "assign each name once per branch",
                )
            assert value is not None
            substituted = _Substitute({k: v for k, (_, v) in found.items()}).visit(
                copy.deepcopy(value)
            )
            found[target.id] = (annotation, substituted)
        return found

    # -- expressions ---------------------------------------------------------------------

    def indexed_target(self, target: ast.expr, constants: dict[str, Any]) -> str | None:
        if not isinstance(target, ast.Subscript):
            return None
        base, indices = self.indices(target, constants)
        if base is not None and base in self.plain:
            raise self.error(
                target,
                f"assignment to an item of `{base}`, which is assigned whole elsewhere (a "
                "side effect)",
                "mechanisms must be pure: assign the value to a new variable name instead, "
                "or declare indexed variables only with `name[i] = ...`",
            )
        if base is None:
            raise self.error(
                target,
                "an item assignment whose index is not a constant",
                "inside `for i in range(K)`, assign `name[i] = ...`: the index must be known "
                "when the loop is unrolled",
            )
        name = "_".join([base, *(str(i) for i in indices)])
        declared = self.arrays.setdefault(base, [])
        if name not in declared:  # each branch of an `if` declares it again
            declared.append(name)
        return name

    def indices(self, node: ast.expr, constants: dict[str, Any]) -> tuple[str | None, list[int]]:
        indices: list[int] = []
        while isinstance(node, ast.Subscript):
            index = self.constant(node.slice, constants)
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                return None, []
            indices.insert(0, index)
            node = node.value
        if not isinstance(node, ast.Name):
            return None, []
        return node.id, indices

    def constant(self, expr: ast.expr, constants: dict[str, Any]) -> Any:
        names = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}
        if not names <= set(constants) | {
            k for k, v in self.namespace.items() if isinstance(v, int)
        }:
            return None
        try:
            return eval(
                compile(ast.Expression(copy.deepcopy(expr)), "<index>", "eval"),
                {**{k: v for k, v in self.namespace.items() if isinstance(v, int)}, **constants},
            )
        except Exception:
            return None

    def expression(self, expr: ast.expr, constants: dict[str, Any]) -> ast.expr:
        unroller = self

        class Rewrite(ast.NodeTransformer):
            def visit_Name(self, node: ast.Name) -> ast.AST:
                if node.id in constants and isinstance(node.ctx, ast.Load):
                    return ast.copy_location(ast.Constant(constants[node.id]), node)
                if node.id in unroller.arrays and isinstance(node.ctx, ast.Load):
                    elts: list[ast.expr] = [
                        ast.Name(id=n, ctx=ast.Load()) for n in unroller.arrays[node.id]
                    ]
                    return ast.copy_location(ast.Tuple(elts=elts, ctx=ast.Load()), node)
                return node

            def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
                base, indices = unroller.indices(node, constants)
                if base is not None and base in unroller.arrays:
                    name = "_".join([base, *(str(i) for i in indices)])
                    if name in unroller.arrays[base]:
                        return ast.copy_location(ast.Name(id=name, ctx=ast.Load()), node)
                self.generic_visit(node)
                return node

            def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
                # a test on loop constants only (`e0 if g == 0 else e1`) picks its branch
                # now, so the unrolled variable reads only what it really uses
                self.generic_visit(node)
                if not any(isinstance(n, ast.Name) for n in ast.walk(node.test)):
                    try:
                        test = eval(compile(ast.Expression(node.test), "<test>", "eval"), {})
                    except Exception:
                        return node
                    return node.body if test else node.orelse
                return node

        rewritten = Rewrite().visit(copy.deepcopy(expr))
        assert isinstance(rewritten, ast.expr)
        return ast.fix_missing_locations(rewritten)


class _Substitute(ast.NodeTransformer):
    def __init__(self, values: dict[str, ast.expr]) -> None:
        self.values = values

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id in self.values:
            return copy.deepcopy(self.values[node.id])
        return node


def _is_constant(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, tuple))
