"""A wrong hypothesis for the hierarchical-equality MLP: it compares w with y and x with z.

This program computes a different function from the network's task, so the network
cannot implement it; the report explains why it is not faithful.

    abstraction run hypotheses/hierarchical_equality_wrong.py
"""

from abstraction import Experiment, Location, TrainingConfig, causal_model, zoo

ENTITIES = range(20)


@causal_model(inputs={"w": ENTITIES, "x": ENTITIES, "y": ENTITIES, "z": ENTITIES})
def crossed_equality(w, x, y, z):
    wx = w == y
    yz = x == z
    return wx == yz


experiment = Experiment(
    name="hierarchical_equality_wrong",
    description="The crossed pairing (w == y, x == z) tested on the hierarchical-equality MLP.",
    model=crossed_equality,
    task=zoo.task("hierarchical_equality_mlp"),
    network="hierarchical_equality_mlp",
    variables=["wx", "yz"],
    location=Location(layer=0),
    subspaces={"wx": (0, 8), "yz": (8, 16)},
    pairs=200_000,
    training=TrainingConfig(epochs=10, batch_size=1024, lr=2e-3),
    quick={"pairs": 60_000, "training": TrainingConfig(epochs=6, batch_size=512, lr=5e-3)},
)
