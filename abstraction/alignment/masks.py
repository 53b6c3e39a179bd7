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
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn

from abstraction.alignment.method import Featurizers, FitRequest, Method
from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.alignment.result import Alignment
from abstraction.alignment.rotation import site_groups
from abstraction.alignment.training import EpochScore, StepLoss, TrainingConfig, train
from abstraction.errors import AlignmentError
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

__all__ = ["DBM", "Featurizers", "MaskObjective", "PCAMask", "SAEMask", "site_activations"]


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


def _hard(logits: torch.Tensor) -> torch.Tensor:
    mask = (logits.detach() > 0).float()
    if not bool(mask.any()):
        mask[int(logits.detach().argmax())] = 1.0
    return mask


class MaskObjective:
    """What DBM, PCA and SAE masks train (an
    :class:`~abstraction.alignment.training.Objective`): one logit per feature of its
    site's featurizer for every variable, trained together as one unit."""

    units = 1

    def __init__(
        self,
        prepared: PreparedInterchanges,
        validation: PreparedInterchanges | None,
        featurizers: Mapping[Location, Featurizer],
        groups: Mapping[Location, Sequence[str]],
        config: TrainingConfig,
    ) -> None:
        self.prepared, self.validation, self.config = prepared, validation, config
        self.featurizers = featurizers
        self.device = prepared.network.device
        self.rows = prepared.rows
        self.nan_hint = "lower mask_lr or check the network's outputs for NaN"
        self.location_of = {v: loc for loc, members in groups.items() for v in members}
        self.logits = {
            v: nn.Parameter(
                torch.full((featurizers[loc].features,), config.mask_init, device=self.device)
            )
            for v, loc in self.location_of.items()
        }
        self.total = max(1, config.epochs * math.ceil(prepared.rows / config.batch_size))
        self.shuffled = prepared

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(list(self.logits.values()), lr=self.config.mask_lr)

    def reorder(self, order: torch.Tensor) -> torch.device:
        self.shuffled = self.prepared.reordered(order)
        return self.shuffled.labels.device

    def interventions(self, masks: Mapping[str, torch.Tensor]) -> dict[str, Intervention]:
        """Each variable's feature patch under ``masks`` (soft while training, hard after)."""
        return {
            v: FeaturePatch(self.location_of[v], self.featurizers[self.location_of[v]], m)
            for v, m in masks.items()
        }

    def step(self, members: tuple[int, ...]) -> StepLoss:
        t0, t1 = self.config.mask_temperature

        def run(
            rows: torch.Tensor | slice, step: int
        ) -> tuple[torch.Tensor, torch.Tensor, Sequence[int]]:
            temperature = t0 * (t1 / t0) ** (min(step, self.total - 1) / max(1, self.total - 1))
            soft = {v: torch.sigmoid(p / temperature) for v, p in self.logits.items()}
            out = self.shuffled.logits(rows, self.interventions(soft))
            loss = nn.functional.cross_entropy(out, self.shuffled.labels[rows].to(out.device))
            sparsity = torch.stack([m.mean() for m in soft.values()]).mean()
            loss = loss + self.config.sparsity * sparsity
            return loss, loss, (0,)

        return run

    def snapshot(self, unit: int) -> dict[str, torch.Tensor]:
        return {v: _hard(p).cpu() for v, p in self.logits.items()}

    def score(
        self,
        members: Sequence[int],
        snapshots: Mapping[int, dict[str, torch.Tensor]],
        select: bool,
    ) -> dict[int, EpochScore]:
        hard = snapshots[0]
        scored = self.validation if self.validation is not None else self.prepared
        iia = float(scored.correct(self.interventions(hard)).float().mean())
        kept = float(sum(int(m.sum()) for m in hard.values()))
        return {0: EpochScore(iia, size=kept, extra={"units": kept})}

    def unit_name(self, unit: int) -> str:
        return ""


