"""Every alignment method on the hierarchical-equality MLP: which featurizer finds wx and yz?

The network is ``hierarchical_equality_uniform_mlp`` (pyvene's tutorial MLP trained on
uniformly drawn inputs; its layer 0 holds ``wx`` and ``yz`` almost perfectly as DAS
subspaces, see ``hypotheses/hierarchical_equality_uniform.py``). At that same layer
the experiment verifies DAS (8 rotated dimensions per variable) and compares it with
the full patch, a learned binary mask over the 16 neurons (DBM), DBM over principal
components fitted on the training split, and DBM over a sparse autoencoder trained
here on the same activations, each beside the same method on the untrained network.

    abstraction run hypotheses/hierarchical_equality_methods.py
"""

from abstraction import Experiment, Location, TrainingConfig, causal_model, zoo

ENTITIES = range(20)


@causal_model(inputs={"w": ENTITIES, "x": ENTITIES, "y": ENTITIES, "z": ENTITIES})
def hierarchical_equality(w, x, y, z):
    wx = w == x
    yz = y == z
    return wx == yz


experiment = Experiment(
    name="hierarchical_equality_methods",
    description=(
        "The uniformly trained hierarchical-equality MLP at layer 0: DAS, the full patch, "
        "DBM over neurons, DBM over principal components and DBM over an SAE trained "
        "here, each beside the same method on the untrained network."
    ),
    model=hierarchical_equality,
    task=zoo.task("hierarchical_equality_uniform_mlp"),
    network="hierarchical_equality_uniform_mlp",
    variables=["wx", "yz"],
    location=Location(layer=0),
    subspaces={"wx": (0, 8), "yz": (8, 16)},
    method="das",
    compare_methods=["patch", "das", "dbm", "pca", "sae"],
    pairs=60_000,
    training=TrainingConfig(epochs=6, batch_size=1024, lr=2e-3, sae_features=64),
    baselines=("random_subspace", "untrained", "mean_ablation"),
    quick={"pairs": 20_000, "training": TrainingConfig(epochs=3, batch_size=512, lr=5e-3)},
)
