"""device=: every entry point takes one, CPU by default; a bad one fails first, clearly.

No test needs a GPU: on a machine without one, asking for CUDA must fail with a
message that says so, before any data is generated or trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from abstraction import Location, TrainingConfig, align, counterfactual_dataset, sweep, verify
from abstraction.cli import app
from abstraction.network import NetworkError, resolve_device

ROOT = Path(__file__).resolve().parents[2]
NO_CUDA = not torch.cuda.is_available()


def test_resolve_device_names_what_is_wrong() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(NetworkError, match="'gpu' is not a torch device; use 'cpu', 'cuda'"):
        resolve_device("gpu")
    with pytest.raises(NetworkError, match="'meta' is not supported"):
        resolve_device("meta")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(NetworkError, match=r"'cuda:1' needs a CUDA GPU.*use device='cpu'"):
        resolve_device("cuda:1")


def _pairs(he_task: Any) -> Any:
    return counterfactual_dataset(
        he_task.model, 600, [["wx"], ["yz"], ["wx", "yz"]], sampler="output", seed=0
    )


def test_cpu_threads_through_align_verify_and_sweep(he_network: Any, he_task: Any) -> None:
    data = _pairs(he_task)
    config = TrainingConfig(epochs=1, batch_size=256)
    location = Location(layer=0)
    alignment = align(
        he_network, he_task, data, location, ["wx"], rank=2, config=config, device="cpu"
    )
    assert alignment.basis is not None and alignment.basis.device == torch.device("cpu")
    assert he_network.device == torch.device("cpu")
    verification = verify(
        he_network,
        he_task,
        data,
        data,
        data,
        location,
        ["wx"],
        rank=2,
        config=config,
        baselines=("random_subspace",),
        seeds=1,
        diagnostics=False,
        device="cpu",
    )
    assert 0.0 <= verification.variables["wx"].iia.value <= 1.0
    result = sweep(he_network, he_task, data, data, ["wx"], layers=[0], config=config, device="cpu")
    assert result.best.layer == 0


@pytest.mark.parametrize("entry", ["align", "verify", "sweep"])
def test_a_bad_device_fails_before_any_training(
    entry: str, he_network: Any, he_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import abstraction.alignment.das as das

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("trained despite a bad device")

    monkeypatch.setattr(das, "fit_sites", never)
    data = _pairs(he_task)
    location = Location(layer=0)
    with pytest.raises(NetworkError, match="'gpu' is not a torch device"):
        if entry == "align":
            align(he_network, he_task, data, location, ["wx"], device="gpu")
        elif entry == "verify":
            verify(he_network, he_task, data, data, data, location, ["wx"], device="gpu")
        else:
            sweep(he_network, he_task, data, data, ["wx"], layers=[0], device="gpu")
    assert he_network.device == torch.device("cpu")


def test_cli_device_option(tmp_path: Path) -> None:
    runner = CliRunner()
    file = str(ROOT / "hypotheses" / "hierarchical_equality.py")
    result = runner.invoke(app, ["run", file, "--quick", "--device", "gpu", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "'gpu' is not a torch device" in result.output
    if NO_CUDA:
        file = str(ROOT / "hypotheses" / "addition_carry.py")
        result = runner.invoke(app, ["sweep", file, "--device", "cuda", "--out", str(tmp_path)])
        assert result.exit_code == 2, result.output
        assert "needs a CUDA GPU" in result.output