class _Mask(Method):
    """A learned binary mask (DBM) over each site's featurizer: the featurizer is the
    method's choice (:meth:`featurizer_at`), the training the same for all."""

    featurized = True

    def check(self, request: FitRequest) -> None:
        config = request.config
        if not config.select_epoch:
            raise AlignmentError(
                f"select_epoch=False is for the DAS methods; method={self.name!r} keeps the "
                "best epoch under its hard masks (leave select_epoch at True)"
            )
        if config.precision != "fp32" or config.capture:
            raise AlignmentError(
                f"precision= and capture= act on the DAS methods' training step; method "
                f"{self.name!r} trains masks in fp32, eagerly (leave precision='fp32', "
                "capture=False)"
            )
        if request.subspaces is not None:
            raise AlignmentError(
                f"method={self.name!r} learns which features each variable keeps, so "
                "subspaces= does not apply; leave it out (or use method='das')"
            )
        # a featurizer that does not fit is refused by featurizer_at, saying why

    def featurizer_at(
        self,
        prepared: PreparedInterchanges,
        location: Location,
        width: int,
        config: TrainingConfig,
        given: Featurizer | None,
    ) -> Featurizer:
        """The featurizer the mask selects features of at ``location``: ``given``,
        checked against the site's width."""
        if given is None:
            raise AlignmentError(f"method {self.name!r} needs a featurizer at {location}")
        try:
            given.check(width)
        except FeaturizerError as exc:
            raise AlignmentError(f"at {location}: {exc}") from None
        return given

    def same_featurizers(self, alignments: Sequence[Alignment]) -> Featurizers:
        """The alignments' own featurizers: a mask on the same network selects from them."""
        return {a.location: a.featurizer for a in alignments if a.featurizer is not None}

    def fit(self, request: FitRequest) -> list[Alignment]:
        """Train one binary mask per variable over its site's featurizer (one alignment
        per site). Early stopping keeps the epoch with the best validation IIA under the
        hard masks (ties: the one keeping fewer features)."""
        prepared, config, featurizer = request.prepared, request.config, request.featurizer
        groups = site_groups(prepared, request.variables)
        started = time.perf_counter()
        featurizers: dict[Location, Featurizer] = {}
        fit_seconds: dict[Location, float] = {}
        for location, members in groups.items():
            begun = time.perf_counter()
            given = featurizer.get(location) if isinstance(featurizer, Mapping) else featurizer
            featurizers[location] = self.featurizer_at(
                prepared, location, prepared.width_of(members[0]), config, given
            )
            fit_seconds[location] = time.perf_counter() - begun
        generator = torch.Generator().manual_seed(config.seed)
        objective = MaskObjective(prepared, request.validation, featurizers, groups, config)
        trained = train(objective, config, generator, progress=request.unit_progress, began=started)
        masks, curve = trained.best[0], trained.curves[0]
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
                    method=self.name,
                    location=location,
                    basis=torch.cat(columns, dim=1),
                    subspaces=spans,
                    network_hash=prepared.network.hash,
                    model_hash=request.task.model.source_hash,
                    curve=list(curve),
                    config={
                        "method": self.name,
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


class DBM(_Mask):
    """A desiderata-based mask (Davies et al. 2023) over the neurons, or over the
    features of a featurizer the user gives."""

    name = "dbm"
    takes_featurizer = True

    def featurizer_at(
        self,
        prepared: PreparedInterchanges,
        location: Location,
        width: int,
        config: TrainingConfig,
        given: Featurizer | None,
    ) -> Featurizer:
        if given is None:
            return Identity(width)
        return super().featurizer_at(prepared, location, width, config, given)

    def null_featurizers(
        self, alignments: Sequence[Alignment], config: TrainingConfig
    ) -> tuple[Featurizers, TrainingConfig]:
        """DBM over neurons stays over neurons; over a featurizer the user gave, the same
        featurizer (it cannot be refitted)."""
        given = {
            a.location: a.featurizer
            for a in alignments
            if a.featurizer is not None and not isinstance(a.featurizer, Identity)
        }
        return (given or None), config


class PCAMask(_Mask):
    """A mask over the principal components of the training activations at the site."""

    name = "pca"

    def featurizer_at(
        self,
        prepared: PreparedInterchanges,
        location: Location,
        width: int,
        config: TrainingConfig,
        given: Featurizer | None,
    ) -> Featurizer:
        if given is not None:
            raise AlignmentError(
                "method='pca' fits its own principal components on the training activations; "
                "to select features of a given featurizer use method='dbm', featurizer=..."
            )
        return PCA.fit(site_activations(prepared, location))

    def same_featurizers(self, alignments: Sequence[Alignment]) -> Featurizers:
        """None: PCA is fitted again (on the same activations it is the same)."""
        return None


class SAEMask(_Mask):
    """A mask over a sparse autoencoder's features: the SAE given (``load_sae``,
    ``train_sae``), or one trained here on the training activations at the site."""

    name = "sae"
    takes_featurizer = True

    def featurizer_at(
        self,
        prepared: PreparedInterchanges,
        location: Location,
        width: int,
        config: TrainingConfig,
        given: Featurizer | None,
    ) -> Featurizer:
        if given is None:
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
        if not isinstance(given, SparseAutoencoder):
            raise AlignmentError(
                f"method='sae' needs a SparseAutoencoder (load_sae, train_sae), not a "
                f"{type(given).__name__}; use method='dbm' to mask another featurizer"
            )
        return super().featurizer_at(prepared, location, width, config, given)

    def null_featurizers(
        self, alignments: Sequence[Alignment], config: TrainingConfig
    ) -> tuple[Featurizers, TrainingConfig]:
        """An SAE trained again on the random network's activations, with the aligned
        SAE's width and k."""
        sae = alignments[0].featurizer
        if isinstance(sae, SparseAutoencoder):
            config = replace(
                config,
                sae_features=sae.features,
                sae_k=sae.k,
                sae_activation="topk" if sae.activation == "topk" else "relu",
            )
        return None, config
