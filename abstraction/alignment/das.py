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
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import ParamSpec, TypeVar

import pandas as pd
import torch

from abstraction.alignment.masks import DBM, PCAMask, SAEMask
from abstraction.alignment.method import (
    Featurizers,
    FitRequest,
    Method,
    method_named,
    method_names,
)
from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.alignment.result import Alignment
from abstraction.alignment.rotation import (
    DAS,
    BoundlessDAS,
    FullPatch,
    LearnedRotation,
    LearnedRotationStack,
    LowRankDAS,
)
from abstraction.alignment.training import TrainingConfig
from abstraction.errors import AlignmentError, UnknownNameError, nearest
from abstraction.locations import Location
from abstraction.network import Network, seeded
from abstraction.task import Task

__all__ = [
    "DAS",
    "DBM",
    "FEATURE_METHODS",
    "METHODS",
    "THREADS_VARIABLE",
    "BoundlessDAS",
    "FullPatch",
    "LearnedRotation",
    "LearnedRotationStack",
    "LowRankDAS",
    "PCAMask",
    "SAEMask",
    "TrainingConfig",
    "align",
    "align_sites",
    "evaluate",
    "fit",
    "fit_sites",
    "reproducible",
]

METHODS = method_names()
"""The built-in methods' names (:func:`~abstraction.alignment.method.method_names` also
lists methods registered later)."""

FEATURE_METHODS = tuple(name for name in METHODS if method_named(name).featurized)
"""Methods that select features of a featurizer with a learned binary mask (DBM): over
the neurons (or a given featurizer's features), over principal components, over an
SAE's features."""

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
    method: str | Method = "das",
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
    method: str | Method = "das",
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
    method_named(method)  # an unknown name fails before any work
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
    method: str | Method = "das",
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
    method: str | Method = "das",
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
    chosen = method_named(method)
    request = FitRequest(
        prepared,
        validation,
        task,
        variables,
        rank=rank,
        subspaces=subspaces,
        config=config,
        progress=progress,
        featurizer=featurizer,
    )
    chosen.check(request)
    return chosen.fit(request)
