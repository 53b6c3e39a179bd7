"""The results model: one typed description of an experiment's results.

:class:`ExperimentResult` is what :func:`abstraction.run` returns and what
``results.json`` holds. Both the file (:meth:`ExperimentResult.to_json`) and its JSON
schema (:func:`results_schema`) are produced from the classes below, so the two cannot
drift apart; :data:`SCHEMA_VERSION` is the one version number of that format.

The smaller records (:class:`VariableRecord`, :class:`AlignmentRecord`, ...) are the
JSON shape of the library's own objects; each has an ``of`` constructor that reads
the object (a :class:`~abstraction.verification.VariableResult`, an
:class:`~abstraction.alignment.Alignment`, ...). Estimates, comparisons, thresholds,
seed summaries and counterexamples are the library's dataclasses themselves.

A result made by :func:`abstraction.run` also carries, unserialised, the
:class:`~abstraction.verification.Verification` it came from (and through it the trained
alignment and the per-pair correctness); a result read back from ``results.json``
carries only what the file holds.

In the chain of concepts this module sits after ``verdict`` and before ``report``:
it imports ``statistics`` and ``verdict``, and only names the upstream types
(alignments, networks, causal models) for the type checker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, JsonValue, PrivateAttr, ValidationError

from abstraction.errors import AbstractionError, DamagedFileError
from abstraction.evidence import Counterexample, Diagnostics
from abstraction.files import read_json
from abstraction.statistics import Comparison, Estimate, SeedSummary
from abstraction.verdict import Thresholds, Verdict

if TYPE_CHECKING:
    from abstraction.alignment.result import Alignment
    from abstraction.alignment.sweep import SweepResult
    from abstraction.baselines import BaselineResult
    from abstraction.causal_model import CausalModel
    from abstraction.locations import Location
    from abstraction.network import Network
    from abstraction.verification import VariableResult, Verification

__all__ = [
    "SCHEMA_VERSION",
    "VERDICT_COLOURS",
    "AlignmentRecord",
    "BaselineRecord",
    "BehaviorRecord",
    "CausalModelRecord",
    "ConfigRecord",
    "ExperimentResult",
    "GraphNode",
    "GraphRecord",
    "LocationRecord",
    "MethodComparison",
    "MethodRow",
    "NetworkRecord",
    "OverallRecord",
    "PairCounts",
    "ResultsError",
    "RivalRecord",
    "ShiftRecord",
    "SweepCellRecord",
    "SweepRecord",
    "VariableRecord",
    "Versions",
    "check_schema_version",
    "results_schema",
]

SchemaVersion = Literal[2]
SCHEMA_VERSION: Final[SchemaVersion] = 2
"""The version of the ``results.json`` format; bumped whenever its shape changes."""

VERDICT_COLOURS: Final = {
    "faithful": "#2e7d32",
    "partial": "#ef6c00",
    "unfaithful": "#c62828",
    "inconclusive": "#6d6d6d",
}
"""The colour of each verdict in reports and notebook displays."""

Interval = tuple[float, float]
"""A confidence interval ``[low, high]``."""


class ResultsError(AbstractionError, ValueError):
    """A results document this version of the library cannot read."""


class _Record(BaseModel):
    """Base of the records: immutable, unknown fields rejected, docstrings documented."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class LocationRecord(_Record):
    """Where activations were read and replaced (see :class:`abstraction.Location`)."""

    layer: int | None
    """The layer (``None`` for a submodule path)."""
    component: str
    """``residual``, ``attention_output``, ``mlp_output`` or ``head``."""
    position: int | str | None
    """A token position or a task-named position (``None``: the whole activation)."""
    head: int | None
    """The attention head, for ``component="head"``."""
    dims: tuple[int, int] | None
    """A slice of the activation's last dimension."""
    path: str | None
    """A submodule path, when given instead of a layer."""
    hook: str
    """``output`` or ``input`` of the module."""

    @classmethod
    def of(cls, location: Location) -> LocationRecord:
        """The record of ``location``."""
        return cls.model_validate(location.to_dict())


