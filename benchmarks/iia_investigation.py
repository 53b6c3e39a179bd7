"""Why is the hierarchical-equality MLP's layer-0 IIA about 0.9 here and 1.00 in the DAS paper?

Each variant changes one thing from pyvene's tutorial recipe (unless its name joins
two) and measures held-out IIA with the same metric on the same kind of held-out pairs
(64,000 pairs, sets {WX}, {YZ}, {WX, YZ}, bases balanced by output, sources by value;
CI clustered by base):

* ``tutorial``: 20 fixed entities (4-dim vectors), the MLP (width 16, 3 ReLU layers)
  trained 3 epochs on 1,048,576 examples with the four (wx, yz) cases equally likely,
  batch 1024, Adam 1e-3; DAS 10 epochs, batch 6400, Adam 1e-3, WX in rotated dims 0-7,
  YZ in 8-15;
* ``das-longer``: DAS for 40 epochs at lr 3e-3 with batch 1024;
* ``net-longer``: the network trained 15 epochs instead of 3;
* ``paper-net-training``: the network trained as in the DAS paper's code (10 epochs,
  batch 6400);
* ``fresh-entities``: 10,000 entities (every example effectively sees new vectors, as
  in the DAS paper's code, which draws vectors per example), for training the network
  and for DAS;
* ``rank-2``: 2 rotated dims per variable instead of 8;
* ``train-*``: how often ``w == x`` and ``y == z`` hold in the network's training
  inputs: ``uniform`` (entities uniform: each holds one time in 20, independently),
  ``independent-quarter`` and ``independent-3/8`` (each holds with that probability,
  independently; the tutorial is one half), ``both-equal-quarter`` (both hold a quarter
  of the time, exactly one a tenth), ``output`` (balanced by the output only: both
  hold about one time in 720);
* ``pairs-bases-by-case``: DAS trained and scored on pairs whose bases have the four
  (wx, yz) cases equally likely, as in the DAS paper (this changes the metric's pairs);
* ``width-32``, ``width-64``: wider layers, the 16 input numbers zero-padded to the
  width, half the layer per variable; ``width-32-rank-8``: 8 dims per variable;
* ``entity-dim-8-width-32``, ``entity-dim-16-width-64``: wider entity vectors filling
  the input of the wider network.

Besides IIA the script prints IIA on pairs whose interchange sets some variable to True
and on the others, the network's accuracy on the test bases, and its lowest accuracy
over the four (wx, yz) cases (20,000 inputs with the cases equally likely).

    python benchmarks/iia_investigation.py [--quick] [--only a,b] [--seed N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

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
from abstraction.counterfactuals import balanced
from abstraction.network import Batch, import_pyvene, restore_default_linear_init
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


@dataclass
class PaddedEntityVectorTask(EntityVectorTask):
    """Entity vectors concatenated, then zero-padded to ``pad_to`` columns.

    pyvene's MLP reads inputs as wide as its hidden layers; padding lets a wider network
    read the same 16 input numbers (its first layer ignores the zero columns).
    """

    pad_to: int = 0

    def encode(self, columns: Mapping[str, np.ndarray]) -> Batch:
        batch = super().encode(columns)
        x = batch.inputs["inputs_embeds"]
        extra = self.pad_to - x.shape[-1]
        if extra > 0:
            x = torch.nn.functional.pad(x, (0, extra))
        return Batch({"inputs_embeds": x})


def weighted_cases(weights: Mapping[tuple[bool, bool], float], n_entities: int) -> Any:
    """Inputs with (wx, yz) drawn with these weights, entities uniform within each case."""
    cases = list(weights)
    p = np.array([weights[c] for c in cases], dtype=float)

    def pair(rng: np.random.Generator, equal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first = rng.integers(n_entities, size=len(equal))
        other = (first + rng.integers(1, n_entities, size=len(equal))) % n_entities
        return first, np.where(equal, first, other)

    def sample(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        picked = rng.choice(len(cases), size=n, p=p / p.sum())
        wx = np.array([c[0] for c in cases])[picked]
        yz = np.array([c[1] for c in cases])[picked]
        w, x = pair(rng, wx)
        y, z = pair(rng, yz)
        return {"w": w, "x": x, "y": y, "z": z}

    return from_function(sample)


def training_sampler(kind: str | Mapping[tuple[bool, bool], float], entities: int) -> Any:
    """How the network's training inputs are drawn."""
    if entities > 20:
        return from_function(four_cases(entities))
    if not isinstance(kind, str):  # weights of the (wx, yz) cases
        return weighted_cases(kind, entities)
    if kind == "balanced":  # (wx, yz) uniform over its four values: pyvene's tutorial
        return balanced(["wx", "yz"])
    if kind == "uniform":  # entities uniform: w == x one time in 20
        return "uniform"
    if kind == "output":  # the output balanced, (wx, yz) = (True, True) rare
        return "output"
    raise ValueError(f"unknown training sampler {kind!r}")


