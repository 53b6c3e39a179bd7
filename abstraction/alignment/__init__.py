"""Alignment search: DAS, low-rank and boundless DAS, patching, learned masks, and
sweeps over locations.

Modules, in the order data flows: :mod:`~abstraction.alignment.prefix_cache` (block
outputs computed once), :mod:`~abstraction.alignment.prepared` (a counterfactual
dataset made ready at one site), :mod:`~abstraction.alignment.step` (how a training
step runs: precision, capture), :mod:`~abstraction.alignment.training` (the one
training loop and :class:`TrainingConfig`), :mod:`~abstraction.alignment.method` (methods
as objects and their registry), :mod:`~abstraction.alignment.result` (the trained
:class:`Alignment`, saved and loaded), :mod:`~abstraction.alignment.rotation` (DAS,
low-rank and boundless DAS, the full patch), :mod:`~abstraction.alignment.masks` (DBM:
learned binary masks over neurons, PCA components or SAE features),
:mod:`~abstraction.alignment.das` (the entry points: :func:`align` and friends),
:mod:`~abstraction.alignment.staircase` (a position's layer cells trained and scored
together) and :mod:`~abstraction.alignment.sweep` (many sites, chosen on validation).
"""

from abstraction.alignment.das import (
    FEATURE_METHODS,
    METHODS,
    align,
    align_sites,
    evaluate,
    fit,
    fit_sites,
)
from abstraction.alignment.masks import DBM, PCAMask, SAEMask
from abstraction.alignment.method import FitRequest, Method, method_named, method_names
from abstraction.alignment.prefix_cache import PrefixCache
from abstraction.alignment.prepared import Interventions, PreparedInterchanges
from abstraction.alignment.result import Alignment, AlignmentError, library_versions
from abstraction.alignment.rotation import DAS, BoundlessDAS, FullPatch, LowRankDAS
from abstraction.alignment.staircase import evaluate_cells, fit_cells
from abstraction.alignment.step import PRECISIONS, StepCaptureWarning
from abstraction.alignment.training import EpochScore, Objective, Trained, TrainingConfig, train

__all__ = [
    "DAS",
    "DBM",
    "FEATURE_METHODS",
    "METHODS",
    "PRECISIONS",
    "Alignment",
    "AlignmentError",
    "BoundlessDAS",
    "EpochScore",
    "FitRequest",
    "FullPatch",
    "Interventions",
    "LowRankDAS",
    "Method",
    "Objective",
    "PCAMask",
    "PrefixCache",
    "PreparedInterchanges",
    "SAEMask",
    "StepCaptureWarning",
    "Trained",
    "TrainingConfig",
    "align",
    "align_sites",
    "evaluate",
    "evaluate_cells",
    "fit",
    "fit_cells",
    "fit_sites",
    "library_versions",
    "method_named",
    "method_names",
    "train",
]