class OverallRecord(_Record):
    """IIA over every test pair."""

    iia: float = Field(ge=0, le=1)
    """Interchange intervention accuracy."""
    ci: Interval
    """Its confidence interval (bootstrap clustered by base input)."""
    estimate: Estimate
    """The estimate in full (pairs, clusters, confidence level)."""

    @classmethod
    def of(cls, estimate: Estimate) -> OverallRecord:
        """The record of an IIA estimate."""
        return cls(iia=estimate.value, ci=(estimate.low, estimate.high), estimate=estimate)


class VariableRecord(_Record):
    """The evidence for one causal variable (see :class:`abstraction.VariableResult`)."""

    iia: float = Field(ge=0, le=1)
    """IIA on the test pairs that intervene on this variable."""
    ci: Interval
    """Its confidence interval (bootstrap clustered by base input)."""
    estimate: Estimate
    """The estimate in full."""
    changed_iia: float | None
    """IIA on those pairs whose label changes (``null`` when none do)."""
    changed_ci: Interval | None
    """Its confidence interval."""
    changed_pairs: int
    """How many test pairs intervening on the variable change the label."""
    per_intervention_set: dict[str, Estimate]
    """IIA per intervention set that includes the variable (``wx``, ``wx+yz``)."""
    per_value: dict[str, Estimate]
    """IIA per value of the variable."""
    baselines: dict[str, float]
    """Each baseline's IIA on the same pairs."""
    p_values: dict[str, float]
    """Holm-adjusted one-sided p-values against each null baseline."""
    raw_p_values: dict[str, float]
    """The same before adjustment."""
    selectivity: float | None
    """IIA minus the control task's IIA."""
    passed: bool
    """Whether the variable meets every requirement of ``faithful``."""
    reasons: list[str]
    """Why, in words."""
    per_seed: list[float]
    """IIA of each alignment seed on the same pairs (the headline pools them)."""
    not_informative: dict[str, str]
    """Nulls that are not informative here (they do not decide), and why."""
    diagnostics: Diagnostics | None
    """Illusion diagnostics: dormant effect, disconnection, subspace vs full patch on
    isolated pairs (see :mod:`abstraction.diagnostics`)."""
    output_agreement: float | None
    """Share of test inputs on which the variable is a function of the output alone."""
    flags: list[str]
    """``illusion``, ``output_in_disguise``, ``not_necessary``, ``borderline`` (the IIA's CI
    contains the threshold; see :func:`abstraction.decide`)."""

    @classmethod
    def of(cls, result: VariableResult) -> VariableRecord:
        """The record of a verified variable."""
        changed = result.changed_iia
        return cls(
            iia=result.iia.value,
            ci=(result.iia.low, result.iia.high),
            estimate=result.iia,
            changed_iia=changed.value if changed is not None else None,
            changed_ci=(changed.low, changed.high) if changed is not None else None,
            changed_pairs=result.changed_pairs,
            per_intervention_set=dict(result.per_set),
            per_value=dict(result.per_value),
            baselines=dict(result.baselines),
            p_values=dict(result.p_values),
            raw_p_values=dict(result.raw_p_values),
            selectivity=result.selectivity,
            passed=result.passed,
            reasons=list(result.reasons),
            per_seed=list(result.per_seed),
            not_informative=dict(result.not_informative),
            diagnostics=result.diagnostics,
            output_agreement=result.output_agreement,
            flags=list(result.flags),
        )

    def best_null(self) -> tuple[str, float] | None:
        """The strongest null baseline (one with a p-value) and its IIA, if any."""
        nulls = {name: iia for name, iia in self.baselines.items() if name in self.p_values}
        if not nulls:
            return None
        return max(nulls.items(), key=lambda item: item[1])


class BehaviorRecord(_Record):
    """How often the network's own output agrees with the causal model's."""

    accuracy: float = Field(ge=0, le=1)
    """Agreement, one value per test base input."""
    ci: Interval
    """Its confidence interval."""
    bases: int
    """Test bases scored."""

    @classmethod
    def of(cls, estimate: Estimate) -> BehaviorRecord:
        """The record of the network's task accuracy."""
        return cls(accuracy=estimate.value, ci=(estimate.low, estimate.high), bases=estimate.n)


