"""Methods that learn an orthonormal basis (DAS, low-rank DAS, boundless DAS) and the
full patch, which learns nothing.

DAS (``"das"``) trains a full rotation of each site and interchanges each causal
variable's block of its columns; low-rank DAS (``"low_rank"``) trains only the columns
the blocks use; boundless DAS (``"boundless"``, one variable) learns how many rotated
coordinates the variable keeps, through a soft boundary annealed by a temperature
(pyvene's ``BoundlessRotatedSpaceIntervention``). Every step applies
:class:`~abstraction.interventions.LowRankPatch` or
:class:`~abstraction.interventions.BoundlessPatch` objects built from the trainable
weights, through the prepared interchanges' runtime, and trains through
:func:`~abstraction.alignment.training.train`. ``"patch"`` interchanges the whole site.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from abstraction.alignment.method import FitRequest, Method
from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.alignment.result import Alignment
from abstraction.alignment.step import captured
from abstraction.alignment.training import EpochScore, StepLoss, train
from abstraction.errors import AlignmentError, UnknownNameError, nearest
from abstraction.interventions import BoundlessPatch, Intervention, LowRankPatch, boundary_mask
from abstraction.locations import Location

__all__ = [
    "DAS",
    "BoundlessDAS",
    "FullPatch",
    "LearnedRotation",
    "LearnedRotationStack",
    "LowRankDAS",
    "RotationObjective",
    "subspace_spans",
]

Snapshot = tuple[dict[Location, torch.Tensor], float]
"""A rotation objective's state: each site's weight, and boundless DAS's boundary."""


class LearnedRotation(nn.Module):
    """An orthonormal ``(width, k)`` basis, parametrised to stay orthonormal (as pyvene)."""

    def __init__(self, width: int, k: int, generator: torch.Generator) -> None:
        super().__init__()
        weight = torch.empty(width, k)
        nn.init.orthogonal_(weight, generator=generator)
        self.weight = nn.Parameter(weight)
        nn.utils.parametrizations.orthogonal(self, "weight")


class LearnedRotationStack:
    """The weights of several same-shaped rotations, computed as one batched map.

    Each :class:`LearnedRotation` recomputes its orthogonal parametrisation (a Householder
    product or a matrix exponential, then its fixed base) at every step; a staircase of
    cells would pay it, forward and backward, once per cell. Stacked, the same map runs
    once for all of them, so a step dispatches the same number of operations for 2 cells
    or 30. Each weight equals its rotation's own ``weight`` up to rounding (batched
    products sum in another order), and each parameter gets exactly its own gradient.
    """

    def __init__(self, rotations: Sequence[LearnedRotation]) -> None:
        # torch types a parametrised module's attributes loosely: name what they are
        parametrized: list[Any] = [
            r.parametrizations.weight  # type: ignore[union-attr]
            for r in rotations
        ]
        self._map: nn.Module = parametrized[0][0]
        self._originals: list[torch.Tensor] = [p.original for p in parametrized]
        with torch.no_grad():  # the bases are fixed buffers: stacked once
            self._bases = torch.stack([p[0].base for p in parametrized])

    def weights(self) -> torch.Tensor:
        """``(rotations, width, k)``: every rotation's current weight."""
        originals = torch.stack(self._originals)
        out: torch.Tensor = functional_call(self._map, {"base": self._bases}, (originals,))
        return out


def subspace_spans(
    method: Method,
    variables: Sequence[str],
    width: int,
    rank: int | Mapping[str, int] | None,
    subspaces: Mapping[str, tuple[int, int]] | None,
) -> dict[str, tuple[int, int]]:
    """Each variable's block of columns ``(start, stop)`` at a site of ``width``:
    ``subspaces`` as given (checked), else consecutive blocks of ``rank`` columns (an int
    for all, per variable, or ``method``'s default)."""
    if subspaces is not None:
        for key in subspaces:
            if key not in variables:
                raise UnknownNameError(
                    f"subspaces= names {key!r}, which is not an aligned variable; "
                    + nearest(key, variables)
                )
        missing = [v for v in variables if v not in subspaces]
        if missing:
            raise AlignmentError(f"subspaces= gives no columns for {missing}")
        spans = sorted((tuple(subspaces[v]), v) for v in variables)
        for (start, stop), v in spans:
            if not 0 <= start < stop <= width:
                raise AlignmentError(
                    f"subspace {start}:{stop} of {v!r} does not fit width {width}; "
                    f"use 0 <= start < stop <= {width}"
                )
        for ((_, stop_a), a), ((start_b, _), b) in itertools.pairwise(spans):
            if start_b < stop_a:
                raise AlignmentError(
                    f"the subspaces of {a!r} and {b!r} overlap; give each variable disjoint "
                    "columns (e.g. 0:8 and 8:16)"
                )
        return {v: (int(subspaces[v][0]), int(subspaces[v][1])) for v in variables}
    if rank is None:
        per = dict.fromkeys(variables, method.default_rank(width, len(variables)))
    elif isinstance(rank, int):
        per = dict.fromkeys(variables, rank)
    else:
        per = {v: int(rank[v]) for v in variables}
    for v, k in per.items():
        if k < 1:
            raise AlignmentError(f"rank of {v!r} must be at least 1, got {k}")
    total = sum(per.values())
    if total > width:
        raise AlignmentError(
            f"ranks {per} need {total} dimensions but the location has width {width}; lower "
            "the rank or choose a wider location"
        )
    out, start = {}, 0
    for v in variables:
        out[v] = (start, start + per[v])
        start += per[v]
    return out


