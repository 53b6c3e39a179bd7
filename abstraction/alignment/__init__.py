"""Alignment search: DAS, low-rank and boundless DAS, patching, and sweeps over locations.

Modules, in the order data flows: :mod:`~abstraction.alignment.prefix_cache` (block
outputs computed once), :mod:`~abstraction.alignment.prepared` (a counterfactual
dataset made ready at one site), :mod:`~abstraction.alignment.das` (training),
:mod:`~abstraction.alignment.result` (the trained :class:`Alignment`, saved and
loaded), :mod:`~abstraction.alignment.step` (how a training step runs: precision,
capture), :mod:`~abstraction.alignment.masks` (DBM: learned binary masks over neurons,
PCA components or SAE features), :mod:`~abstraction.alignment.staircase` (a position's
layer cells trained and scored together) and :mod:`~abstraction.alignment.sweep` (many
sites, chosen on validation).
"""

from abstraction.alignment.das import (
    FEATURE_METHODS,
    METHODS,
    TrainingConfig,
    align,
    align_sites,
    evaluate,
    fit,
    fit_sites,
)
from abstraction.alignment.prefix_cache import PrefixCache
from abstraction.alignment.prepared import Interventions, PreparedInterchanges
from abstraction.alignment.result import Alignment, AlignmentError, library_versions
from abstraction.alignment.staircase import evaluate_cells, fit_cells
from abstraction.alignment.step import PRECISIONS, StepCaptureWarning

__all__ = [
    "FEATURE_METHODS",
    "METHODS",
    "PRECISIONS",
    "Alignment",
    "AlignmentError",
    "Interventions",
    "PrefixCache",
    "PreparedInterchanges",
    "StepCaptureWarning",
    "TrainingConfig",
    "align",
    "align_sites",
    "evaluate",
    "evaluate_cells",
    "fit",
    "fit_cells",
    "fit_sites",
    "library_versions",
]