class BaselineRecord(_Record):
    """One baseline run on the test pairs; further numbers (accuracies) as extra fields."""

    model_config = ConfigDict(extra="allow")

    name: str
    """The baseline (``random_subspace``, ``untrained``, ``control``, ``patch``, ...)."""
    variable: str | None
    """The variable it concerns (``null``: all variables at once)."""
    iia: float
    """Its IIA, averaged over seeds."""
    seeds: int
    """How many seeds were run."""
    note: str = ""
    """Why the baseline is not applicable here (empty when it is)."""
    __pydantic_extra__: dict[str, float] = Field(init=False)

    @classmethod
    def of(cls, baseline: BaselineResult) -> BaselineRecord:
        """The record of a baseline's result."""
        return cls.model_validate(
            {
                "name": baseline.name,
                "variable": baseline.variable,
                "iia": baseline.iia,
                "seeds": len(baseline.correct),
                "note": baseline.note,
                **baseline.detail,
            }
        )


class AlignmentRecord(_Record):
    """The verified alignment (its tensors are saved separately, as safetensors)."""

    method: str
    """``das``, ``low_rank``, ``boundless`` or ``patch``."""
    location: LocationRecord
    """Where the variables were found."""
    subspaces: dict[str, tuple[int, int]]
    """Each variable's columns of the rotation."""
    curve: list[dict[str, float | None]]
    """The training curve: one entry per evaluation (epoch, step, loss, val_iia, ...)."""
    units: dict[str, int] | None = Field(default=None, exclude_if=lambda value: value is None)
    """Feature methods (``dbm``, ``pca``, ``sae``): how many features each variable keeps."""
    featurizer: dict[str, JsonValue] | None = Field(
        default=None, exclude_if=lambda value: value is None
    )
    """Feature methods: the featurizer's description, its number of features, and the
    seconds spent fitting it on the site's training activations (PCA, an SAE trained here)."""

    @classmethod
    def of(cls, alignment: Alignment) -> AlignmentRecord:
        """The record of an alignment."""
        featurizer = alignment.featurizer
        return cls(
            method=alignment.method,
            location=LocationRecord.of(alignment.location),
            subspaces={k: (int(v[0]), int(v[1])) for k, v in alignment.subspaces.items()},
            curve=[dict(entry) for entry in alignment.curve],
            units=dict(alignment.units) if alignment.masks else None,
            featurizer=(
                {
                    **featurizer.describe(),
                    "features": featurizer.features,
                    "seconds": alignment.config.get("featurizer_seconds"),
                }
                if featurizer is not None
                else None
            ),
        )


class MethodRow(_Record):
    """One method's result for one variable, in the method comparison."""

    method: str
    """``patch``, ``das``, ``low_rank``, ``boundless``, ``dbm``, ``pca`` or ``sae``."""
    units: int
    """Features the variable uses: neurons, components or SAE features kept by the mask,
    the subspace's dimensions for DAS, the site's width for the full patch."""
    of: int
    """How many the method chose from (the featurizer's features, or the site's width)."""
    iia: float = Field(ge=0, le=1)
    """Test IIA on the pairs that intervene on the variable."""
    ci: Interval
    """Its 95 % CI (bootstrap clustered by base input)."""
    untrained_iia: float | None
    """The same method on the same architecture with random weights (PCA refitted, an
    SAE trained on it), on the same test pairs."""
    validation_iia: float
    """The alignment's validation IIA (all variables jointly), on which the best method is
    chosen."""
    passed: bool
    """Whether the variable passes with this method (its own nulls and diagnostics)."""


class MethodComparison(_Record):
    """Every compared method at the experiment's site(s), per variable; the best method is
    chosen on validation IIA, and its verdict reported."""

    locations: dict[str, LocationRecord]
    """Each variable's site (the experiment's location, or the one its search chose)."""
    variables: dict[str, list[MethodRow]]
    """Per variable, one row per method."""
    best: str
    """The method with the highest validation IIA (ties: the earlier in the list)."""
    verdict: Verdict
    """The verdict with the best method (its own nulls, diagnostics and thresholds)."""


class SweepCellRecord(_Record):
    """One sweep cell, scored on the validation pairs."""

    layer: int
    component: str
    position: int | str | None
    head: int | None = Field(default=None, exclude_if=lambda value: value is None)
    """The attention head, for ``component="head"``."""
    path: str | None = Field(default=None, exclude_if=lambda value: value is None)
    """The submodule path, for cells of a module pattern."""
    rank: int
    val_iia: float
    """IIA on the validation pairs."""
    seconds: float
    """Time to train and score the cell."""
    p_value: float | None
    """One-sided p-value against a random subspace of the same ranks."""
    p_bh: float | None
    """The same, Benjamini-Hochberg adjusted across cells."""


