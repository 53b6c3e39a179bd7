"""Experiments: a hypothesis, a task, a network and a plan, run end to end.

A hypothesis file in ``hypotheses/`` declares one top-level ``experiment``::

    experiment = Experiment(
        name="hierarchical_equality",
        model=hierarchical_equality,            # the causal model (a program)
        task=zoo.task("hierarchical_equality_mlp"),
        network="hierarchical_equality_mlp",    # zoo name, local checkpoint dir, or Network
        variables=["wx", "yz"],
        location=Location(layer=0),             # or search=Search(layers=..., positions=...)
        subspaces={"wx": (0, 8), "yz": (8, 16)},
    )

:func:`run` generates counterfactual pairs, splits them by base input, chooses the
location on validation (when ``search`` is given), verifies the hypothesis and any
rivals on the same test pairs, and returns an :class:`~abstraction.results.ExperimentResult`
that :mod:`abstraction.report` renders. The CLI's ``abstraction run FILE`` does exactly
this; everything is available from Python too.
"""

from __future__ import annotations

import platform
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from abstraction.alignment.das import TrainingConfig, reproducible
from abstraction.alignment.method import Method, method_named, method_names
from abstraction.alignment.prefix_cache import MemoryWarning, budgeted, memory_shortfall
from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.alignment.result import library_versions
from abstraction.alignment.sweep import Cell, SweepResult, planned_cells, sweep
from abstraction.baselines import BASELINES, random_weights
from abstraction.causal_model import CausalModel
from abstraction.counterfactuals import (
    counterfactual_dataset,
    exhaustive_size,
    relabel,
    samples_whole_domain,
    split_by_base,
)
from abstraction.errors import (
    AbstractionError,
    AlignmentError,
    DeclarationError,
    DomainError,
    nearest,
)
from abstraction.featurizers import Featurizer
from abstraction.interventions import Patch
from abstraction.locations import Location, resolve, split_position
from abstraction.network import Network, resolve_device, resolve_dtype
from abstraction.results import (
    CausalModelRecord,
    ConfigRecord,
    ExperimentResult,
    LocationRecord,
    MethodComparison,
    MethodRow,
    NetworkRecord,
    PairCounts,
    RivalRecord,
    ShiftRecord,
    Versions,
)
from abstraction.statistics import iia
from abstraction.task import Task
from abstraction.verdict import Thresholds
from abstraction.verification import Verification, compare, rows_for, verify

__all__ = ["EXHAUSTIVE_TEST_LIMIT", "Experiment", "Search", "load_network", "run"]

EXHAUSTIVE_TEST_LIMIT = 250_000
"""The most pairs ``test_pairs="auto"`` enumerates (every held-out base x every source)."""


@dataclass(frozen=True)
class Search:
    """Where to look for the variables: every combination is tried, chosen on validation.

    Attributes:
        layers: layers (default: all).
        positions: token positions (ints or task-named positions; ``None`` for MLPs).
        components: components, e.g. ``("residual", "mlp_output", "head")``.
        ranks: dimensions per variable.
        heads: heads tried for the ``"head"`` component (default: every head).
        head_positions: positions where the ``"head"`` component is tried (default:
            ``positions``), e.g. ``["last"]`` for every head at the last token only.
        head_layers: layers where the ``"head"`` component is tried (default: ``layers``).
        modules: submodule-path patterns with ``{layer}`` (``"blocks.{layer}.mlp"``,
            ``":input"`` for a module's input), for networks of any family; set
            ``components=()`` to search only these.
        methods: alignment methods tried at every cell (default: the experiment's
            ``method``); the method and cell with the best validation IIA are verified.
            Feature methods (``dbm``, ``pca``, ``sae``) learn their own size, so they
            are tried once per location, not once per rank.
    """

    layers: Sequence[int] | None = None
    positions: Sequence[int | str | None] = (None,)
    components: Sequence[str] = ("residual",)
    ranks: Sequence[int] = (1,)
    heads: Sequence[int] | None = None
    modules: Sequence[str] = ()
    methods: Sequence[str] | None = None
    head_positions: Sequence[int | str | None] | None = None
    head_layers: Sequence[int] | None = None


