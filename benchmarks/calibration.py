"""Calibration: how often each verdict and each flag is given when the truth is known.

Networks built by hand (:mod:`abstraction.planted`, not trained), for hierarchical
equality over one-hot entities:

* **planted**: ``wx`` and ``yz`` in two known random directions of a 16-dim layer beside
  14 distractor dimensions; the readout reads only those directions. The verdict must
  be ``faithful``, no variable may be flagged as an illusion, and the subspaces DAS
  recovers must match the planted directions (principal angles).
* **illusion**: Makelov et al.'s construction for ``wx`` (a disconnected copy plus a
  dormant direction that downstream reads; the real ``wx`` goes around the layer), with
  ``yz`` planted honestly. ``wx`` must be flagged as an illusion and must not pass.
* **null, output only**: the layer holds only the output ``wx == yz`` (and distractors).
* **null, lookup**: the layer holds a one-hot code of the joint value ``(wx, yz)``.
* **null, wrong hypothesis**: the crossed pairing (``w == y``, ``x == z``) on the real
  hierarchical-equality MLP from the zoo.

For each seed the network (its rotation, distractors), the data and the alignment
change; the verdict uses the default thresholds. Targets: ``faithful`` on at least 95 %
of planted networks and at most 5 % of the others; the illusion flagged on at least
95 % of illusion networks and on at most 5 % of planted variables.

    python benchmarks/calibration.py            # 20 seeds
    python benchmarks/calibration.py --quick    # 3 seeds

With ``--featurizers`` it runs the featurizer ground truths instead (10 seeds, a few
minutes): networks whose variables sit on a few neurons, along the top principal
directions, or as features of a sparse code (:func:`abstraction.planted.feature_network`),
each aligned by DAS (rank 1), DBM over neurons, DBM over PCA components and DBM over an
SAE trained on the layer's training activations. Targets: on ``neurons`` DBM reaches IIA
>= 0.95 keeping the planted neurons and at most twice as many; on ``principal`` PCA's top
component is the planted ``wx`` direction (|cosine| >= 0.99) and DBM over components reaches
>= 0.95; on ``sparse`` the trained SAE recovers every planted feature (cosine >= 0.9) and
DBM over its features reaches >= 0.95.

    python benchmarks/calibration.py --featurizers          # 10 seeds
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pandas as pd
from scipy.linalg import subspace_angles

from abstraction import (
    Location,
    PreparedInterchanges,
    TrainingConfig,
    causal_model,
    counterfactual_dataset,
    planted,
    relabel,
    split_by_base,
    verify,
    zoo,
)
from abstraction.alignment import align, evaluate

FEATURE_METHODS = ("das", "dbm", "pca", "sae")
FEATURE_CONFIG = TrainingConfig(
    epochs=10,
    batch_size=512,
    lr=1e-2,
    sae_features=32,
    sae_activation="relu",
    sae_l1=0.03,
    sae_steps=3000,
    sae_lr=3e-3,
)


def _row(kind: str, seed: int, result: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": kind, "seed": seed, "verdict": result.verdict}
    for v in ("wx", "yz"):
        variable = result.variables[v]
        row[f"{v}_iia"] = variable.iia.value
        row[f"{v}_illusion"] = "illusion" in variable.flags
        row[f"{v}_passed"] = variable.passed
        d = variable.diagnostics
        row[f"{v}_dormant"] = d.dormant_effect if d is not None else np.nan
        row[f"{v}_gap"] = d.patch_gap if d is not None and d.patch_gap is not None else np.nan
    return row


def run_seed(kind: planted.Kind, seed: int, pairs: int, config: TrainingConfig) -> dict[str, Any]:
    network = planted.network(kind, seed)
    task = planted.OneHotTask()
    data = counterfactual_dataset(
        planted.equality,
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
        baselines=("random_subspace", "untrained", "control", "mean_ablation"),
    )
    out = _row(kind, seed, result)
    if kind == "planted":
        directions = network.module.planted_directions().numpy()
        for i, v in enumerate(("wx", "yz")):
            found = result.alignment.variable_basis(v).numpy()
            out[f"{v}_angle_deg"] = float(np.degrees(subspace_angles(found, directions[:, [i]])[0]))
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
        baselines=("random_subspace", "mean_ablation"),
    )
    return _row("wrong_hypothesis", seed, result)


def run_feature_seed(kind: planted.FeatureKind, seed: int) -> list[dict[str, Any]]:
    """Every method on one featurizer ground truth: test IIA, units, recovery."""
    network = planted.feature_network(kind, seed)
    module = network.module
    task = planted.OneHotTask()
    data = counterfactual_dataset(
        planted.equality,
        8000,
        [["wx"], ["yz"], ["wx", "yz"]],
        sampler="output",
        source_sampler="value",
        seed=seed,
    )
    train, val, test = split_by_base(data, (0.7, 0.15, 0.15), seed=seed)
    site = Location.module("represent")
    prepared = PreparedInterchanges(network, task, test, site, ["wx", "yz"])
    rows = []
    for method in FEATURE_METHODS:
        start = time.perf_counter()
        alignment = align(
            network,
            task,
            train,
            site,
            ["wx", "yz"],
            method=method,
            rank=1 if method == "das" else None,
            validation=val,
            config=FEATURE_CONFIG,
        )
        correct = evaluate(alignment, prepared).numpy()
        row: dict[str, Any] = {
            "network": kind,
            "method": method,
            "seed": seed,
            "iia": float(correct.mean()),
            "units_wx": alignment.units["wx"],
            "units_yz": alignment.units["yz"],
            "seconds": time.perf_counter() - start,
        }
        if kind == "neurons" and method == "dbm":
            kept = [set(alignment.masks[v].nonzero().flatten().tolist()) for v in ("wx", "yz")]
            planted_neurons = [set(module.neurons[i].tolist()) for i in range(2)]
            row["keeps_planted"] = all(p <= k for p, k in zip(planted_neurons, kept, strict=True))
            row["within_2x"] = all(
                len(k) <= 2 * len(p) for p, k in zip(planted_neurons, kept, strict=True)
            )
        if kind == "principal" and method == "pca":
            assert alignment.featurizer is not None
            top = alignment.featurizer.directions()[:, 0]
            row["top_cosine"] = abs(float(top @ module.directions[:, 0]))
            row["wx_is_top"] = alignment.masks["wx"].nonzero().flatten().tolist() == [0]
        if kind == "sparse" and method == "sae":
            assert alignment.featurizer is not None
            learned = alignment.featurizer.directions().T
            learned = learned / learned.norm(dim=1, keepdim=True)
            row["min_cosine"] = float((module.directions @ learned.T).max(dim=1).values.min())
        rows.append(row)
    prepared.close()
    return rows


def main_featurizers(seeds: int) -> None:
    start = time.perf_counter()
    rows = []
    for seed in range(seeds):
        for kind in planted.FEATURE_KINDS:
            rows.extend(run_feature_seed(kind, seed))
        print(f"seed {seed} done", flush=True)
    table = pd.DataFrame(rows)
    print(f"\n{seeds} seeds, {time.perf_counter() - start:.0f} s")
    print("mean test IIA (network x method; in brackets: share of seeds with IIA >= 0.95):")
    iia = table.pivot_table(index="network", columns="method", values="iia", aggfunc="mean")
    hit = table.assign(ok=table["iia"] >= 0.95).pivot_table(
        index="network", columns="method", values="ok", aggfunc="mean"
    )
    cells = iia.map(lambda x: f"{x:.3f}") + " (" + hit.map(lambda x: f"{x:.0%}") + ")"
    print(cells[list(FEATURE_METHODS)].to_string())
    print("features kept per variable (mean wx, yz):")
    units = table.groupby(["network", "method"])[["units_wx", "units_yz"]].mean().unstack()
    print(units.to_string(float_format=lambda x: f"{x:.1f}"))
    dbm = table[(table["network"] == "neurons") & (table["method"] == "dbm")]
    print(
        f"neurons, DBM: planted neurons kept in {dbm['keeps_planted'].mean():.0%} of seeds, "
        f"at most 2x the planted count in {dbm['within_2x'].mean():.0%}, "
        f"IIA >= 0.95 in {(dbm['iia'] >= 0.95).mean():.0%}"
    )
    pca = table[(table["network"] == "principal") & (table["method"] == "pca")]
    print(
        f"principal, PCA: |cosine| of the top component with wx's direction min "
        f"{pca['top_cosine'].min():.4f} (median {pca['top_cosine'].median():.4f}); wx selects "
        f"exactly the top component in {pca['wx_is_top'].mean():.0%} of seeds"
    )
    sae = table[(table["network"] == "sparse") & (table["method"] == "sae")]
    print(
        f"sparse, SAE: worst planted feature's best cosine min {sae['min_cosine'].min():.3f} "
        f"(median {sae['min_cosine'].median():.3f}); >= 0.9 in "
        f"{(sae['min_cosine'] >= 0.9).mean():.0%} of seeds"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds instead of 20")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument(
        "--featurizers",
        action="store_true",
        help="the featurizer ground truths (DBM, PCA, SAE) instead, 10 seeds by default",
    )
    args = parser.parse_args()
    if args.featurizers:
        main_featurizers(args.seeds or (3 if args.quick else 10))
        return
    seeds = args.seeds or (3 if args.quick else 20)
    config = TrainingConfig(epochs=8, batch_size=512, lr=1e-2)
    rows = []
    start = time.perf_counter()
    for seed in range(seeds):
        for kind in planted.KINDS:
            rows.append(run_seed(kind, seed, 20_000, config))
        rows.append(
            run_wrong_hypothesis(seed, 20_000, TrainingConfig(epochs=5, batch_size=1024, lr=3e-3))
        )
        print(
            f"seed {seed}: " + ", ".join(f"{r['kind']}={r['verdict']}" for r in rows[-5:]),
            flush=True,
        )
    table = pd.DataFrame(rows)
    summary = table.groupby("kind").agg(
        seeds=("seed", "count"),
        faithful_rate=("verdict", lambda v: float((v == "faithful").mean())),
        mean_wx_iia=("wx_iia", "mean"),
        mean_yz_iia=("yz_iia", "mean"),
        wx_illusion_rate=("wx_illusion", "mean"),
        yz_illusion_rate=("yz_illusion", "mean"),
        wx_passed_rate=("wx_passed", "mean"),
        yz_passed_rate=("yz_passed", "mean"),
    )
    print(f"\n{seeds} seeds, {time.perf_counter() - start:.0f} s")
    print(summary.to_string(float_format=lambda x: f"{x:.3f}"))
    honest = table[table["kind"] == "planted"]
    angles = honest[["wx_angle_deg", "yz_angle_deg"]].to_numpy().ravel()
    print(
        "planted subspaces recovered (principal angle to the planted direction, degrees): "
        f"median {np.median(angles):.2f}, 90th percentile {np.percentile(angles, 90):.2f}, "
        f"max {angles.max():.2f}"
    )
    print("illusion diagnostics, median (max) per kind and variable:")
    for kind, group in table.groupby("kind"):
        cells = []
        for v in ("wx", "yz"):
            dormant, gap = group[f"{v}_dormant"], group[f"{v}_gap"]
            cells.append(
                f"{v}: dormant effect {dormant.median():.2f} ({dormant.max():.2f}), "
                f"subspace - full patch {gap.median():+.2f} ({gap.max():+.2f})"
            )
        print(f"  {kind}: " + "; ".join(cells))
    print("verdict counts:")
    print(table.groupby(["kind", "verdict"]).size().to_string())


if __name__ == "__main__":
    main()
