"""Hierarchical equality: does the MLP first compare w with x and y with z?

The task (Premack 1983; Geiger et al. 2020): four entities, each a 4-dim vector; the
output is True when both pairs are equal or both are different. The hypothesis: the
network computes ``wx = w == x`` and ``yz = y == z`` in disjoint subspaces of its
first hidden layer (8 dimensions each, as in the DAS paper), then compares them.
A rival hypothesis that pairs the entities the other way (``w == y``, ``x == z``) is
tested on the same pairs, and the alignment is also scored, separately, on the test
pairs encoded with 20 entity vectors the network never saw.

    abstraction run hypotheses/hierarchical_equality.py
"""

from abstraction import EntityVectorTask, Experiment, Location, TrainingConfig, causal_model, zoo

ENTITIES = range(20)
"""Entity ids; the task maps each to a fixed random 4-dim vector."""


@causal_model(inputs={"w": ENTITIES, "x": ENTITIES, "y": ENTITIES, "z": ENTITIES})
def hierarchical_equality(w, x, y, z):
    wx = w == x
    yz = y == z
    return wx == yz


@causal_model(inputs={"w": ENTITIES, "x": ENTITIES, "y": ENTITIES, "z": ENTITIES})
def crossed_equality(w, x, y, z):
    wx = w == y
    yz = x == z
    return wx == yz


experiment = Experiment(
    name="hierarchical_equality",
    description=(
        "pyvene's hierarchical-equality MLP (3 ReLU layers of width 16) against the "
        "tree-structured algorithm, with WX in dimensions 0-7 and YZ in 8-15 of a learned "
        "rotation of layer 0."
    ),
    model=hierarchical_equality,
    task=zoo.task("hierarchical_equality_mlp"),
    network="hierarchical_equality_mlp",
    variables=["wx", "yz"],
    location=Location(layer=0),
    subspaces={"wx": (0, 8), "yz": (8, 16)},
    pairs=200_000,
    training=TrainingConfig(epochs=10, batch_size=1024, lr=2e-3),
    seeds=3,
    rivals=[crossed_equality],
    shifts={
        "unseen entity vectors": EntityVectorTask(
            "hierarchical_equality", hierarchical_equality, dim=4, seed=1
        )
    },
    quick={
        "pairs": 60_000,
        "seeds": 1,
        "training": TrainingConfig(epochs=6, batch_size=512, lr=5e-3),
    },
)
