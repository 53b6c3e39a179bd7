"""Verification: gather the evidence that the causal model is a faithful abstraction.

:func:`verify` trains the alignment (or takes one), scores it on held-out test pairs,
runs the null baselines and the illusion diagnostics, computes the statistics, and
hands the evidence (:mod:`abstraction.evidence`) to :func:`abstraction.verdict.decide`
for the verdict. :func:`compare` tests two verifications on the same pairs (a
hypothesis against a rival).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from abstraction.alignment.das import TrainingConfig, align_sites, evaluate, reproducible
from abstraction.alignment.masks import Featurizers
from abstraction.alignment.prefix_cache import budgeted
from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.alignment.result import Alignment
from abstraction.baselines import BASELINES, BaselineResult, run_baselines
from abstraction.diagnostics import diagnose, output_agreement
from abstraction.evidence import (
    Counterexample,
    Diagnostics,
    Evidence,
    NullEvidence,
    VariableEvidence,
)
from abstraction.locations import Location
from abstraction.network import Network
from abstraction.statistics import (
    Comparison,
    Estimate,
    SeedSummary,
    adjust,
    breakdown,
    iia,
    paired_test,
    seed_summary,
)
from abstraction.task import Task
from abstraction.verdict import NULLS, Thresholds, Verdict, decide, still_rising

__all__ = ["VariableResult", "Verification", "compare", "rows_for", "verify"]


@dataclass
class VariableResult:
    """The evidence for one causal variable, and what :func:`decide` made of it.

    Attributes:
        name: the variable.
        iia: IIA on the test pairs that intervene on this variable alone (or, without
            such pairs, on every pair that intervenes on it), CI clustered by base; with
            several alignment seeds, the multi-bootstrap over seeds x bases.
        changed_iia: the same on the pairs whose label changes (``None`` when none do).
        per_set: IIA per intervention set that includes the variable.
        per_value: IIA per value the variable takes in the source.
        baselines: each baseline's IIA on the same pairs (``mean_ablation_accuracy``:
            task accuracy with the variable's subspace mean-ablated).
        p_values: Holm-adjusted one-sided p-values against each informative null.
        raw_p_values: the same before adjustment.
        selectivity: IIA minus the control task's IIA (``None`` without a control).
        changed_pairs: test pairs that change the label.
        passed: whether the variable meets every requirement of ``faithful``.
        reasons: why, in words.
        per_seed: IIA of each alignment seed on the same pairs.
        not_informative: null -> why it is not informative here (it does not decide).
        diagnostics: the illusion diagnostics (``None`` when not measured).
        output_agreement: share of test inputs on which it is a function of the output.
        flags: which of :data:`FLAGS` it raised.
    """

    name: str
    iia: Estimate
    changed_iia: Estimate | None
    per_set: dict[str, Estimate]
    per_value: dict[str, Estimate]
    baselines: dict[str, float]
    p_values: dict[str, float]
    raw_p_values: dict[str, float]
    selectivity: float | None
    changed_pairs: int
    passed: bool
    reasons: list[str]
    per_seed: list[float] = field(default_factory=list)
    not_informative: dict[str, str] = field(default_factory=dict)
    diagnostics: Diagnostics | None = None
    output_agreement: float | None = None
    flags: list[str] = field(default_factory=list)


@dataclass
class Verification:
    """Everything :func:`verify` found, and the verdict.

    Attributes:
        verdict: ``faithful``, ``partial``, ``unfaithful`` or ``inconclusive``.
        reasons: the verdict's reasons, in words.
        variables: the evidence per variable.
        overall: IIA on every test pair (over seeds x bases with several seeds).
        accuracy: how often the network's own output agrees with the causal model's
            (one value per base input).
        counterexamples: the largest groups of failing pairs (first seed).
        alignment: the verified alignment (the first site's, with one site per variable).
        baselines: every baseline's per-pair correctness.
        thresholds: what ``faithful`` required.
        correct: per-pair correctness of the alignment (first seed) on ``test``.
        test: the test pairs.
        alignments: one alignment per site (first seed).
        seed_correct: ``(seeds, pairs)`` correctness of every alignment seed.
        seeds: IIA across alignment seeds (``None`` with one seed).
    """

    verdict: Verdict
    reasons: list[str]
    variables: dict[str, VariableResult]
    overall: Estimate
    accuracy: Estimate
    counterexamples: list[Counterexample]
    alignment: Alignment
    baselines: list[BaselineResult]
    thresholds: Thresholds
    correct: torch.Tensor = field(repr=False)
    test: pd.DataFrame = field(repr=False)
    alignments: tuple[Alignment, ...] = ()
    seed_correct: torch.Tensor | None = field(default=None, repr=False)
    seeds: SeedSummary | None = None

    def __post_init__(self) -> None:
        if not self.alignments:
            self.alignments = (self.alignment,)

    @property
    def locations(self) -> dict[str, Location]:
        """Each verified variable's location."""
        return {v: a.location for a in self.alignments for v in a.variables}

    @property
    def multi_site(self) -> bool:
        """Whether the variables were aligned at more than one site."""
        return len(self.alignments) > 1


def rows_for(test: pd.DataFrame, variable: str) -> np.ndarray:
    single = (test["intervened"].astype(str) == variable).to_numpy()
    if single.any():
        return single
    mask: np.ndarray = test[f"do.{variable}"].to_numpy(dtype=bool)
    return mask


COUNTEREXAMPLE_LABELS = 10
"""Counterexamples are grouped by base and counterfactual label when the test pairs have
at most this many distinct labels; otherwise by whether the label changes."""


def _counterexamples(
    test: pd.DataFrame, correct: np.ndarray, variables: Sequence[str], top: int
) -> list[Counterexample]:
    failing = test[~correct]
    if len(failing) == 0:
        return []
    # Labels that are entities (IOI's names) would make every group one pair: group such
    # failures by whether the intervention should change the output instead.
    by_label = test["label"].nunique() <= COUNTEREXAMPLE_LABELS or "changed" not in test
    keys = [
        "intervened",
        *[f"value.{v}" for v in variables if f"value.{v}" in test],
        *(["base_label", "label"] if by_label else ["changed"]),
    ]
    groups = failing.groupby(keys, observed=True, sort=False)
    totals = test.groupby(keys, observed=True, sort=False).size()
    out = []
    for key, group in sorted(groups, key=lambda kv: -len(kv[1]))[:top]:
        example = group.iloc[0]
        inputs = [c for c in test.columns if c.startswith(("base.", "source."))]
        out.append(
            Counterexample(
                group={k: _plain(v) for k, v in zip(keys, key, strict=True)},
                failures=len(group),
                pairs=int(totals.loc[key]),  # type: ignore[index]
                example={c: _plain(example[c]) for c in inputs},
            )
        )
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _estimate(
    by_seed: np.ndarray, rows: np.ndarray, bases: np.ndarray, confidence: float
) -> Estimate:
    """IIA on ``rows``: clustered by base for one seed, seeds x bases for several."""
    if len(by_seed) == 1:
        return iia(by_seed[0][rows], bases[rows], confidence=confidence)
    return seed_summary(by_seed[:, rows], bases[rows], confidence=confidence).interval


def _mean_on(result: BaselineResult, rows: np.ndarray) -> float:
    """A baseline's IIA on ``rows``, over all its seeds."""
    return float(result.correct.float()[:, torch.from_numpy(rows.copy())].mean())


def _ranks(alignments: Sequence[Alignment]) -> dict[str, int]:
    return {v: stop - start for a in alignments for v, (start, stop) in a.subspaces.items()}


@budgeted
@reproducible
def verify(
    network: Network,
    task: Task,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    test: pd.DataFrame,
    location: Location | Mapping[str, Location],
    variables: Sequence[str],
    *,
    method: str = "das",
    rank: int | Mapping[str, int] | None = None,
    subspaces: Mapping[str, tuple[int, int]] | None = None,
    alignment: Alignment | Sequence[Alignment] | None = None,
    config: TrainingConfig | None = None,
    thresholds: Thresholds | None = None,
    baselines: Sequence[str] = BASELINES,
    seeds: int = 5,
    alignment_seeds: int = 1,
    diagnostics: bool = True,
    counterexamples: int = 5,
    progress: Callable[[str], None] | None = None,
    featurizer: Featurizers = None,
    device: str | torch.device | None = None,
    memory_budget: int | None = None,
) -> Verification:
    """Align (unless ``alignment`` is given), score on ``test``, run baselines, give a verdict.

    Args:
        network: the network.
        task: its task.
        train: training pairs (alignment and trained baselines).
        validation: pairs for early stopping.
        test: held-out pairs; every reported number comes from these.
        location: where the variables are looked for (chosen on validation, e.g. by
            a sweep, never on test), or one location per variable: variables at
            different sites are trained together (:func:`fit_sites`) and every
            multi-variable interchange edits each site with its own source.
        variables: the causal variables to verify.
        method: the alignment method.
        rank: dimensions per variable.
        subspaces: explicit column ranges per variable.
        alignment: an existing alignment (or one per site) to verify instead of
            training one (it is the first seed).
        config: training configuration (shared by the trained baselines).
        thresholds: what each verdict requires.
        baselines: which baselines to run (see :data:`abstraction.baselines.BASELINES`).
        seeds: random-subspace seeds.
        alignment_seeds: alignments trained with seeds ``config.seed``, ``+1``, ...; with
            more than one, every variable's IIA, CI and the verdict come from the
            multi-bootstrap over seeds x bases.
        diagnostics: run the illusion diagnostics.
        counterexamples: how many failure groups to list.
        progress: called with a short message before each phase.
        featurizer: for methods ``"dbm"`` and ``"sae"``: the featurizer whose features
            the mask selects (see :func:`~abstraction.alignment.das.align`).
        device: move the network there first (default: where it is).
        memory_budget: bytes of cached activations each prefix cache holds in RAM
            before it moves to memory-mapped files (default:
            :func:`~abstraction.alignment.prefix_cache.memory_budget`).
    """
    thresholds = thresholds or Thresholds()
    config = config or TrainingConfig()
    if device is not None:
        network.to(device)
    if alignment_seeds < 1:
        raise ValueError(f"alignment_seeds must be at least 1, not {alignment_seeds}")

    def note(message: str) -> None:
        if progress is not None:
            progress(message)

    task.check_network(network)

    def trained(
        where: Location | Mapping[str, Location],
        how: str,
        ranks: int | Mapping[str, int] | None,
        seed: int,
    ) -> list[Alignment]:
        return align_sites(
            network,
            task,
            train,
            where,
            variables,
            method=how,
            rank=ranks,
            subspaces=subspaces,
            validation=validation,
            config=replace(config, seed=seed),
            featurizer=featurizer,
        )

    if alignment is None:
        note("aligning")
        alignments = trained(location, method, rank, config.seed)
    else:
        alignments = [alignment] if isinstance(alignment, Alignment) else list(alignment)
    sites = {v: a.location for a in alignments for v in a.variables}
    has_basis = all(a.basis is not None for a in alignments)
    note("scoring on test pairs")
    engine = PreparedInterchanges(network, task, test, sites, list(variables))
    try:
        correct = evaluate(alignments, engine)
        by_seed = [correct]
        for k in range(1, alignment_seeds if has_basis else 1):
            note(f"alignment seed {k + 1} of {alignment_seeds}")
            ranks = None if subspaces is not None else _ranks(alignments)
            extra = trained(sites, alignments[0].method, ranks, config.seed + k)
            by_seed.append(evaluate(extra, engine))
        predictions = engine.predict(None)
        results = run_baselines(
            network,
            task,
            alignments,
            train,
            validation,
            test,
            engine,
            which=baselines,
            seeds=seeds,
            config=config,
            progress=note,
        )
        correct_np = correct.numpy()
        found: dict[str, Diagnostics] = {}
        if diagnostics:
            note("illusion diagnostics")
            for a in alignments:
                for v in a.variables:
                    found[v] = diagnose(engine, a, v, task.model, test, correct_np)
        widths = {v: engine.width_of(v) for v in variables}
    finally:
        engine.close()
    bases = test["base_id"].to_numpy()
    first = ~pd.Series(bases).duplicated().to_numpy()
    solved = (predictions == engine.base_labels).numpy()
    accuracy = iia(solved[first], None, confidence=thresholds.confidence)
    seed_matrix = torch.stack(by_seed).numpy()
    scored = seed_matrix.mean(axis=0)  # per-pair correctness, averaged over seeds
    all_rows = np.ones(len(test), dtype=bool)
    overall = _estimate(seed_matrix, all_rows, bases, thresholds.confidence)
    ranks = _ranks(alignments) if has_basis else {}
    agreement = output_agreement(task.model, test[first], variables)

    per_variable_rows = {v: rows_for(test, v) for v in variables}
    null_iia: dict[tuple[str, str], float] = {}
    notes: dict[tuple[str, str], str] = {}
    raw: dict[tuple[str, str], float] = {}
    for v in variables:
        rows = per_variable_rows[v]
        for result in results:
            if result.name not in NULLS or result.variable not in (None, v):
                continue
            key = (v, result.name)
            null_iia[key] = _mean_on(result, rows)
            if result.name == "random_subspace" and ranks.get(v, 0) >= widths[v]:
                notes[key] = (
                    f"a random {ranks[v]}-dimensional subspace of a {widths[v]}-wide site is "
                    "the whole site, so this null is the aligned intervention itself"
                )
            elif result.note:
                notes[key] = result.note
            else:
                null = result.best_seed.numpy()[rows]
                raw[key] = paired_test(scored[rows], null, bases[rows]).p_value
    adjusted = dict(zip(raw, adjust(list(raw.values()), "holm"), strict=True))

    evidence: dict[str, VariableEvidence] = {}
    details: dict[str, dict[str, Any]] = {}
    for v in variables:
        rows = per_variable_rows[v]
        estimate = _estimate(seed_matrix, rows, bases, thresholds.confidence)
        changed_rows = rows & test["changed"].to_numpy(dtype=bool)
        nulls = {
            name: NullEvidence(
                null_iia[(var, name)],
                adjusted.get((var, name)),
                raw.get((var, name)),
                notes.get((var, name), ""),
            )
            for (var, name) in null_iia
            if var == v
        }
        ablation = next((r for r in results if r.name == "mean_ablation" and r.variable == v), None)
        evidence[v] = VariableEvidence(
            name=v,
            iia=estimate,
            changed_pairs=int(changed_rows.sum()),
            nulls=nulls,
            task_accuracy=ablation.detail["task_accuracy"] if ablation else None,
            ablated_accuracy=ablation.detail["ablated_accuracy"] if ablation else None,
            diagnostics=found.get(v),
            output_agreement=agreement[v],
            still_rising=next(
                (
                    rising
                    for a in alignments
                    if v in a.variables
                    and (rising := still_rising(a.curve, config.epochs)) is not None
                ),
                None,
            ),
        )
        do_rows = test[f"do.{v}"].to_numpy(dtype=bool)
        base_iias = {name: n.iia for name, n in nulls.items()}
        for result in results:
            if result.name == "patch" and result.variable is None:
                base_iias["patch"] = _mean_on(result, rows)
        if ablation is not None:
            base_iias["mean_ablation_accuracy"] = ablation.detail["ablated_accuracy"]
        control = base_iias.get("control")
        details[v] = {
            "changed_iia": (
                _estimate(seed_matrix, changed_rows, bases, thresholds.confidence)
                if changed_rows.any()
                else None
            ),
            "per_set": breakdown(
                correct_np[do_rows],
                bases[do_rows],
                test["intervened"].astype(str).to_numpy()[do_rows],
            ),
            "per_value": (
                breakdown(
                    correct_np[rows], bases[rows], test[f"value.{v}"].astype(str).to_numpy()[rows]
                )
                if f"value.{v}" in test
                else {}
            ),
            "baselines": base_iias,
            "selectivity": estimate.value - control if control is not None else None,
            "per_seed": [float(row[rows].mean()) for row in seed_matrix],
        }

    decision = decide(Evidence(evidence, accuracy), thresholds)
    variable_results = {
        v: VariableResult(
            name=v,
            iia=e.iia,
            changed_iia=details[v]["changed_iia"],
            per_set=details[v]["per_set"],
            per_value=details[v]["per_value"],
            baselines=details[v]["baselines"],
            p_values={n: x.p_value for n, x in e.nulls.items() if x.p_value is not None},
            raw_p_values={
                n: x.raw_p_value for n, x in e.nulls.items() if x.raw_p_value is not None
            },
            selectivity=details[v]["selectivity"],
            changed_pairs=e.changed_pairs,
            passed=decision.passed[v],
            reasons=decision.variable_reasons[v],
            per_seed=details[v]["per_seed"],
            not_informative={n: x.note for n, x in e.nulls.items() if x.note},
            diagnostics=e.diagnostics,
            output_agreement=e.output_agreement,
            flags=decision.flags[v],
        )
        for v, e in evidence.items()
    }
    return Verification(
        verdict=decision.verdict,
        reasons=decision.reasons,
        variables=variable_results,
        overall=overall,
        accuracy=accuracy,
        counterexamples=_counterexamples(test, correct_np, variables, counterexamples),
        alignment=alignments[0],
        baselines=results,
        thresholds=thresholds,
        correct=correct,
        test=test,
        alignments=tuple(alignments),
        seed_correct=torch.stack(by_seed),
        seeds=seed_summary(seed_matrix, bases) if len(by_seed) > 1 else None,
    )


def compare(a: Verification, b: Verification) -> Comparison:
    """Paired test of two verifications on the same test pairs (e.g. a hypothesis and a rival).

    ``a`` and ``b`` must have scored the same base/source pairs (a rival's test set
    is the same pairs relabelled by the rival model).
    """
    if not np.array_equal(a.test["base_id"].to_numpy(), b.test["base_id"].to_numpy()):
        raise ValueError(
            "the two verifications scored different pairs; relabel the same test pairs with "
            "the rival model (abstraction.counterfactuals.relabel) and verify on those"
        )
    return paired_test(
        a.correct.numpy(), b.correct.numpy(), a.test["base_id"].to_numpy(), alternative="greater"
    )