@dataclass
class Experiment:
    """One experiment: what to test, on what network, and how.

    Attributes:
        name: names the report directory.
        model: the causal model under test.
        task: turns the model's inputs into network inputs and outputs into labels.
        network: a zoo name, a local ``save_pretrained`` directory, a
            :class:`Network`, or a function returning one.
        variables: the causal variables to align.
        location: where to look (give this or ``search``): one location, or one per
            variable (e.g. IOI's subject at ``s.last`` and another variable at
            ``last``), trained together with joint multi-source interchanges.
        search: a sweep over locations, chosen on validation; or one sweep per
            variable (``{"s": Search(...), "io": Search(...)}``), each run on the pairs
            that intervene on that variable alone, after which the variables are
            trained together at their chosen sites.
        method: ``"das"``, ``"low_rank"``, ``"boundless"``, ``"patch"``, or a learned
            binary mask over features: ``"dbm"`` (neurons, or ``featurizer``'s
            features), ``"pca"`` (principal components of the training activations),
            ``"sae"`` (``featurizer``, or an SAE trained on the training activations).
        featurizer: for ``"dbm"`` and ``"sae"``: the featurizer whose features the mask
            selects (e.g. :func:`~abstraction.featurizers.load_sae`).
        compare_methods: methods run beside ``method`` at the same site(s), each with its
            untrained-network null (the same method on random weights): a table per
            variable in ``results.json`` (``methods``) and the report, and the verdict of
            the method with the best validation IIA. ``method``'s own verdict is the
            experiment's.
        rank: dimensions per variable (when ``subspaces`` is not given); default 1 for
            DAS, as a :class:`Search` tries by default (the report states it).
        subspaces: explicit column ranges per variable, e.g. ``{"wx": (0, 8)}``.
        interventions: intervention sets (default: each variable, and all together).
        pairs: counterfactual pairs generated (split by base into train/val/test).
        split: fractions of bases in train, validation and test.
        test_pairs: ``"auto"`` (default): when the samplers draw from the inputs' whole
            domains (the built-in ones do) and the inputs are few enough that every
            held-out base with every source makes at most ``EXHAUSTIVE_TEST_LIMIT``
            pairs, the test split is all of those pairs (every input not used as a
            train or validation base, whether sampled or not, with every source);
            otherwise the sampled test pairs. ``"sampled"`` or ``"exhaustive"`` force
            one (``"exhaustive"`` fails when the inputs cannot be enumerated).
        sampler: how bases are drawn (see :func:`counterfactual_dataset`).
        source_sampler: how sources are drawn.
        training: the alignment's training configuration.
        thresholds: what ``faithful`` requires.
        seeds: alignment seeds (seed variability is reported when more than one).
        baselines: baselines to run.
        rivals: alternative causal models (same variable names) compared on the same
            pairs, each at its own site chosen by the same search.
        rival_search: the search that chooses each rival's site, when it should be
            narrower than ``search`` (a rival's sweep costs as much as the
            hypothesis's); the report names each rival's chosen site.
        shifts: distribution-shifted test sets, reported separately: name -> another
            encoding of the same inputs (unseen entity vectors, another template).
        quick: overrides applied by ``--quick`` (e.g. ``{"pairs": 20000}``).
        description: shown at the top of the report.
    """

    name: str
    model: CausalModel
    task: Task
    network: str | Path | Network | Callable[[], Network]
    variables: Sequence[str]
    location: Location | Mapping[str, Location] | None = None
    search: Search | Mapping[str, Search] | None = None
    method: str = "das"
    featurizer: Featurizer | None = None
    compare_methods: Sequence[str] = ()
    rank: int | Mapping[str, int] | None = None
    subspaces: Mapping[str, tuple[int, int]] | None = None
    interventions: Sequence[Sequence[str]] | None = None
    pairs: int = 100_000
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    test_pairs: Literal["auto", "sampled", "exhaustive"] = "auto"
    sampler: Any = "output"
    source_sampler: Any = "value"
    training: TrainingConfig = field(default_factory=TrainingConfig)
    thresholds: Thresholds = field(default_factory=Thresholds)
    seeds: int = 1
    baselines: Sequence[str] = BASELINES
    rivals: Sequence[CausalModel] = ()
    rival_search: Search | Mapping[str, Search] | None = None
    shifts: Mapping[str, Task] = field(default_factory=dict)
    quick: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if self.test_pairs not in ("auto", "sampled", "exhaustive"):
            raise DeclarationError(
                f"experiment {self.name!r}: test_pairs={self.test_pairs!r} is not a choice",
                "give test_pairs='auto', 'sampled' or 'exhaustive'",
            )
        if (self.location is None) == (self.search is None):
            raise DeclarationError(
                f"experiment {self.name!r} needs exactly one of location= or search=",
                "give location=Location(layer=..., ...) to verify one site, or "
                "search=Search(layers=..., positions=...) to choose the site on validation",
            )
        for v in self.variables:
            self.model.check_variable(v, role="aligned")
        for option, per_variable in (("location", self.location), ("search", self.search)):
            if not isinstance(per_variable, Mapping):
                continue
            missing = [v for v in self.variables if v not in per_variable]
            extra = [v for v in per_variable if v not in self.variables]
            if missing or extra:
                raise DeclarationError(
                    f"experiment {self.name!r} gives {option}s for {sorted(per_variable)} but "
                    f"aligns {list(self.variables)}",
                    f"give {option}={{variable: ...}} with exactly one entry per aligned variable",
                )
        for method in (self.method, *self.compare_methods):
            _declared_method(self.name, method, "unknown method")
        for method in self.compare_methods:
            if _declared_method(self.name, method).one_variable and len(self.variables) > 1:
                raise DeclarationError(
                    f"experiment {self.name!r} compares {method!r}, which aligns one variable",
                    f"leave {method!r} out of compare_methods, or align one variable",
                )
        searches = self.search.values() if isinstance(self.search, Mapping) else [self.search]
        for each in searches:
            for method in (each.methods or ()) if each is not None else ():
                _declared_method(self.name, method, "Search(methods=...) names unknown method")
            if isinstance(self.search, Mapping) and each is not None and each.methods:
                raise DeclarationError(
                    f"experiment {self.name!r} searches each variable's site on its own and "
                    "gives Search(methods=...)",
                    "give methods= with one search for all variables, or method= here",
                )
        if self.featurizer is not None and self.search is not None:
            raise DeclarationError(
                f"experiment {self.name!r} gives a featurizer and a search",
                "a featurizer reads one site: give location= with featurizer=",
            )
        if (
            isinstance(self.location, Mapping)
            and _declared_method(self.name, self.method).one_variable
            and len(set(self.location.values())) > 1
        ):
            raise DeclarationError(
                f"method {self.method!r} aligns one variable at one site",
                "use method='das' for variables at several sites",
            )
        for option, given in (("subspaces", self.subspaces), ("rank", self.rank)):
            if not isinstance(given, Mapping):
                continue
            for key in given:
                if key not in self.variables:
                    raise DeclarationError(
                        f"experiment {self.name!r}: {option}= names {key!r}, which is not one "
                        f"of the aligned variables {list(self.variables)}; "
                        + nearest(key, self.variables),
                        f"key {option}= by the names in variables=[...]",
                    )
            missing = [v for v in self.variables if v not in given]
            if missing:
                raise DeclarationError(
                    f"experiment {self.name!r}: {option}= gives nothing for {missing}",
                    f"give every aligned variable an entry in {option}=",
                )
        if self.task.model is not self.model:
            self.task = self.task.with_model(self.model)
        self._check_positions()
        self.shifts = {
            name: task if task.model is self.model else task.with_model(self.model)
            for name, task in self.shifts.items()
        }
        for rival in self.rivals:
            for v in self.variables:
                rival.check_variable(v, role="aligned")

    def _check_positions(self) -> None:
        """Named positions must be ones the task defines (checked before any data is made)."""
        known = self.task.positions
        if not known:
            return
        wanted: list[int | str | None] = []
        if self.location is not None:
            wanted.extend(loc.position for loc in _locations(self.location))
        searches = self.search.values() if isinstance(self.search, Mapping) else [self.search]
        for search in searches:
            if search is not None:
                wanted.extend(search.positions)
                wanted.extend(search.head_positions or ())
        for position in wanted:
            if not isinstance(position, str):
                continue
            name = position if position in known else split_position(position)[0]
            if name != "last" and name not in known:
                raise DeclarationError(
                    f"experiment {self.name!r} looks at position {position!r}, which task "
                    f"{self.task.name!r} does not define; {nearest(name, ['last', *known])}",
                    "use one of the task's positions (a slot that every template fills, as "
                    "'<slot>.first' or '<slot>.last', or 'last'), optionally with an offset",
                )

    def quick_version(self) -> Experiment:
        """The experiment with its ``quick`` overrides (and smaller defaults) applied."""
        overrides: dict[str, Any] = {
            "pairs": min(self.pairs, 20_000),
            "seeds": 1,
            "training": replace(self.training, epochs=min(self.training.epochs, 3)),
        }
        overrides.update(self.quick)
        return replace(self, **overrides)


