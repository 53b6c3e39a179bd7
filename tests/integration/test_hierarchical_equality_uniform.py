"""The zoo's uniformly trained hierarchical-equality MLP is faithful at layer 0."""

from __future__ import annotations

from abstraction import Location, TrainingConfig, align, counterfactual_dataset, evaluate, zoo
from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.counterfactuals import split_by_base
from abstraction.statistics import iia

SETS = [["wx"], ["yz"], ["wx", "yz"]]


def test_uniform_mlp_layer0_das_iia_at_least_099() -> None:
    network = zoo.load("hierarchical_equality_uniform_mlp")
    task = zoo.task("hierarchical_equality_uniform_mlp")
    assert zoo.metrics("hierarchical_equality_uniform_mlp")["test_accuracy"] >= 0.99
    pairs = counterfactual_dataset(
        task.model, 128_000, SETS, sampler="output", source_sampler="value", seed=0
    )
    train, validation, test = split_by_base(pairs, (0.8, 0.1, 0.1), seed=0)
    alignment = align(
        network,
        task,
        train,
        Location(layer=0),
        ["wx", "yz"],
        subspaces={"wx": (0, 8), "yz": (8, 16)},
        validation=validation,
        config=TrainingConfig(epochs=10, batch_size=1024, lr=2e-3, seed=0),
    )
    engine = PreparedInterchanges(network, task, test, Location(layer=0), ["wx", "yz"])
    estimate = iia(evaluate(alignment, engine).numpy(), test["base_id"].to_numpy())
    assert estimate.low >= 0.99, estimate
