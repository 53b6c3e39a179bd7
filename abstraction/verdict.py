"""Verification: is the causal model a faithful abstraction of the network here?

:func:`verify` aligns the hypothesis (or takes an alignment), scores it on held-out
test pairs, runs the null baselines on the same pairs, and returns a
:class:`Verification` with, per variable: IIA with a CI clustered by base, IIA on
the pairs whose label changes, IIA per intervention set and per value of the
variable, baseline IIAs, Holm-adjusted p-values against each null, selectivity;
the network's own task accuracy; and counterexamples.

The verdict:

* ``inconclusive`` - too few changed pairs, or a CI wider than allowed;
* ``faithful`` - every variable's CI lower bound clears the IIA threshold, every
  null is beaten significantly after correction, and the network solves the task;
* ``partial`` - some variables pass;
* ``unfaithful`` - none do, or the network does not solve the task.

The reasons are listed in words. Thresholds are inputs; nothing is tuned per example.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from abstraction.alignment.das import TrainingConfig, align_sites, evaluate, reproducible
from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.alignment.result import Alignment
from abstraction.baselines import BASELINES, BaselineResult, run_baselines
from abstraction.locations import Location
from abstraction.network import Network
from abstraction.statistics import Comparison, Estimate, adjust, breakdown, iia, paired_test
from abstraction.task import Task

__all__ = [
    "NULLS",
    "Counterexample",
    "Thresholds",
    "VariableResult",
    "Verdict",
    "Verification",
    "compare",
    "verify",
]

NULLS = ("random_subspace", "untrained", "control")
"""Baselines the hypothesis must beat significantly."""

Verdict = Literal["faithful", "partial", "unfaithful", "inconclusive"]
"""The four verdicts (see the module docstring for what each requires)."""


@dataclass(frozen=True)
class Thresholds:
    """What ``faithful`` requires.

    Attributes:
        iia: the lower CI bound of every variable's IIA must reach this.
        accuracy: the network's task accuracy must reach this.
        alpha: significance level for beating the nulls (after Holm).
        min_changed: fewer changed pairs per variable makes the verdict inconclusive.
        max_ci_width: a wider IIA interval makes the verdict inconclusive.
        confidence: level of the intervals.
    """

    iia: float = 0.90
    accuracy: float = 0.90
    alpha: float = 0.05
    min_changed: int = 100
    max_ci_width: float = 0.10
    confidence: float = 0.95


@dataclass(frozen=True)
class Counterexample:
    """A group of failing test pairs that share their intervention and variable values.

    Attributes:
        group: what the pairs share: the intervention set (``intervened``), the
            values of the causal variables, the base label and the counterfactual label.
        failures: failing pairs in the group.
        pairs: all test pairs in the group.
        example: the inputs (``base.*``, ``source.*``) of one failing pair.
    """

    group: dict[str, Any]
    failures: int
    pairs: int
    example: dict[str, Any]


@dataclass
class VariableResult:
    """The evidence for one causal variable.

    Attributes:
        name: the variable.
        iia: IIA on the test pairs that intervene on this variable alone (or, without
            such pairs, on every pair that intervenes on it), CI clustered by base.
        changed_iia: the same on the pairs whose label changes (``None`` when none do).
        per_set: IIA per intervention set that includes the variable.
        per_value: IIA per value the variable takes in the source.
        baselines: each baseline's IIA on the same pairs (``mean_ablation_accuracy``:
            task accuracy with the variable's subspace mean-ablated).
        p_values: Holm-adjusted one-sided p-values against each null.
        raw_p_values: the same before adjustment.
        selectivity: IIA minus the control task's IIA (``None`` without a control).
        changed_pairs: test pairs that change the label.
        passed: whether the variable meets every requirement of ``faithful``.
        reasons: why, in words.
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