def site_groups(
    prepared: PreparedInterchanges, variables: Sequence[str]
) -> dict[Location, list[str]]:
    """The variables at each site, sites in the order the variables name them."""
    groups: dict[Location, list[str]] = {}
    for v in variables:
        groups.setdefault(prepared.sites[v].location, []).append(v)
    return groups


class RotationObjective:
    """What DAS, low-rank and boundless DAS train (an
    :class:`~abstraction.alignment.training.Objective`): one rotation per site, its
    variables in disjoint blocks of columns, trained together as one unit."""

    units = 1

    def __init__(self, method: Method, request: FitRequest, generator: torch.Generator) -> None:
        prepared, config, rank = request.prepared, request.config, request.rank
        self.method, self.request, self.prepared = method, request, prepared
        self.validation, self.variables, self.config = request.validation, request.variables, config
        self.boundless = isinstance(method, BoundlessDAS)
        self.device = prepared.network.device
        self.rows = prepared.rows
        self.nan_hint = "lower the learning rate or check the network's outputs for NaN"
        self.spans: dict[Location, dict[str, tuple[int, int]]] = {}
        self.rotations: dict[Location, LearnedRotation] = {}
        for location, members in site_groups(prepared, request.variables).items():
            width = prepared.width_of(members[0])
            spans = subspace_spans(method, members, width, rank, request.subspaces)
            self.spans[location] = spans
            stop = max(b for _, b in self.spans[location].values())
            k = method.rotation_width(width, stop)
            self.rotations[location] = LearnedRotation(width, k, generator).to(self.device)
        self.boundary = nn.Parameter(torch.tensor(0.5, device=self.device))
        total = max(1, config.epochs * math.ceil(prepared.rows / config.batch_size))
        # the schedule lives on the device: a step indexes it rather than copying a number
        self.schedule = torch.linspace(config.temperature[0], config.temperature[1], total).to(
            self.device
        )
        self.shuffled = prepared

    def optimizer(self) -> torch.optim.Optimizer:
        params = [p for r in self.rotations.values() for p in r.parameters()]
        if self.boundless:
            params.append(self.boundary)
        return torch.optim.Adam(params, lr=self.config.lr)

    def reorder(self, order: torch.Tensor) -> torch.device:
        self.shuffled = self.prepared.reordered(order)
        return self.shuffled.labels.device

    def interventions(
        self, weights: Mapping[Location, torch.Tensor], temperature: torch.Tensor
    ) -> dict[str, Intervention]:
        """The step's soft interventions with the rotations' current ``weights``."""
        if self.boundless:
            ((location, weight),) = weights.items()
            return {self.variables[0]: BoundlessPatch(location, weight, self.boundary, temperature)}
        return {
            v: LowRankPatch(location, weights[location][:, a:b])
            for location, members in self.spans.items()
            for v, (a, b) in members.items()
        }

    def hard(self, weights: Mapping[Location, torch.Tensor]) -> dict[str, Intervention]:
        """The interventions scored on validation (boundless: coordinates with mask > 1/2)."""
        out: dict[str, Intervention] = {}
        for location, weight in weights.items():
            if self.boundless:
                mask = boundary_mask(
                    weight.shape[0],
                    self.boundary.detach(),
                    torch.tensor(0.1, device=weight.device),
                )
                keep = (mask > 0.5).nonzero().flatten()
                bases = {self.variables[0]: weight[:, keep if len(keep) else keep.new_zeros(1)]}
            else:
                bases = {v: weight[:, a:b] for v, (a, b) in self.spans[location].items()}
            out.update({v: LowRankPatch(location, basis) for v, basis in bases.items()})
        return out

    def step(self, members: tuple[int, ...]) -> StepLoss:
        def step_loss(rows: torch.Tensor | slice, temperature: torch.Tensor) -> torch.Tensor:
            weights = {location: r.weight for location, r in self.rotations.items()}
            logits = self.shuffled.logits(rows, self.interventions(weights, temperature))
            labels = self.shuffled.labels[rows].to(logits.device)
            loss = nn.functional.cross_entropy(logits, labels)
            if self.boundless:
                loss = loss + self.config.boundary_coef * torch.clamp(self.boundary, 1e-3, 1.0)
            return loss

        forward = captured(step_loss, enabled=self.config.capture, device=self.device)
        last = len(self.schedule) - 1

        def run(
            rows: torch.Tensor | slice, step: int
        ) -> tuple[torch.Tensor, torch.Tensor, Sequence[int]]:
            loss = forward(rows, self.schedule[min(step, last)])
            return loss, loss, (0,)

        return run

    def snapshot(self, unit: int) -> Snapshot:
        weights = {loc: r.weight.detach().clone() for loc, r in self.rotations.items()}
        return weights, float(self.boundary.detach())

    def score(
        self, members: Sequence[int], snapshots: Mapping[int, Snapshot], select: bool
    ) -> dict[int, EpochScore]:
        scored = self.validation if self.validation is not None else self.prepared
        iia = float(scored.correct(self.hard(snapshots[0][0])).float().mean()) if select else None
        extra = (
            {"boundary": float(torch.clamp(self.boundary.detach(), 1e-3, 1.0))}
            if self.boundless
            else {}
        )
        return {0: EpochScore(iia, extra=extra)}

    def unit_name(self, unit: int) -> str:
        return ""

    def alignments(
        self,
        best: Snapshot,
        curve: list[dict[str, float | None]],
    ) -> list[Alignment]:
        """One alignment per site from the best snapshot."""
        rank = self.request.rank
        weights, boundary_value = best
        with torch.no_grad():
            self.boundary.fill_(boundary_value)
        config = self.config
        out = []
        for location, site_spans in self.spans.items():
            result_spans = dict(site_spans)
            stored = weights[location].cpu()
            boundaries: dict[str, float] = {}
            if self.boundless:
                mask = boundary_mask(
                    stored.shape[0],
                    self.boundary.detach().cpu(),
                    torch.tensor(config.temperature[1]),
                )
                keep = (mask > 0.5).nonzero().flatten()
                if len(keep) == 0:
                    keep = torch.tensor([0])
                stored = stored[:, keep]
                result_spans = {self.variables[0]: (0, len(keep))}
                boundaries = {
                    self.variables[0]: float(torch.clamp(self.boundary.detach(), 1e-3, 1.0))
                }
            out.append(
                Alignment(
                    method=self.method.name,
                    location=location,
                    network_hash=self.prepared.network.hash,
                    model_hash=self.request.task.model.source_hash,
                    basis=stored,
                    subspaces=result_spans,
                    boundary=boundaries,
                    temperature=config.temperature[1] if self.boundless else None,
                    curve=list(curve),
                    config={
                        "method": self.method.name,
                        "rank": rank if isinstance(rank, (int, type(None))) else dict(rank),
                        **config.to_dict(),
                    },
                )
            )
        return out


