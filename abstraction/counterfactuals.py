"""Factual and counterfactual datasets of a causal model, as pandas DataFrames.

Everything is vectorized: inputs are drawn as numpy columns and mechanisms run over
whole columns, so a million base/source pairs take about a second.

A counterfactual dataset has one row per (base, sources) pair:

=====================  ================================================================
column                 meaning
=====================  ================================================================
``base_id``            an integer identifying the base input (pairs sharing a base share
                       it; statistics cluster on it, splits never divide it)
``base.<input>``       the base input
``source.<var>.<in>``  the source input that variable ``<var>`` takes its value from; on
                       rows that do not intervene on ``<var>`` it equals the base input
``do.<var>``           whether this row intervenes on ``<var>``
``origin.<var>``       for a cross-variable interchange (``"answer<-s1"``): the variable
                       whose value on the source ``<var>`` takes (only when one is asked)
``intervened``         the intervention set, e.g. ``"wx"`` or ``"wx+yz"``
``value.<var>``        the value ``<var>`` takes in the counterfactual run (on rows that
                       intervene on it: the value it, or its origin, had on its source)
``base_label``         the model's output on the base (``base_label.<out>`` for several)
``label``              the output after the interchange (``label.<out>`` for several)
``changed``            whether ``label`` differs from ``base_label``
=====================  ================================================================

Samplers decide how inputs are drawn: :func:`uniform`, :func:`balanced` (so the
joint values of some variables, e.g. the output, are uniform), or your own function.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from abstraction.causal_model import GRID_LIMIT, CausalModel
from abstraction.errors import DeclarationError, DomainError, UnknownNameError, nearest
from abstraction.mechanism import Mechanism, as_column, choose, to_python

__all__ = [
    "BalancedSampler",
    "FunctionSampler",
    "RowSampler",
    "Sampler",
    "UniformSampler",
    "balanced",
    "combination_ids",
    "control_model",
    "counterfactual_dataset",
    "exhaustive_size",
    "factual_dataset",
    "from_function",
    "from_rows",
    "intervention_label",
    "label_columns",
    "relabel",
    "samples_whole_domain",
    "split_by_base",
    "uniform",
]

Columns = dict[str, np.ndarray]

EXHAUSTIVE_LIMIT = 5_000_000


class Sampler(Protocol):
    """Draws ``n`` input combinations of a model as columns."""

    def __call__(self, model: CausalModel, rng: np.random.Generator, n: int) -> Columns: ...


@dataclass(frozen=True)
class UniformSampler:
    """Each input independently uniform over its domain."""

    def __call__(self, model: CausalModel, rng: np.random.Generator, n: int) -> Columns:
        fix = "declare its domain or pass sampler=from_function(...) or sampler=rows"
        return {v: _uniform_column(model, v, rng, n, fix) for v in model.inputs}

    def __repr__(self) -> str:
        return "uniform()"


def _uniform_column(
    model: CausalModel, variable: str, rng: np.random.Generator, n: int, fix: str
) -> np.ndarray:
    domain = model.domain(variable)
    if domain is None:
        raise DomainError(
            f"input {variable!r} has no finite domain, so it cannot be sampled uniformly; {fix}"
        )
    column: np.ndarray = as_column(list(domain))[rng.integers(len(domain), size=n)]
    return column


@dataclass
class BalancedSampler:
    """Inputs drawn so that the joint values of ``by`` are uniform.

    Within each joint value, inputs are uniform. Exact when the input combinations
    can be enumerated (up to ``GRID_LIMIT``); otherwise rejection sampling from the
    uniform distribution.
    """

    by: tuple[str, ...]
    _strata: tuple[Columns, np.ndarray, np.ndarray, np.ndarray] | None = field(
        default=None, repr=False, compare=False
    )
    _model_hash: str | None = field(default=None, repr=False, compare=False)

    def __call__(self, model: CausalModel, rng: np.random.Generator, n: int) -> Columns:
        for v in self.by:
            model.check_variable(v, role="balanced")
        try:
            grid_size = int(np.prod([len(model.domain(v) or ()) for v in model.inputs]))
        except TypeError:
            grid_size = GRID_LIMIT + 1
        if grid_size == 0 or grid_size > GRID_LIMIT:
            return self._rejection(model, rng, n)
        grid, order, starts, counts = self._grid_strata(model)
        stratum = rng.integers(len(starts), size=n)
        pick = starts[stratum] + (rng.random(n) * counts[stratum]).astype(np.int64)
        rows = order[pick]
        return {v: grid[v][rows] for v in model.inputs}

    def _grid_strata(
        self, model: CausalModel
    ) -> tuple[Columns, np.ndarray, np.ndarray, np.ndarray]:
        if self._strata is None or self._model_hash != model.source_hash:
            grid = model.input_grid()
            values = model.run_batch(grid, validate=False)
            keys = _joint_codes([values[v] for v in self.by])
            order = np.argsort(keys, kind="stable")
            _, starts, counts = np.unique(keys[order], return_index=True, return_counts=True)
            self._strata = (grid, order, starts, counts)
            self._model_hash = model.source_hash
        return self._strata

    def _rejection(self, model: CausalModel, rng: np.random.Generator, n: int) -> Columns:
        uniform_sampler = UniformSampler()
        pool: list[Columns] = []
        keys_pool: list[np.ndarray] = []
        for _ in range(50):
            candidate = uniform_sampler(model, rng, max(4 * n, 1024))
            values = model.run_batch(candidate, validate=False)
            pool.append(candidate)
            keys_pool.append(_joint_values_as_strings([values[v] for v in self.by]))
            keys = np.concatenate(keys_pool)
            labels, counts = np.unique(keys, return_counts=True)
            if counts.min() * len(labels) >= n:
                break
        merged = {v: np.concatenate([p[v] for p in pool]) for v in model.inputs}
        codes = np.unique(keys, return_inverse=True)[1]
        quota = -(-n // len(labels))
        chosen = []
        for code in range(len(labels)):
            members = np.flatnonzero(codes == code)
            if len(members) < quota:
                raise DomainError(
                    f"balancing by {self.by}: value {labels[code]} is too rare to sample "
                    f"{quota} inputs with it by rejection; declare smaller domains so the "
                    "inputs can be enumerated, or use a custom sampler"
                )
            chosen.append(rng.choice(members, size=quota, replace=False))
        rows = rng.permutation(np.concatenate(chosen))[:n]
        return {v: merged[v][rows] for v in model.inputs}


@dataclass(frozen=True)
class FunctionSampler:
    """Inputs drawn by a user function ``fn(rng, n) -> {input: column}``."""

    fn: Callable[[np.random.Generator, int], Mapping[str, Any]]

    def __call__(self, model: CausalModel, rng: np.random.Generator, n: int) -> Columns:
        drawn = self.fn(rng, n)
        if not isinstance(drawn, Mapping):
            raise TypeError(
                f"sampler function {self.fn!r} returned {type(drawn).__name__}; it must return a "
                "dict mapping each input name to a column of n values"
            )
        model.check_inputs(drawn)
        columns = {v: as_column(list(drawn[v])) for v in model.inputs}
        for v, column in columns.items():
            if len(column) != n:
                raise ValueError(
                    f"sampler function {self.fn!r} returned {len(column)} values for input "
                    f"{v!r}; it must return exactly n={n}"
                )
            model.check_column(v, column)
        return columns


@dataclass(frozen=True, eq=False)
class RowSampler:
    """Some inputs taken together from rows of a dataset, the others sampled uniformly.

    For inputs without a finite domain (a whole prompt with the entities it
    mentions): each draw picks one row of ``rows`` (uniformly, with replacement) for
    the inputs that are its columns, and draws every other input uniformly from its
    domain. Columns that are not inputs of the model are rejected, naming them.
    """

    rows: pd.DataFrame

    def __call__(self, model: CausalModel, rng: np.random.Generator, n: int) -> Columns:
        unknown = [c for c in self.rows.columns if c not in model.inputs]
        if unknown:
            raise UnknownNameError(
                f"the rows have column(s) {', '.join(map(repr, unknown))} that are not inputs "
                f"of causal model {model.name!r}; "
                + nearest(str(unknown[0]), model.inputs)
                + "; drop those columns or rename them after the inputs"
            )
        if len(self.rows) == 0:
            raise ValueError("the rows to sample inputs from are empty")
        picked = rng.integers(len(self.rows), size=n)
        columns: Columns = {}
        fix = "add it to the rows or declare its domain"
        for v in model.inputs:
            if v in self.rows.columns:
                values = self.rows[v].to_numpy(dtype=object)
                columns[v] = as_column([to_python(x) for x in values])[picked]
            else:
                columns[v] = _uniform_column(model, v, rng, n, fix)
        return columns

    def __repr__(self) -> str:
        return f"rows({len(self.rows)} rows: {', '.join(map(str, self.rows.columns))})"


def from_rows(rows: pd.DataFrame) -> RowSampler:
    """Sample the inputs that are columns of ``rows`` together, row by row (see RowSampler)."""
    return RowSampler(rows)


def uniform() -> UniformSampler:
    """Each input uniform over its domain."""
    return UniformSampler()


def balanced(by: str | Sequence[str]) -> BalancedSampler:
    """Inputs such that the joint values of ``by`` (variable names) are uniform.

    ``balanced(model.outputs)`` balances by output; ``balanced("wx")`` by the value
    of ``wx``.
    """
    names = (by,) if isinstance(by, str) else tuple(by)
    if not names:
        raise ValueError("balanced() needs at least one variable name")
    return BalancedSampler(names)


def from_function(fn: Callable[[np.random.Generator, int], Mapping[str, Any]]) -> FunctionSampler:
    """Wrap ``fn(rng, n) -> {input: column}`` as a sampler (values are domain-checked)."""
    return FunctionSampler(fn)


SamplerSpec = str | Sampler | pd.DataFrame | Callable[[np.random.Generator, int], Mapping[str, Any]]


def _resolve(spec: SamplerSpec, model: CausalModel, by: Sequence[str]) -> Sampler:
    if isinstance(spec, str):
        if spec == "uniform":
            return UniformSampler()
        if spec == "output":
            return BalancedSampler(tuple(model.outputs))
        if spec == "value":
            return BalancedSampler(tuple(by)) if by else UniformSampler()
        raise ValueError(
            f"unknown sampler {spec!r}; use 'uniform', 'output', 'value', a Sampler, or a "
            "function fn(rng, n) -> {input: column}"
        )
    if isinstance(spec, pd.DataFrame):
        return RowSampler(spec)
    if isinstance(spec, (UniformSampler, BalancedSampler, FunctionSampler, RowSampler)):
        return spec
    if callable(spec):
        return FunctionSampler(spec)  # type: ignore[arg-type]
    raise TypeError(f"sampler must be a string, a Sampler or a function, not {spec!r}")


def samples_whole_domain(spec: SamplerSpec) -> bool:
    """Whether a sampler spec draws from every combination of the inputs' domains.

    The built-in samplers (``"uniform"``, ``"output"``, ``"value"``) do; a function,
    rows or a custom sampler may draw from a part of it only (distinct names, valid
    prompts), so enumerating the domain would test inputs the network never sees.
    """
    return isinstance(spec, (str, UniformSampler, BalancedSampler))


def _joint_codes(columns: Sequence[np.ndarray]) -> np.ndarray:
    frame = pd.DataFrame({str(i): pd.Series(c) for i, c in enumerate(columns)})
    return frame.groupby(list(frame.columns), sort=True, dropna=False).ngroup().to_numpy()


def _joint_values_as_strings(columns: Sequence[np.ndarray]) -> np.ndarray:
    parts = [np.asarray([repr(v) for v in c.tolist()], dtype=object) for c in columns]
    joined = parts[0]
    for p in parts[1:]:
        joined = joined + "|" + p
    return joined.astype(str)


def combination_ids(model: CausalModel, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """An integer per row identifying its combination of input values (equal inputs, equal id).

    These are the ``input_id`` column of factual datasets and the ``base_id`` column of
    counterfactual ones. When the inputs' domains are finite the id is a mixed-radix
    number whose digits are each input's index in its domain (the first input is the
    lowest digit), so it does not depend on which rows ``columns`` holds; otherwise
    the ids number the distinct combinations present in ``columns``. Unrelated to a
    tokenizer's ``input_ids``.
    """
    radix = 1
    ids = np.zeros(len(next(iter(columns.values()))), dtype=np.int64)
    domains = [model.domain(v) for v in model.inputs]
    total = np.prod([float(len(d)) if d is not None else np.inf for d in domains])
    if total < 2**62:
        for v, domain in zip(model.inputs, domains, strict=True):
            assert domain is not None
            ids += radix * _index_in_domain(columns[v], domain)
            radix *= len(domain)
        return ids
    codes: np.ndarray = _joint_codes([columns[v] for v in model.inputs]).astype(np.int64)
    return codes


def _index_in_domain(column: np.ndarray, domain: tuple[Any, ...]) -> np.ndarray:
    values = as_column(list(domain))
    if values.dtype.kind in "iu" and column.dtype.kind in "iu" and len(values) > 1:
        step = values[1] - values[0]
        if step != 0 and np.array_equal(values, values[0] + step * np.arange(len(values))):
            # an arithmetic progression such as range(20): the index is arithmetic too
            return np.asarray((column - values[0]) // step, dtype=np.int64)
    if values.dtype != object and column.dtype != object:
        order = np.argsort(values, kind="stable")
        pos = np.searchsorted(values[order], column)
        return order[np.clip(pos, 0, len(values) - 1)].astype(np.int64)
    lookup = {v: i for i, v in enumerate(domain)}
    return np.fromiter((lookup[v] for v in column), np.int64, len(column))


def label_columns(model: CausalModel) -> tuple[list[str], list[str]]:
    """Names of the (counterfactual label, base label) columns for ``model``'s outputs."""
    if len(model.outputs) == 1:
        return ["label"], ["base_label"]
    return [f"label.{o}" for o in model.outputs], [f"base_label.{o}" for o in model.outputs]


