"""What running a sweep's cells on Ray costs per cell, against running them in process.

A sweep of the hierarchical-equality MLP (3 layers x 3 components = 9 locations, one
rank: 9 cells, each one Ray task) runs in process and on a local Ray instance with one
worker CPU (so that parallelism hides nothing), connected once beforehand as a sweep on
an existing cluster (``address=``) would be. One warm-up run starts the worker and its
imports; then each configuration runs ``--repeats`` times, alternating. Overhead per
cell = (Ray seconds - in-process seconds) / cells; prints the median and range.

    python benchmarks/ray_overhead.py --pairs 1000     # tiny cells: the overhead itself
    python benchmarks/ray_overhead.py                  # 6,000 pairs: overhead vs work
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import ray

from abstraction import TrainingConfig, counterfactual_dataset, sweep, zoo
from abstraction.counterfactuals import split_by_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=6000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    network = zoo.load("hierarchical_equality_mlp")
    task = zoo.task("hierarchical_equality_mlp")
    data = counterfactual_dataset(task.model, args.pairs, [["wx"], ["yz"], ["wx", "yz"]], seed=0)
    train, validation = split_by_base(data, (0.7, 0.3), seed=0)
    settings = {
        "layers": [0, 1, 2],
        "components": ["residual", "residual_input", "activation"],
        "config": TrainingConfig(epochs=2, batch_size=1024, lr=1e-2),
    }
    cells = 9

    def timed(**extra: object) -> float:
        start = time.perf_counter()
        result = sweep(network, task, train, validation, ["wx", "yz"], **settings, **extra)  # type: ignore[arg-type]
        assert len(result.cells) == cells
        return time.perf_counter() - start

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    try:
        cold = timed(address=address)
        local, remote = [], []
        for _ in range(args.repeats):
            local.append(timed())
            remote.append(timed(address=address))
    finally:
        ray.shutdown()
    overhead = [(r - s) / cells for r, s in zip(remote, local, strict=True)]
    print(f"{cells} cells, {len(train):,} training pairs, {args.repeats} repeats")
    for name, times in (("in process", local), ("on Ray", remote)):
        spread = f"{min(times):.2f}-{max(times):.2f}"
        print(f"{name:>10}: median {statistics.median(times):.2f} s ({spread})")
    print(f"first Ray run (worker start and imports): {cold:.2f} s")
    print(
        f"overhead per cell: median {statistics.median(overhead) * 1000:.0f} ms "
        f"(range {min(overhead) * 1000:.0f}-{max(overhead) * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
