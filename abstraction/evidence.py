"""The evidence a verdict is decided on, as plain records (no torch, no training code).

Measuring code fills these (:mod:`abstraction.diagnostics` the illusion
:class:`Diagnostics`, :mod:`abstraction.verification` the rest);
:func:`abstraction.verdict.decide` reads them; ``results.json`` stores them. Keeping
them here, below both, is what lets a report be rendered from a ``results.json``
without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from abstraction.statistics import Estimate

__all__ = ["Counterexample", "Diagnostics", "Evidence", "NullEvidence", "VariableEvidence"]


@dataclass(frozen=True)
class Diagnostics:
    """Illusion diagnostics of one aligned variable (``None``: could not be measured here).

    Attributes:
        dormant_effect: share of the patch's effect on the output margin that comes
            through directions real inputs do not vary in.
        disconnection: share of the aligned subspace outside the span of output gradients.
        subspace_iia: the alignment's IIA on the isolated pairs.
        patch_iia: the full patch's IIA on the same pairs.
        isolated_pairs: how many isolated pairs that change the label were scored.
        note: why a measurement is missing.
    """

    dormant_effect: float | None = None
    disconnection: float | None = None
    subspace_iia: float | None = None
    patch_iia: float | None = None
    isolated_pairs: int = 0
    note: str = ""

    @property
    def patch_gap(self) -> float | None:
        """``subspace_iia - patch_iia`` (``None`` without isolated pairs)."""
        if self.subspace_iia is None or self.patch_iia is None:
            return None
        return self.subspace_iia - self.patch_iia

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)


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
    """Everything :func:`~abstraction.verdict.decide` reads about one variable.

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


@dataclass(frozen=True)
class Evidence:
    """What the verdict is decided on: per-variable evidence and the network's accuracy."""

    variables: Mapping[str, VariableEvidence]
    accuracy: Estimate


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