def run_variant(
    name: str,
    scale: int,
    *,
    entities: int = 20,
    train: str | Mapping[tuple[bool, bool], float] = "balanced",
    width: int = 16,
    entity_dim: int = 4,
    net_epochs: int = 3,
    net_batch: int = 1024,
    das: TrainingConfig | None = None,
    rank: int | None = None,
    pair_bases: str = "output",
    seed: int = 0,
) -> dict[str, Any]:
    import_pyvene()
    from pyvene.models.mlp.modelings_mlp import MLPConfig, MLPForClassification

    start = time.perf_counter()
    model = model_for(entities)
    if 4 * entity_dim > width:
        raise ValueError(f"four {entity_dim}-dim entities do not fit a width-{width} input")
    task = PaddedEntityVectorTask("he", model, dim=entity_dim, seed=seed, pad_to=width)
    sampler: Any = from_function(four_cases(entities)) if entities > 20 else "output"
    if pair_bases == "cases":  # bases with (wx, yz) uniform over its four values
        sampler = balanced(["wx", "yz"])
    source_sampler = sampler if entities > 20 else "value"
    facts = factual_dataset(
        model, 1_048_576 // scale, sampler=training_sampler(train, entities), seed=seed
    )
    torch.manual_seed(seed)
    mlp = MLPForClassification(
        MLPConfig(h_dim=width, n_layer=3, num_classes=2, activation_function="relu", pdrop=0.0)
    )
    restore_default_linear_init(mlp)
    x = task.batch(facts).inputs["inputs_embeds"]
    y = task.labels(facts, "output")
    _fit(
        mlp,
        lambda idx: _logits(mlp(inputs_embeds=x[idx])),
        y,
        {"epochs": net_epochs, "batch_size": net_batch, "lr": 1e-3},
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
    train_pairs, validation = split_by_base(pairs, (0.9, 0.1), seed=seed)
    config = das or TrainingConfig(epochs=10, batch_size=6400, lr=1e-3, seed=seed)
    k = rank if rank is not None else width // 2
    subspaces = {"wx": (0, k), "yz": (k, 2 * k)}
    alignment = align(
        network,
        task,
        train_pairs,
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
    # accuracy on each (wx, yz) case of fresh inputs: the rare cases count as much
    cells = factual_dataset(model, 20_000, sampler=training_sampler("balanced", entities), seed=7)
    with torch.no_grad():
        predicted = _logits(mlp(**task.batch(cells).inputs)).argmax(-1).numpy()
    right = predicted == task.labels(cells, "output").numpy()
    case_accuracy = min(
        float(right[(cells["wx"] == a).to_numpy() & (cells["yz"] == b).to_numpy()].mean())
        for a in (False, True)
        for b in (False, True)
    )
    # where it fails: pairs whose interchange sets some variable to True, and the others
    sets_true = np.zeros(len(test), dtype=bool)
    for v in ("wx", "yz"):
        sets_true |= test[f"do.{v}"].to_numpy(dtype=bool) & test[f"value.{v}"].to_numpy(dtype=bool)
    return {
        "variant": name,
        "iia": est.value,
        "ci_low": est.low,
        "ci_high": est.high,
        "iia_sets_true": float(correct[sets_true].mean()),
        "iia_sets_false": float(correct[~sets_true].mean()),
        "task_accuracy": accuracy,
        "case_accuracy": case_accuracy,
        "seconds": time.perf_counter() - start,
    }


VARIANTS: dict[str, dict[str, Any]] = {
    "tutorial": {},
    "das-longer": {"das": TrainingConfig(epochs=40, batch_size=1024, lr=3e-3, patience=5)},
    "net-longer": {"net_epochs": 15},
    "fresh-entities": {"entities": 10_000},
    "rank-2": {"rank": 2},
    "train-uniform": {"train": "uniform"},
    "train-output": {"train": "output"},
    "paper-net-training": {"net_epochs": 10, "net_batch": 6400},
    "train-independent-quarter": {
        "train": {(False, False): 9, (True, True): 1, (True, False): 3, (False, True): 3}
    },
    "train-independent-3/8": {
        "train": {(False, False): 25, (True, True): 9, (True, False): 15, (False, True): 15}
    },
    "train-both-equal-quarter": {
        "train": {(False, False): 13, (True, True): 5, (True, False): 1, (False, True): 1}
    },
    "pairs-bases-by-case": {"pair_bases": "cases"},
    "width-32": {"width": 32},
    "width-64": {"width": 64},
    "width-32-rank-8": {"width": 32, "rank": 8},
    "entity-dim-8-width-32": {"width": 32, "entity_dim": 8},
    "entity-dim-16-width-64": {"width": 64, "entity_dim": 16},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1/8 of the data")
    parser.add_argument(
        "--only", help="comma-separated variants to run (default: all): " + ", ".join(VARIANTS)
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every variant")
    args = parser.parse_args()
    scale = 8 if args.quick else 1
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    print(
        f"{'variant':24s}{'IIA':>7s}{'95% CI':>15s}{'sets True':>11s}{'sets False':>12s}"
        f"{'task acc':>10s}{'worst case':>12s}{'seconds':>9s}",
        flush=True,
    )
    for name in names:
        r = run_variant(name, scale, seed=args.seed, **VARIANTS[name])
        print(
            f"{r['variant']:24s}{r['iia']:7.3f}   {r['ci_low']:.3f}-{r['ci_high']:.3f}"
            f"{r['iia_sets_true']:11.3f}{r['iia_sets_false']:12.3f}"
            f"{r['task_accuracy']:10.3f}{r['case_accuracy']:12.3f}{r['seconds']:9.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