def intervention_label(variables: Sequence[str]) -> str:
    """The ``intervened`` column's text for a set of variables: ``"wx+yz"``."""
    return "+".join(variables)


@dataclass(frozen=True)
class _Plan:
    """How interchanges are made beyond the sets: cross-variable origins, fixed values."""

    origins: Mapping[str, str] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)


def _check_fixed(
    model: CausalModel, fixed: Mapping[str, Any] | None, targets: Sequence[str]
) -> dict[str, Any]:
    checked = dict(fixed or {})
    for var, value in checked.items():
        model.check_variable(var, role="fixed")
        if var in targets:
            raise ValueError(f"{var!r} is both fixed and interchanged; choose one")
        model.check_value(var, value, role="fixed value of")
    return checked


def _normalise_sets(
    model: CausalModel, interventions: Sequence[str | Sequence[str]] | None
) -> tuple[list[tuple[str, ...]], dict[str, str]]:
    """The intervention sets (target names) and the cross-variable origins (``a<-b``)."""
    if interventions is None:
        if not model.intermediates:
            raise DeclarationError(
                f"causal model {model.name!r} has no intermediate variables to intervene on",
                "pass interventions=[...] naming the variables to interchange",
            )
        return [(v,) for v in model.intermediates], {}
    if isinstance(interventions, str):
        interventions = [interventions]
    sets: list[tuple[str, ...]] = []
    origins: dict[str, str] = {}
    plain: set[str] = set()
    for item in interventions:
        entries = (item,) if isinstance(item, str) else tuple(item)
        found: list[str] = []
        for entry in entries:
            target, _, origin = (part.strip() for part in entry.partition("<-"))
            model.check_variable(target, role="intervened")
            if origin:
                model.check_variable(origin, role="origin")
                if origins.get(target, origin) != origin or target in plain:
                    raise ValueError(
                        f"{target!r} takes its value from different variables in different "
                        "sets; generate one dataset per origin"
                    )
                origins[target] = origin
            else:
                if target in origins:
                    raise ValueError(
                        f"{target!r} is interchanged both from itself and from "
                        f"{origins[target]!r}; generate one dataset per origin"
                    )
                plain.add(target)
            found.append(target)
        names = tuple(found)
        if not names:
            raise ValueError("an intervention set is empty; name at least one variable")
        if len(set(names)) != len(names):
            raise ValueError(f"intervention set {names} names a variable twice")
        ordered = tuple(v for v in model.variables if v in names)
        if ordered not in sets:
            sets.append(ordered)
    if not sets:
        raise ValueError("interventions is empty; name at least one variable to intervene on")
    return sets, origins


