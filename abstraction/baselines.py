"""Null baselines and controls, run exactly like the real alignment.

Each baseline scores the same test pairs as the hypothesis (so comparisons are
paired) with the same data, training budget, rank and location:

* ``random_subspace``: random orthonormal subspaces of the same ranks, untrained,
  over several seeds;
* ``untrained``: DAS trained on the same architecture with random weights (DAS can
  reach high IIA on random networks, so this null is essential); for the feature
  methods the same method, its featurizer fitted again on the random network (PCA
  refitted, an SAE trained on its activations; DBM over neurons stays over neurons);
  when re-initialising
  leaves the network's outputs unchanged (a computation in buffers or fixed functions),
  the result carries a note saying so and does not decide the verdict;
* ``control``: DAS trained on a control task where the variable's values are
  shuffled consistently across inputs (selectivity = IIA - control IIA);
* ``patch``: the full component patched; it moves every variable the site holds at
  once, so it is not an upper bound on one variable's subspace interchange;
* ``mean_ablation``: the variable's subspace replaced by its mean activation, and
  the network's task accuracy measured (necessity: does removing it hurt?).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import nn

from abstraction.alignment.das import TrainingConfig, evaluate, fit_sites
from abstraction.alignment.method import Featurizers, Method, method_named
from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.alignment.result import Alignment
from abstraction.counterfactuals import control_model, relabel
from abstraction.interventions import Intervention, MeanAblation, Patch, random_subspace_patches
from abstraction.network import Network, restore_default_linear_init, seeded
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
        note: why the baseline is not applicable here (empty when it is); it is still
            run and reported, but it does not decide the verdict.
    """

    name: str
    variable: str | None
    correct: torch.Tensor
    detail: dict[str, Any] = field(default_factory=dict)
    note: str = ""

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
    """The same architecture with freshly initialised weights (the global RNG is left as it was).

    The weights are drawn on the CPU, so a seed gives the same network whatever device
    ``network`` is on, and then put where ``network``'s are (each parameter and buffer on
    the device and in the dtype of the original's of the same name): the null runs
    where, and in the precision, the network runs.
    """
    with seeded(seed):
        return _fresh(network)


def _fresh(network: Network) -> Network:
    module = network.module
    config = getattr(module, "config", None)
    try:
        fresh = type(module)(config) if config is not None else None
    except Exception:
        fresh = None
    if fresh is None:
        fresh = copy.deepcopy(module).to("cpu")
        for sub in fresh.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
    if network.family == "mlp":
        restore_default_linear_init(fresh)
    _place_like(fresh, module, network.device)
    return Network(fresh, family=network.family, name=f"{network.name} (random weights)")


def _place_like(fresh: nn.Module, original: nn.Module, device: torch.device) -> None:
    """Move each of ``fresh``'s parameters and buffers to the device (and, for floating
    tensors, the dtype) of ``original``'s tensor of the same name; to ``device`` when
    ``original`` has none of that name."""
    where = {
        name: (tensor.device, tensor.dtype)
        for name, tensor in (*original.named_parameters(), *original.named_buffers())
    }
    for name, tensor in (*fresh.named_parameters(), *fresh.named_buffers()):
        target, dtype = where.get(name, (device, tensor.dtype))
        if not tensor.is_floating_point():
            dtype = tensor.dtype
        if tensor.device != target or tensor.dtype != dtype:
            tensor.data = tensor.data.to(target, dtype)