class ChosenCell(_Record):
    """The cell chosen on validation."""

    layer: int
    position: int | str | None
    component: str
    rank: int
    head: int | None = Field(default=None, exclude_if=lambda value: value is None)
    """The attention head, for ``component="head"``."""
    path: str | None = Field(default=None, exclude_if=lambda value: value is None)
    """The submodule path, for cells of a module pattern."""


class SweepRecord(_Record):
    """A location sweep: every cell's validation IIA and the chosen cell."""

    cells: list[SweepCellRecord]
    """One row per cell."""
    chosen: ChosenCell
    """The cell with the highest validation IIA."""
    test_iia: float | None
    """The chosen cell's IIA on the test pairs."""

    @classmethod
    def of(cls, result: SweepResult) -> SweepRecord:
        """The record of a sweep."""
        best = result.best
        cells = result.cells.astype(object).where(result.cells.notna(), None)
        return cls(
            cells=[SweepCellRecord.model_validate(row) for row in cells.to_dict("records")],
            chosen=ChosenCell(
                layer=best.layer,
                position=best.position,
                component=best.component,
                rank=best.rank,
                head=best.head,
                path=best.path,
            ),
            test_iia=result.test_iia,
        )

    def frame(self) -> pd.DataFrame:
        """The cells as a table (one row per cell)."""
        return pd.DataFrame([cell.model_dump() for cell in self.cells])


class RivalRecord(_Record):
    """A rival causal model verified on the same test pairs."""

    name: str
    verdict: Verdict
    reasons: list[str]
    overall_iia: float
    """The rival's IIA on every test pair."""
    overall_ci: Interval
    behavior_accuracy: float
    """How often the network agrees with the rival's output."""
    comparison: Comparison
    """This hypothesis against the rival, paired on the same pairs (one-sided)."""
    source: str | None
    """The rival's program text."""
    locations: dict[str, LocationRecord]
    """Where the rival's variables were verified: its own site, chosen on validation by
    the same search as the hypothesis's (or the experiment's location when it has none)."""

    @classmethod
    def of(
        cls, model: CausalModel, verification: Verification, comparison: Comparison
    ) -> RivalRecord:
        """The record of a rival's verification and its comparison with the hypothesis."""
        return cls(
            locations={v: LocationRecord.of(loc) for v, loc in verification.locations.items()},
            name=model.name,
            verdict=verification.verdict,
            reasons=list(verification.reasons),
            overall_iia=verification.overall.value,
            overall_ci=(verification.overall.low, verification.overall.high),
            behavior_accuracy=verification.accuracy.value,
            comparison=comparison,
            source=model.source,
        )


class ShiftRecord(_Record):
    """The verified alignment on a distribution-shifted encoding of the test pairs."""

    iia: float = Field(ge=0, le=1)
    ci: Interval
    behavior_accuracy: float
    """How often the network agrees with the causal model on the shifted inputs."""
    pairs: int


class GraphNode(_Record):
    """A variable of the causal graph."""

    name: str
    kind: Literal["input", "intermediate", "output"]
    equation: str


class GraphRecord(_Record):
    """The causal graph."""

    nodes: list[GraphNode]
    edges: list[tuple[str, str]]
    """``[parent, child]`` pairs."""


class CausalModelRecord(_Record):
    """The causal model under test."""

    name: str
    source: str | None
    """The program text (``null`` for models made with the builder)."""
    equations: dict[str, str]
    """Each computed variable's equation."""
    inputs: list[str]
    outputs: list[str]
    graph: GraphRecord
    source_hash: str

    @classmethod
    def of(cls, model: CausalModel) -> CausalModelRecord:
        """The record of a causal model."""
        graph = model.graph()
        return cls(
            name=model.name,
            source=model.source,
            equations=model.equations(),
            inputs=list(model.inputs),
            outputs=list(model.outputs),
            graph=GraphRecord(
                nodes=[GraphNode(name=n, **graph.nodes[n]) for n in graph.nodes],
                edges=[(str(a), str(b)) for a, b in graph.edges],
            ),
            source_hash=model.source_hash,
        )


