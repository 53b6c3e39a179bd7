"""abstraction: check whether a neural network implements the algorithm you believe it does.

Write the algorithm as a causal model (a short Python program), generate
counterfactual datasets from it, align its variables with subspaces of a network's
activations, and score how faithful it is with confidence intervals, null baselines,
rival hypotheses and a verdict.

Modules, in the order data flows (each imports only modules above it):

==================  =================================================================
``mechanism``        evaluate one variable's expression over numpy columns
``unroll``           compile bounded ``for`` loops and ``if`` statements to assignments
``program``          parse a causal model's source (``ast``), reject what is not allowed
``causal_model``     :class:`CausalModel`: variables, graph, ``run``, ``interchange``
``counterfactuals``  factual and counterfactual datasets (pandas), samplers, splits
``corpus``           the zoo language model's tasks: IOI and binding templates, words
``gguf_checkpoint``  GGUF files -> dequantized safetensors checkpoints, cached by hash
``network``          :class:`Network`: wrap / load / build a model; family module paths
``locations``        :class:`Location`: where an activation is, checked before running
``task``             causal-model values -> network inputs and labels
``prompts``          :class:`PromptTask`: tokenizer + templates + candidate answers
``zoo``              small reference networks, trained here and cached
``planted``          hand-built networks whose answer is known (planted, nulls, illusion,
                     featurizer ground truths)
``featurizers``      identity, rotation, PCA and SAE maps to features (load_sae, train_sae)
``interventions``    intervention types; ``interchange`` is the subspace arithmetic
``runtime``          the hook runtime every intervention runs through; ``intervene``
``pyvene_interop``   ``to_pyvene`` / ``from_pyvene``
``statistics``       clustered bootstrap, permutation tests, corrections (arrays only)
``evidence``         the plain records a verdict is decided on (no torch)
``verdict``          ``decide``: the verdict, a pure function of the evidence (no torch)
``op_counts``        operations dispatched and host reads of a step (what a GPU pays)
``alignment/``       ``prefix_cache`` -> ``prepared`` (data ready at one site) ->
                     ``result`` (:class:`Alignment`, saved) -> ``step`` (a training
                     step's precision and capture) -> ``masks`` (DBM over
                     neurons, PCA, SAE features) -> ``das`` (training) ->
                     ``staircase`` (a position's layer cells trained together) -> ``sweep``
``baselines``        the nulls, built as interventions on the same prepared data
``diagnostics``      illusion diagnostics (dormant, disconnected, subspace vs full patch)
``verification``     ``verify`` gathers the evidence (training, baselines, diagnostics,
                     statistics) for ``decide``; ``compare`` tests two on the same pairs
``results``          :class:`ExperimentResult`: ``results.json`` and its schema
``experiment``       :class:`Experiment` files and ``run`` end to end
``tasks/``           ``library`` (:class:`~abstraction.tasks.StandardTask`, registry) ->
                     one module per task (``agreement``, ``entity_binding``,
                     ``factual_recall``, ``greater_than``, ``ioi``, ``mcqa``) ->
                     ``behaviour`` (does a network solve a task?)
``report``           HTML, Markdown and figures from a result (never recomputes)
``tasks.table``      every task a network solves, aligned: one summary table and figure
``cli``              the ``abstraction`` command (nothing imports it)
==================  =================================================================

``errors`` (each error with its fix; :class:`DamagedFileError` for files) and ``files``
(atomic, durable writes; checked reads) serve all of them.

The public API is listed here; everything else is internal. Its names load on first use,
so ``abstraction.report`` and ``abstraction.results`` render and read ``results.json``
without importing torch.
"""

import importlib
from typing import TYPE_CHECKING, Any

