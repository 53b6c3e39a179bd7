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
``op_counts``        operations dispatched and host reads of a step (what a GPU pays)
``alignment/``       ``prefix_cache`` -> ``prepared`` (data ready at one site) ->
                     ``result`` (:class:`Alignment`, saved) -> ``step`` (a training
                     step's precision and capture) -> ``masks`` (DBM over
                     neurons, PCA, SAE features) -> ``das`` (training) ->
                     ``staircase`` (a position's layer cells trained together) -> ``sweep``
``baselines``        the nulls, built as interventions on the same prepared data
``diagnostics``      illusion diagnostics (dormant, disconnected, subspace vs full patch)
``verdict``          ``verify`` gathers evidence, ``decide`` gives the verdict; ``compare``
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

The public API is listed here; everything else is internal.
"""

from abstraction import planted, zoo
from abstraction.alignment import (
    Alignment,
    AlignmentError,
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
from abstraction.diagnostics import Diagnostics
from abstraction.errors import (
    AbstractionError,
    DamagedFileError,
    DeclarationError,
    DomainError,
    UnknownNameError,
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
from abstraction.verdict import (
    Counterexample,
    Decision,
    Evidence,
    NullEvidence,
    Thresholds,
    VariableEvidence,
    VariableResult,
    Verdict,
    Verification,
    compare,
    decide,
    verify,
)

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
