"""abstraction: check whether a neural network implements the algorithm you believe it does.

Write the algorithm as a causal model (a short Python program), generate
counterfactual datasets from it, align its variables with subspaces of a network's
activations and score how faithful it is.

The public API is listed here; everything else is internal.
"""

from abstraction.causal_model import CausalModel, CausalModelBuilder, Domain, causal_model
from abstraction.counterfactuals import (
    BalancedSampler,
    FunctionSampler,
    Sampler,
    UniformSampler,
    balanced,
    counterfactual_dataset,
    factual_dataset,
    from_function,
    uniform,
)
from abstraction.errors import AbstractionError, DeclarationError, DomainError, UnknownNameError
from abstraction.mechanism import Mechanism, VectorizationWarning

__version__ = "0.1.0"

__all__ = [
    "AbstractionError",
    "BalancedSampler",
    "CausalModel",
    "CausalModelBuilder",
    "DeclarationError",
    "Domain",
    "DomainError",
    "FunctionSampler",
    "Mechanism",
    "Sampler",
    "UniformSampler",
    "UnknownNameError",
    "VectorizationWarning",
    "__version__",
    "balanced",
    "causal_model",
    "counterfactual_dataset",
    "factual_dataset",
    "from_function",
    "uniform",
]
