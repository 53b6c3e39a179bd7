"""Verification: is the causal model a faithful abstraction of the network here?

:func:`verify` gathers the evidence, and :func:`decide` - a pure function of that
evidence and the :class:`Thresholds` - gives the verdict with its reasons in words.

The evidence, per variable and all on held-out test pairs: IIA with a CI clustered by
base (with several alignment seeds, a multi-bootstrap over seeds x bases), IIA on the
pairs whose label changes, per intervention set and per value; each null baseline's
IIA with a Holm-adjusted p-value, or the reason it is not informative here (a random
subspace that is the whole site, re-initialised weights that leave the network's
outputs unchanged); necessity (task accuracy with the subspace mean-ablated); the
illusion diagnostics of :mod:`abstraction.diagnostics`; and how far the variable is the
output in disguise. Beside them, the network's own task accuracy and counterexamples.

The verdict:

* ``inconclusive`` - too few changed pairs, too few distinct base inputs, or a CI wider
  than allowed for some variable; or every aligned variable is the output in disguise;
* ``unfaithful`` - the network does not solve the task (the causal model does not
  describe its behaviour), or no variable passes;
* ``faithful`` - every variable passes: its CI lower bound clears the IIA threshold,
  every informative null is beaten significantly after correction, and the illusion
  diagnostics find no illusion;
* ``partial`` - some variables pass.

A variable that equals a function of the output on most inputs is flagged and does not
count either way. Thresholds are inputs; nothing is tuned per example.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from abstraction.alignment.das import TrainingConfig, align_sites, evaluate, reproducible
from abstraction.alignment.masks import Featurizers
from abstraction.alignment.prefix_cache import budgeted
from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.alignment.result import Alignment
from abstraction.baselines import BASELINES, BaselineResult, run_baselines
from abstraction.diagnostics import Diagnostics, diagnose, output_agreement
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

__all__ = [
    "FLAGS",
    "NULLS",
    "Counterexample",
    "Decision",
    "Evidence",
    "NullEvidence",
    "Thresholds",
    "VariableEvidence",
    "VariableResult",
    "Verdict",
    "Verification",
    "compare",
    "decide",
    "verify",
]

NULLS = ("random_subspace", "untrained", "control")
"""Baselines the hypothesis must beat significantly (where they are informative)."""

FLAGS = ("illusion", "output_in_disguise", "not_necessary", "borderline", "undertrained")
"""What a variable can be flagged for (see :func:`decide`)."""

Verdict = Literal["faithful", "partial", "unfaithful", "inconclusive"]
"""The four verdicts (see the module docstring for what each requires)."""


@dataclass(frozen=True)
class Thresholds:
    """What each verdict requires.

    Attributes:
        iia: the lower CI bound of every variable's IIA must reach this.
        accuracy: the network's task accuracy must reach this.
        alpha: significance level for beating the nulls (after Holm).
        min_changed: fewer changed pairs per variable makes the verdict inconclusive.
        max_ci_width: a wider IIA interval makes the verdict inconclusive.
        min_bases: fewer distinct base inputs among a variable's test pairs makes the
            verdict inconclusive (pairs that share a base are not independent evidence).
        confidence: level of the intervals.
        dormant_effect: an illusion when at least this share of the patch's effect on
            the output comes through directions real inputs do not vary in.
        patch_gap: an illusion when, on isolated pairs, the subspace's IIA exceeds the
            full patch of its own site by at least this much.
        min_isolated: isolated pairs needed before ``patch_gap`` is read.
        disconnection: together with an unnecessary subspace (see ``necessity_drop``),
            an illusion when at least this share of the subspace lies where the
            output's gradients do not reach.
        necessity_drop: mean-ablating the subspace must lower task accuracy by at least
            this much, or the variable is flagged ``not_necessary``.
        output_agreement: a variable that is a function of the output on at least this
            share of test inputs is flagged ``output_in_disguise``.
    """

    iia: float = 0.90
    accuracy: float = 0.90
    alpha: float = 0.05
    min_changed: int = 100
    max_ci_width: float = 0.10
    min_bases: int = 30
    confidence: float = 0.95
    dormant_effect: float = 0.5
    patch_gap: float = 0.2
    min_isolated: int = 30
    disconnection: float = 0.6
    necessity_drop: float = 0.02
    output_agreement: float = 0.95


@dataclass(frozen=True)
class NullEvidence:
    """One null baseline's evidence for one variable.

    Attributes:
        iia: the null's IIA on the variable's test pairs (its strongest seed).
        p_value: Holm-adjusted one-sided p-value of the hypothesis against it (``None``
            when the null is not informative).
        raw_p_value: the same before adjustment.
        note: why the null is not informative here (empty when it is).
    """

    iia: float
    p_value: float | None = None
    raw_p_value: float | None = None
    note: str = ""

    @property
    def informative(self) -> bool:
        """Whether the null can decide the verdict."""
        return not self.note


@dataclass(frozen=True)
class VariableEvidence:
    """Everything :func:`decide` reads about one variable.

    Attributes:
        name: the variable.
        iia: its IIA (over seeds x bases with several alignment seeds).
        changed_pairs: test pairs that intervene on it and change the label.
        nulls: null name -> evidence.
        task_accuracy: the network's task accuracy on the test bases.
        ablated_accuracy: the same with the variable's subspace mean-ablated.
        diagnostics: the illusion diagnostics.
        output_agreement: share of test inputs on which the variable is a function of
            the output alone.
        still_rising: the validation IIA of its alignment was still rising when training
            ran out of epochs (``None``: not measured, e.g. ``select_epoch=False``), as
            ``(first, last)`` validation IIA of the curve.
    """

    name: str
    iia: Estimate
    changed_pairs: int
    nulls: Mapping[str, NullEvidence] = field(default_factory=dict)
    task_accuracy: float | None = None
    ablated_accuracy: float | None = None
    diagnostics: Diagnostics | None = None
    output_agreement: float | None = None
    still_rising: tuple[float, float] | None = None


RISING = 0.005
"""Validation IIA gained in the last epoch above which training is "still rising"."""


def still_rising(curve: Sequence[Mapping[str, Any]], epochs: int) -> tuple[float, float] | None:
    """``(first, last)`` validation IIA when an alignment's training curve ran every one of
    ``epochs`` epochs and its last epoch beat every earlier one by more than :data:`RISING`
    (it stopped on its budget, not on a plateau); ``None`` otherwise."""
    scores = [float(v) for c in curve if (v := c.get("val_iia")) is not None]
    if len(scores) < 2 or len(scores) < epochs:
        return None
    if scores[-1] > max(scores[:-1]) + RISING:
        return scores[0], scores[-1]
    return None


@dataclass(frozen=True)
class Evidence:
    """What the verdict is decided on: per-variable evidence and the network's accuracy."""

    variables: Mapping[str, VariableEvidence]
    accuracy: Estimate


