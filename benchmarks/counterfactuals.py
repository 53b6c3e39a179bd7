"""Counterfactual-pair generation: abstraction vs pyvene, side by side in one run.

Both generate hierarchical-equality counterfactual pairs in pyvene's tutorial setup:
four entities drawn from 20 (each a 4-dim random vector), intervention sets {WX},
{YZ} and {WX, YZ}, bases balanced by the output and sources balanced by the value
of the intervened variable, returned as float tensors ready for the network (the
16-dim concatenated entity vectors of the base and of each source, and the labels).

    python benchmarks/counterfactuals.py            # 1,280,000 pairs for us, 20,000 for pyvene
    python benchmarks/counterfactuals.py --quick    # a smaller run

pyvene's generator is a per-example Python loop, so it is timed on fewer pairs and
compared in pairs per second.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from abstraction import causal_model, counterfactual_dataset

N_ENTITIES = 20
DIM = 4


def ours(n: int, vectors: np.ndarray) -> tuple[float, float, int]:
    entities = range(N_ENTITIES)

    @causal_model(inputs={"w": entities, "x": entities, "y": entities, "z": entities})
    def hierarchical_equality(w, x, y, z):  # type: ignore[no-untyped-def]
        wx = w == x
        yz = y == z
        return wx == yz

    table = torch.as_tensor(vectors, dtype=torch.float32)
    start = time.perf_counter()
    frame = counterfactual_dataset(
        hierarchical_equality,
        n,
        [["wx"], ["yz"], ["wx", "yz"]],
        sampler="output",
        source_sampler="value",
        seed=0,
    )
    generated = time.perf_counter() - start

    # One gather builds every network input: (n, 3 [base, source WX, source YZ], 16).
    prefixes = ["base.", "source.wx.", "source.yz."]
    ids = np.empty((n, 12), dtype=np.int64)
    for k, column in enumerate(f"{p}{v}" for p in prefixes for v in "wxyz"):
        ids[:, k] = frame[column].to_numpy()
    inputs = table[torch.from_numpy(ids)].reshape(n, 3, 4 * DIM)
    base, sources = inputs[:, 0], inputs[:, 1:]
    labels = torch.from_numpy(frame["label"].to_numpy(dtype=np.float32))
    elapsed = time.perf_counter() - start
    assert base.shape == (n, 16) and sources.shape == (n, 2, 16) and labels.shape == (n,)
    return generated, elapsed, len(frame)


def pyvene_pairs(n: int, vectors: np.ndarray) -> tuple[float, int]:
    from pyvene import CausalModel

    reps = [vectors[i] for i in range(N_ENTITIES)]
    variables = ["W", "X", "Y", "Z", "WX", "YZ", "O"]
    values = {v: reps for v in ["W", "X", "Y", "Z"]}
    values.update({"WX": [True, False], "YZ": [True, False], "O": [True, False]})
    parents = {
        "W": [], "X": [], "Y": [], "Z": [],
        "WX": ["W", "X"], "YZ": ["Y", "Z"], "O": ["WX", "YZ"],
    }  # fmt: skip

    def filler() -> np.ndarray:
        return reps[0]

    functions = {
        "W": filler, "X": filler, "Y": filler, "Z": filler,
        "WX": lambda x, y: np.array_equal(x, y),
        "YZ": lambda x, y: np.array_equal(x, y),
        "O": lambda x, y: x == y,
    }  # fmt: skip
    model = CausalModel(variables, values, parents, functions)

    def intervention_id(intervention: dict[str, object]) -> int:
        if "WX" in intervention and "YZ" in intervention:
            return 2
        return 0 if "WX" in intervention else 1

    start = time.perf_counter()
    data = model.generate_counterfactual_dataset(
        n, intervention_id, 1, sampler=model.sample_input_tree_balanced
    )
    elapsed = time.perf_counter() - start
    return elapsed, len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller run (seconds)")
    args = parser.parse_args()
    ours_n, pyvene_n = (128_000, 2_000) if args.quick else (1_280_000, 20_000)
    random.seed(0)
    vectors = np.round(np.random.default_rng(0).uniform(-1, 1, (N_ENTITIES, DIM)), 2)

    ours(1_000, vectors)  # warm-up: imports and first-call overheads
    runs = sorted(ours(ours_n, vectors) for _ in range(3))
    t_frame, t_ours, got_ours = runs[1]  # the median of three runs
    t_pyvene, got_pyvene = pyvene_pairs(pyvene_n, vectors)
    rate_frame, rate_ours, rate_pyvene = (
        got_ours / t_frame,
        got_ours / t_ours,
        got_pyvene / t_pyvene,
    )
    print(f"{'':34s}{'pairs':>12s}{'seconds':>10s}{'pairs/s':>14s}")
    print(f"{'abstraction (DataFrame)':34s}{got_ours:12,d}{t_frame:10.2f}{rate_frame:14,.0f}")
    print(
        f"{'abstraction (DataFrame + tensors)':34s}{got_ours:12,d}{t_ours:10.2f}{rate_ours:14,.0f}"
    )
    print(f"{'pyvene (tensors)':34s}{got_pyvene:12,d}{t_pyvene:10.2f}{rate_pyvene:14,.0f}")
    print(
        f"speed-up with tensors: {rate_ours / rate_pyvene:,.0f}x "
        "(targets: >= 1,000,000 pairs/s and >= 200x pyvene)"
    )


if __name__ == "__main__":
    main()
