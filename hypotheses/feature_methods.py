"""Which featurizer finds the variables? Every method on a network whose answer is planted.

``planted.feature_network("sparse")`` computes hierarchical equality over one-hot
entities with ``wx`` and ``yz`` as two features of a sparse code of 12 planted
features in its 16-wide ``represent`` layer (the readout reads those two). The
experiment verifies DBM over an SAE trained here on the layer's training activations,
and compares it with the full patch, DAS (one dimension per variable), DBM over
neurons and DBM over principal components, each beside the same method on the
untrained network.

    abstraction run hypotheses/feature_methods.py
"""

from abstraction import Experiment, Location, TrainingConfig, planted

experiment = Experiment(
    name="feature_methods",
    description=(
        "A hand-built network holding wx and yz as two features of a sparse code of 12 "
        "planted features in a 16-wide layer; every alignment method compared there."
    ),
    model=planted.equality,
    task=planted.OneHotTask(),
    network=lambda: planted.feature_network("sparse", 0),
    variables=["wx", "yz"],
    location=Location.module("represent"),
    method="sae",
    compare_methods=["patch", "das", "dbm", "pca", "sae"],
    rank=1,
    pairs=8000,
    training=TrainingConfig(
        epochs=10,
        batch_size=512,
        lr=1e-2,
        sae_features=32,
        sae_activation="relu",
        sae_l1=0.03,
        sae_steps=3000,
        sae_lr=3e-3,
    ),
    baselines=("random_subspace", "untrained", "mean_ablation"),
)