def factual_dataset(
    model: CausalModel,
    n: int | None = None,
    *,
    sampler: SamplerSpec = "uniform",
    seed: int = 0,
    exhaustive: bool = False,
) -> pd.DataFrame:
    """Inputs and the value of every variable, one row per example.

    Args:
        model: the causal model.
        n: number of rows (ignored when ``exhaustive``).
        sampler: ``"uniform"``, ``"output"`` (balanced by output), a sampler, or a
            function ``fn(rng, n) -> {input: column}``.
        seed: random seed; the same seed gives the same dataset.
        exhaustive: enumerate every input combination instead of sampling.
    """
    if exhaustive:
        columns = model.input_grid(limit=EXHAUSTIVE_LIMIT)
    else:
        if n is None or n <= 0:
            raise ValueError(f"n must be a positive number of rows, not {n!r}")
        columns = _resolve(sampler, model, model.outputs)(model, np.random.default_rng(seed), n)
    values = model.run_batch(columns, validate=False)
    frame = _frame({v: values[v] for v in model.variables})
    frame.insert(0, "input_id", combination_ids(model, columns))
    frame.attrs.update({"model": model.name, "seed": seed, "kind": "factual"})
    return frame


def counterfactual_dataset(
    model: CausalModel,
    n: int | None = None,
    interventions: Sequence[str | Sequence[str]] | None = None,
    *,
    sampler: SamplerSpec = "uniform",
    source_sampler: SamplerSpec | None = None,
    seed: int = 0,
    changed_only: bool = False,
    exhaustive: bool = False,
    exclude_bases: Collection[int] = (),
    fixed: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Base/source pairs, the intervention applied, and the counterfactual label.

    Args:
        model: the causal model.
        n: number of rows; rows are split evenly across the intervention sets.
        interventions: intervention sets, each a variable name or a list of names
            (``[["wx"], ["yz"], ["wx", "yz"]]``); by default each intermediate variable
            on its own. ``"answer<-s1"`` is a cross-variable interchange: ``answer``
            takes the value ``s1`` has on the source (one origin per variable per
            dataset); the network side aligns ``answer`` as usual.
        sampler: how base inputs are drawn: ``"uniform"``; ``"output"`` (bases and
            sources balanced by the model's output); ``"value"`` (bases balanced by the
            joint values of the intervened variables, each variable's source balanced by
            that variable's value); a sampler; ``fn(rng, n) -> {input: column}``; or a
            DataFrame whose columns are some inputs (prompts with their entities),
            drawn row by row, the other inputs uniform (:class:`RowSampler`).
        source_sampler: how sources are drawn, when different from ``sampler``.
        seed: random seed; the same seed gives the same dataset.
        changed_only: keep only pairs whose label differs from the base label (still
            returns ``n`` rows, drawing more pairs as needed).
        exhaustive: every base with every source combination, for each set (small
            domains only); ``n`` and the samplers are ignored.
        exclude_bases: with ``exhaustive``, base inputs (their ``base_id``) left out, so
            that pairs on held-out bases can be enumerated once the others are used.
        fixed: base-side values set on every pair, in the base and the counterfactual
            run alike (``{"first": True}``); recorded as ``fixed.<var>`` columns.

    Returns:
        A DataFrame with the columns documented in this module.
    """
    sets, origins = _normalise_sets(model, interventions)
    targets = [v for v in model.variables if any(v in s for s in sets)]
    plan = _Plan(origins, _check_fixed(model, fixed, targets))
    if len(exclude_bases) and not exhaustive:
        raise ValueError("exclude_bases applies to exhaustive=True datasets only")
    if exhaustive:
        frame = _exhaustive(model, sets, targets, plan, exclude_bases)
    else:
        if n is None or n <= 0:
            raise ValueError(f"n must be a positive number of rows, not {n!r}")
        rng = np.random.default_rng(seed)
        base_sampler = _resolve(sampler, model, targets)
        # a source is balanced by the value it gives: its origin's, for `a<-b`
        per_variable = {
            v: _resolve(
                source_sampler if source_sampler is not None else sampler,
                model,
                [origins.get(v, v)],
            )
            for v in targets
        }
        frame = _sampled(model, n, sets, targets, base_sampler, per_variable, rng, plan)
        if changed_only:
            frame = _fill_changed(
                model, n, sets, targets, base_sampler, per_variable, rng, frame, plan
            )
    if changed_only and exhaustive:
        frame = frame[frame["changed"].to_numpy()].reset_index(drop=True)
    if changed_only and len(frame) == 0:
        raise DomainError(
            f"no interchange on {[intervention_label(s) for s in sets]} changes the output of "
            f"{model.name!r}; these variables cannot be tested by interchange interventions"
        )
    frame.attrs.update(
        {
            "model": model.name,
            "seed": seed,
            "kind": "counterfactual",
            "interventions": [
                [f"{v}<-{origins[v]}" if v in origins else v for v in s] for s in sets
            ],
            "sampler": repr(sampler),
        }
    )
    return frame


def _assemble(
    model: CausalModel,
    sets: list[tuple[str, ...]],
    targets: list[str],
    base: Columns,
    sources: dict[str, Columns],
    set_index: np.ndarray,
    plan: _Plan | None = None,
) -> pd.DataFrame:
    plan = plan or _Plan()
    origins, fixed = plan.origins, plan.fixed
    n = len(set_index)
    do = {v: np.zeros(n, dtype=bool) for v in targets}
    for k, s in enumerate(sets):
        rows = set_index == k
        for v in s:
            do[v] |= rows
    for v in targets:
        # A row that does not intervene on v takes v's "source" from its own base, so
        # the source columns are never blank; the `do` mask keeps v computed there.
        keep = ~do[v]
        for name in model.inputs:
            sources[v][name] = choose(keep, base[name], sources[v][name])
    base_values = model.run_batch(base, fixed, validate=False)
    counterfactual = model.interchange_batch(
        base, sources, where=do, validate=False, origins=origins, fixed=fixed
    )
    label_names, base_label_names = label_columns(model)
    data: dict[str, Any] = {"base_id": combination_ids(model, base)}
    for name in model.inputs:
        data[f"base.{name}"] = base[name]
    for v in targets:
        for name in model.inputs:
            data[f"source.{v}.{name}"] = sources[v][name]
    for v in targets:
        data[f"do.{v}"] = do[v]
    for v, origin in origins.items():
        data[f"origin.{v}"] = np.full(n, origin, dtype=object)
    for v, value in fixed.items():
        data[f"fixed.{v}"] = as_column([value] * n)
    labels = [intervention_label(s) for s in sets]
    data["intervened"] = pd.Categorical.from_codes(
        set_index.astype(np.int64), categories=pd.Index(labels)
    )
    for v in targets:
        data[f"value.{v}"] = counterfactual[v]
    changed = np.zeros(n, dtype=bool)
    for out, label, base_label in zip(model.outputs, label_names, base_label_names, strict=True):
        data[base_label] = base_values[out]
        data[label] = counterfactual[out]
        changed |= np.asarray(base_values[out] != counterfactual[out], dtype=bool)
    data["changed"] = changed
    return _frame(data)


def _frame(columns: Mapping[str, Any]) -> pd.DataFrame:
    """A DataFrame holding each column's values exactly as the causal model made them.

    Object columns stay object columns: pandas would otherwise read a column of
    strings and ``None`` as its string dtype, turning ``None`` into NaN. copy=False
    keeps one block per column instead of copying every column into consolidated
    blocks, which would cost more than generating the data.
    """
    kept = {
        name: pd.Series(c, dtype=object, copy=False)
        if isinstance(c, np.ndarray) and c.dtype == object
        else c
        for name, c in columns.items()
    }
    return pd.DataFrame(kept, copy=False)


def _sampled(
    model: CausalModel,
    n: int,
    sets: list[tuple[str, ...]],
    targets: list[str],
    base_sampler: Sampler,
    per_variable: dict[str, Sampler],
    rng: np.random.Generator,
    plan: _Plan | None = None,
) -> pd.DataFrame:
    set_index = rng.permutation(np.arange(n) % len(sets))
    base = base_sampler(model, rng, n)
    sources = {v: dict(per_variable[v](model, rng, n)) for v in targets}
    return _assemble(model, sets, targets, base, sources, set_index, plan)


def _fill_changed(
    model: CausalModel,
    n: int,
    sets: list[tuple[str, ...]],
    targets: list[str],
    base_sampler: Sampler,
    per_variable: dict[str, Sampler],
    rng: np.random.Generator,
    frame: pd.DataFrame,
    plan: _Plan | None = None,
) -> pd.DataFrame:
    kept = [frame[frame["changed"].to_numpy()]]
    drawn, have = len(frame), len(kept[0])
    for _ in range(100):
        if have >= n or have == 0:
            break
        rate = have / drawn
        size = int(min((n - have) / rate * 1.2 + 64, 8 * n))
        extra = _sampled(model, size, sets, targets, base_sampler, per_variable, rng, plan)
        drawn += len(extra)
        extra = extra[extra["changed"].to_numpy()]
        kept.append(extra)
        have += len(extra)
    merged = pd.concat(kept, ignore_index=True)
    if len(merged) < n and len(merged) > 0:
        raise DomainError(
            f"only {len(merged)} of {n} requested pairs change the output after many draws; "
            "lower n, use a balanced sampler, or drop changed_only"
        )
    return merged.iloc[:n].reset_index(drop=True)


def exhaustive_size(
    model: CausalModel,
    interventions: Sequence[str | Sequence[str]] | None = None,
    *,
    exclude_bases: Collection[int] = (),
) -> int:
    """How many pairs ``counterfactual_dataset(..., exhaustive=True)`` would produce.

    Raises:
        DomainError: when an input has no finite domain or the inputs have more
            combinations than can be enumerated.
    """
    sets, _ = _normalise_sets(model, interventions)
    grid = model.input_grid(limit=EXHAUSTIVE_LIMIT)
    return _exhaustive_count(sets, grid, _kept_bases(model, grid, exclude_bases))


def _kept_bases(
    model: CausalModel, grid: Mapping[str, np.ndarray], exclude: Collection[int]
) -> np.ndarray:
    ids = combination_ids(model, dict(grid))
    return np.flatnonzero(~np.isin(ids, np.fromiter(exclude, dtype=np.int64)))


def _exhaustive_count(
    sets: Sequence[tuple[str, ...]],
    grid: Mapping[str, np.ndarray],
    bases: np.ndarray,
) -> int:
    size = len(next(iter(grid.values())))
    return sum(len(bases) * size ** len(s) for s in sets)


def _exhaustive(
    model: CausalModel,
    sets: list[tuple[str, ...]],
    targets: list[str],
    plan: _Plan | None = None,
    exclude_bases: Collection[int] = (),
) -> pd.DataFrame:
    grid = model.input_grid(limit=EXHAUSTIVE_LIMIT)
    size = len(next(iter(grid.values())))
    kept = _kept_bases(model, grid, exclude_bases)
    total = _exhaustive_count(sets, grid, kept)
    if total > EXHAUSTIVE_LIMIT:
        raise DomainError(
            f"exhaustive enumeration would produce {total:,} pairs (limit "
            f"{EXHAUSTIVE_LIMIT:,}); sample with n=... instead"
        )
    frames = []
    for k, s in enumerate(sets):
        index = np.indices([len(kept)] + [size] * len(s)).reshape(1 + len(s), -1)
        base = {name: grid[name][kept[index[0]]] for name in model.inputs}
        sources = {v: dict(base) for v in targets}
        for j, v in enumerate(s):
            sources[v] = {name: grid[name][index[1 + j]] for name in model.inputs}
        set_index = np.full(index.shape[1], k)
        frames.append((base, sources, set_index))
    base = {name: np.concatenate([f[0][name] for f in frames]) for name in model.inputs}
    sources = {
        v: {name: np.concatenate([f[1][v][name] for f in frames]) for name in model.inputs}
        for v in targets
    }
    set_index = np.concatenate([f[2] for f in frames])
    frame = _assemble(model, sets, targets, base, sources, set_index, plan)
    frame.attrs["exhaustive"] = True
    return frame


def split_by_base(
    frame: pd.DataFrame, fractions: Sequence[float] = (0.8, 0.1, 0.1), *, seed: int = 0
) -> list[pd.DataFrame]:
    """Split pairs into parts that never share a base input (train / validation / test).

    Args:
        frame: a counterfactual dataset with a ``base_id`` column.
        fractions: the share of distinct bases in each part (normalised to sum to 1).
        seed: which bases go where.
    """
    if "base_id" not in frame:
        raise ValueError("split_by_base needs a counterfactual dataset with a base_id column")
    if not fractions or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be non-negative and sum to more than 0, not {fractions}")
    bases = np.unique(frame["base_id"].to_numpy())
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(bases)
    bounds = np.floor(np.cumsum(np.asarray(fractions) / sum(fractions)) * len(bases)).astype(int)
    bounds[-1] = len(bases)
    part_of = np.empty(len(bases), dtype=np.int64)
    start = 0
    for k, stop in enumerate(bounds):
        part_of[np.searchsorted(bases, shuffled[start:stop])] = k
        start = stop
    which = part_of[np.searchsorted(bases, frame["base_id"].to_numpy())]
    parts = []
    for k in range(len(fractions)):
        part = frame[which == k].reset_index(drop=True)
        part.attrs = dict(frame.attrs)
        parts.append(part)
    return parts


def relabel(frame: pd.DataFrame, model: CausalModel) -> pd.DataFrame:
    """The same base/source pairs, with labels and values recomputed by another model.

    ``model`` must have the same inputs as the model that generated ``frame`` (a rival
    hypothesis, or a control model); variables it lacks cannot be intervened on.
    """
    targets = [c[len("do.") :] for c in frame.columns if c.startswith("do.")]
    for v in targets:
        model.check_variable(v, role="intervened")
    base = {name: frame[f"base.{name}"].to_numpy() for name in model.inputs}
    sources = {
        v: {name: frame[f"source.{v}.{name}"].to_numpy() for name in model.inputs} for v in targets
    }
    sets = (
        list(frame["intervened"].cat.categories)
        if hasattr(frame["intervened"], "cat")
        else (sorted(set(frame["intervened"])))
    )
    codes = pd.Categorical(frame["intervened"], categories=sets).codes.astype(np.int64)
    origins = {
        c[len("origin.") :]: str(frame[c].iloc[0]) for c in frame.columns if c.startswith("origin.")
    }
    fixed = {
        c[len("fixed.") :]: to_python(frame[c].iloc[0])
        for c in frame.columns
        if c.startswith("fixed.")
    }
    split = [tuple(s.split("+")) for s in sets]
    out = _assemble(model, split, targets, base, sources, codes, _Plan(origins, fixed))
    out["base_id"] = frame["base_id"].to_numpy()
    out.attrs = {**frame.attrs, "model": model.name}
    return out


def control_model(
    model: CausalModel,
    variable: str,
    seed: int = 0,
    *,
    distribution: Mapping[str, np.ndarray] | None = None,
) -> CausalModel:
    """A control hypothesis: ``variable``'s values shuffled consistently across inputs.

    Every input combination keeps one fixed value of ``variable``, but which value is a
    random permutation of the true assignment (so its distribution is unchanged and
    its relation to the inputs is destroyed). Downstream mechanisms are unchanged.
    Aligning this control measures what DAS can fit regardless of the hypothesis;
    selectivity is the real IIA minus the control's.

    Inputs with more than ``GRID_LIMIT`` combinations (a prompt task over hundreds of
    names) are not enumerated: each combination's value is drawn, by a seeded hash of
    the combination, from ``variable``'s values on ``distribution`` (input columns,
    e.g. the experiment's training bases; by default :data:`CONTROL_SAMPLE` uniformly
    drawn inputs). That is still a fixed value per input with, up to sampling error,
    the distribution the experiment sees, and costs nothing per combination never
    seen. Pass ``distribution`` when the experiment's sampler is not uniform: under
    uniform IOI inputs the subject is almost never one of the two names.
    """
    model.check_variable(variable, role="controlled")
    if variable in model.inputs:
        raise DeclarationError(
            f"{variable!r} is an input; a control task shuffles an intermediate variable",
            "name an intermediate variable",
        )
    inputs = model.inputs
    sizes = [model.domain(v) for v in inputs]
    if any(d is None for d in sizes):
        raise DomainError(
            f"the control task for {variable!r} needs every input to have a finite domain",
            "declare each input's domain, or leave 'control' out of the baselines",
        )
    combinations = float(np.prod([float(len(d)) for d in sizes if d is not None]))
    if combinations <= GRID_LIMIT:
        grid = model.input_grid()
        values = model.run_batch(grid, validate=False)[variable]
        table = np.empty(len(values), dtype=values.dtype)
        table[combination_ids(model, grid)] = values[
            np.random.default_rng(seed).permutation(len(values))
        ]

        def assigned(ids: np.ndarray) -> np.ndarray:
            result: np.ndarray = table[ids]
            return result

    elif combinations < 2**62:
        sample = (
            model.uniform_sample(CONTROL_SAMPLE, seed=seed)
            if distribution is None
            else {v: np.asarray(distribution[v]) for v in inputs}
        )
        drawn = model.run_batch(sample, validate=False)[variable]
        if len(drawn) == 0:
            raise DomainError("the control task's distribution has no rows", "pass some inputs")
        salt = np.uint64(np.random.default_rng(seed).integers(2**63))

        def assigned(ids: np.ndarray) -> np.ndarray:
            unit = (_splitmix64(ids.astype(np.uint64) ^ salt) >> np.uint64(11)) / 2.0**53
            result: np.ndarray = drawn[(unit * len(drawn)).astype(np.int64)]
            return result

    else:
        raise DomainError(
            f"the inputs of {model.name!r} have {combinations:.3g} combinations, too many "
            f"to give each a fixed control value of {variable!r}",
            "leave 'control' out of the baselines",
        )

    def lookup_columns(*columns: np.ndarray) -> np.ndarray:
        return assigned(combination_ids(model, dict(zip(inputs, columns, strict=True))))

    def lookup(*values: Any) -> Any:
        single = [as_column([v]) if not isinstance(v, tuple) else _object_column(v) for v in values]
        value = lookup_columns(*single)[0]
        return value.item() if isinstance(value, np.generic) else value

    mechanisms = []
    for name, mech in model.mechanisms.items():
        if name == variable:
            mech = Mechanism(
                name,
                tuple(inputs),
                lookup,
                lookup_columns,
                f"{name} = shuffled({', '.join(inputs)})",
                kind="control",
            )
        mechanisms.append(mech)
    order = {v: i for i, v in enumerate(model.variables)}
    mechanisms.sort(key=lambda m: order[m.name])
    domains = {v: model.domain(v) for v in inputs}
    return CausalModel(f"{model.name}_control_{variable}", domains, mechanisms, model.outputs)


CONTROL_SAMPLE = 200_000
"""Inputs drawn to estimate a control variable's distribution when the grid is too large."""


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit mix (SplitMix64's finaliser): nearby ids give unrelated hashes."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        mixed: np.ndarray = x ^ (x >> np.uint64(31))
        return mixed


def _object_column(value: Any) -> np.ndarray:
    column = np.empty(1, dtype=object)
    column[0] = value
    return column
