"""memory_budget= on verify, sweep and the CLI reaches every prefix cache they build.

With a budget of 0 bytes every cache is a memory-mapped file, and the numbers are the
ones the in-memory caches give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from abstraction import Location, TrainingConfig, counterfactual_dataset, sweep, verify
from abstraction.cli import app

ROOT = Path(__file__).resolve().parents[2]


def _pairs(he_task: Any, seed: int) -> Any:
    return counterfactual_dataset(
        he_task.model, 400, [["wx"], ["yz"], ["wx", "yz"]], sampler="output", seed=seed
    )


@pytest.fixture
def memmaps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files memory-mapped while the test runs."""
    opened: list[str] = []
    original = np.lib.format.open_memmap

    def spy(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "open_memmap", spy)
    return opened


def test_verify_and_sweep_on_disk_give_the_numbers_in_memory(
    he_network: Any, he_task: Any, memmaps: list[str]
) -> None:
    train, validation, test = (_pairs(he_task, seed) for seed in range(3))
    config = TrainingConfig(epochs=2, batch_size=128)
    results = {}
    for budget in (None, 0):
        before = len(memmaps)
        verification = verify(
            he_network,
            he_task,
            train,
            validation,
            test,
            Location(layer=1),
            ["wx"],
            rank=2,
            config=config,
            baselines=("random_subspace",),
            seeds=1,
            diagnostics=False,
            memory_budget=budget,
        )
        searched = sweep(
            he_network, he_task, train, validation, ["wx"], config=config, memory_budget=budget
        )
        on_disk = len(memmaps) - before
        assert (on_disk > 0) == (budget == 0)
        results[budget] = (verification.variables["wx"].iia.value, searched.cells["val_iia"])
    assert results[0][0] == results[None][0]
    assert results[0][1].tolist() == results[None][1].tolist()


def test_cli_memory_budget_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import abstraction.experiment as runner
    from abstraction.errors import AbstractionError

    seen: dict[str, Any] = {}

    def stop(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise AbstractionError("stopped here by the test")

    monkeypatch.setattr(runner, "run", stop)
    file = str(ROOT / "hypotheses" / "hierarchical_equality.py")
    for command in ("run", "sweep"):
        seen.clear()
        target = file if command == "run" else str(ROOT / "hypotheses" / "addition_carry.py")
        result = CliRunner().invoke(
            app, [command, target, "--memory-budget", "0.5", "--out", str(tmp_path)]
        )
        assert result.exit_code == 2, result.output
        assert seen["memory_budget"] == 2**29
    seen.clear()
    result = CliRunner().invoke(app, ["run", file, "--memory-budget", "-1"])
    assert result.exit_code == 2 and not seen  # refused by the option, before any run
