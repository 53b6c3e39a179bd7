"""The verdict: a pure decision over plain evidence records.

:func:`decide` - a pure function of the :class:`~abstraction.evidence.Evidence` and the
:class:`Thresholds` - gives the verdict with its reasons in words; gathering that
evidence (training, baselines, diagnostics, statistics) is
:func:`abstraction.verification.verify`'s job. This module imports neither torch nor
training code, so ``results.json`` and its reports are read and rendered without them.

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

import importlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from abstraction.evidence import (
    Counterexample,
    Diagnostics,
    Evidence,
    NullEvidence,
    VariableEvidence,
)

__all__ = [
    "FLAGS",
    "NULLS",
    "RISING",
    "Counterexample",
    "Decision",
    "Evidence",
    "NullEvidence",
    "Thresholds",
    "VariableEvidence",
    "Verdict",
    "decide",
    "still_rising",
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


_MOVED = ("VariableResult", "Verification", "compare", "verify")


def __getattr__(name: str) -> Any:
    # verify and its records moved to abstraction.verification; the old path works for
    # one release
    if name in _MOVED:
        warnings.warn(
            f"abstraction.verdict.{name} moved to abstraction.verification.{name}; import it "
            "from there (or from abstraction)",
            DeprecationWarning,
            stacklevel=2,
        )
        # imported by name, at call time: a shim for old imports, not a dependency
        return getattr(importlib.import_module("abstraction.verification"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