class NetworkRecord(_Record):
    """The network (its weights are identified by ``network_hash``)."""

    name: str
    family: str
    layers: int
    width: int | None

    @classmethod
    def of(cls, network: Network) -> NetworkRecord:
        """The record of a network."""
        return cls(
            name=network.name, family=network.family, layers=network.n_layers, width=network.width
        )


class PairCounts(_Record):
    """Counterfactual pairs in each split (split by base input)."""

    train: int
    validation: int
    test: int
    test_exhaustive: bool = Field(default=False, exclude_if=lambda value: not value)
    """Whether the test pairs are every held-out base with every source (small input
    spaces) rather than sampled."""


class ConfigRecord(_Record):
    """How the experiment was run."""

    seed: int
    quick: bool
    """Whether the experiment's ``quick`` overrides were applied."""
    method: str
    variables: list[str]
    location: LocationRecord
    locations: dict[str, LocationRecord] | None = Field(
        default=None, exclude_if=lambda value: value is None
    )
    """Each variable's location, when the variables live at different sites (absent
    when they share one)."""
    pairs: PairCounts
    training: dict[str, JsonValue]
    """The alignment's training configuration."""
    baselines: list[str]
    dtype: str | None = Field(default=None, exclude_if=lambda value: value is None)
    """The network's weight dtype when it was not float32 (e.g. ``"bfloat16"``)."""


class Versions(_Record):
    """Versions of the libraries that shape the numbers; others as extra fields."""

    model_config = ConfigDict(extra="allow")

    abstraction: str
    torch: str
    pyvene: str
    python: str
    __pydantic_extra__: dict[str, str] = Field(init=False)


