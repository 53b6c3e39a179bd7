"""A sweep on a 2-node Ray cluster (both nodes on this machine) that loses a node midway.

Marked ``slow`` (20-40 s on two shared cores, most of it starting the nodes): run it
with ``pytest -m slow tests/integration/test_sweep_ray_cluster.py``.
"""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from abstraction import TrainingConfig, counterfactual_dataset, sweep, zoo
from abstraction.alignment.sweep import Cell
from abstraction.counterfactuals import split_by_base
from abstraction.network import Network


@pytest.mark.slow
def test_sweep_survives_losing_a_node(small_mlp: Network) -> None:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    task = zoo.task("hierarchical_equality_mlp")
    data = counterfactual_dataset(task.model, 1500, [["wx"], ["yz"], ["wx", "yz"]], seed=0)
    train, validation = split_by_base(data, (0.6, 0.4), seed=0)
    settings = {
        "layers": [0, 1, 2],
        "ranks": [1, 2],
        "components": ["residual", "residual_input"],
        "config": TrainingConfig(epochs=3, batch_size=128, lr=1e-2),
    }
    sequential = sweep(small_mlp, task, train, validation, ["wx", "yz"], **settings)  # type: ignore[arg-type]

    # one CPU per node: with six tasks queued, both nodes must run cells
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    finished: list[Cell] = []

    def lose_the_worker(cell: Cell, val_iia: float) -> None:
        finished.append(cell)
        if len(finished) == 2:  # midway: the worker node is gone, its task with it
            cluster.remove_node(worker)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            distributed = sweep(
                small_mlp,
                task,
                train,
                validation,
                ["wx", "yz"],
                address=cluster.address,
                progress=lose_the_worker,
                **settings,  # type: ignore[arg-type]
            )
        alive = [node for node in _nodes(cluster.address) if node["Alive"]]
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    assert len(alive) == 1  # the sweep finished on the head node alone
    assert sorted(c.key for c in finished) == sorted(set(c.key for c in finished))  # no duplicates
    assert len(finished) == len(sequential.cells)  # no lost cells
    pd.testing.assert_frame_equal(
        sequential.cells.drop(columns="seconds"), distributed.cells.drop(columns="seconds")
    )
    assert sequential.best == distributed.best


def _nodes(address: str) -> list[dict[str, object]]:
    """The cluster's nodes as Ray reports them (the sweep disconnected when it finished)."""
    import ray

    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        return list(ray.nodes())
    finally:
        ray.shutdown()
