"""Alignment search: DAS, low-rank and boundless DAS, patching, and sweeps over locations."""

from abstraction.alignment.das import METHODS, TrainingConfig, align, evaluate, train_on_engines
from abstraction.alignment.engine import InterchangeEngine, patch_edit, subspace_edit
from abstraction.alignment.result import Alignment, AlignmentError, library_versions

__all__ = [
    "METHODS",
    "Alignment",
    "AlignmentError",
    "InterchangeEngine",
    "TrainingConfig",
    "align",
    "evaluate",
    "library_versions",
    "patch_edit",
    "subspace_edit",
    "train_on_engines",
]