@dataclass(frozen=True)
class Decision:
    """The verdict and why.

    Attributes:
        verdict: see :data:`Verdict`.
        reasons: the verdict's reasons, in words (overall first, then per variable).
        passed: per variable, whether it meets every requirement of ``faithful``.
        variable_reasons: per variable, the reasons in words.
        flags: per variable, which of :data:`FLAGS` it raised.
    """

    verdict: Verdict
    reasons: list[str]
    passed: dict[str, bool]
    variable_reasons: dict[str, list[str]]
    flags: dict[str, list[str]]


def _illusion_signs(
    d: Diagnostics, unnecessary: bool, thresholds: Thresholds
) -> tuple[list[str], str]:
    """The diagnostics that say illusion, in words, and a one-line summary of all of them."""
    signs = []
    if d.dormant_effect is not None and d.dormant_effect >= thresholds.dormant_effect:
        signs.append(
            f"{d.dormant_effect:.0%} of the patch's effect on the output comes through "
            "directions in which real inputs do not vary (a dormant direction)"
        )
    gap = d.patch_gap
    if (
        gap is not None
        and d.isolated_pairs >= thresholds.min_isolated
        and gap >= thresholds.patch_gap
    ):
        signs.append(
            f"on {d.isolated_pairs} pairs that change only this variable, the subspace scores "
            f"{d.subspace_iia:.3f} but the full patch of its own site {d.patch_iia:.3f}: the "
            "site does not carry the variable the network uses"
        )
    if unnecessary and d.disconnection is not None and d.disconnection >= thresholds.disconnection:
        signs.append(
            f"{d.disconnection:.0%} of the subspace lies where the output's gradients do not "
            "reach, and ablating it leaves behaviour intact"
        )
    parts = []
    if d.dormant_effect is not None:
        parts.append(f"dormant effect {d.dormant_effect:.2f}")
    if d.disconnection is not None:
        parts.append(f"disconnection {d.disconnection:.2f}")
    if gap is not None:
        parts.append(
            f"subspace {d.subspace_iia:.3f} vs full patch {d.patch_iia:.3f} on "
            f"{d.isolated_pairs} isolated pairs"
        )
    return signs, ", ".join(parts)