# The public names load on first use (PEP 562), so importing one light module (a report
# renderer, the results schema) does not import torch and the training stack with it.
if TYPE_CHECKING:
    from abstraction import planted, zoo
    from abstraction.alignment import (
        Alignment,
        AlignmentError,
        Method,
        PrefixCache,
        PreparedInterchanges,
        StepCaptureWarning,
        TrainingConfig,
        align,
        align_sites,
        evaluate,
        evaluate_cells,
        fit,
        fit_cells,
        fit_sites,
        method_named,
    )
    from abstraction.alignment.sweep import Cell, SweepResult, sweep
    from abstraction.baselines import BASELINES, run_baselines
    from abstraction.causal_model import CausalModel, CausalModelBuilder, Domain, causal_model
    from abstraction.counterfactuals import (
        BalancedSampler,
        FunctionSampler,
        RowSampler,
        Sampler,
        UniformSampler,
        balanced,
        control_model,
        counterfactual_dataset,
        exhaustive_size,
        factual_dataset,
        from_function,
        from_rows,
        relabel,
        split_by_base,
        uniform,
    )
    from abstraction.errors import (
        AbstractionError,
        DamagedFileError,
        DeclarationError,
        DomainError,
        UnknownNameError,
    )
    from abstraction.evidence import (
        Counterexample,
        Diagnostics,
        Evidence,
        NullEvidence,
        VariableEvidence,
    )
    from abstraction.experiment import Experiment, Search, load_network, run
    from abstraction.interventions import (
        BoundlessPatch,
        Intervention,
        InterventionError,
        LowRankPatch,
        MeanAblation,
        Patch,
        RotatedPatch,
        ZeroAblation,
    )
    from abstraction.locations import Location, LocationError
    from abstraction.mechanism import Mechanism, VectorizationWarning
    from abstraction.network import Batch, Network, NetworkError
    from abstraction.prompts import PromptTask
    from abstraction.pyvene_interop import from_pyvene, to_pyvene
    from abstraction.results import SCHEMA_VERSION, ExperimentResult, ResultsError, results_schema
    from abstraction.runtime import collect, intervene
    from abstraction.statistics import Comparison, Estimate, SeedSummary
    from abstraction.task import EntityVectorTask, Task, TokenTask
    from abstraction.verdict import Decision, Thresholds, Verdict, decide
    from abstraction.verification import VariableResult, Verification, compare, verify

_EXPORTS: dict[str, str] = {
    "AbstractionError": "abstraction.errors",
    "Alignment": "abstraction.alignment",
    "AlignmentError": "abstraction.alignment",
    "BASELINES": "abstraction.baselines",
    "BalancedSampler": "abstraction.counterfactuals",
    "Batch": "abstraction.network",
    "BoundlessPatch": "abstraction.interventions",
    "CausalModel": "abstraction.causal_model",
    "CausalModelBuilder": "abstraction.causal_model",
    "Cell": "abstraction.alignment.sweep",
    "Comparison": "abstraction.statistics",
    "Counterexample": "abstraction.evidence",
    "DamagedFileError": "abstraction.errors",
    "Decision": "abstraction.verdict",
    "DeclarationError": "abstraction.errors",
    "Diagnostics": "abstraction.evidence",
    "Domain": "abstraction.causal_model",
    "DomainError": "abstraction.errors",
    "EntityVectorTask": "abstraction.task",
    "Estimate": "abstraction.statistics",
    "Evidence": "abstraction.evidence",
    "Experiment": "abstraction.experiment",
    "ExperimentResult": "abstraction.results",
    "FunctionSampler": "abstraction.counterfactuals",
    "Intervention": "abstraction.interventions",
    "InterventionError": "abstraction.interventions",
    "Location": "abstraction.locations",
    "LocationError": "abstraction.locations",
    "LowRankPatch": "abstraction.interventions",
    "MeanAblation": "abstraction.interventions",
    "Mechanism": "abstraction.mechanism",
    "Network": "abstraction.network",
    "NetworkError": "abstraction.network",
    "NullEvidence": "abstraction.evidence",
    "Patch": "abstraction.interventions",
    "Method": "abstraction.alignment",
    "PrefixCache": "abstraction.alignment",
    "PreparedInterchanges": "abstraction.alignment",
    "PromptTask": "abstraction.prompts",
    "ResultsError": "abstraction.results",
    "RotatedPatch": "abstraction.interventions",
    "RowSampler": "abstraction.counterfactuals",
    "SCHEMA_VERSION": "abstraction.results",
    "Sampler": "abstraction.counterfactuals",
    "Search": "abstraction.experiment",
    "SeedSummary": "abstraction.statistics",
    "StepCaptureWarning": "abstraction.alignment",
    "SweepResult": "abstraction.alignment.sweep",
    "Task": "abstraction.task",
    "Thresholds": "abstraction.verdict",
    "TokenTask": "abstraction.task",
    "TrainingConfig": "abstraction.alignment",
    "UniformSampler": "abstraction.counterfactuals",
    "UnknownNameError": "abstraction.errors",
    "VariableEvidence": "abstraction.evidence",
    "VariableResult": "abstraction.verification",
    "VectorizationWarning": "abstraction.mechanism",
    "Verdict": "abstraction.verdict",
    "Verification": "abstraction.verification",
    "ZeroAblation": "abstraction.interventions",
    "align": "abstraction.alignment",
    "align_sites": "abstraction.alignment",
    "balanced": "abstraction.counterfactuals",
    "causal_model": "abstraction.causal_model",
    "collect": "abstraction.runtime",
    "compare": "abstraction.verification",
    "control_model": "abstraction.counterfactuals",
    "counterfactual_dataset": "abstraction.counterfactuals",
    "decide": "abstraction.verdict",
    "evaluate": "abstraction.alignment",
    "evaluate_cells": "abstraction.alignment",
    "exhaustive_size": "abstraction.counterfactuals",
    "factual_dataset": "abstraction.counterfactuals",
    "fit": "abstraction.alignment",
    "fit_cells": "abstraction.alignment",
    "fit_sites": "abstraction.alignment",
    "method_named": "abstraction.alignment",
    "from_function": "abstraction.counterfactuals",
    "from_pyvene": "abstraction.pyvene_interop",
    "from_rows": "abstraction.counterfactuals",
    "intervene": "abstraction.runtime",
    "load_network": "abstraction.experiment",
    "planted": "abstraction",
    "relabel": "abstraction.counterfactuals",
    "results_schema": "abstraction.results",
    "run": "abstraction.experiment",
    "run_baselines": "abstraction.baselines",
    "split_by_base": "abstraction.counterfactuals",
    "sweep": "abstraction.alignment.sweep",
    "to_pyvene": "abstraction.pyvene_interop",
    "uniform": "abstraction.counterfactuals",
    "verify": "abstraction.verification",
    "zoo": "abstraction",
}
"""Public name -> the module that defines it (``"abstraction"``: the name is a submodule,
``planted`` and ``zoo``)."""