def load_network(spec: str | Path | Network | Callable[[], Network], seed: int = 0) -> Network:
    """A network from a zoo name, a local checkpoint directory, a GGUF file, a Network, or a
    factory."""
    from abstraction import zoo

    if isinstance(spec, Network):
        return spec
    if callable(spec) and not isinstance(spec, (str, Path)):
        network = spec()
        if not isinstance(network, Network):
            raise AbstractionError("the network factory must return an abstraction.Network")
        return network
    path = Path(spec)
    if path.is_dir():
        return Network.from_pretrained(path)
    if path.suffix.lower() == ".gguf":
        return Network.from_gguf(path)
    return zoo.load(str(spec), seed=seed)


@budgeted
@reproducible
def run(
    experiment: Experiment,
    *,
    seed: int = 0,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
    sweep_directory: str | Path | None = None,
    alignment_path: str | Path | None = None,
    device: str | torch.device | None = None,
    memory_budget: int | None = None,
    dtype: str | torch.dtype | None = None,
) -> ExperimentResult:
    """Run an experiment end to end and return its results.

    Like :func:`~abstraction.align` and :func:`~abstraction.verify`, it runs with a fixed
    torch thread count and leaves the caller's global RNG untouched, so its numbers do not
    depend on either. The result holds the verdict and every reported number
    (``result.to_json()`` is ``results.json``; ``result.to_frame()`` a table), and carries
    the :class:`~abstraction.verification.Verification` and the trained alignment.

    Args:
        experiment: what to run.
        seed: seeds data generation, splits and alignment.
        quick: apply the experiment's ``quick`` overrides (a small, fast run).
        progress: called with a message at the start of each phase.
        sweep_directory: where sweep cells are persisted (resumable).
        alignment_path: where the verified alignment is saved (safetensors + JSON).
        device: run the network there (``"cpu"``, ``"cuda"``, ...; default: where it
            was loaded, the CPU for zoo names and checkpoints).
        memory_budget: bytes of cached activations each prefix cache holds in RAM
            before it moves to memory-mapped files (default:
            :func:`~abstraction.alignment.prefix_cache.memory_budget`, 2 GiB).
        dtype: cast the network's weights to this dtype (``"bfloat16"``, ``"float16"``,
            ``"float32"``; default: as loaded, float32 for zoo names and checkpoints);
            caches take it too, alignments train in float32. Recorded in the report.
    """
    exp = experiment.quick_version() if quick else experiment
    timings: dict[str, float] = {}

    def phase(message: str) -> float:
        if progress is not None:
            progress(message)
        return time.perf_counter()

    start = phase("loading the network")
    if device is not None:
        resolve_device(device)  # a bad device fails before the network is loaded
    if dtype is not None:
        dtype = resolve_dtype(dtype)
    network = load_network(exp.network).to(device, dtype=dtype)
    exp.task.check_network(network)  # output width and inputs, before any data is made
    timings["network"] = time.perf_counter() - start
    shortfall = memory_shortfall(network, memory_budget)
    if shortfall is not None:  # said up front, not discovered by the OOM killer
        warnings.warn(shortfall, MemoryWarning, stacklevel=2)
        if progress is not None:
            progress(f"warning: {shortfall}")
    if quick:
        exp, thinned = _quick_layers(exp, network.n_layers)
        if thinned and progress is not None:
            progress(f"quick: sweeping layers {thinned} of {network.n_layers}")
    sets = (
        [list(s) for s in exp.interventions]
        if exp.interventions
        else (
            [[v] for v in exp.variables] + ([list(exp.variables)] if len(exp.variables) > 1 else [])
        )
    )
    if exp.location is not None:  # bad locations fail before any data is made
        for where in _locations(exp.location):
            resolve(network, where)
    start = phase(f"generating {exp.pairs:,} counterfactual pairs")
    data = counterfactual_dataset(
        exp.model,
        exp.pairs,
        sets,
        sampler=exp.sampler,
        source_sampler=exp.source_sampler,
        seed=seed,
    )
    train, validation, test = split_by_base(data, exp.split, seed=seed)
    every = _every_heldout_pair(exp, sets, train, validation)
    test = every if every is not None else test
    timings["data"] = time.perf_counter() - start
    training = replace(exp.training, seed=seed)

    start = (
        phase("sweeping locations (chosen on validation)")
        if exp.search is not None
        else time.perf_counter()
    )
    found = _locate(
        network, exp, exp.task, (train, validation, test), training, sweep_directory, progress
    )
    if exp.search is not None:
        timings["sweep"] = time.perf_counter() - start
    sweep_result, sweeps = found.sweep, found.sweeps
    location, rank, method = found.location, found.rank, found.method

    start = phase("verifying the hypothesis")
    verification = verify(
        network,
        exp.task,
        train,
        validation,
        test,
        location,
        list(exp.variables),
        method=method,
        rank=rank,
        subspaces=exp.subspaces,
        config=training,
        thresholds=exp.thresholds,
        baselines=exp.baselines,
        progress=progress,
        alignment=sweep_result.alignment if sweep_result is not None else None,
        alignment_seeds=exp.seeds,
        featurizer=exp.featurizer if method_named(method).takes_featurizer else None,
    )
    timings["verify"] = time.perf_counter() - start
    methods = None
    if exp.compare_methods:
        start = phase(f"comparing methods {', '.join(exp.compare_methods)}")
        methods = _compare_methods(
            network, exp, (train, validation, test), verification, rank, training, progress
        )
        timings["methods"] = time.perf_counter() - start
    if alignment_path is not None:
        _save_alignments(verification, Path(alignment_path))

    shifts: dict[str, ShiftRecord] = {}
    for name, shifted_task in exp.shifts.items():
        start = phase(f"scoring the shifted test set {name!r}")
        shifts[name] = _shifted(network, shifted_task, test, verification, list(exp.variables))
        timings[f"shift:{name}"] = time.perf_counter() - start

    rivals: dict[str, tuple[RivalRecord, Verification]] = {}
    for rival in exp.rivals:
        start = phase(f"verifying rival {rival.name}")
        rival_task = exp.task.with_model(rival)
        rival_splits = (relabel(train, rival), relabel(validation, rival), relabel(test, rival))
        # The rival gets the same search as the hypothesis (its own site, on validation),
        # so that it is compared at its best, not at the hypothesis's site.
        # (rival_search, when given, narrows it: a rival's sweep costs as much as the
        # hypothesis's)
        searched = exp if exp.rival_search is None else replace(exp, search=exp.rival_search)
        rival_found = (
            _locate(
                network, searched, rival_task, rival_splits, training, sweep_directory, progress
            )
            if searched.search is not None
            else found
        )
        rival_verification = verify(
            network,
            rival_task,
            *rival_splits,
            rival_found.location,
            list(exp.variables),
            method=rival_found.method,
            rank=rival_found.rank,
            subspaces=exp.subspaces,
            config=training,
            thresholds=exp.thresholds,
            baselines=("random_subspace",),
            alignment=(rival_found.sweep.alignment if rival_found.sweep is not None else None),
        )
        comparison = compare(verification, rival_verification)
        rivals[rival.name] = (
            RivalRecord.of(rival, rival_verification, comparison),
            rival_verification,
        )
        timings[f"rival:{rival.name}"] = time.perf_counter() - start

    return ExperimentResult.assemble(
        verification,
        experiment=exp.name,
        description=exp.description,
        causal_model=CausalModelRecord.of(exp.model),
        network=NetworkRecord.of(network),
        network_hash=network.hash,
        config=ConfigRecord(
            seed=seed,
            quick=quick,
            method=method,
            variables=list(exp.variables),
            location=LocationRecord.of(verification.alignment.location),
            locations=(
                {v: LocationRecord.of(loc) for v, loc in verification.locations.items()}
                if verification.multi_site
                else None
            ),
            pairs=PairCounts(
                train=len(train),
                validation=len(validation),
                test=len(test),
                test_exhaustive=bool(test.attrs.get("exhaustive", False)),
            ),
            training=training.to_dict(),
            baselines=list(exp.baselines),
            dtype=None if network.dtype == torch.float32 else str(network.dtype).split(".")[-1],
        ),
        versions=Versions.model_validate(
            {**library_versions(), "python": platform.python_version()}
        ),
        timings={k: round(v, 2) for k, v in timings.items()},
        seeds=verification.seeds,
        sweep=sweep_result,
        sweeps=sweeps,
        rivals=rivals,
        shifts=shifts,
        methods=methods,
    )


