"""The one training loop every alignment method trains through.

A method (:mod:`abstraction.alignment.method`) describes *what* it trains as an
:class:`Objective`: its parameters and optimizer, the loss of a batch of training rows,
a snapshot of its state and how a snapshot scores on validation. :func:`train` does the
rest, the same way for DAS, low-rank and boundless DAS, the DBM/PCA/SAE masks and a
staircase of sweep cells: it shuffles the rows once, visits each epoch's batches in a
new random order, steps the optimizer, reads the losses once an epoch (reading them
every step would make a GPU wait every step) and refuses a non-finite loss, scores a
snapshot after every epoch, keeps each unit's best snapshot and stops a unit after
``patience`` epochs without a better one.

An objective trains one or several *units*, each with its own early stopping: the
joint alignment of all sites is one unit; a staircase trains one unit per cell, and
drops a cell from its steps when the cell stops.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

import torch

from abstraction.alignment.step import PRECISIONS, Precision, batch_rows, step_precision
from abstraction.errors import AlignmentError

__all__ = [
    "EpochScore",
    "Objective",
    "Progress",
    "StepLoss",
    "Trained",
    "TrainingConfig",
    "train",
]

_S = TypeVar("_S")

Progress = Callable[[int, dict[str, float | None]], None]
"""Called after every epoch with a unit's index and its training curve's newest entry."""

StepLoss = Callable[[torch.Tensor | slice, int], tuple[torch.Tensor, torch.Tensor, Sequence[int]]]
"""A training step's forward: given a batch's rows and the step's index, the loss to
differentiate, the per-unit losses it is made of (a 0-dim tensor for one unit), and for
each of those the index into the step's members of the unit it belongs to."""


