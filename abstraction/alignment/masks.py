"""Differentiable binary masks (DBM) over a featurizer's features: methods dbm, pca, sae.

Each variable gets one logit per feature of its site's featurizer; during training
the mask is ``sigmoid(logit / T)`` with the temperature ``T`` annealed geometrically
from ``config.mask_temperature[0]`` to ``[1]``, and the loss is the interchange
cross-entropy plus ``config.sparsity`` times the mean mask. Validation and the final
alignment use the hard mask (``logit > 0``; at least the largest logit is kept).

The featurizer per site is

* ``"dbm"``: the neurons (:class:`~abstraction.featurizers.Identity`), or the one given;
* ``"pca"``: :meth:`PCA.fit <abstraction.featurizers.PCA.fit>` on the training split's
  activations at the site (the source activations :class:`PreparedInterchanges` has
  already collected; never the validation or test pairs);
* ``"sae"``: the SAE given, or one trained here by
  :func:`~abstraction.featurizers.train_sae` on those same training activations.

Every step applies :class:`~abstraction.interventions.FeaturePatch` objects through the
prepared interchanges (prefix cache, one runtime), like DAS's training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

import torch
from torch import nn

from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.alignment.result import FEATURE_METHODS, Alignment, AlignmentError
from abstraction.featurizers import (
    PCA,
    Featurizer,
    FeaturizerError,
    Identity,
    SparseAutoencoder,
    selected_span,
    train_sae,
)
from abstraction.interventions import FeaturePatch, Intervention
from abstraction.locations import Location
from abstraction.task import Task

__all__ = ["Featurizers", "MaskSettings", "fit_masks", "site_activations", "site_featurizer"]


class MaskSettings(Protocol):
    """What DBM training reads from :class:`~abstraction.alignment.das.TrainingConfig`."""

    @property
    def epochs(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def patience(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def mask_lr(self) -> float: ...
    @property
    def sparsity(self) -> float: ...
    @property
    def mask_temperature(self) -> tuple[float, float]: ...
    @property
    def mask_init(self) -> float: ...
    @property
    def sae_features(self) -> int | None: ...
    @property
    def sae_activation(self) -> Literal["topk", "relu"]: ...
    @property
    def sae_k(self) -> int | None: ...
    @property
    def sae_l1(self) -> float: ...
    @property
    def sae_steps(self) -> int: ...
    @property
    def sae_lr(self) -> float: ...
    def to_dict(self) -> dict[str, Any]: ...


Featurizers = Featurizer | Mapping[Location, Featurizer] | None
"""A featurizer for every site, one per site, or ``None`` (the method's default)."""


def site_activations(prepared: PreparedInterchanges, location: Location) -> torch.Tensor:
    """``(n, width)`` training activations at ``location``: every prepared source
    activation of the variables that live there (inputs of the training split only)."""
    parts = [
        prepared.sources[v].reshape(-1, prepared.width_of(v)).float()
        for v in prepared.variables
        if prepared.sites[v].location == location
    ]
    if not parts:
        raise AlignmentError(f"no variable was prepared at {location}")
    return torch.cat(parts)


def site_featurizer(
    method: str,
    prepared: PreparedInterchanges,
    location: Location,
    width: int,
    config: MaskSettings,
    given: Featurizers = None,
) -> Featurizer:
    """The featurizer ``method`` uses at ``location`` (fitted on training activations)."""
    chosen = given.get(location) if isinstance(given, Mapping) else given
    if method == "pca":
        if chosen is not None:
            raise AlignmentError(
                "method='pca' fits its own principal components on the training activations; "
                "to select features of a given featurizer use method='dbm', featurizer=..."
            )
        return PCA.fit(site_activations(prepared, location))
    if method == "sae":
        if chosen is None:
            features = config.sae_features or 4 * width
            return train_sae(
                site_activations(prepared, location),
                features,
                activation=config.sae_activation,
                k=config.sae_k if config.sae_activation == "topk" else None,
                l1=config.sae_l1,
                steps=config.sae_steps,
                lr=config.sae_lr,
                seed=config.seed,
            )
        if not isinstance(chosen, SparseAutoencoder):
            raise AlignmentError(
                f"method='sae' needs a SparseAutoencoder (load_sae, train_sae), not a "
                f"{type(chosen).__name__}; use method='dbm' to mask another featurizer"
            )
    if method == "dbm" and chosen is None:
        return Identity(width)
    assert chosen is not None
    try:
        chosen.check(width)
    except FeaturizerError as exc:
        raise AlignmentError(f"at {location}: {exc}") from None
    return chosen


def _hard(logits: torch.Tensor) -> torch.Tensor:
    mask = (logits.detach() > 0).float()
    if not bool(mask.any()):
        mask[int(logits.detach().argmax())] = 1.0
    return mask


def fit_masks(
    prepared: PreparedInterchanges,
    validation: PreparedInterchanges | None,
    task: Task,
    variables: Sequence[str],
    *,
    method: str,
    config: MaskSettings,
    featurizer: Featurizers = None,
    progress: Callable[[dict[str, float | None]], None] | None = None,
) -> list[Alignment]:
    """Train one binary mask per variable over its site's featurizer (one alignment per site).

    Early stopping keeps the epoch with the best validation IIA under the hard masks
    (ties: the one keeping fewer features).
    """
    if method not in FEATURE_METHODS:
        raise AlignmentError(f"fit_masks trains {FEATURE_METHODS}, not {method!r}")
    network = prepared.network
    groups: dict[Location, list[str]] = {}
    for v in variables:
        groups.setdefault(prepared.sites[v].location, []).append(v)
    started = time.perf_counter()
    featurizers: dict[Location, Featurizer] = {}
    fit_seconds: dict[Location, float] = {}
    for location, members in groups.items():
        begun = time.perf_counter()
        featurizers[location] = site_featurizer(
            method, prepared, location, prepared.width_of(members[0]), config, featurizer
        )
        fit_seconds[location] = time.perf_counter() - begun
    generator = torch.Generator().manual_seed(config.seed)
    logits = {
        v: nn.Parameter(
            torch.full((featurizers[location].features,), config.mask_init, device=network.device)
        )
        for location, members in groups.items()
        for v in members
    }
    optimizer = torch.optim.Adam(list(logits.values()), lr=config.mask_lr)
    steps_per_epoch = math.ceil(prepared.rows / config.batch_size)
    total = max(1, config.epochs * steps_per_epoch)
    t0, t1 = config.mask_temperature
    location_of = {v: location for location, members in groups.items() for v in members}

    def interventions(masks: Mapping[str, torch.Tensor]) -> dict[str, Intervention]:
        return {
            v: FeaturePatch(location_of[v], featurizers[location_of[v]], m)
            for v, m in masks.items()
        }

    curve: list[dict[str, float | None]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    stale, step = 0, 0
    shuffled = prepared.reordered(torch.randperm(prepared.rows, generator=generator))
    starts = torch.arange(0, prepared.rows, config.batch_size)
    for epoch in range(config.epochs):
        # losses add up where they are computed and are read once an epoch (no GPU wait
        # every step)
        loss_sum = torch.zeros((), device=prepared.network.device)
        batches = starts[torch.randperm(len(starts), generator=generator)].tolist()
        for s in batches:
            rows = slice(s, s + config.batch_size)
            temperature = t0 * (t1 / t0) ** (min(step, total - 1) / max(1, total - 1))
            soft = {v: torch.sigmoid(p / temperature) for v, p in logits.items()}
            out = shuffled.logits(rows, interventions(soft))
            loss = nn.functional.cross_entropy(out, shuffled.labels[rows].to(out.device))
            loss = loss + config.sparsity * torch.stack([m.mean() for m in soft.values()]).mean()
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            loss_sum = loss_sum + loss.detach()
            step += 1
        mean_loss = float(loss_sum) / len(batches)
        if not math.isfinite(mean_loss):
            raise AlignmentError(
                f"the loss became {mean_loss} in epoch {epoch} (by step {step}); lower "
                "mask_lr or check the network's outputs for NaN"
            )
        with torch.no_grad():
            hard = {v: _hard(p).cpu() for v, p in logits.items()}
            scored = validation if validation is not None else prepared
            val_iia = float(scored.correct(interventions(hard)).float().mean())
        kept = sum(int(m.sum()) for m in hard.values())
        entry: dict[str, float | None] = {
            "epoch": float(epoch + 1),
            "step": float(step),
            "loss": mean_loss,
            "val_iia": val_iia,
            "seconds": time.perf_counter() - started,
            "units": float(kept),
        }
        curve.append(entry)
        if progress is not None:
            progress(entry)
        if (
            best is None
            or val_iia > best[0] + 1e-12
            or (abs(val_iia - best[0]) <= 1e-12 and kept < best[1])
        ):
            best, stale = (val_iia, kept, hard), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    assert best is not None
    masks = best[2]
    alignments = []
    for location, members in groups.items():
        featurized = featurizers[location]
        spans: dict[str, tuple[int, int]] = {}
        columns, offset = [], 0
        for v in members:
            span = selected_span(featurized, masks[v])
            spans[v] = (offset, offset + span.shape[1])
            offset += span.shape[1]
            columns.append(span)
        alignments.append(
            Alignment(
                method=method,
                location=location,
                basis=torch.cat(columns, dim=1),
                subspaces=spans,
                network_hash=network.hash,
                model_hash=task.model.source_hash,
                curve=list(curve),
                config={
                    "method": method,
                    "units": {v: int(masks[v].sum()) for v in members},
                    "features": featurized.features,
                    # fitting PCA / training the SAE on this site's training activations
                    "featurizer_seconds": fit_seconds[location],
                    **config.to_dict(),
                },
                featurizer=featurized,
                masks={v: masks[v] for v in members},
            )
        )
    return alignments