def _judge_variable(
    e: VariableEvidence, thresholds: Thresholds
) -> tuple[bool, list[str], list[str], list[str]]:
    """(passed, reasons, flags, inconclusive reasons) for one variable."""
    reasons: list[str] = []
    flags: list[str] = []
    inconclusive: list[str] = []
    estimate = e.iia
    if e.changed_pairs < thresholds.min_changed:
        inconclusive.append(
            f"{e.name}: only {e.changed_pairs} test pairs change the label "
            f"(need {thresholds.min_changed})"
        )
    if estimate.clusters < thresholds.min_bases:
        inconclusive.append(
            f"{e.name}: its test pairs have only {estimate.clusters} distinct base inputs "
            f"(need {thresholds.min_bases}); pairs sharing a base are not independent, so "
            "test on more bases (every held-out base x every source when the inputs are few)"
        )
    if estimate.width > thresholds.max_ci_width:
        inconclusive.append(
            f"{e.name}: the IIA interval is {estimate.width:.3f} wide "
            f"(allowed {thresholds.max_ci_width})"
        )
    passed = estimate.low >= thresholds.iia
    interval = f"IIA {estimate.value:.3f} (95% CI {estimate.low:.3f}-{estimate.high:.3f})"
    reasons.append(
        f"{interval} clears the threshold {thresholds.iia:.2f}"
        if passed
        else f"{interval} does not clear the threshold {thresholds.iia:.2f}"
    )
    if estimate.low <= thresholds.iia <= estimate.high:
        # the verdict on this variable turns on sampling noise: another seed, machine or
        # library release can move it across the threshold
        flags.append("borderline")
        reasons.append(
            f"borderline: the CI contains the threshold {thresholds.iia:.2f}, so whether this "
            "variable passes can change with the seed, the machine or a library release"
        )
    for name, null in e.nulls.items():
        if not null.informative:
            reasons.append(
                f"the {name} null is not informative here and does not decide: {null.note}"
            )
        elif null.p_value is not None and null.p_value >= thresholds.alpha:
            passed = False
            reasons.append(
                f"does not beat the {name} null significantly "
                f"(IIA {null.iia:.3f}, Holm p = {null.p_value:.3g})"
            )
        else:
            reasons.append(
                f"beats the {name} null (IIA {null.iia:.3f}, Holm p = {null.p_value:.3g})"
            )
    missing = [n for n in NULLS if n not in e.nulls]
    if missing:
        reasons.append(
            f"decided without the {', '.join(missing)} null{'s' if len(missing) > 1 else ''}: "
            "nothing shows that this IIA is more than what the method finds where there is "
            "nothing to find (run every baseline: baselines=BASELINES)"
        )
    unnecessary = False
    if e.task_accuracy is not None and e.ablated_accuracy is not None:
        drop = e.task_accuracy - e.ablated_accuracy
        if drop < thresholds.necessity_drop:
            unnecessary = True
            flags.append("not_necessary")
            reasons.append(
                f"mean-ablating its subspace leaves task accuracy at {e.ablated_accuracy:.3f} "
                f"(from {e.task_accuracy:.3f}): the network does not need this subspace, so "
                "the encoding is redundant (the variable is also carried elsewhere) or illusory"
            )
        else:
            reasons.append(
                f"necessary: mean-ablating its subspace lowers task accuracy from "
                f"{e.task_accuracy:.3f} to {e.ablated_accuracy:.3f}"
            )
    if e.diagnostics is not None:
        signs, summary = _illusion_signs(e.diagnostics, unnecessary, thresholds)
        if estimate.value < thresholds.iia:  # an illusion explains a success; there is none
            signs = []
        if signs:
            passed = False
            flags.append("illusion")
            reasons.append("an interpretability illusion: " + "; ".join(signs))
        elif summary:
            reasons.append(
                f"no sign of an illusion ({summary})"
                if passed
                else f"illusion diagnostics: {summary}"
            )
    if e.still_rising is not None:
        first, last = e.still_rising
        flags.append("undertrained")
        reasons.append(
            f"undertrained: validation IIA was still rising when training ran out of epochs "
            f"({first:.3f} after the first, {last:.3f} after the last); train for more epochs "
            "(TrainingConfig(epochs=...); patience stops it at a plateau)"
        )
        if not passed:
            inconclusive.append(
                f"{e.name}: its alignment was still improving when training stopped, so a "
                "failure here is not evidence against the hypothesis"
            )
    if e.output_agreement is not None and e.output_agreement >= thresholds.output_agreement:
        flags.append("output_in_disguise")
        reasons.append(
            f"it is a function of the output alone on {e.output_agreement:.1%} of test inputs: "
            "aligning it tells nothing about the mechanism, so it does not count toward the "
            "verdict"
        )
    return passed, reasons, flags, inconclusive


