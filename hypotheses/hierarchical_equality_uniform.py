"""Hierarchical equality on the MLP trained on uniformly drawn inputs.

The same tree-structured algorithm, rival and subspaces as
``hypotheses/hierarchical_equality.py``, tested on ``hierarchical_equality_uniform_mlp``:
pyvene's tutorial MLP (3 ReLU layers of width 16) with the tutorial's training recipe,
except that its training inputs draw every entity uniformly from the 20 (``w == x`` and
``y == z`` each hold one time in 20) instead of making the four (wx, yz) cases equally
likely. That one change takes layer-0 IIA from about 0.88 to about 0.999 (docs/calibration.md,
"How faithful is faithful").

    abstraction run hypotheses/hierarchical_equality_uniform.py
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
    name="hierarchical_equality_uniform",
    description=(
        "The hierarchical-equality MLP trained on uniformly drawn inputs (3 ReLU layers of "
        "width 16) against the tree-structured algorithm, with WX in dimensions 0-7 and YZ "
        "in 8-15 of a learned rotation of layer 0."
    ),
    model=hierarchical_equality,
    task=zoo.task("hierarchical_equality_uniform_mlp"),
    network="hierarchical_equality_uniform_mlp",
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