def _compare_methods(
    network: Network,
    exp: Experiment,
    splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    main: Verification,
    rank: int | Mapping[str, int] | None,
    training: TrainingConfig,
    progress: Callable[[str], None] | None,
) -> MethodComparison:
    """Every method of ``exp.compare_methods`` at the verified site(s), with its nulls.

    Each method is verified on the same pairs with the random-subspace, untrained and
    mean-ablation nulls (those of ``exp.baselines``; the untrained one always), so each
    has its own verdict; the best on validation IIA gives the comparison's verdict. The
    untrained null of the full patch is the patch of the random network.
    """
    train, validation, test = splits
    variables = list(exp.variables)
    locations = main.locations
    where: Location | Mapping[str, Location] = (
        dict(locations) if main.multi_site else main.alignment.location
    )
    nulls = tuple(b for b in exp.baselines if b in ("random_subspace", "mean_ablation"))
    results: dict[str, Verification] = {}
    for method in exp.compare_methods:
        if method == exp.method and "untrained" in exp.baselines:
            results[method] = main
            continue
        if progress is not None:
            progress(f"method {method}")
        results[method] = verify(
            network,
            exp.task,
            train,
            validation,
            test,
            where,
            variables,
            method=method,
            rank=None if method_named(method).featurized else rank,
            subspaces=exp.subspaces if method_named(method).takes_subspaces else None,
            config=training,
            thresholds=exp.thresholds,
            # the patch's untrained null is the random network patched (below); verify's
            # own would train DAS there
            baselines=(*nulls, "untrained") if method_named(method).trained else (),
            featurizer=exp.featurizer if method_named(method).takes_featurizer else None,
        )
    untrained_patch: dict[str, float] = {}
    if any(not method_named(m).trained for m in results):  # the full patch
        fresh = random_weights(network, seed=1)
        engine = PreparedInterchanges(fresh, exp.task, test, locations, variables)
        try:
            correct = engine.correct({v: Patch(locations[v]) for v in variables}).numpy()
        finally:
            engine.close()
        for v in variables:
            rows = rows_for(test, v)  # the rows verify scores the variable on
            untrained_patch[v] = float(correct[rows].mean())
    rows_by_variable: dict[str, list[MethodRow]] = {v: [] for v in variables}
    validation_iia: dict[str, float] = {}
    for method, verified in results.items():
        curve = verified.alignment.curve
        scores = [float(value) for c in curve if (value := c.get("val_iia")) is not None]
        validation_iia[method] = max(scores, default=float("nan"))
        for v in variables:
            alignment = next(a for a in verified.alignments if v in a.variables)
            result = verified.variables[v]
            width = int(alignment.basis.shape[0]) if alignment.basis is not None else 0
            featurizer = alignment.featurizer
            units = alignment.units[v]
            rows_by_variable[v].append(
                MethodRow(
                    method=method,
                    units=units,
                    of=featurizer.features if featurizer is not None else (width or units),
                    iia=result.iia.value,
                    ci=(result.iia.low, result.iia.high),
                    untrained_iia=(
                        untrained_patch[v]
                        if not method_named(method).trained
                        else result.baselines.get("untrained")
                    ),
                    validation_iia=validation_iia[method],
                    passed=result.passed,
                )
            )
    best = max(results, key=lambda m: (validation_iia[m], -list(results).index(m)))
    return MethodComparison(
        locations={v: LocationRecord.of(loc) for v, loc in locations.items()},
        variables=rows_by_variable,
        best=best,
        verdict=results[best].verdict,
    )


