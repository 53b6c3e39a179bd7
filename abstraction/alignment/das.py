"""Interchange intervention training: DAS, low-rank DAS, boundless DAS and plain patching.

:func:`align` trains an orthogonal basis so that interchanging each causal
variable's subspace between a base and a source makes the network output the
causal model's counterfactual label (cross-entropy on the readout), with Adam and
early stopping on validation IIA. Several variables share one rotation, each in its
own disjoint block of columns, trained on the mix of single- and multi-variable
interchanges the dataset contains (as in the DAS paper).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar

import pandas as pd
import torch
from torch import nn
from torch.func import functional_call

from abstraction.alignment.masks import Featurizers, fit_masks
from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.alignment.result import FEATURE_METHODS, METHODS, Alignment, AlignmentError
from abstraction.alignment.step import PRECISIONS, Precision, batch_rows, captured, step_precision
from abstraction.errors import UnknownNameError, nearest
from abstraction.interventions import BoundlessPatch, Intervention, LowRankPatch, boundary_mask
from abstraction.locations import Location
from abstraction.network import Network, seeded
from abstraction.task import Task

__all__ = [
    "FEATURE_METHODS",
    "METHODS",
    "THREADS_VARIABLE",
    "TrainingConfig",
    "align",
    "align_sites",
    "evaluate",
    "fit",
    "fit_sites",
    "reproducible",
]

THREADS_VARIABLE = "ABSTRACTION_THREADS"
"""Environment variable: torch intra-op threads used by align/verify/sweep (default 1)."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def threads() -> int:
    """The torch intra-op thread count alignment runs with: ``$ABSTRACTION_THREADS`` or 1."""
    value = os.environ.get(THREADS_VARIABLE, "1")
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise AlignmentError(
            f"{THREADS_VARIABLE}={value!r} is not a positive integer; set it to the number of "
            "CPU threads alignment may use (results are reproducible for one value), or unset it"
        )
    return count