@dataclass
class Verification:
    """Everything :func:`verify` found, and the verdict.

    Attributes:
        verdict: ``faithful``, ``partial``, ``unfaithful`` or ``inconclusive``.
        reasons: the verdict's reasons, in words.
        variables: the evidence per variable.
        overall: IIA on every test pair.
        accuracy: how often the network's own output agrees with the causal model's
            (one value per base input).
        counterexamples: the largest groups of failing pairs.
        alignment: the verified alignment (the first site's, with one site per variable).
        baselines: every baseline's per-pair correctness.
        thresholds: what ``faithful`` required.
        correct: per-pair correctness of the alignment on ``test``.
        test: the test pairs.
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


def _rows_for(test: pd.DataFrame, variable: str) -> np.ndarray:
    single = (test["intervened"].astype(str) == variable).to_numpy()
    if single.any():
        return single
    mask: np.ndarray = test[f"do.{variable}"].to_numpy(dtype=bool)
    return mask


def _counterexamples(
    test: pd.DataFrame, correct: np.ndarray, variables: Sequence[str], top: int
) -> list[Counterexample]:
    failing = test[~correct]
    if len(failing) == 0:
        return []
    keys = [
        "intervened",
        *[f"value.{v}" for v in variables if f"value.{v}" in test],
        "base_label",
        "label",
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
    counterexamples: int = 5,
    progress: Callable[[str], None] | None = None,
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
            training one.
        config: training configuration (shared by the trained baselines).
        thresholds: what ``faithful`` requires.
        baselines: which baselines to run (see :data:`abstraction.baselines.BASELINES`).
        seeds: random-subspace seeds.
        counterexamples: how many failure groups to list.
        progress: called with a short message before each phase.
    """
    thresholds = thresholds or Thresholds()
    config = config or TrainingConfig()

    def note(message: str) -> None:
        if progress is not None:
            progress(message)

    task.check_network(network)
    if alignment is None:
        note("aligning")
        alignments = align_sites(
            network,
            task,
            train,
            location,
            variables,
            method=method,
            rank=rank,
            subspaces=subspaces,
            validation=validation,
            config=config,
        )
    else:
        alignments = [alignment] if isinstance(alignment, Alignment) else list(alignment)
    sites = {v: a.location for a in alignments for v in a.variables}
    note("scoring on test pairs")
    engine = PreparedInterchanges(network, task, test, sites, list(variables))
    try:
        correct = evaluate(alignments, engine)
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
    finally:
        engine.close()
    bases = test["base_id"].to_numpy()
    first = ~pd.Series(bases).duplicated().to_numpy()
    solved = (predictions == engine.base_labels).numpy()
    accuracy = iia(solved[first], None, confidence=thresholds.confidence)
    correct_np = correct.numpy()
    overall = iia(correct_np, bases, confidence=thresholds.confidence)

    raw: dict[tuple[str, str], float] = {}
    per_variable_rows = {v: _rows_for(test, v) for v in variables}
    null_iia: dict[tuple[str, str], float] = {}
    for v in variables:
        rows = per_variable_rows[v]
        for result in results:
            if result.name not in NULLS or result.variable not in (None, v):
                continue
            null = result.best_seed.numpy()[rows]
            comparison = paired_test(correct_np[rows], null, bases[rows])
            raw[(v, result.name)] = comparison.p_value
            null_iia[(v, result.name)] = float(
                result.correct.float()[:, torch.from_numpy(rows.copy())].mean()
            )
    adjusted = dict(zip(raw, adjust(list(raw.values()), "holm"), strict=True))

    variable_results = {}
    inconclusive: list[str] = []
    for v in variables:
        rows = per_variable_rows[v]
        estimate = iia(correct_np[rows], bases[rows], confidence=thresholds.confidence)
        changed_rows = rows & test["changed"].to_numpy(dtype=bool)
        changed = (
            iia(correct_np[changed_rows], bases[changed_rows], confidence=thresholds.confidence)
            if changed_rows.any()
            else None
        )
        do_rows = test[f"do.{v}"].to_numpy(dtype=bool)
        per_set = breakdown(
            correct_np[do_rows], bases[do_rows], test["intervened"].astype(str).to_numpy()[do_rows]
        )
        per_value = (
            breakdown(
                correct_np[rows], bases[rows], test[f"value.{v}"].astype(str).to_numpy()[rows]
            )
            if f"value.{v}" in test
            else {}
        )
        base_iias = {name: value for (var, name), value in null_iia.items() if var == v}
        for result in results:
            if result.name in ("patch",) and result.variable is None:
                base_iias["patch"] = float(
                    result.correct.float()[:, torch.from_numpy(rows.copy())].mean()
                )
            if result.name == "mean_ablation" and result.variable == v:
                base_iias["mean_ablation_accuracy"] = result.detail["ablated_accuracy"]
        p_values = {name: p for (var, name), p in adjusted.items() if var == v}
        raw_p = {name: p for (var, name), p in raw.items() if var == v}
        control = base_iias.get("control")
        selectivity = estimate.value - control if control is not None else None
        reasons = []
        n_changed = int(changed_rows.sum())
        if n_changed < thresholds.min_changed:
            inconclusive.append(
                f"{v}: only {n_changed} test pairs change the label (need {thresholds.min_changed})"
            )
        if estimate.width > thresholds.max_ci_width:
            inconclusive.append(
                f"{v}: the IIA interval is {estimate.width:.3f} wide "
                f"(allowed {thresholds.max_ci_width})"
            )
        passed = True
        if estimate.low < thresholds.iia:
            passed = False
            reasons.append(
                f"IIA {estimate.value:.3f} (95% CI {estimate.low:.3f}-{estimate.high:.3f}) does "
                f"not clear the threshold {thresholds.iia:.2f}"
            )
        else:
            reasons.append(
                f"IIA {estimate.value:.3f} (95% CI {estimate.low:.3f}-"
                f"{estimate.high:.3f}) clears the threshold {thresholds.iia:.2f}"
            )
        for name, p in p_values.items():
            if p >= thresholds.alpha:
                passed = False
                reasons.append(
                    f"does not beat the {name} null significantly "
                    f"(IIA {base_iias[name]:.3f}, Holm p = {p:.3g})"
                )
            else:
                reasons.append(
                    f"beats the {name} null (IIA {base_iias[name]:.3f}, Holm p = {p:.3g})"
                )
        variable_results[v] = VariableResult(
            v,
            estimate,
            changed,
            per_set,
            per_value,
            base_iias,
            p_values,
            raw_p,
            selectivity,
            n_changed,
            passed,
            reasons,
        )

    reasons = []
    verdict: Verdict
    if inconclusive:
        verdict = "inconclusive"
        reasons.extend(inconclusive)
    elif accuracy.value < thresholds.accuracy:
        verdict = "unfaithful"
        reasons.append(
            f"the network's output agrees with the causal model's on only {accuracy.value:.3f} "
            f"of test bases (need {thresholds.accuracy:.2f}): the model does not describe the "
            "network's behaviour"
        )
    else:
        passing = [v for v, r in variable_results.items() if r.passed]
        if len(passing) == len(variables):
            verdict = "faithful"
        elif passing:
            verdict = "partial"
        else:
            verdict = "unfaithful"
        reasons.append(
            f"the network's output agrees with the causal model's on {accuracy.value:.3f} of "
            "test bases"
        )
    for v, r in variable_results.items():
        reasons.append(f"{v}: " + "; ".join(r.reasons))
    return Verification(
        verdict=verdict,
        reasons=reasons,
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
