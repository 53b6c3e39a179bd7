"""Every alignment method on the addition GPT-2's carry, at the site its sweep chose.

``hypotheses/addition_carry.py`` sweeps layers x positions and finds the carry at the
residual stream after layer 0 at the ``b0`` token (its committed report). Here that site
is fixed and DAS (rank 1) is compared with the full patch, a learned binary mask over
the residual's 64 neurons (DBM), DBM over principal components fitted on the training
split, and DBM over a sparse autoencoder trained here on the same activations, each
beside the same method on the untrained network.

    abstraction run hypotheses/addition_methods.py
"""

from abstraction import Experiment, Location, TrainingConfig, causal_model, zoo

DIGITS = range(10)


@causal_model(inputs={"a1": DIGITS, "a0": DIGITS, "b1": DIGITS, "b0": DIGITS})
def addition_tens(a1, a0, b1, b0):
    carry = a0 + b0 >= 10
    tens = (a1 + b1 + carry) % 10
    return tens


experiment = Experiment(
    name="addition_methods",
    description=(
        "The addition GPT-2's carry at layer 0's residual stream, b0 token: DAS (rank 1), "
        "the full patch, DBM over neurons, over principal components and over an SAE "
        "trained here, each beside the same method on the untrained network."
    ),
    model=addition_tens,
    task=zoo.task("addition_gpt2"),
    network="addition_gpt2",
    variables=["carry"],
    interventions=[["carry"]],
    location=Location(layer=0, position="b0"),
    rank=1,
    method="das",
    compare_methods=["patch", "das", "dbm", "pca", "sae"],
    pairs=20_000,
    sampler="value",
    training=TrainingConfig(epochs=6, batch_size=256, lr=1e-2),
    baselines=("random_subspace", "untrained", "mean_ablation"),
    quick={"pairs": 6_000, "training": TrainingConfig(epochs=3, batch_size=256, lr=1e-2)},
)