def reproducible(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``function`` with a fixed torch thread count and the caller's global RNG untouched.

    Floating-point reductions on the CPU are summed in an order that depends on the
    number of threads, so the same seed trained with 1 and with 2 threads gives rotations
    that differ in the last bits - and, over many steps, different numbers. Whatever the
    caller set, the wrapped function runs with :func:`threads` threads; the caller's
    thread count is restored afterwards, and so is torch's global RNG state: inside, the
    global RNG starts from a fixed seed (the library draws from its own seeded
    generators; anything else that draws from the global one gets the same numbers
    every run), and the caller's state is put back on the way out.
    """

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        before = torch.get_num_threads()
        with seeded(0):  # any draw from the global RNG inside is the same every run
            torch.set_num_threads(threads())
            try:
                return function(*args, **kwargs)
            finally:
                torch.set_num_threads(before)

    return wrapper


class TrivialIIAWarning(UserWarning):
    """No counterfactual label differs from its base label: IIA would be trivially high."""


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
    method: str,
    variables: Sequence[str],
    width: int,
    rank: int | Mapping[str, int] | None,
    subspaces: Mapping[str, tuple[int, int]] | None,
) -> dict[str, tuple[int, int]]:
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
        per = {v: max(1, width // len(variables)) for v in variables}
        if method == "low_rank":
            per = dict.fromkeys(variables, 1)
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


def _check_data(data: pd.DataFrame, name: str) -> None:
    if len(data) == 0:
        raise AlignmentError(f"the {name} set is empty; generate counterfactual pairs first")
    if not bool(data["changed"].any()):
        warnings.warn(
            f"no pair in the {name} set changes the label: IIA equals plain task accuracy and "
            "says nothing about the variable. Sample with changed_only=True or a balanced "
            "sampler",
            TrivialIIAWarning,
            stacklevel=3,
        )


def evaluate(
    alignment: Alignment | Sequence[Alignment], prepared: PreparedInterchanges
) -> torch.Tensor:
    """Per-pair correctness (counterfactual label predicted) of ``alignment`` on ``prepared``.

    A sequence of alignments (one per site, from :func:`fit_sites`) is applied together.
    """
    parts = [alignment] if isinstance(alignment, Alignment) else list(alignment)
    return prepared.correct({v: iv for a in parts for v, iv in a.interventions().items()})


def align(
    network: Network,
    task: Task,
    train: pd.DataFrame,
    location: Location | Mapping[str, Location],
    variables: Sequence[str],
    *,
    method: str = "das",
    rank: int | Mapping[str, int] | None = None,
    subspaces: Mapping[str, tuple[int, int]] | None = None,
    validation: pd.DataFrame | None = None,
    config: TrainingConfig | None = None,
    memory_budget: int | None = None,
    progress: Callable[[dict[str, float | None]], None] | None = None,
    featurizer: Featurizers = None,
    device: str | torch.device | None = None,
) -> Alignment:
    """Train an alignment of ``variables`` with subspaces at ``location``.

    With one location per variable at several sites, use :func:`align_sites`.

    Args:
        network: the network.
        task: encodes the causal inputs and labels for the network.
        train: training counterfactual pairs (rows intervening on any of ``variables``).
        location: where to look for the variables (or one location per variable).
        variables: causal variables, aligned with disjoint subspaces of one rotation.
        method: ``"das"`` (full rotation), ``"low_rank"``, ``"boundless"`` (one
            variable, learned subspace size), ``"patch"`` (no training), or a learned
            binary mask (DBM, :mod:`abstraction.alignment.masks`) over features:
            ``"dbm"`` (neurons, or ``featurizer``'s features), ``"pca"`` (principal
            components of the training activations at the site), ``"sae"`` (the SAE
            ``featurizer``, or one trained here on those activations). ``rank`` does
            not apply to these: the mask decides how many features a variable keeps.
        rank: dimensions per variable (an int for all, or per variable); default: an
            equal share of the width for DAS, 1 for low-rank.
        subspaces: explicit column ranges per variable, e.g. ``{"wx": (0, 8)}``.
        validation: pairs for early stopping (never the test pairs).
        config: epochs, batch size, learning rate, patience, seed.
        memory_budget: bytes of cached activations held in RAM (above it, the prefix
            cache is written to memory-mapped files).
        progress: called after every epoch with the training curve's newest entry.
        featurizer: for ``"dbm"`` and ``"sae"``: the featurizer (or one per site) whose
            features the mask selects.
        device: move the network there first (``"cpu"``, ``"cuda"``, ...; default:
            where it is). Caches stay in host memory; rows move per step.
    """
    sites = (
        {location[v] for v in variables if v in location}
        if isinstance(location, Mapping)
        else set()
    )
    if len(sites) > 1:
        raise AlignmentError(
            f"the variables live at {len(sites)} sites; use align_sites, which returns one "
            "alignment per site"
        )
    return align_sites(
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
        memory_budget=memory_budget,
        progress=progress,
        featurizer=featurizer,
        device=device,
    )[0]


@reproducible
def align_sites(
    network: Network,
    task: Task,
    train: pd.DataFrame,
    location: Location | Mapping[str, Location],
    variables: Sequence[str],
    *,
    method: str = "das",
    rank: int | Mapping[str, int] | None = None,
    subspaces: Mapping[str, tuple[int, int]] | None = None,
    validation: pd.DataFrame | None = None,
    config: TrainingConfig | None = None,
    memory_budget: int | None = None,
    progress: Callable[[dict[str, float | None]], None] | None = None,
    featurizer: Featurizers = None,
    device: str | torch.device | None = None,
) -> list[Alignment]:
    """:func:`align` for variables that may live at several sites: one alignment per site.

    ``location`` maps each variable to its site; the sites are trained together on the
    dataset's single- and multi-variable interchanges (see :func:`fit_sites`). The
    arguments are :func:`align`'s.
    """
    config = config or TrainingConfig()
    if device is not None:
        network.to(device)
    if method not in METHODS:
        raise AlignmentError(f"unknown method {method!r}; {nearest(method, METHODS)}")
    if not variables:
        raise AlignmentError("name at least one causal variable to align")
    for v in variables:
        if v not in task.model.variables:
            raise UnknownNameError(
                f"variable {v!r} is not in causal model {task.model.name!r}; "
                + nearest(v, task.model.variables)
            )
    _check_data(train, "training")
    task.check_network(network)
    prepared = PreparedInterchanges(
        network, task, train, location, variables, memory_budget=memory_budget
    )
    prepared_validation = (
        PreparedInterchanges(
            network, task, validation, location, variables, memory_budget=memory_budget
        )
        if validation is not None
        else None
    )
    try:
        alignments = fit_sites(
            prepared,
            prepared_validation,
            task,
            variables,
            method=method,
            rank=rank,
            subspaces=subspaces,
            config=config,
            progress=progress,
            featurizer=featurizer,
        )
    finally:
        prepared.close()
        if prepared_validation is not None:
            prepared_validation.close()
    return alignments


def fit(
    prepared: PreparedInterchanges,
    validation: PreparedInterchanges | None,
    task: Task,
    variables: Sequence[str],
    *,
    method: str = "das",
    rank: int | Mapping[str, int] | None = None,
    subspaces: Mapping[str, tuple[int, int]] | None = None,
    config: TrainingConfig | None = None,
    progress: Callable[[dict[str, float | None]], None] | None = None,
    featurizer: Featurizers = None,
) -> Alignment:
    """:func:`align` on prepared interchanges (reuse them across seeds, ranks and baselines).

    ``validation`` scores each epoch for early stopping (the training pairs when
    ``None``). Every step applies :class:`~abstraction.interventions.LowRankPatch`
    (DAS, low-rank DAS) or :class:`~abstraction.interventions.BoundlessPatch` objects
    built from the trainable weights, through the same runtime as evaluation.
    """
    if prepared.multi_site:
        raise AlignmentError(
            "these interchanges were prepared with one site per variable; train them with "
            "fit_sites, which returns one alignment per site"
        )
    return fit_sites(
        prepared,
        validation,
        task,
        variables,
        method=method,
        rank=rank,
        subspaces=subspaces,
        config=config,
        progress=progress,
        featurizer=featurizer,
    )[0]


def fit_sites(
    prepared: PreparedInterchanges,
    validation: PreparedInterchanges | None,
    task: Task,
    variables: Sequence[str],
    *,
    method: str = "das",
    rank: int | Mapping[str, int] | None = None,
    subspaces: Mapping[str, tuple[int, int]] | None = None,
    config: TrainingConfig | None = None,
    progress: Callable[[dict[str, float | None]], None] | None = None,
    featurizer: Featurizers = None,
) -> list[Alignment]:
    """Train variables that live at several sites together: one alignment per site.

    Each site gets its own rotation (its variables in disjoint blocks of it); all are
    trained at once on the dataset's single- and multi-variable interchanges, so a
    row intervening on variables at two sites edits both with their own sources, and
    early stopping keeps the epoch whose joint validation IIA is best. With one site
    this is :func:`fit`. Methods ``"dbm"``, ``"pca"`` and ``"sae"`` train one binary
    mask per variable over its site's featurizer instead
    (:func:`abstraction.alignment.masks.fit_masks`).
    """
    config = config or TrainingConfig()
    if method in FEATURE_METHODS:
        if not config.select_epoch:
            raise AlignmentError(
                f"select_epoch=False is for the DAS methods; method={method!r} keeps the best "
                "epoch under its hard masks (leave select_epoch at True)"
            )
        if config.precision != "fp32" or config.capture:
            raise AlignmentError(
                f"precision= and capture= act on the DAS methods' training step; method "
                f"{method!r} trains masks in fp32, eagerly (leave precision='fp32', "
                "capture=False)"
            )
        if subspaces is not None:
            raise AlignmentError(
                f"method={method!r} learns which features each variable keeps, so subspaces= "
                "does not apply; leave it out (or use method='das')"
            )
        return fit_masks(
            prepared,
            validation,
            task,
            variables,
            method=method,
            config=config,
            featurizer=featurizer,
            progress=progress,
        )
    if featurizer is not None:
        raise AlignmentError(
            f"featurizer= is for methods 'dbm' and 'sae'; method {method!r} does not use it"
        )
    network = prepared.network
    network_hash, model_hash = network.hash, task.model.source_hash
    groups: dict[Location, list[str]] = {}
    for v in variables:
        groups.setdefault(prepared.sites[v].location, []).append(v)
    if method == "patch":
        alignments = [
            Alignment(
                "patch",
                location,
                None,
                {v: (0, prepared.width_of(v)) for v in members},
                network_hash,
                model_hash,
                config={"method": "patch"},
            )
            for location, members in groups.items()
        ]
        return _with_curve(alignments, prepared, validation, progress)
    if method == "boundless" and len(variables) != 1:
        raise AlignmentError(
            "boundless DAS learns one subspace size, so it aligns one variable at a time; "
            "call align once per variable, or use method='das'"
        )
    generator = torch.Generator().manual_seed(config.seed)
    spans: dict[Location, dict[str, tuple[int, int]]] = {}
    rotations: dict[Location, LearnedRotation] = {}
    for location, members in groups.items():
        width = prepared.width_of(members[0])
        spans[location] = subspace_spans(method, members, width, rank, subspaces)
        k = (
            width
            if method in ("das", "boundless")
            else max(stop for _, stop in spans[location].values())
        )
        rotations[location] = LearnedRotation(width, k, generator).to(network.device)
    boundary = nn.Parameter(torch.tensor(0.5, device=network.device))
    params: list[nn.Parameter] = [p for r in rotations.values() for p in r.parameters()]
    if method == "boundless":
        params.append(boundary)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    steps_per_epoch = math.ceil(prepared.rows / config.batch_size)
    total = max(1, config.epochs * steps_per_epoch)
    temperatures = torch.linspace(config.temperature[0], config.temperature[1], total)
    curve: list[dict[str, float | None]] = []
    best: tuple[float, dict[Location, torch.Tensor], float] | None = None
    stale, step = 0, 0
    start_time = time.perf_counter()

    def interventions_now(
        weights: Mapping[Location, torch.Tensor], temperature: torch.Tensor
    ) -> dict[str, Intervention]:
        if method == "boundless":
            ((location, weight),) = weights.items()
            return {variables[0]: BoundlessPatch(location, weight, boundary, temperature)}
        return {
            v: LowRankPatch(location, weights[location][:, a:b])
            for location, members in spans.items()
            for v, (a, b) in members.items()
        }

    def hard_bases(weights: Mapping[Location, torch.Tensor]) -> dict[str, Intervention]:
        out: dict[str, Intervention] = {}
        for location, weight in weights.items():
            width = weight.shape[0]
            final = _final_bases(method, weight, spans[location], boundary, width, variables)
            out.update({v: LowRankPatch(location, basis) for v, basis in final.items()})
        return out

    # Rows are shuffled once into a contiguous copy; each epoch then visits its batches
    # in a new random order. Re-copying the data every epoch cost more than training.
    shuffled = prepared.reordered(torch.randperm(prepared.rows, generator=generator))
    starts = torch.arange(0, prepared.rows, config.batch_size)
    # the schedule lives on the device: a step indexes it rather than copying a number
    schedule = temperatures.to(network.device)

    def step_loss(rows: torch.Tensor | slice, temperature: torch.Tensor) -> torch.Tensor:
        weights = {location: r.weight for location, r in rotations.items()}
        logits = shuffled.logits(rows, interventions_now(weights, temperature))
        loss = nn.functional.cross_entropy(logits, shuffled.labels[rows].to(logits.device))
        if method == "boundless":
            loss = loss + config.boundary_coef * torch.clamp(boundary, 1e-3, 1.0)
        return loss

    forward = captured(step_loss, enabled=config.capture, device=network.device)
    for epoch in range(config.epochs):
        # the losses add up where they are computed and are read once an epoch: reading
        # each step's loss (or checking it for NaN) would make a GPU wait every step
        loss_sum = torch.zeros((), device=network.device)
        batches = starts[torch.randperm(len(starts), generator=generator)].tolist()
        for s in batches:
            rows = batch_rows(
                s, config.batch_size, prepared.rows, config.capture, shuffled.labels.device
            )
            with step_precision(config.precision, network.device):
                loss = forward(rows, schedule[min(step, total - 1)])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            loss_sum = loss_sum + loss.detach()
            step += 1
        mean_loss = float(loss_sum) / len(batches)
        if not math.isfinite(mean_loss):
            raise AlignmentError(
                f"the loss became {mean_loss} in epoch {epoch} (by step {step}); lower the "
                "learning rate or check the network's outputs for NaN"
            )
        with torch.no_grad():
            snapshot = {loc: r.weight.detach().clone() for loc, r in rotations.items()}
            scored = validation if validation is not None else prepared
            val_iia = (
                float(scored.correct(hard_bases(snapshot)).float().mean())
                if config.select_epoch
                else None
            )
        entry: dict[str, float | None] = {
            "epoch": float(epoch + 1),
            "step": float(step),
            "loss": mean_loss,
            "val_iia": val_iia,
            "seconds": time.perf_counter() - start_time,
        }
        if method == "boundless":
            entry["boundary"] = float(torch.clamp(boundary.detach(), 1e-3, 1.0))
        curve.append(entry)
        if progress is not None:
            progress(entry)
        if best is None or val_iia is None or val_iia > best[0]:
            best, stale = (val_iia or 0.0, snapshot, float(boundary.detach())), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    assert best is not None
    _, best_weights, boundary_value = best
    with torch.no_grad():
        boundary.fill_(boundary_value)
    alignments = []
    for location, site_spans in spans.items():
        result_spans = dict(site_spans)
        stored = best_weights[location].cpu()
        width = stored.shape[0]
        boundaries: dict[str, float] = {}
        if method == "boundless":
            mask = boundary_mask(
                width, boundary.detach().cpu(), torch.tensor(config.temperature[1])
            )
            keep = (mask > 0.5).nonzero().flatten()
            if len(keep) == 0:
                keep = torch.tensor([0])
            stored = stored[:, keep]
            result_spans = {variables[0]: (0, len(keep))}
            boundaries = {variables[0]: float(torch.clamp(boundary.detach(), 1e-3, 1.0))}
        alignments.append(
            Alignment(
                method=method,
                location=location,
                network_hash=network_hash,
                model_hash=model_hash,
                basis=stored,
                subspaces=result_spans,
                boundary=boundaries,
                temperature=config.temperature[1] if method == "boundless" else None,
                curve=list(curve),
                config={
                    "method": method,
                    "rank": rank if isinstance(rank, (int, type(None))) else dict(rank),
                    **config.to_dict(),
                },
            )
        )
    return alignments


def _final_bases(
    method: str,
    weight: torch.Tensor,
    spans: Mapping[str, tuple[int, int]],
    boundary: torch.Tensor,
    width: int,
    variables: Sequence[str],
) -> dict[str, torch.Tensor]:
    """The hard subspaces used for scoring (boundless: coordinates with mask > 1/2)."""
    if method == "boundless":
        mask = boundary_mask(width, boundary.detach(), torch.tensor(0.1, device=weight.device))
        keep = (mask > 0.5).nonzero().flatten()
        return {variables[0]: weight[:, keep if len(keep) else keep.new_zeros(1)]}
    return {v: weight[:, a:b] for v, (a, b) in spans.items()}


def _with_curve(
    alignments: list[Alignment],
    prepared: PreparedInterchanges,
    validation: PreparedInterchanges | None,
    progress: Callable[[dict[str, float | None]], None] | None,
) -> list[Alignment]:
    scored = validation if validation is not None else prepared
    iia = float(evaluate(alignments, scored).float().mean())
    entry: dict[str, float | None] = {
        "epoch": 0.0,
        "step": 0.0,
        "loss": float("nan"),
        "val_iia": iia,
        "seconds": 0.0,
    }
    if progress is not None:
        progress(entry)
    for alignment in alignments:
        alignment.curve.append(entry)
    return alignments