# The decorator shares its module's name: bound now, so that importing the submodule
# (which sets the package attribute of that name on first import) cannot shadow it.
from abstraction.causal_model import causal_model  # noqa: E402


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'abstraction' has no attribute {name!r}")
    if module == "abstraction":
        value: Any = importlib.import_module(f"abstraction.{name}")
    else:
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = [
    "BASELINES",
    "SCHEMA_VERSION",
    "AbstractionError",
    "Alignment",
    "AlignmentError",
    "BalancedSampler",
    "Batch",
    "BoundlessPatch",
    "CausalModel",
    "CausalModelBuilder",
    "Cell",
    "Comparison",
    "Counterexample",
    "DamagedFileError",
    "Decision",
    "DeclarationError",
    "Diagnostics",
    "Domain",
    "DomainError",
    "EntityVectorTask",
    "Estimate",
    "Evidence",
    "Experiment",
    "ExperimentResult",
    "FunctionSampler",
    "Intervention",
    "InterventionError",
    "Location",
    "LocationError",
    "LowRankPatch",
    "MeanAblation",
    "Mechanism",
    "Method",
    "Network",
    "NetworkError",
    "NullEvidence",
    "Patch",
    "PrefixCache",
    "PreparedInterchanges",
    "PromptTask",
    "ResultsError",
    "RotatedPatch",
    "RowSampler",
    "Sampler",
    "Search",
    "SeedSummary",
    "StepCaptureWarning",
    "SweepResult",
    "Task",
    "Thresholds",
    "TokenTask",
    "TrainingConfig",
    "UniformSampler",
    "UnknownNameError",
    "VariableEvidence",
    "VariableResult",
    "VectorizationWarning",
    "Verdict",
    "Verification",
    "ZeroAblation",
    "__version__",
    "align",
    "align_sites",
    "balanced",
    "causal_model",
    "collect",
    "compare",
    "control_model",
    "counterfactual_dataset",
    "decide",
    "evaluate",
    "evaluate_cells",
    "exhaustive_size",
    "factual_dataset",
    "fit",
    "fit_cells",
    "fit_sites",
    "from_function",
    "from_pyvene",
    "from_rows",
    "intervene",
    "load_network",
    "method_named",
    "planted",
    "relabel",
    "results_schema",
    "run",
    "run_baselines",
    "split_by_base",
    "sweep",
    "to_pyvene",
    "uniform",
    "verify",
    "zoo",
]