@dataclass(frozen=True)
class _Located:
    """Where an experiment's variables are verified, and the sweeps that chose it."""

    location: Location | Mapping[str, Location]
    rank: int | Mapping[str, int] | None
    method: str
    sweep: SweepResult | None = None
    sweeps: Mapping[str, SweepResult] = field(default_factory=dict)


def _locate(
    network: Network,
    exp: Experiment,
    task: Task,
    splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    training: TrainingConfig,
    directory: str | Path | None,
    progress: Callable[[str], None] | None = None,
) -> _Located:
    """The experiment's location, or the one its search chooses on validation for ``task``
    (``progress`` hears of each sweep cell as it finishes)."""

    done = 0
    started = time.perf_counter()
    total = _planned(network, exp)

    def cell_done(cell: Cell, val_iia: float) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            elapsed = time.perf_counter() - started
            left = (
                f"; about {_duration(elapsed / done * (total - done))} left" if total > done else ""
            )
            progress(
                f"sweeping: cell {done} of {total} done, {cell.key} (validation IIA "
                f"{val_iia:.3f}){left}"
            )

    def run_sweep(
        search: Search, variables: list[str], *pairs: pd.DataFrame, method: str = exp.method
    ) -> SweepResult:
        return sweep(
            network,
            task,
            pairs[0],
            pairs[1],
            variables,
            layers=search.layers,
            positions=search.positions,
            components=search.components,
            heads=search.heads,
            head_positions=search.head_positions,
            head_layers=search.head_layers,
            modules=search.modules,
            ranks=search.ranks[:1] if method_named(method).featurized else search.ranks,
            method=method,
            test=pairs[2],
            config=training,
            directory=directory,
            progress=cell_done,
        )

    if isinstance(exp.search, Mapping):
        sweeps = {}
        for v, search in exp.search.items():
            alone = [split[split["intervened"].astype(str) == v] for split in splits]
            if any(len(split) == 0 for split in alone):
                raise DeclarationError(
                    f"no pairs intervene on {v!r} alone, so its site cannot be searched on its own",
                    f"include [{v!r}] in interventions=",
                )
            sweeps[v] = run_sweep(search, [v], *alone)
        return _Located(
            {v: result.best.location for v, result in sweeps.items()},
            {v: result.best.rank for v, result in sweeps.items()},
            exp.method,
            sweeps=sweeps,
        )
    if exp.search is not None:
        methods = list(exp.search.methods or [exp.method])
        results = {
            m: run_sweep(exp.search, list(exp.variables), *splits, method=m) for m in methods
        }
        # the best validation IIA over methods; ties go to the method listed first
        chosen = max(
            methods, key=lambda m: (float(results[m].cells["val_iia"].max()), -methods.index(m))
        )
        result = results[chosen]
        return _Located(result.best.location, result.best.rank, chosen, sweep=result)
    assert exp.location is not None
    return _Located(exp.location, _rank(exp), exp.method)


