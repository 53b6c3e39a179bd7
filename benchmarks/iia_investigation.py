"""Why is the hierarchical-equality MLP's layer-0 IIA about 0.9 here and 1.00 in the DAS paper?

Each row changes one thing from pyvene's tutorial recipe and measures held-out IIA
(the same metric and the same kind of held-out pairs: 64,000 pairs, sets {WX}, {YZ},
{WX, YZ}, bases balanced by output, sources by value; CI clustered by base):

* ``tutorial``: 20 fixed entities, network trained 3 epochs on 1,048,576 balanced
  examples, DAS 10 epochs, batch 6400, Adam 1e-3, WX in rotated dims 0-7, YZ in 8-15;
* ``das-longer``: DAS for 40 epochs at lr 3e-3 with batch 1024;
* ``net-longer``: the network trained 15 epochs instead of 3;
* ``fresh-entities``: 10,000 entities (every example effectively sees new vectors, as
  when vectors are drawn per example), for training the network and for DAS;
* ``rank-2``: 2 rotated dims per variable instead of 8.

    python benchmarks/iia_investigation.py [--quick]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from abstraction import (
    Location,
    Network,
    TrainingConfig,
    align,
    causal_model,
    counterfactual_dataset,
    evaluate,
    factual_dataset,
    from_function,
    split_by_base,
)
from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.network import import_pyvene, restore_default_linear_init
from abstraction.statistics import iia
from abstraction.task import EntityVectorTask
from abstraction.zoo import _fit, _logits

SETS = [["wx"], ["yz"], ["wx", "yz"]]


def model_for(n_entities: int) -> Any:
    entities = range(n_entities)

    @causal_model(inputs={"w": entities, "x": entities, "y": entities, "z": entities})
    def hierarchical_equality(w, x, y, z):  # type: ignore[no-untyped-def]
        wx = w == x
        yz = y == z
        return wx == yz

    return hierarchical_equality


def four_cases(n_entities: int) -> Any:
    """Inputs with (wx, yz) uniform over its four values and distinct entities otherwise."""

    def sample(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        picks = (
            np.stack([rng.choice(n_entities, size=4, replace=False) for _ in range(n)])
            if n_entities < 50
            else _distinct(rng, n, n_entities)
        )
        a, b, c, d = picks.T
        case = rng.integers(4, size=n)
        w = a
        x = np.where((case == 1) | (case == 2), a, b)
        y = np.where(case == 1, b, c)
        z = np.where(case == 1, b, np.where(case == 3, c, d))
        return {"w": w, "x": x, "y": y, "z": z}

    return sample


def _distinct(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    picks = rng.integers(k, size=(n, 4))
    clash = np.array([len(set(row)) < 4 for row in picks])
    while clash.any():
        picks[clash] = rng.integers(k, size=(int(clash.sum()), 4))
        clash = np.array([len(set(row)) < 4 for row in picks])
    return picks


def run_variant(
    name: str,
    scale: int,
    *,
    entities: int = 20,
    net_epochs: int = 3,
    das: TrainingConfig | None = None,
    rank: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    import_pyvene()
    from pyvene.models.mlp.modelings_mlp import MLPConfig, MLPForClassification

    start = time.perf_counter()
    model = model_for(entities)
    task = EntityVectorTask("he", model, dim=4, seed=seed)
    sampler = from_function(four_cases(entities)) if entities > 20 else "output"
    source_sampler = sampler if entities > 20 else "value"
    if entities > 20:
        facts = factual_dataset(model, 1_048_576 // scale, sampler=sampler, seed=seed)
    else:
        from abstraction.counterfactuals import balanced

        facts = factual_dataset(
            model, 1_048_576 // scale, sampler=balanced(["wx", "yz"]), seed=seed
        )
    import torch

    torch.manual_seed(seed)
    mlp = MLPForClassification(
        MLPConfig(h_dim=16, n_layer=3, num_classes=2, activation_function="relu", pdrop=0.0)
    )
    restore_default_linear_init(mlp)
    x = task.batch(facts).inputs["inputs_embeds"]
    y = task.labels(facts, "output")
    _fit(
        mlp,
        lambda idx: _logits(mlp(inputs_embeds=x[idx])),
        y,
        {"epochs": net_epochs, "batch_size": 1024, "lr": 1e-3},
        seed,
        None,
    )
    network = Network(mlp)
    pairs = counterfactual_dataset(
        model, 1_280_000 // scale, SETS, sampler=sampler, source_sampler=source_sampler, seed=seed
    )
    test = counterfactual_dataset(
        model, 64_000 // scale, SETS, sampler=sampler, source_sampler=source_sampler, seed=seed + 1
    )
    train, validation = split_by_base(pairs, (0.9, 0.1), seed=seed)
    config = das or TrainingConfig(epochs=10, batch_size=6400, lr=1e-3, seed=seed)
    subspaces = {"wx": (0, rank), "yz": (rank, 2 * rank)}
    alignment = align(
        network,
        task,
        train,
        Location(layer=0),
        ["wx", "yz"],
        subspaces=subspaces,
        validation=validation,
        config=config,
    )
    engine = PreparedInterchanges(network, task, test, Location(layer=0), ["wx", "yz"])
    correct = evaluate(alignment, engine).numpy()
    est = iia(correct, test["base_id"].to_numpy())
    accuracy = float((engine.predict(None) == engine.base_labels).float().mean())
    return {
        "variant": name,
        "iia": est.value,
        "ci_low": est.low,
        "ci_high": est.high,
        "task_accuracy": accuracy,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1/8 of the data")
    args = parser.parse_args()
    scale = 8 if args.quick else 1
    rows = [
        run_variant("tutorial", scale),
        run_variant(
            "das-longer", scale, das=TrainingConfig(epochs=40, batch_size=1024, lr=3e-3, patience=5)
        ),
        run_variant("net-longer", scale, net_epochs=15),
        run_variant("fresh-entities", scale, entities=10_000),
        run_variant("rank-2", scale, rank=2),
    ]
    print(f"{'variant':16s}{'IIA':>8s}{'95% CI':>17s}{'task acc':>10s}{'seconds':>9s}")
    for r in rows:
        print(
            f"{r['variant']:16s}{r['iia']:8.3f}   {r['ci_low']:.3f}-{r['ci_high']:.3f}"
            f"{r['task_accuracy']:10.3f}{r['seconds']:9.1f}"
        )


if __name__ == "__main__":
    main()