class ExperimentResult(_Record):
    """Everything an experiment found: the verdict, the evidence, and how it was run.

    This is ``results.json``: :meth:`to_json` writes it, :meth:`from_json` reads it,
    :func:`results_schema` is its JSON schema. In a notebook the result displays
    itself as a table; :meth:`to_frame` gives the numbers as pandas tables.

    A result returned by :func:`abstraction.run` also carries the
    :attr:`verification` (per-pair correctness, baselines) and the trained
    :attr:`trained_alignment`; those are not serialised.
    """

    model_config = ConfigDict(
        title="abstraction results",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    schema_version: SchemaVersion
    """The version of this format."""
    experiment: str
    """The experiment's name."""
    description: str
    verdict: Verdict
    """``faithful``, ``partial``, ``unfaithful`` or ``inconclusive``."""
    reasons: list[str]
    """The verdict's reasons, in words."""
    overall: OverallRecord
    variables: dict[str, VariableRecord]
    """The evidence per aligned variable."""
    behavior: BehaviorRecord
    baselines: list[BaselineRecord]
    counterexamples: list[Counterexample]
    """The largest groups of failing test pairs."""
    thresholds: Thresholds
    """What ``faithful`` required."""
    alignment: AlignmentRecord
    seeds: SeedSummary | None
    """IIA across alignment seeds (``null`` with one seed)."""
    sweep: SweepRecord | None
    """The location sweep (``null`` when the location was given)."""
    sweeps: dict[str, SweepRecord] | None = Field(
        default=None, exclude_if=lambda value: value is None
    )
    """One sweep per variable, when each variable's site was searched on its own."""
    rivals: list[RivalRecord]
    causal_model: CausalModelRecord
    network: NetworkRecord
    network_hash: str
    """SHA-256 prefix of the network's architecture and weights."""
    config: ConfigRecord
    versions: Versions
    timings: dict[str, float]
    """Seconds per phase."""
    shifts: dict[str, ShiftRecord]
    """Distribution-shifted test sets, reported separately from the verdict."""
    methods: MethodComparison | None = Field(default=None, exclude_if=lambda value: value is None)
    """The method comparison (``Experiment(compare_methods=[...])``; absent otherwise)."""

    _verification: Verification | None = PrivateAttr(default=None)
    _rivals: dict[str, Verification] = PrivateAttr(default_factory=dict)
    _sweep: SweepResult | None = PrivateAttr(default=None)

    @classmethod
    def assemble(
        cls,
        verification: Verification,
        *,
        experiment: str,
        description: str,
        causal_model: CausalModelRecord,
        network: NetworkRecord,
        network_hash: str,
        config: ConfigRecord,
        versions: Versions,
        timings: dict[str, float],
        seeds: SeedSummary | None = None,
        sweep: SweepResult | None = None,
        sweeps: Mapping[str, SweepResult] | None = None,
        rivals: dict[str, tuple[RivalRecord, Verification]] | None = None,
        shifts: dict[str, ShiftRecord] | None = None,
        methods: MethodComparison | None = None,
    ) -> ExperimentResult:
        """The result of a verification and the experiment around it (used by ``run``)."""
        rivals = rivals or {}
        result = cls(
            schema_version=SCHEMA_VERSION,
            experiment=experiment,
            description=description,
            verdict=verification.verdict,
            reasons=list(verification.reasons),
            overall=OverallRecord.of(verification.overall),
            variables={k: VariableRecord.of(v) for k, v in verification.variables.items()},
            behavior=BehaviorRecord.of(verification.accuracy),
            baselines=[BaselineRecord.of(b) for b in verification.baselines],
            counterexamples=list(verification.counterexamples),
            thresholds=verification.thresholds,
            alignment=AlignmentRecord.of(verification.alignment),
            seeds=seeds,
            sweep=SweepRecord.of(sweep) if sweep is not None else None,
            sweeps={v: SweepRecord.of(r) for v, r in sweeps.items()} if sweeps else None,
            rivals=[record for record, _ in rivals.values()],
            causal_model=causal_model,
            network=network,
            network_hash=network_hash,
            config=config,
            versions=versions,
            timings=timings,
            shifts=shifts or {},
            methods=methods,
        )
        result._verification = verification
        result._rivals = {name: v for name, (_, v) in rivals.items()}
        result._sweep = sweep
        return result

    # -- what run() keeps beside the file ------------------------------------------

    @property
    def verification(self) -> Verification:
        """The :class:`~abstraction.verification.Verification` (only on results from ``run``)."""
        if self._verification is None:
            raise ResultsError(
                f"the result of {self.experiment!r} was read from results.json, which holds "
                "numbers only; run the experiment (abstraction.run) to get the verification "
                "with its per-pair correctness"
            )
        return self._verification

    @property
    def trained_alignment(self) -> Alignment:
        """The verified alignment (only on results from ``run``; or load the saved one)."""
        if self._verification is None:
            raise ResultsError(
                f"the result of {self.experiment!r} was read from results.json; load the "
                "alignment `abstraction run` saved with abstraction.Alignment.load(path, network)"
            )
        return self._verification.alignment

    @property
    def rival_verifications(self) -> dict[str, Verification]:
        """Each rival's verification, by rival name (empty on results read from JSON)."""
        return dict(self._rivals)

    @property
    def sweep_result(self) -> SweepResult | None:
        """The sweep that chose the location (``None`` without a sweep, or read from JSON)."""
        return self._sweep

    # -- serialisation --------------------------------------------------------------

    def to_json(self) -> str:
        """``results.json``'s text (indented; not-a-number written as ``null``)."""
        return self.model_dump_json(indent=2) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """The parsed ``results.json`` (plain dicts, lists and numbers)."""
        data: dict[str, Any] = json.loads(self.to_json())
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentResult:
        """Read a parsed ``results.json``; raises when it does not follow the schema.

        Reading is strict, as the JSON schema is: ``"0.9"`` is not a number and
        ``"yes"`` not a boolean.
        """
        return cls.from_json(json.dumps(data))

    @classmethod
    def from_json(cls, text: str) -> ExperimentResult:
        """Read ``results.json``'s text (strictly, see :meth:`from_dict`)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ResultsError("results.json must hold a JSON object")
        check_schema_version(data)
        return cls.model_validate_json(text, strict=True)

    @classmethod
    def read(cls, path: str | Path) -> ExperimentResult:
        """Read a ``results.json`` file (or the one in a report directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        fix = (
            "run the experiment again (`abstraction run FILE`) to write a new report, or "
            "restore the file from version control"
        )
        data = read_json(path, fix=fix, what="results file")
        try:
            check_schema_version(data)
        except ResultsError:
            raise DamagedFileError(
                path,
                f"schema_version is {data.get('schema_version')!r}; this version of abstraction "
                f"reads version {SCHEMA_VERSION}",
                fix,
            ) from None
        try:
            return cls.model_validate_json(json.dumps(data), strict=True)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in error['loc']) or '(top level)'}: {error['msg']}"
                for error in exc.errors()
            ]
            shown = "; ".join(problems[:3]) + (
                f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            )
            raise DamagedFileError(
                path, f"does not follow the results schema: {shown}", fix
            ) from None

    # -- tables -----------------------------------------------------------------------

    def to_frame(
        self, kind: Literal["variables", "pairs", "baselines", "sweep", "methods"] = "variables"
    ) -> pd.DataFrame:
        """The results as a pandas table.

        Args:
            kind: ``"variables"`` - one row per variable (IIA, CI, changed-only IIA,
                best null, passed, then ``baseline.<name>`` IIAs and ``p.<name>``
                Holm p-values); ``"pairs"`` - the test pairs with a boolean ``correct``
                column (only on results from ``run``); ``"baselines"`` - one row per
                baseline run; ``"sweep"`` - one row per sweep cell; ``"methods"`` - the
                method comparison, one row per variable and method.
        """
        if kind == "variables":
            rows = []
            for name, v in self.variables.items():
                best = v.best_null()
                row: dict[str, Any] = {
                    "variable": name,
                    "iia": v.iia,
                    "ci_low": v.ci[0],
                    "ci_high": v.ci[1],
                    "changed_iia": v.changed_iia,
                    "changed_pairs": v.changed_pairs,
                    "selectivity": v.selectivity,
                    "best_null": best[0] if best else None,
                    "best_null_iia": best[1] if best else None,
                    "passed": v.passed,
                }
                row.update({f"baseline.{k}": b for k, b in v.baselines.items()})
                row.update({f"p.{k}": p for k, p in v.p_values.items()})
                rows.append(row)
            return pd.DataFrame(rows, columns=None if rows else ["variable"]).set_index("variable")
        if kind == "pairs":
            verification = self.verification
            pairs = verification.test.copy()
            pairs["correct"] = verification.correct.numpy().astype(bool)
            return pairs
        if kind == "baselines":
            return pd.DataFrame([b.model_dump() for b in self.baselines])
        if kind == "sweep":
            if self.sweep is None:
                raise ResultsError(f"{self.experiment!r} ran at a given location, without a sweep")
            return self.sweep.frame()
        if kind == "methods":
            if self.methods is None:
                raise ResultsError(
                    f"{self.experiment!r} compared no methods; give "
                    "Experiment(compare_methods=[...])"
                )
            return pd.DataFrame(
                [
                    {"variable": v, **row.model_dump()}
                    for v, rows in self.methods.variables.items()
                    for row in rows
                ]
            )
        raise ValueError(
            f"kind must be 'variables', 'pairs', 'baselines', 'sweep' or 'methods', not {kind!r}"
        )

    # -- display ------------------------------------------------------------------------

    def _repr_html_(self) -> str:
        """A compact HTML summary for Jupyter: the verdict and a row per variable."""
        import jinja2

        rows = []
        for name, v in self.variables.items():
            best = v.best_null()
            rows.append(
                {
                    "name": name,
                    "iia": v.iia,
                    "ci": v.ci,
                    "changed": v.changed_iia,
                    "null": f"{best[0]} {best[1]:.3f}" if best else "–",
                    "passed": v.passed,
                }
            )
        template = (resources.files("abstraction") / "templates" / "result.html.j2").read_text()
        env = jinja2.Environment(
            autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined
        )
        return env.from_string(template).render(
            r=self, rows=rows, colour=VERDICT_COLOURS.get(self.verdict, "#333")
        )

    def __repr__(self) -> str:
        variables = ", ".join(f"{k}={v.iia:.3f}" for k, v in self.variables.items())
        return f"ExperimentResult({self.experiment!r}, verdict={self.verdict!r}, iia: {variables})"

    def __str__(self) -> str:
        return repr(self)


def check_schema_version(data: Mapping[str, Any]) -> None:
    """Raise :class:`ResultsError` unless ``data`` is a results document of this version."""
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(
            f"results.json has schema_version {version!r}; this version of abstraction reads "
            f"version {SCHEMA_VERSION}. Run the experiment again to write a current report."
        )


@cache
def _schema_text() -> str:
    return json.dumps(ExperimentResult.model_json_schema())


def results_schema() -> dict[str, Any]:
    """The JSON schema of ``results.json``, generated from :class:`ExperimentResult`."""
    schema: dict[str, Any] = json.loads(_schema_text())
    return schema