QUICK_LAYERS = 8
"""A quick run's sweep over every layer of a deeper network tries this many, evenly spaced."""


def _quick_layers(exp: Experiment, n_layers: int) -> tuple[Experiment, list[int]]:
    """The experiment with each search over every layer thinned to :data:`QUICK_LAYERS`
    evenly spaced layers (a quick run on a 30-layer model stays quick), and those layers."""
    if exp.search is None or n_layers <= QUICK_LAYERS:
        return exp, []
    step = n_layers / QUICK_LAYERS
    layers = sorted({round(step * (i + 0.5)) for i in range(QUICK_LAYERS)})

    def thin(search: Search) -> Search:
        return replace(search, layers=layers) if search.layers is None else search

    if isinstance(exp.search, Mapping):
        searches = {v: thin(s) for v, s in exp.search.items()}
        changed = any(s.layers is None for s in exp.search.values())
        return replace(exp, search=searches), layers if changed else []
    if exp.search.layers is not None:
        return exp, []
    return replace(exp, search=thin(exp.search)), layers


def _declared_method(experiment: str, name: str, problem: str = "unknown method") -> Method:
    """The method an experiment names, or a declaration error that lists the methods."""
    try:
        return method_named(name)
    except AlignmentError:
        raise DeclarationError(
            f"experiment {experiment!r}: {problem} {name!r}",
            f"use one of {', '.join(method_names())}; " + nearest(name, method_names()),
        ) from None


