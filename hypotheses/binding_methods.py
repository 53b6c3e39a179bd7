"""Every alignment method on the zoo language model's binding lookup, at one site.

``hypotheses/binding.py`` sweeps 54 sites of ``tiny_lm`` for ``index`` (which of the two
container-object pairs the query names) and finds at most 0.58 validation IIA, at layer
1 at the query. This file fixes the residual stream there and asks whether a method
other than a rank-1 rotation finds more: the full patch, a learned binary mask over the
64 neurons (DBM), DBM over principal components fitted on the training split, and DBM
over a sparse autoencoder trained here on the same activations, each beside the same
method on the untrained network.

    abstraction run hypotheses/binding_methods.py
"""

from functools import partial

from abstraction import Experiment, Location, PromptTask, TrainingConfig, causal_model, zoo
from abstraction.corpus import CONTAINERS, OBJECTS, binding_inputs


@causal_model(
    inputs={"c1": CONTAINERS, "o1": OBJECTS, "c2": CONTAINERS, "o2": OBJECTS, "q": CONTAINERS}
)
def binding(c1, o1, c2, o2, q):
    index = 1 if q == c1 else 2
    answer = o1 if index == 1 else o2
    return answer


heldout = partial(binding_inputs, split="heldout")

experiment = Experiment(
    name="binding_methods",
    description=(
        "tiny_lm's binding lookup at layer 1's residual stream, query token: DAS (rank 1), "
        "the full patch, DBM over neurons, over principal components and over an SAE "
        "trained here, each beside the same method on the untrained network."
    ),
    model=binding,
    task=PromptTask(
        "binding",
        binding,
        zoo.tokenizer("tiny_lm"),
        ("{c1} {o1} {c2} {o2} {q}",),
        candidates=("o1", "o2"),
    ),
    network="tiny_lm",
    variables=["index"],
    location=Location(layer=1, position="q.last"),
    rank=1,
    method="das",
    compare_methods=["patch", "das", "dbm", "pca", "sae"],
    pairs=4_000,
    sampler=heldout,
    source_sampler=heldout,
    training=TrainingConfig(epochs=6, batch_size=128, lr=1e-2),
    baselines=("random_subspace", "untrained", "mean_ablation"),
    quick={"training": TrainingConfig(epochs=2, batch_size=256, lr=1e-2)},
)
