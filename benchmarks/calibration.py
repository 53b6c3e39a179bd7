"""Calibration: how often is the verdict `faithful` when the truth is known?

Networks built by hand (not trained), for hierarchical equality over one-hot entities:

* **planted**: the first layer detects equal pairs (``ReLU(w_k + x_k - 1)``), the
  second writes ``wx`` and ``yz`` into two known random directions of a 16-dim layer
  (a random rotation) together with 14 distractor dimensions (random features of the
  input), and the readout computes ``wx == yz`` from those two directions only. The
  verdict must be ``faithful``, and the subspaces DAS recovers must match the planted
  directions (principal angles).
* **null, output only**: the same, but the probed layer holds only the output
  ``wx == yz`` (and distractors): the variables exist upstream but are not separably
  represented there.
* **null, lookup**: the probed layer holds a one-hot code of the joint value
  ``(wx, yz)`` (a lookup table) and the readout reads the table.
* **null, wrong hypothesis**: the crossed pairing (``w == y``, ``x == z``) on the real
  hierarchical-equality MLP from the zoo.

For each seed the network (its rotation, distractors and entities), the data and the
alignment change; the verdict uses the default thresholds. Targets: ``faithful`` on
at least 95 % of planted networks and at most 5 % of nulls.

    python benchmarks/calibration.py            # 20 seeds (about 15 minutes)
    python benchmarks/calibration.py --quick    # 3 seeds
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.linalg import subspace_angles
from torch import nn

from abstraction import (
    Location,
    Network,
    TrainingConfig,
    causal_model,
    counterfactual_dataset,
    relabel,
    split_by_base,
    verify,
    zoo,
)
from abstraction.network import Batch
from abstraction.task import Task

N_ENTITIES = 10
ENTITIES = range(N_ENTITIES)
WIDTH = 16


@causal_model(inputs={"w": ENTITIES, "x": ENTITIES, "y": ENTITIES, "z": ENTITIES})
def equality(w, x, y, z):  # type: ignore[no-untyped-def]
    wx = w == x
    yz = y == z
    return wx == yz


class OneHotTask(Task):
    """Entities as one-hot vectors, concatenated; the output as class 0/1."""

    def __init__(self, model: Any) -> None:
        self.name = "one-hot equality"
        self.model = model

    @property
    def n_classes(self) -> int:
        return 2

    def encode(self, columns: Mapping[str, np.ndarray]) -> Batch:
        ids = torch.as_tensor(np.stack([columns[v] for v in "wxyz"], axis=1).astype(np.int64))
        onehot = nn.functional.one_hot(ids, N_ENTITIES).float().reshape(len(ids), -1)
        return Batch({"x": onehot})

    def label_ids(self, values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values.astype(np.int64))


class HandBuilt(nn.Module):
    """detect -> represent (the probed layer, 16 wide) -> readout, all weights set by hand."""

    def __init__(self, kind: str, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        n, e = 4 * N_ENTITIES, N_ENTITIES
        self.detect = nn.Linear(n, 2 * e)  # h_k = ReLU(w_k + x_k - 1), then the same for y, z
        with torch.no_grad():
            self.detect.weight.zero_()
            for k in range(e):
                self.detect.weight[k, k] = self.detect.weight[k, e + k] = 1.0
                self.detect.weight[e + k, 2 * e + k] = self.detect.weight[e + k, 3 * e + k] = 1.0
            self.detect.bias.fill_(-1.0)
        rotation, _ = torch.linalg.qr(torch.randn(WIDTH, WIDTH, generator=gen))
        self.register_buffer("rotation", rotation)
        self.kind = kind
        distractor = torch.randn(WIDTH, n, generator=gen) * 0.5
        self.register_buffer("distractor", distractor)
        self.represent = nn.Identity()  # the probed layer: a module whose output is hooked

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.detect(x))
        wx = h[:, :N_ENTITIES].sum(-1)
        yz = h[:, N_ENTITIES:].sum(-1)
        same = 1.0 - (wx - yz).abs()
        noise = torch.tanh(x @ self.distractor.T)
        if self.kind == "planted":
            code = [wx, yz]
        elif self.kind == "output_only":
            code = [same]
        else:  # lookup: one-hot of the joint (wx, yz)
            code = [(1 - wx) * (1 - yz), (1 - wx) * yz, wx * (1 - yz), wx * yz]
        z = torch.cat([torch.stack(code, -1), noise[:, len(code) :]], dim=-1)
        return z @ self.rotation.T  # code in known rotated directions, then distractors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.represent(self.features(x))
        z = hidden @ self.rotation  # undo the rotation, then read only the code dimensions
        if self.kind == "planted":
            same = torch.relu(1 - z[:, 0] - z[:, 1]) + torch.relu(z[:, 0] + z[:, 1] - 1)
        elif self.kind == "output_only":
            same = z[:, 0]
        else:
            same = z[:, 0] + z[:, 3]
        return torch.stack([-8 * (same - 0.5), 8 * (same - 0.5)], dim=-1)

    def planted_directions(self) -> torch.Tensor:
        return self.rotation[:, :2]


def run_seed(kind: str, seed: int, pairs: int, config: TrainingConfig) -> dict[str, Any]:
    network = Network(HandBuilt(kind, seed), family="generic", name=kind)
    task = OneHotTask(equality)
    data = counterfactual_dataset(
        equality,
        pairs,
        [["wx"], ["yz"], ["wx", "yz"]],
        sampler="output",
        source_sampler="value",
        seed=seed,
    )
    train, val, test = split_by_base(data, (0.7, 0.15, 0.15), seed=seed)
    result = verify(
        network,
        task,
        train,
        val,
        test,
        Location.module("represent"),
        ["wx", "yz"],
        rank=1,
        config=config,
        baselines=("random_subspace", "untrained", "control"),
    )
    out = {
        "kind": kind,
        "seed": seed,
        "verdict": result.verdict,
        "wx_iia": result.variables["wx"].iia.value,
        "yz_iia": result.variables["yz"].iia.value,
    }
    if kind == "planted":
        planted = network.module.planted_directions().numpy()
        for i, v in enumerate(("wx", "yz")):
            found = result.alignment.variable_basis(v).numpy()
            out[f"{v}_angle_deg"] = float(np.degrees(subspace_angles(found, planted[:, [i]])[0]))
    return out


def run_wrong_hypothesis(seed: int, pairs: int, config: TrainingConfig) -> dict[str, Any]:
    @causal_model(
        inputs={"w": zoo.ENTITIES, "x": zoo.ENTITIES, "y": zoo.ENTITIES, "z": zoo.ENTITIES}
    )
    def crossed(w, x, y, z):  # type: ignore[no-untyped-def]
        wx = w == y
        yz = x == z
        return wx == yz

    network = zoo.load("hierarchical_equality_mlp")
    task = zoo.task("hierarchical_equality_mlp")
    data = counterfactual_dataset(
        crossed,
        pairs,
        [["wx"], ["yz"], ["wx", "yz"]],
        sampler="output",
        source_sampler="value",
        seed=seed,
    )
    train, val, test = split_by_base(data, (0.7, 0.15, 0.15), seed=seed)
    rival_task = task.with_model(crossed)
    result = verify(
        network,
        rival_task,
        relabel(train, crossed),
        relabel(val, crossed),
        relabel(test, crossed),
        Location(layer=0),
        ["wx", "yz"],
        subspaces={"wx": (0, 8), "yz": (8, 16)},
        config=config,
        baselines=("random_subspace",),
    )
    return {
        "kind": "wrong_hypothesis",
        "seed": seed,
        "verdict": result.verdict,
        "wx_iia": result.variables["wx"].iia.value,
        "yz_iia": result.variables["yz"].iia.value,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds instead of 20")
    parser.add_argument("--seeds", type=int, default=None)
    args = parser.parse_args()
    seeds = args.seeds or (3 if args.quick else 20)
    config = TrainingConfig(epochs=8, batch_size=512, lr=1e-2)
    rows = []
    start = time.perf_counter()
    for seed in range(seeds):
        for kind in ("planted", "output_only", "lookup"):
            rows.append(run_seed(kind, seed, 20_000, config))
        rows.append(
            run_wrong_hypothesis(seed, 20_000, TrainingConfig(epochs=5, batch_size=1024, lr=3e-3))
        )
        print(
            f"seed {seed}: " + ", ".join(f"{r['kind']}={r['verdict']}" for r in rows[-4:]),
            flush=True,
        )
    table = pd.DataFrame(rows)
    summary = table.groupby("kind").agg(
        seeds=("seed", "count"),
        faithful_rate=("verdict", lambda v: float((v == "faithful").mean())),
        mean_wx_iia=("wx_iia", "mean"),
        mean_yz_iia=("yz_iia", "mean"),
    )
    print(f"\n{seeds} seeds, {time.perf_counter() - start:.0f} s")
    print(summary.to_string(float_format=lambda x: f"{x:.3f}"))
    planted = table[table["kind"] == "planted"]
    angles = planted[["wx_angle_deg", "yz_angle_deg"]].to_numpy().ravel()
    print(
        "planted subspaces recovered (principal angle to the planted direction, degrees): "
        f"median {np.median(angles):.2f}, 90th percentile {np.percentile(angles, 90):.2f}, "
        f"max {angles.max():.2f}"
    )
    print("verdict counts:")
    print(table.groupby(["kind", "verdict"]).size().to_string())


if __name__ == "__main__":
    main()
