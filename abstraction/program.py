"""Reading a causal model from a plain Python function.

The function's body is straight-line code once :mod:`abstraction.unroll` has unrolled
bounded ``for`` loops and turned ``if`` statements into conditional expressions: each
assignment declares one variable, the names its expression reads are its parents, the
parameters are the inputs, and the returned name is the output. When the function
returns an expression rather than a name, that expression becomes a variable called
``output``. Anything else (``while`` loops, unbounded loops, reassignment, detectable
side effects, names read before they are assigned or never defined) is rejected here,
at declaration, with the file, the line and a fix.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import random
import textwrap
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from abstraction.errors import DeclarationError, nearest
from abstraction.mechanism import Mechanism, is_vectorizable, vector_namespace, vectorize_expression
from abstraction.unroll import unroll

__all__ = ["ParsedProgram", "function_namespace", "parse_function", "parse_source"]

OUTPUT_NAME = "output"


@dataclass(frozen=True)
class ParsedProgram:
    """The result of parsing a causal-model function."""

    name: str
    parameters: tuple[str, ...]
    annotations: dict[str, ast.expr]
    """Annotations of parameters and of annotated assignments (``b: Literal[0, 1] = ...``)."""
    mechanisms: tuple[Mechanism, ...]
    outputs: tuple[str, ...]
    source: str
    file: str
    line: int


_STATEMENT_PROBLEMS: dict[type, tuple[str, str]] = {
    ast.For: (
        "a `for` loop",
        "a causal model is straight-line code: unroll the loop into one assignment per "
        "variable, or move it into a helper function called from one assignment",
    ),
    ast.AsyncFor: ("an `async for` loop", "unroll the loop into one assignment per variable"),
    ast.While: (
        "a `while` loop",
        "a causal model is straight-line code: unroll the loop into one assignment per "
        "variable, or move it into a helper function called from one assignment",
    ),
    ast.If: (
        "an `if` statement",
        "use a conditional expression instead: `y = a if condition else b`",
    ),
    ast.Global: (
        "a `global` statement (a side effect)",
        "mechanisms must be pure: read module constants freely, but do not declare or "
        "modify globals",
    ),
    ast.Nonlocal: (
        "a `nonlocal` statement (a side effect)",
        "mechanisms must be pure: compute a new variable instead of modifying an outer one",
    ),
    ast.Delete: ("a `del` statement", "remove it: variables of a causal model are never deleted"),
    ast.Import: ("an import inside the model", "import at the top of the module instead"),
    ast.ImportFrom: ("an import inside the model", "import at the top of the module instead"),
    ast.FunctionDef: (
        "a nested function definition",
        "define helper functions outside the causal model and call them from an assignment",
    ),
    ast.AsyncFunctionDef: (
        "a nested function definition",
        "define helper functions outside the causal model",
    ),
    ast.ClassDef: ("a class definition", "define classes outside the causal model"),
    ast.With: ("a `with` statement", "move it into a helper function outside the model"),
    ast.AsyncWith: ("a `with` statement", "move it into a helper function outside the model"),
    ast.Try: ("a `try` statement", "move error handling into a helper function"),
    ast.Raise: ("a `raise` statement", "move validation into a helper function"),
    ast.Assert: ("an `assert` statement", "move validation into a helper function"),
    ast.Match: ("a `match` statement", "use a conditional expression or a helper function"),
    ast.AugAssign: (
        "an augmented assignment, which reassigns a name",
        "give the new value a new name: `total2 = total + x`",
    ),
}

_EXPRESSION_PROBLEMS: dict[type, tuple[str, str]] = {
    ast.NamedExpr: (
        "an assignment expression (`:=`), which hides a variable",
        "make it its own assignment statement",
    ),
    ast.Lambda: ("a lambda", "define a helper function outside the model and call it"),
    ast.ListComp: (
        "a comprehension (a hidden loop)",
        "move it into a helper function outside the model and call it",
    ),
    ast.SetComp: ("a comprehension (a hidden loop)", "move it into a helper function"),
    ast.DictComp: ("a comprehension (a hidden loop)", "move it into a helper function"),
    ast.GeneratorExp: ("a generator expression (a hidden loop)", "move it into a helper function"),
    ast.Yield: ("`yield`", "return the output variable instead"),
    ast.YieldFrom: ("`yield from`", "return the output variable instead"),
    ast.Await: ("`await`", "causal models are synchronous: remove it"),
}


class _Parser:
    def __init__(
        self, fn_node: ast.FunctionDef, file: str, first_line: int, namespace: Mapping[str, Any]
    ) -> None:
        self.node = fn_node
        self.file = file
        self.offset = first_line - 1
        self.namespace = dict(namespace)
        self.model = fn_node.name

    def error(self, node: ast.AST, problem: str, fix: str) -> DeclarationError:
        line = getattr(node, "lineno", self.node.lineno) + self.offset
        return DeclarationError(
            f"{problem} in causal model {self.model!r}", fix, file=self.file, line=line
        )

    def parameters(self) -> tuple[tuple[str, ...], dict[str, ast.expr]]:
        args = self.node.args
        if args.vararg is not None or args.kwarg is not None:
            raise self.error(
                self.node,
                "`*args`/`**kwargs` parameters",
                "name every input variable as its own parameter",
            )
        params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
        if not params:
            raise self.error(
                self.node, "a model without input parameters", "add one parameter per input"
            )
        annotations = {p.arg: p.annotation for p in params if p.annotation is not None}
        return tuple(p.arg for p in params), annotations

    def parse(
        self,
    ) -> tuple[tuple[str, ...], dict[str, ast.expr], list[Mechanism], tuple[str, ...]]:
        parameters, annotations = self.parameters()
        body = list(self.node.body)
        if body and _is_docstring(body[0]):
            body = body[1:]
        body = unroll(body, self.namespace, self.error)
        assigned_anywhere = _assigned_names(body)
        defined: list[str] = list(parameters)
        mechanisms: list[Mechanism] = []
        outputs: tuple[str, ...] | None = None
        for stmt in body:
            if outputs is not None:
                raise self.error(
                    stmt, "code after the `return` statement", "delete it or move it above `return`"
                )
            if isinstance(stmt, ast.Pass):
                continue
            if isinstance(stmt, ast.Return):
                outputs = self.parse_return(stmt, defined, assigned_anywhere, mechanisms)
                continue
            target, value = self.assignment(stmt)
            if target in defined:
                kind = "input" if target in parameters else "variable"
                raise self.error(
                    stmt,
                    f"reassigns {kind} `{target}`",
                    f"each variable is assigned once: give the new value a new name, e.g. "
                    f"`{target}_2 = ...`",
                )
            mechanisms.append(self.mechanism(target, value, stmt, defined, assigned_anywhere))
            defined.append(target)
            if isinstance(stmt, ast.AnnAssign):
                annotations[target] = stmt.annotation
        if outputs is None:
            raise self.error(
                self.node,
                "no `return` statement",
                "end the model with `return <output variable>`",
            )
        return parameters, annotations, mechanisms, outputs

    def assignment(self, stmt: ast.stmt) -> tuple[str, ast.expr]:
        if isinstance(stmt, ast.Assign):
            if len(stmt.targets) != 1:
                raise self.error(
                    stmt,
                    "a chained assignment (`a = b = ...`)",
                    "assign each variable on its own line",
                )
            target = stmt.targets[0]
            value = stmt.value
        elif isinstance(stmt, ast.AnnAssign):
            if stmt.value is None:
                raise self.error(
                    stmt, "an annotation without a value", "assign a value: `name: type = expr`"
                )
            target, value = stmt.target, stmt.value
        elif isinstance(stmt, ast.Expr):
            raise self.error(
                stmt,
                "a statement whose value is discarded (a call like this can only have side "
                "effects)",
                "assign its value to a variable, or remove it",
            )
        else:
            problem, fix = _STATEMENT_PROBLEMS.get(
                type(stmt), (f"a `{type(stmt).__name__}` statement", "use assignments only")
            )
            raise self.error(stmt, problem, fix)
        if isinstance(target, (ast.Attribute, ast.Subscript)):
            what = "an attribute" if isinstance(target, ast.Attribute) else "an item"
            raise self.error(
                stmt,
                f"assignment to {what} (a side effect)",
                "mechanisms must be pure: assign the value to a new variable name instead",
            )
        if not isinstance(target, ast.Name):
            raise self.error(
                stmt,
                "an unpacking assignment (several variables at once)",
                "assign each variable on its own line: `a = ...` then `b = ...`",
            )
        return target.id, value

    def reads(
        self, expr: ast.expr, defined: list[str], assigned_anywhere: set[str]
    ) -> tuple[str, ...]:
        for node in ast.walk(expr):
            problem = _EXPRESSION_PROBLEMS.get(type(node))
            if problem is not None:
                raise self.error(node, *problem)
            if isinstance(node, ast.Attribute):
                self.check_attribute(node)
        parents: list[str] = []
        for node in _names_in_order(expr):
            name = node.id
            if name in defined:
                if name not in parents:
                    parents.append(name)
            elif name in assigned_anywhere:
                raise self.error(
                    node,
                    f"reads `{name}` before it is assigned",
                    f"move the assignment of `{name}` above this line",
                )
            elif name in self.namespace:
                noise = nondeterministic(self.namespace[name])
                if noise is not None:
                    raise self.random_read(node, name, noise)
            else:
                hint = nearest(
                    name, [*defined, *(k for k in self.namespace if not k.startswith("_"))]
                )
                raise self.error(
                    node,
                    f"reads `{name}`, which is not defined",
                    f"define `{name}` (an input parameter, an earlier variable, or a module-level "
                    f"constant or helper); {hint}",
                )
        return tuple(parents)

    def check_attribute(self, node: ast.Attribute) -> None:
        """Reject ``np.random.rand()``-like reads of a random module through a name."""
        chain: list[str] = []
        base: ast.expr = node
        while isinstance(base, ast.Attribute):
            chain.insert(0, base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in self.namespace:
            return
        value = self.namespace[base.id]
        for attribute in chain:
            value = getattr(value, attribute, None)
            noise = nondeterministic(value)
            if noise is not None:
                raise self.random_read(node, ast.unparse(node), noise)

    def random_read(self, node: ast.AST, what: str, noise: str) -> DeclarationError:
        """The rejection of a mechanism that reads ``what``, which draws on ``noise``."""
        return self.error(
            node,
            f"reads `{what}`, which draws on {noise}: a mechanism must give one output for "
            "one input",
            "declare the noise as an input variable (e.g. a parameter `u` with a finite "
            "domain, sampled like the other inputs) and use it instead",
        )

    def mechanism(
        self,
        target: str,
        value: ast.expr,
        stmt: ast.stmt,
        defined: list[str],
        assigned_anywhere: set[str],
    ) -> Mechanism:
        parents = self.reads(value, defined, assigned_anywhere)
        source = f"{target} = {ast.unparse(value)}"
        line = stmt.lineno + self.offset
        fn = self.compile(parents, value, line, vectorized=False)
        vector_fn = (
            self.compile(parents, vectorize_expression(value), line, vectorized=True)
            if is_vectorizable(value)
            else None
        )
        return Mechanism(
            name=target,
            parents=parents,
            fn=fn,
            vector_fn=vector_fn,
            source=source,
            kind="program",
            file=self.file,
            line=line,
        )

    def parse_return(
        self,
        stmt: ast.Return,
        defined: list[str],
        assigned_anywhere: set[str],
        mechanisms: list[Mechanism],
    ) -> tuple[str, ...]:
        value = stmt.value
        if value is None or (isinstance(value, ast.Constant) and value.value is None):
            raise self.error(
                stmt, "`return` without an output", "return the output variable: `return out`"
            )
        names: list[ast.expr] = list(value.elts) if isinstance(value, ast.Tuple) else [value]
        if all(isinstance(n, ast.Name) for n in names):
            outputs = tuple(n.id for n in names if isinstance(n, ast.Name))
            computed = {m.name for m in mechanisms}
            for name, node in zip(outputs, names, strict=True):
                if name in computed:
                    continue
                if name in defined:
                    raise self.error(
                        node,
                        f"returns input `{name}` unchanged",
                        "the output must be computed: assign it in the body, e.g. "
                        f"`out = f({name})`, and return that",
                    )
                self.reads(node, defined, assigned_anywhere)
                raise self.error(
                    node,
                    f"returns `{name}`, which is not a variable of the model",
                    "return a name assigned in the body",
                )
            return outputs
        if isinstance(value, ast.Tuple):
            raise self.error(
                stmt,
                "returns a tuple containing expressions",
                "assign each output to a variable and return the names: `return a, b`",
            )
        if OUTPUT_NAME in defined:
            raise self.error(
                stmt,
                f"returns an expression, which would be named `{OUTPUT_NAME}`, but "
                f"`{OUTPUT_NAME}` is already a variable",
                f"return `{OUTPUT_NAME}` itself, or assign the expression to a new name and "
                "return that name",
            )
        mechanisms.append(self.mechanism(OUTPUT_NAME, value, stmt, defined, assigned_anywhere))
        defined.append(OUTPUT_NAME)
        return (OUTPUT_NAME,)

    def compile(
        self, parents: tuple[str, ...], expr: ast.expr, line: int, *, vectorized: bool
    ) -> Callable[..., Any]:
        lam = ast.Lambda(
            args=ast.arguments(
                posonlyargs=[],
                args=[ast.arg(arg=p) for p in parents],
                kwonlyargs=[],
                kw_defaults=[],
                defaults=[],
            ),
            body=expr,
        )
        tree = ast.Expression(body=lam)
        ast.fix_missing_locations(tree)
        for node in ast.walk(tree):
            if hasattr(node, "lineno"):
                # every node on the statement's line, so tracebacks name it; columns reset
                # too, or a wrapped expression ending left of its start is an invalid range
                setattr(node, "lineno", line)  # noqa: B010 - not every AST node declares it
                setattr(node, "end_lineno", line)  # noqa: B010
                setattr(node, "col_offset", 0)  # noqa: B010
                setattr(node, "end_col_offset", 0)  # noqa: B010
        code = compile(tree, self.file, "eval")
        namespace = vector_namespace(self.namespace) if vectorized else self.namespace
        fn: Callable[..., Any] = eval(code, namespace)
        return fn


_NOISY_MODULES = ("random", "secrets", "time", "uuid", "numpy.random")


def nondeterministic(obj: Any, depth: int = 0) -> str | None:
    """What makes ``obj`` (a name a mechanism reads) give different outputs for one input.

    Returns a description (``"the random module"``) or ``None``. Looks at modules,
    functions of the random-number, time and uuid modules, bound methods of random
    generators, and, three calls deep, the globals that helper functions read.
    """
    if isinstance(obj, types.ModuleType):
        name = obj.__name__
        return f"the {name} module" if name.startswith(_NOISY_MODULES) else None
    generators = (random.Random, np.random.RandomState, np.random.Generator)
    if isinstance(obj, generators):
        return f"a random generator ({type(obj).__name__})"
    owner = getattr(obj, "__self__", None)
    if isinstance(owner, generators):
        return f"a random generator ({getattr(obj, '__name__', 'method')})"
    module = getattr(obj, "__module__", None) or ""
    if callable(obj) and module.startswith(_NOISY_MODULES):
        return f"{module}.{getattr(obj, '__name__', '?')}"
    if isinstance(obj, types.FunctionType) and depth < 3:
        code_objects = [obj.__code__]
        names: set[str] = set()
        while code_objects:
            code = code_objects.pop()
            names.update(code.co_names)
            code_objects.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        for name in sorted(names):
            if name in obj.__globals__:
                value = obj.__globals__[name]
                found = nondeterministic(value, depth + 1)
                if found is None and isinstance(value, types.ModuleType):
                    # `np.random.rand()` reads `np`, then its attribute `random`
                    for attribute in sorted(names):
                        found = nondeterministic(getattr(value, attribute, None), depth + 1)
                        if found is not None:
                            break
                if found is not None:
                    return f"{found} (through {obj.__name__})"
    return None


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _assigned_names(body: list[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for stmt in body:
        targets: list[ast.expr] = []
        if isinstance(stmt, ast.Assign):
            targets = list(stmt.targets)
        elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
            targets = [stmt.target]
        for target in targets:
            names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def _names_in_order(expr: ast.expr) -> list[ast.Name]:
    found = [n for n in ast.walk(expr) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


def function_namespace(fn: Callable[..., Any]) -> dict[str, Any]:
    """Builtins, module globals and closure variables visible to ``fn``."""
    namespace: dict[str, Any] = dict(vars(builtins))
    namespace.update(getattr(fn, "__globals__", {}))
    closure = inspect.getclosurevars(fn)
    namespace.update(closure.nonlocals)
    return namespace


def _find_function(tree: ast.Module, file: str, line: int) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            return node
        if isinstance(node, ast.AsyncFunctionDef):
            raise DeclarationError(
                "an `async def` causal model",
                "declare the model with a plain `def`",
                file=file,
                line=line + node.lineno - 1,
            )
    raise DeclarationError(
        "no function definition found in the causal model source",
        "pass the source of one `def` whose body is straight-line code",
        file=file,
        line=line,
    )


def parse_source(
    source: str, namespace: Mapping[str, Any], *, file: str = "<string>", first_line: int = 1
) -> ParsedProgram:
    """Parse the source of one function into mechanisms.

    Args:
        source: text containing one ``def`` (decorators are allowed and ignored).
        namespace: the names the mechanisms may read besides variables (helpers,
            constants, builtins).
        file: the file the source comes from, for error messages.
        first_line: the line of ``file`` where ``source`` starts.
    """
    source = textwrap.dedent(source)
    try:
        tree = ast.parse(source, filename=file)
    except SyntaxError as exc:
        raise DeclarationError(
            f"syntax error: {exc.msg}",
            "fix the Python syntax of the causal model",
            file=file,
            line=(exc.lineno or 1) + first_line - 1,
        ) from None
    node = _find_function(tree, file, first_line)
    parser = _Parser(node, file, first_line, namespace)
    parameters, annotations, mechanisms, outputs = parser.parse()
    return ParsedProgram(
        name=node.name,
        parameters=parameters,
        annotations=annotations,
        mechanisms=tuple(mechanisms),
        outputs=outputs,
        source=source,
        file=file,
        line=node.lineno + first_line - 1,
    )


def parse_function(fn: Callable[..., Any]) -> ParsedProgram:
    """Parse a Python function object into mechanisms (see :func:`parse_source`)."""
    name = getattr(fn, "__name__", repr(fn))
    try:
        lines, first_line = inspect.getsourcelines(fn)
        file = inspect.getsourcefile(fn) or "<unknown>"
    except (OSError, TypeError):
        raise DeclarationError(
            f"cannot read the source of causal model {name!r}",
            "define the model with `def` in a file, or build it from text with "
            "`CausalModel.from_source(...)` or with `CausalModel.builder()`",
        ) from None
    if name == "<lambda>":
        raise DeclarationError(
            "a lambda cannot be a causal model",
            "write the model as a `def` with one assignment per variable",
            file=file,
            line=first_line,
        )
    return parse_source("".join(lines), function_namespace(fn), file=file, first_line=first_line)
