"""The one training loop (abstraction.alignment.training.train) on a scripted objective:
early stopping per unit, the best epoch kept, ties broken by size, NaN refused, and
every method trains through it (no method keeps a loop of its own)."""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch

from abstraction.alignment import (
    AlignmentError,
    EpochScore,
    Method,
    TrainingConfig,
    method_named,
    method_names,
    train,
)
from abstraction.alignment import method as registry
from abstraction.alignment.training import StepLoss

PACKAGE = Path(__file__).resolve().parents[2] / "abstraction"


class Scripted:
    """Units whose scores follow a script, one entry per epoch; each unit's parameter
    moves towards 1 under a squared loss, so snapshots differ from epoch to epoch."""

    def __init__(
        self,
        scripts: Sequence[Sequence[float | None]],
        sizes: Sequence[Sequence[float]] | None = None,
        rows: int = 10,
        nan_at: int | None = None,
    ) -> None:
        self.scripts, self.sizes = scripts, sizes
        self.units, self.rows = len(scripts), rows
        self.device = torch.device("cpu")
        self.nan_hint = "try again"
        self.params = [torch.nn.Parameter(torch.zeros(())) for _ in scripts]
        self.epoch = [0] * len(scripts)
        self.steps_built: list[tuple[int, ...]] = []
        self.nan_at = nan_at
        self.order: torch.Tensor | None = None

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.params, lr=0.1)

    def reorder(self, order: torch.Tensor) -> torch.device:
        self.order = order
        return self.device

    def step(self, members: tuple[int, ...]) -> StepLoss:
        self.steps_built.append(members)

        def run(
            rows: torch.Tensor | slice, step: int
        ) -> tuple[torch.Tensor, torch.Tensor, Sequence[int]]:
            losses = torch.stack([(self.params[i] - 1) ** 2 for i in members])
            if self.nan_at is not None and step >= self.nan_at:
                losses = losses * float("nan")
            # reported in reverse order, as a staircase reports cells by cut
            order = list(reversed(range(len(members))))
            return losses.sum(), losses.flip(0), order

        return run

    def snapshot(self, unit: int) -> float:
        return float(self.params[unit].detach())

    def score(
        self, members: Sequence[int], snapshots: Mapping[int, float], select: bool
    ) -> dict[int, EpochScore]:
        out = {}
        for i in members:
            epoch = self.epoch[i]
            self.epoch[i] += 1
            size = self.sizes[i][epoch] if self.sizes is not None else None
            out[i] = EpochScore(self.scripts[i][epoch] if select else None, size=size)
        return out

    def unit_name(self, unit: int) -> str:
        return f"unit {unit}" if self.units > 1 else ""


def _config(**changes: object) -> TrainingConfig:
    return TrainingConfig(**{"epochs": 6, "batch_size": 4, "patience": 2, **changes})  # type: ignore[arg-type]