def run_baselines(
    network: Network,
    task: Task,
    alignment: Alignment | Sequence[Alignment],
    train: pd.DataFrame,
    validation: pd.DataFrame,
    test: pd.DataFrame,
    prepared_test: PreparedInterchanges,
    *,
    which: Sequence[str] = BASELINES,
    seeds: int = 5,
    config: TrainingConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[BaselineResult]:
    """Run the requested baselines for ``alignment`` (trained on ``train``).

    ``alignment`` may be one alignment per site (variables at several sites); each
    null is then built at every site at once. ``prepared_test`` holds the test pairs
    prepared at the alignments' locations; every
    baseline is a set of :class:`~abstraction.interventions.Intervention` objects
    applied to it (or DAS retrained under a null), through the same runtime as the
    hypothesis.
    """
    config = config or TrainingConfig()
    alignments = [alignment] if isinstance(alignment, Alignment) else list(alignment)
    variables = [v for a in alignments for v in a.variables]
    method = method_named(alignments[0].method).null()
    has_basis = all(a.basis is not None for a in alignments)
    results: list[BaselineResult] = []

    def note(message: str) -> None:
        if progress is not None:
            progress(message)

    for name in which:
        if name == "random_subspace" and has_basis:
            note("random subspaces")
            generator = torch.Generator().manual_seed(12345)
            rows = []
            for _ in range(seeds):
                null: dict[str, Intervention] = {}
                for a in alignments:
                    width = prepared_test.width_of(a.variables[0])
                    null.update(random_subspace_patches(a.location, a.subspaces, width, generator))
                rows.append(prepared_test.correct(null))
            results.append(BaselineResult(name, None, torch.stack(rows)))
        elif name == "untrained":
            note("DAS on a randomly initialised network")
            fresh = random_weights(network, seed=1)
            featurizer, null_config = method.null_featurizers(alignments, config)
            correct, accuracy, unchanged = _retrained(
                fresh,
                task,
                (train, validation, test),
                alignments,
                method,
                null_config,
                prepared_test,
                featurizer=featurizer,
            )
            results.append(
                BaselineResult(
                    name,
                    None,
                    correct.unsqueeze(0),
                    {"task_accuracy": accuracy},
                    note=(
                        "re-initialising the network's parameters leaves its outputs "
                        "unchanged on the test inputs (its computation sits in buffers or "
                        "fixed functions), so DAS on 'random weights' is DAS on the network "
                        "itself"
                        if unchanged
                        else ""
                    ),
                )
            )
        elif name == "control":
            for v in variables:
                note(f"control task for {v}")
                bases = {i: train[f"base.{i}"].to_numpy() for i in task.model.inputs}
                control = control_model(task.model, v, seed=7, distribution=bases)
                splits = (
                    relabel(train, control),
                    relabel(validation, control),
                    relabel(test, control),
                )
                correct, _, _ = _retrained(
                    network,
                    task.with_model(control),
                    splits,
                    alignments,
                    method,
                    config,
                    featurizer=method.same_featurizers(alignments),
                )
                results.append(BaselineResult(name, v, correct.unsqueeze(0)))
        elif name == "patch":
            note("full-component patching")
            correct = prepared_test.correct(
                {v: Patch(a.location) for a in alignments for v in a.variables}
            )
            results.append(BaselineResult(name, None, correct.unsqueeze(0)))
        elif name == "mean_ablation" and has_basis:
            note("mean ablation")
            for a in alignments:
                results.extend(_mean_ablation(prepared_test, a))
    return results


def _retrained(
    network: Network,
    task: Task,
    splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    alignments: Sequence[Alignment],
    method: Method,
    config: TrainingConfig,
    reference: PreparedInterchanges | None = None,
    featurizer: Featurizers = None,
) -> tuple[torch.Tensor, float, bool]:
    """DAS retrained under a null (other weights or labels) with the alignments' ranks.

    Returns per-pair correctness on the test split, the network's task accuracy there,
    and whether its readout equals ``reference``'s (the original network on the same
    test pairs) on every test base: a null network that computes the same function.
    """
    variables = [v for a in alignments for v in a.variables]
    locations = {v: a.location for a in alignments for v in a.variables}
    ranks = {v: b - a for al in alignments for v, (a, b) in al.subspaces.items()}
    prepared = [PreparedInterchanges(network, task, d, locations, variables) for d in splits]
    try:
        trained = fit_sites(
            prepared[0],
            prepared[1],
            task,
            variables,
            method=method,
            rank=None if method.featurized else ranks,
            config=config,
            featurizer=featurizer,
        )
        correct = evaluate(trained, prepared[2])
        accuracy = float(prepared[2].predict(None).eq(prepared[2].base_labels).float().mean())
        unchanged = reference is not None and _same_outputs(prepared[2], reference)
    finally:
        for p in prepared:
            p.close()
    return correct, accuracy, unchanged


@torch.no_grad()
def _same_outputs(a: PreparedInterchanges, b: PreparedInterchanges, rows: int = 4096) -> bool:
    """Whether two networks prepared on the same pairs give the same readout logits."""
    index = torch.arange(min(a.rows, rows))
    return bool(torch.allclose(a.logits(index), b.logits(index), rtol=1e-5, atol=1e-6))


def _mean_ablation(prepared: PreparedInterchanges, alignment: Alignment) -> list[BaselineResult]:
    """Task accuracy with each variable's subspace set to its mean over the test bases."""
    plain = prepared.predict(None).eq(prepared.base_labels)
    out = []
    for v in alignment.variables:
        mean = prepared.sources[v].float().mean(dim=0)
        ablation = MeanAblation(alignment.location, mean=mean, basis=alignment.variable_basis(v))
        ablated = prepared.predict([ablation]).eq(prepared.base_labels)
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