@dataclass(frozen=True)
class TrainingConfig:
    """How an alignment is trained.

    Attributes:
        epochs: passes over the training pairs.
        batch_size: pairs per step.
        lr: Adam's learning rate.
        patience: epochs without a better validation IIA before stopping early.
        seed: seeds the initial rotation and the order of pairs.
        boundary_coef: boundless DAS's penalty on the subspace size.
        temperature: boundless DAS's temperature schedule (start, end), linear in steps.
        mask_lr: Adam's learning rate for DBM's mask logits (methods dbm, pca, sae).
        sparsity: DBM's penalty on the mean mask (lambda).
        mask_temperature: DBM's temperature schedule (start, end), geometric in steps.
        mask_init: DBM's initial logit for every feature.
        sae_features: features of an SAE trained for method="sae" (default 4 x width).
        sae_activation: its activation, ``"topk"`` or ``"relu"`` (with an L1 penalty).
        sae_k: its TopK k (default features // 8).
        sae_l1: its L1 coefficient when ReLU.
        sae_steps: its training steps.
        sae_lr: its learning rate.
        select_epoch: score after every epoch (the validation pairs, or the training
            pairs without them) and keep the best epoch, stopping after ``patience``
            epochs without a better one. ``False``: score nothing while training and
            keep the last epoch (pyvene's and causalab's training loops); the curve's
            ``val_iia`` is then ``None``. DAS methods only.
        precision: the training step's arithmetic: ``"fp32"`` (exact float32),
            ``"tf32"`` (TensorFloat-32 matrix products on CUDA; elsewhere fp32) or
            ``"bf16"`` (bfloat16 autocast on the forward pass). Validation scoring and
            the saved basis stay float32. DAS methods only
            (:mod:`abstraction.alignment.step`).
        capture: compile the training step's forward once and replay it
            (``torch.compile``; CUDA graphs on CUDA), falling back to eager with a
            warning where compiling fails. The same function, so the same basis up to
            rounding. DAS methods only.
    """

    epochs: int = 10
    batch_size: int = 6400
    lr: float = 1e-3
    patience: int = 3
    seed: int = 0
    boundary_coef: float = 0.1
    temperature: tuple[float, float] = (50.0, 0.1)
    mask_lr: float = 0.05
    sparsity: float = 0.3
    mask_temperature: tuple[float, float] = (1.0, 0.01)
    mask_init: float = 1.0
    sae_features: int | None = None
    sae_activation: Literal["topk", "relu"] = "topk"
    sae_k: int | None = None
    sae_l1: float = 1e-3
    sae_steps: int = 2000
    sae_lr: float = 1e-3
    select_epoch: bool = True
    precision: Precision = "fp32"
    capture: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise AlignmentError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"
            )
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise AlignmentError(
                f"epochs, batch_size and patience must be at least 1, got {self.epochs}, "
                f"{self.batch_size}, {self.patience}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise AlignmentError(f"lr must be a positive finite number, got {self.lr}")
        for name in ("mask_lr", "sae_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise AlignmentError(f"{name} must be a positive finite number, got {value}")
        if not (self.sparsity >= 0 and self.sae_l1 >= 0):
            raise AlignmentError(
                f"sparsity and sae_l1 must be at least 0, got {self.sparsity} and {self.sae_l1}"
            )
        start, end = self.mask_temperature
        if not 0 < end <= start:
            raise AlignmentError(
                f"mask_temperature must go down from a positive start, e.g. (1.0, 0.01); got "
                f"{self.mask_temperature}"
            )
        if self.sae_activation not in ("topk", "relu"):
            raise AlignmentError(
                f"sae_activation must be 'topk' or 'relu', not {self.sae_activation!r}"
            )
        if (self.sae_features is not None and self.sae_features < 1) or self.sae_steps < 1:
            raise AlignmentError(
                f"sae_features and sae_steps must be at least 1, got {self.sae_features} and "
                f"{self.sae_steps}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy.

        The DBM, SAE, ``select_epoch``, ``precision`` and ``capture`` fields appear only
        where they differ from their defaults, so the dictionary (and the sweep run keys
        hashed from it) of a DAS configuration is what it was before those fields existed.
        """
        extra: dict[str, Any] = {}
        for name in _FEATURE_FIELDS:
            value = getattr(self, name)
            if value != getattr(_DEFAULTS, name):
                extra[name] = list(value) if isinstance(value, tuple) else value
        return extra | {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "patience": self.patience,
            "seed": self.seed,
            "boundary_coef": self.boundary_coef,
            "temperature": list(self.temperature),
        }


_FEATURE_FIELDS = (
    "select_epoch",
    "precision",
    "capture",
    "mask_lr",
    "sparsity",
    "mask_temperature",
    "mask_init",
    "sae_features",
    "sae_activation",
    "sae_k",
    "sae_l1",
    "sae_steps",
    "sae_lr",
)
_DEFAULTS = TrainingConfig()


@dataclass(frozen=True)
class EpochScore:
    """How a unit's snapshot scored after an epoch.

    Attributes:
        iia: the validation IIA, or ``None`` when the epoch was not scored
            (``select_epoch=False``: the last epoch is kept).
        size: how much of the representation the snapshot uses (the masks' kept
            features); of two equal IIAs the smaller size is better. ``None``: no size.
        extra: further fields of the training curve's entry (``boundary``, ``units``).
    """

    iia: float | None
    size: float | None = None
    extra: Mapping[str, float] = field(default_factory=dict)

    def beats(self, held: EpochScore | None) -> bool:
        """Whether this snapshot replaces ``held`` as its unit's best."""
        if held is None or self.iia is None or held.iia is None:
            return True
        if self.iia > held.iia + _TIE:
            return True
        tied = abs(self.iia - held.iia) <= _TIE
        return tied and self.size is not None and held.size is not None and self.size < held.size


_TIE = 1e-12  # IIAs are fractions of at most millions of pairs: closer than this is equal


class Objective(Protocol, Generic[_S]):
    """What :func:`train` trains: one or several units, each with its own early stopping.

    ``S`` is the type of a unit's snapshot (its parameters' values at an epoch's end).
    """

    @property
    def units(self) -> int:
        """How many units train together (1, or one per staircase cell)."""
        ...

    @property
    def rows(self) -> int:
        """Training rows (pairs)."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the network runs (the losses add up there)."""
        ...

    def optimizer(self) -> torch.optim.Optimizer:
        """A fresh optimizer over every unit's parameters."""
        ...

    def reorder(self, order: torch.Tensor) -> torch.device:
        """Shuffle the training rows into ``order`` (a contiguous copy); return the
        device the rows of a batch are indexed on."""
        ...

    def step(self, members: tuple[int, ...]) -> StepLoss:
        """The step's forward for the units still training (``members``)."""
        ...

    def snapshot(self, unit: int) -> _S:
        """A copy of ``unit``'s current state."""
        ...

    def score(
        self, members: Sequence[int], snapshots: Mapping[int, _S], select: bool
    ) -> dict[int, EpochScore]:
        """Each member's score with its snapshot; ``select=False``: no IIA is computed."""
        ...

    def unit_name(self, unit: int) -> str:
        """How an error names ``unit`` (empty for a single unit)."""
        ...

    @property
    def nan_hint(self) -> str:
        """What to do when the loss is not finite."""
        ...


@dataclass
class Trained(Generic[_S]):
    """What :func:`train` returns: each unit's best snapshot, its score and its curve."""

    best: list[_S]
    scores: list[EpochScore]
    curves: list[list[dict[str, float | None]]]


def train(
    objective: Objective[_S],
    config: TrainingConfig,
    generator: torch.Generator,
    *,
    progress: Progress | None = None,
    began: float | None = None,
) -> Trained[_S]:
    """Train ``objective`` under ``config`` and keep each unit's best epoch.

    Args:
        objective: what is trained (:class:`Objective`).
        config: epochs, batch size, patience, whether epochs are scored
            (``select_epoch``), the step's ``precision``, and ``capture`` (batches are
            then index tensors, which a captured step does not specialise on).
        generator: draws the shuffle and each epoch's batch order (the objective may
            have drawn its initial parameters from it first).
        progress: called after every epoch with a unit and its curve's newest entry.
        began: the clock reading the curve's ``seconds`` count from (default: now).
    """
    began = time.perf_counter() if began is None else began
    optimizer = objective.optimizer()
    device = objective.reorder(torch.randperm(objective.rows, generator=generator))
    starts = torch.arange(0, objective.rows, config.batch_size)
    active = list(range(objective.units))
    curves: list[list[dict[str, float | None]]] = [[] for _ in active]
    best: dict[int, tuple[EpochScore, _S]] = {}
    stale = [0] * objective.units
    steps: dict[tuple[int, ...], StepLoss] = {}
    step = 0
    for epoch in range(config.epochs):
        members = tuple(active)
        if members not in steps:  # a new step only when early stopping drops a unit
            steps[members] = objective.step(members)
        forward = steps[members]
        loss_sums = torch.zeros(len(members), device=objective.device)
        order: Sequence[int] = range(len(members))
        batches = starts[torch.randperm(len(starts), generator=generator)].tolist()
        for start in batches:
            rows = batch_rows(start, config.batch_size, objective.rows, config.capture, device)
            with step_precision(config.precision, objective.device):
                loss, per_unit, order = forward(rows, step)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            loss_sums = loss_sums + per_unit.detach()
            step += 1
        mean_losses = {
            members[slot]: total / len(batches)
            for slot, total in zip(order, loss_sums.tolist(), strict=True)
        }
        for unit, loss_value in mean_losses.items():
            if not math.isfinite(loss_value):
                name = objective.unit_name(unit)
                raise AlignmentError(
                    f"the loss{' of ' + name if name else ''} became {loss_value} in epoch "
                    f"{epoch} (by step {step}); {objective.nan_hint}"
                )
        with torch.no_grad():
            snapshots = {unit: objective.snapshot(unit) for unit in members}
            scores = objective.score(members, snapshots, config.select_epoch)
        for unit in members:
            score = scores[unit]
            entry: dict[str, float | None] = {
                "epoch": float(epoch + 1),
                "step": float(step),
                "loss": mean_losses[unit],
                "val_iia": score.iia,
                "seconds": time.perf_counter() - began,
                **score.extra,
            }
            curves[unit].append(entry)
            if progress is not None:
                progress(unit, entry)
            if score.beats(best[unit][0] if unit in best else None):
                best[unit], stale[unit] = (score, snapshots[unit]), 0
            else:
                stale[unit] += 1
                if stale[unit] >= config.patience:
                    active.remove(unit)
        if not active:
            break
    units = range(objective.units)
    return Trained(
        best=[best[u][1] for u in units], scores=[best[u][0] for u in units], curves=curves
    )