def test_each_unit_stops_on_its_own_and_keeps_its_best_epoch() -> None:
    objective = Scripted([[0.5, 0.7, 0.6, 0.65, 0.9, 0.9], [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    seen: list[tuple[int, float | None]] = []
    trained = train(
        objective,
        _config(),
        torch.Generator().manual_seed(0),
        progress=lambda unit, entry: seen.append((unit, entry["val_iia"])),
    )
    # unit 0: best 0.7 at epoch 2, then two epochs without better -> stops after epoch 4
    assert [e["val_iia"] for e in trained.curves[0]] == [0.5, 0.7, 0.6, 0.65]
    assert trained.scores[0].iia == 0.7
    # unit 1 improves every epoch and runs all six
    assert len(trained.curves[1]) == 6 and trained.scores[1].iia == 0.7
    # the kept snapshot is the parameter after epoch 2 (3 steps of SGD per epoch)
    assert trained.best[0] == pytest.approx(1 - 0.8**6)
    # a new step is built once unit 0 stops, for the unit still training
    assert objective.steps_built == [(0, 1), (1,)]
    assert seen[:2] == [(0, 0.5), (1, 0.2)]
    assert [e["epoch"] for e in trained.curves[1]] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert [e["step"] for e in trained.curves[1]] == [3.0, 6.0, 9.0, 12.0, 15.0, 18.0]
    assert objective.order is not None and sorted(objective.order.tolist()) == list(range(10))


def test_losses_reach_the_unit_the_step_names() -> None:
    objective = Scripted([[0.1] * 6, [0.1] * 6])
    with torch.no_grad():
        objective.params[1].fill_(3.0)  # unit 1's loss is (3-1)^2 = 4 at the start
    trained = train(objective, _config(epochs=1), torch.Generator().manual_seed(0))
    assert trained.curves[1][0]["loss"] > 1 > trained.curves[0][0]["loss"]  # type: ignore[operator]


def test_an_equal_score_with_a_smaller_size_replaces_the_best() -> None:
    objective = Scripted([[0.5, 0.5, 0.5, 0.4]], sizes=[[8, 3, 5, 1]])
    trained = train(objective, _config(), torch.Generator().manual_seed(0))
    assert trained.scores[0].size == 3  # epoch 2: same IIA, fewer features
    assert len(trained.curves[0]) == 4  # epochs 3 and 4 are not better: stop


def test_unscored_epochs_keep_the_last() -> None:
    objective = Scripted([[0.9, 0.1, 0.1]])
    trained = train(
        objective, _config(epochs=3, select_epoch=False), torch.Generator().manual_seed(0)
    )
    assert [e["val_iia"] for e in trained.curves[0]] == [None, None, None]
    assert trained.best[0] == pytest.approx(1 - 0.8**9)  # the last epoch's parameter


def test_a_non_finite_loss_names_the_unit_and_the_fix() -> None:
    objective = Scripted([[0.5] * 6, [0.5] * 6], nan_at=4)
    with pytest.raises(AlignmentError, match=r"loss of unit 1 became nan in epoch 1 .*try again"):
        train(objective, _config(), torch.Generator().manual_seed(0))


def test_the_shuffle_and_batch_order_come_from_the_generator() -> None:
    first, second = Scripted([[0.5] * 6]), Scripted([[0.5] * 6])
    train(first, _config(epochs=1), torch.Generator().manual_seed(3))
    train(second, _config(epochs=1), torch.Generator().manual_seed(3))
    assert first.order is not None and second.order is not None
    assert torch.equal(first.order, second.order)


def test_methods_are_found_by_name_and_a_new_class_registers_itself() -> None:
    assert set(method_names()) >= {"das", "low_rank", "boundless", "patch", "dbm", "pca", "sae"}
    assert method_named("das") == method_named(method_named("das"))
    assert method_named("pca").featurized and not method_named("das").featurized
    assert not method_named("patch").trained and method_named("patch").null().name == "das"
    with pytest.raises(AlignmentError, match=r"unknown method 'dass'.*das"):
        method_named("dass")

    class Scaled(Method):
        name = "test_scaled_registry"

        def fit(self, *args: object, **kwargs: object) -> list:  # type: ignore[override,type-arg]
            return []

    try:
        assert method_named("test_scaled_registry") == Scaled()
        assert "test_scaled_registry" in method_names()
    finally:  # other tests see the built-in methods only
        registry._REGISTRY.pop("test_scaled_registry")


def _training_loops(path: Path) -> list[str]:
    """Functions of ``path`` that step an optimizer inside a loop over epochs/batches."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            loops = [n for n in ast.walk(node) if isinstance(n, ast.For | ast.While)]
            steps = any(
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and n.func.attr == "step"
                and isinstance(n.func.value, ast.Name)
                and n.func.value.id == "optimizer"
                for loop in loops
                for n in ast.walk(loop)
            )
            if steps:
                found.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    return found


def test_alignment_methods_train_through_the_one_loop() -> None:
    loops = [f for p in (PACKAGE / "alignment").glob("*.py") for f in _training_loops(p)]
    assert loops == ["alignment/training.py:train"]