def decide(evidence: Evidence, thresholds: Thresholds | None = None) -> Decision:
    """The verdict on ``evidence`` (a pure function; see the module docstring)."""
    thresholds = thresholds or Thresholds()
    passed: dict[str, bool] = {}
    variable_reasons: dict[str, list[str]] = {}
    flags: dict[str, list[str]] = {}
    inconclusive: list[str] = []
    for name, e in evidence.variables.items():
        ok, why, raised, unsure = _judge_variable(e, thresholds)
        passed[name], variable_reasons[name], flags[name] = ok, why, raised
        inconclusive.extend(unsure)
    accuracy = evidence.accuracy.value
    counted = [v for v in evidence.variables if "output_in_disguise" not in flags[v]]
    reasons: list[str] = []
    verdict: Verdict
    if inconclusive:
        verdict = "inconclusive"
        reasons.extend(inconclusive)
    elif accuracy < thresholds.accuracy:
        verdict = "unfaithful"
        reasons.append(
            f"the network's output agrees with the causal model's on only {accuracy:.3f} "
            f"of test bases (need {thresholds.accuracy:.2f}): the model does not describe the "
            "network's behaviour"
        )
    elif not counted:
        verdict = "inconclusive"
        reasons.append(
            "every aligned variable is a function of the output alone on the data: align an "
            "intermediate variable that the output does not determine"
        )
    else:
        passing = [v for v in counted if passed[v]]
        verdict = (
            "faithful" if len(passing) == len(counted) else ("partial" if passing else "unfaithful")
        )
        reasons.append(
            f"the network's output agrees with the causal model's on {accuracy:.3f} of test bases"
        )
    for name, why in variable_reasons.items():
        reasons.append(f"{name}: " + "; ".join(why))
    return Decision(verdict, reasons, passed, variable_reasons, flags)


@dataclass(frozen=True)
class Counterexample:
    """A group of failing test pairs that share their intervention and variable values.

    Attributes:
        group: what the pairs share: the intervention set (``intervened``), the
            values of the causal variables, and the base and counterfactual labels (or,
            when labels are many, e.g. names, whether the label changes: ``changed``).
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


def _rows_for(test: pd.DataFrame, variable: str) -> np.ndarray:
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

    per_variable_rows = {v: _rows_for(test, v) for v in variables}
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