class _Rotation(Method):
    """A method that learns one rotation per site (:class:`RotationObjective`)."""

    rotation = True

    def fit(self, request: FitRequest) -> list[Alignment]:
        generator = torch.Generator().manual_seed(request.config.seed)
        objective = RotationObjective(self, request, generator)
        trained = train(objective, request.config, generator, progress=request.unit_progress)
        return objective.alignments(trained.best[0], trained.curves[0])


class DAS(_Rotation):
    """Distributed alignment search (Geiger et al. 2024): a full learned rotation, each
    variable a block of its columns (default: an equal share of the width)."""

    name = "das"
    takes_subspaces = True
    staircase = True
    experiment_rank = 1


class LowRankDAS(_Rotation):
    """DAS that learns only the columns the variables use (default: one per variable)."""

    name = "low_rank"
    takes_subspaces = True
    staircase = True

    def default_rank(self, width: int, variables: int) -> int:
        return 1

    def rotation_width(self, width: int, stop: int) -> int:
        return stop


class BoundlessDAS(_Rotation):
    """Boundless DAS (Wu et al. 2023): one variable, whose subspace size is learned
    through a soft boundary over the rotated coordinates."""

    name = "boundless"
    one_variable = True

    def check(self, request: FitRequest) -> None:
        if len(request.variables) != 1:
            raise AlignmentError(
                "boundless DAS learns one subspace size, so it aligns one variable at a time; "
                "call align once per variable, or use method='das'"
            )
        super().check(request)


class FullPatch(Method):
    """Interchange the whole site (no training): the upper bound a subspace is held to."""

    name = "patch"
    trained = False

    def null(self) -> Method:
        return DAS()

    def fit(self, request: FitRequest) -> list[Alignment]:
        prepared, validation = request.prepared, request.validation
        alignments = [
            Alignment(
                self.name,
                location,
                None,
                {v: (0, prepared.width_of(v)) for v in members},
                prepared.network.hash,
                request.task.model.source_hash,
                config={"method": self.name},
            )
            for location, members in site_groups(prepared, request.variables).items()
        ]
        scored = validation if validation is not None else prepared
        chosen = {v: iv for a in alignments for v, iv in a.interventions().items()}
        entry: dict[str, float | None] = {
            "epoch": 0.0,
            "step": 0.0,
            "loss": float("nan"),
            "val_iia": float(scored.correct(chosen).float().mean()),
            "seconds": 0.0,
        }
        if request.progress is not None:
            request.progress(entry)
        for alignment in alignments:
            alignment.curve.append(entry)
        return alignments
