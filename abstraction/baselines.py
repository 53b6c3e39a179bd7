"""Null baselines and controls, run exactly like the real alignment.

Each baseline scores the same test pairs as the hypothesis (so comparisons are
paired) with the same data, training budget, rank and location:

* ``random_subspace``: random orthonormal subspaces of the same ranks, untrained,
  over several seeds;
* ``untrained``: DAS trained on the same architecture with random weights (DAS can
  reach high IIA on random networks, so this null is essential);
* ``control``: DAS trained on a control task where the variable's values are
  shuffled consistently across inputs (selectivity = IIA - control IIA);
* ``patch``: the full component patched (an upper bound for that location);
* ``mean_ablation``: the variable's subspace replaced by its mean activation, and
  the network's task accuracy measured (necessity: does removing it hurt?).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from abstraction.alignment.das import TrainingConfig, evaluate, train_on_engines
from abstraction.alignment.engine import (
    InterchangeEngine,
    patch_edit,
    random_bases,
    subspace_edit,
)
from abstraction.alignment.result import Alignment
from abstraction.counterfactuals import control_model, relabel
from abstraction.network import Network, restore_default_linear_init
from abstraction.task import Task

__all__ = ["BASELINES", "BaselineResult", "random_weights", "run_baselines"]

BASELINES = ("random_subspace", "untrained", "control", "patch", "mean_ablation")


@dataclass
class BaselineResult:
    """One baseline's per-pair correctness on the test pairs.

    Attributes:
        name: the baseline (see :data:`BASELINES`).
        variable: the variable it concerns (``None``: all variables at once).
        correct: ``(seeds, pairs)`` correctness on the test pairs.
        detail: extra numbers (e.g. accuracies for mean ablation).
    """

    name: str
    variable: str | None
    correct: torch.Tensor
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def iia(self) -> float:
        """Mean correctness over seeds and pairs."""
        return float(self.correct.float().mean())

    @property
    def best_seed(self) -> torch.Tensor:
        """Correctness of the strongest seed (the null the hypothesis must beat)."""
        best = int(self.correct.float().mean(dim=1).argmax())
        return self.correct[best]


def random_weights(network: Network, seed: int) -> Network:
    """The same architecture with freshly initialised weights."""
    module = network.module
    torch.manual_seed(seed)
    config = getattr(module, "config", None)
    try:
        fresh = type(module)(config) if config is not None else None
    except Exception:
        fresh = None
    if fresh is None:
        fresh = copy.deepcopy(module)
        for sub in fresh.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
    if network.family == "mlp":
        restore_default_linear_init(fresh)
    return Network(fresh, family=network.family, name=f"{network.name} (random weights)")


def run_baselines(
    network: Network,
    task: Task,
    alignment: Alignment,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    test: pd.DataFrame,
    test_engine: InterchangeEngine,
    *,
    which: Sequence[str] = BASELINES,
    seeds: int = 5,
    config: TrainingConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[BaselineResult]:
    """Run the requested baselines for ``alignment`` (trained on ``train``)."""
    config = config or TrainingConfig()
    variables = list(alignment.variables)
    location = alignment.location
    method = alignment.method if alignment.method != "patch" else "das"
    ranks: Mapping[str, int] = {v: b - a for v, (a, b) in alignment.subspaces.items()}
    results: list[BaselineResult] = []

    def note(message: str) -> None:
        if progress is not None:
            progress(message)

    for name in which:
        if name == "random_subspace" and alignment.basis is not None:
            note("random subspaces")
            generator = torch.Generator().manual_seed(12345)
            rows = [
                test_engine.correct(
                    subspace_edit(
                        test_engine, random_bases(alignment.subspaces, test_engine.width, generator)
                    )
                )
                for _ in range(seeds)
            ]
            results.append(BaselineResult(name, None, torch.stack(rows)))
        elif name == "untrained":
            note("DAS on a randomly initialised network")
            fresh = random_weights(network, seed=1)
            engine = InterchangeEngine(fresh, task, train, location, variables)
            val_engine = InterchangeEngine(fresh, task, validation, location, variables)
            fresh_test = InterchangeEngine(fresh, task, test, location, variables)
            try:
                trained = train_on_engines(
                    engine,
                    val_engine,
                    task,
                    variables,
                    method=method,
                    rank=dict(ranks),
                    config=config,
                )
                correct = evaluate(trained, fresh_test)
                accuracy = float(fresh_test.predict(None).eq(fresh_test.base_labels).float().mean())
            finally:
                engine.close()
                val_engine.close()
                fresh_test.close()
            results.append(
                BaselineResult(name, None, correct.unsqueeze(0), {"task_accuracy": accuracy})
            )
        elif name == "control":
            for v in variables:
                note(f"control task for {v}")
                control = control_model(task.model, v, seed=7)
                control_task = task.with_model(control)
                engine = InterchangeEngine(
                    network, control_task, relabel(train, control), location, variables
                )
                val_engine = InterchangeEngine(
                    network, control_task, relabel(validation, control), location, variables
                )
                control_test = InterchangeEngine(
                    network, control_task, relabel(test, control), location, variables
                )
                try:
                    trained = train_on_engines(
                        engine,
                        val_engine,
                        control_task,
                        variables,
                        method=method,
                        rank=dict(ranks),
                        config=config,
                    )
                    correct = evaluate(trained, control_test)
                finally:
                    engine.close()
                    val_engine.close()
                    control_test.close()
                results.append(BaselineResult(name, v, correct.unsqueeze(0)))
        elif name == "patch":
            note("full-component patching")
            correct = test_engine.correct(patch_edit(test_engine, variables))
            results.append(BaselineResult(name, None, correct.unsqueeze(0)))
        elif name == "mean_ablation" and alignment.basis is not None:
            note("mean ablation")
            results.extend(_mean_ablation(test_engine, alignment))
    return results


def _mean_ablation(engine: InterchangeEngine, alignment: Alignment) -> list[BaselineResult]:
    """Task accuracy with each variable's subspace set to its mean over the test bases."""
    means = {v: engine.sources[v].float().mean(dim=0) for v in alignment.variables}
    plain = engine.predict(None).eq(engine.base_labels)
    out = []
    for v in alignment.variables:
        basis = alignment.variable_basis(v)
        mean = means[v]

        def edit(
            selected: torch.Tensor,
            rows: torch.Tensor | slice,
            basis: torch.Tensor = basis,
            mean: torch.Tensor = mean,
        ) -> torch.Tensor:
            b = basis.to(selected.device, selected.dtype)
            target = mean.to(selected.device, selected.dtype).expand_as(selected)
            return selected + torch.matmul(torch.matmul(target - selected, b), b.T)

        ablated = engine.predict(edit).eq(engine.base_labels)
        out.append(
            BaselineResult(
                "mean_ablation",
                v,
                ablated.unsqueeze(0),
                {
                    "task_accuracy": float(plain.float().mean()),
                    "ablated_accuracy": float(ablated.float().mean()),
                },
            )
        )
    return out