def _rank(exp: Experiment) -> int | Mapping[str, int] | None:
    """The rank a fixed location is aligned with: ``exp.rank``, else 1 per variable for DAS
    (as :class:`Search` defaults to), never the whole site, which is a full patch."""
    fixed = method_named(exp.method).experiment_rank
    if exp.rank is None and exp.subspaces is None and fixed is not None:
        return fixed
    return exp.rank


def _planned(network: Network, exp: Experiment) -> int:
    """How many sweep cells the experiment's search trains (every method, every search)."""
    if exp.search is None:
        return 0
    searches = list(exp.search.values()) if isinstance(exp.search, Mapping) else [exp.search]
    total = 0
    for search in searches:
        methods = list(search.methods or [exp.method])
        for method in methods:
            total += planned_cells(
                network,
                layers=search.layers,
                positions=search.positions,
                components=search.components,
                heads=search.heads,
                modules=search.modules,
                head_positions=search.head_positions,
                head_layers=search.head_layers,
                ranks=search.ranks[:1] if method_named(method).featurized else search.ranks,
            )
    return total


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min``, ``1.5 h``: an estimate, rounded to what it is worth."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _every_heldout_pair(
    exp: Experiment, sets: list[list[str]], train: pd.DataFrame, validation: pd.DataFrame
) -> pd.DataFrame | None:
    """Every held-out base with every source, when the experiment asks for it or the
    inputs are few enough (a sampled test split of a small input space holds a handful
    of distinct bases, each many times, and its CI is narrower than the truth)."""
    if exp.test_pairs == "sampled":
        return None
    sources = exp.source_sampler if exp.source_sampler is not None else exp.sampler
    if exp.test_pairs == "auto" and not (
        samples_whole_domain(exp.sampler) and samples_whole_domain(sources)
    ):
        return None  # the sampler draws from part of the domain: enumerating would leave it
    used = np.union1d(train["base_id"].to_numpy(), validation["base_id"].to_numpy())
    try:
        size = exhaustive_size(exp.model, sets, exclude_bases=used)
    except DomainError:
        if exp.test_pairs == "exhaustive":
            raise
        return None
    if exp.test_pairs == "auto" and size > EXHAUSTIVE_TEST_LIMIT:
        return None
    return counterfactual_dataset(
        exp.model, interventions=sets, exhaustive=True, exclude_bases=used
    )


def _locations(location: Location | Mapping[str, Location]) -> list[Location]:
    return list(location.values()) if isinstance(location, Mapping) else [location]


def _save_alignments(verification: Verification, path: Path) -> None:
    """One alignment: ``path``; one per site: ``path-site0``, ``path-site1``, ..."""
    if not verification.multi_site:
        verification.alignment.save(path)
        return
    for i, alignment in enumerate(verification.alignments):
        alignment.save(path.with_name(f"{path.name}-site{i}"))


def _shifted(
    network: Network, task: Task, test: Any, verification: Verification, variables: list[str]
) -> ShiftRecord:
    """IIA and task agreement of the verified alignment on a shifted encoding of the test pairs."""
    from abstraction.alignment.das import evaluate

    engine = PreparedInterchanges(network, task, test, verification.locations, variables)
    try:
        correct = evaluate(verification.alignments, engine).numpy()
        solved = (engine.predict(None) == engine.base_labels).numpy()
    finally:
        engine.close()
    bases = test["base_id"].to_numpy()
    estimate = iia(correct, bases)
    first = ~pd.Series(bases).duplicated().to_numpy()
    return ShiftRecord(
        iia=estimate.value,
        ci=(estimate.low, estimate.high),
        behavior_accuracy=float(solved[first].mean()),
        pairs=len(test),
    )
