"""device=: every entry point takes one, CPU by default; a bad one fails first, clearly.

No test needs a GPU: on a machine without one, asking for CUDA must fail with a
message that says so, before any data is generated or trained.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from abstraction import (
    Location,
    PreparedInterchanges,
    Task,
    TrainingConfig,
    align,
    counterfactual_dataset,
    evaluate_cells,
    fit_cells,
    sweep,
    verify,
)
from abstraction.baselines import random_weights
from abstraction.cli import app
from abstraction.counterfactuals import split_by_base
from abstraction.network import Batch, Network, NetworkError, resolve_device

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


# -- following the network: what can be checked without a GPU --------------------------------
#
# On a GPU every tensor the library makes and mixes with the network's activations must
# be on the network's device; on the CPU the same code must put it in the network's
# dtype (``Intervention``s, featurizers and the untrained null's weights are cast and
# moved by the same calls). A network in float64 therefore stands in for one on a GPU:
# the untrained null built in float32 on the CPU failed here as it failed on CUDA.


def _float64(network: Network) -> Network:
    module = copy.deepcopy(network.module).double()
    return Network(module, family=network.family, name=f"{network.name} (float64)")


def _float64_inputs(task: Task) -> Task:
    """A copy of ``task`` whose floating inputs (entity vectors) are float64."""
    wide = copy.copy(task)

    def encode(columns: Any) -> Batch:
        b = task.encode(columns)
        inputs = {k: v.double() if v.is_floating_point() else v for k, v in b.inputs.items()}
        return Batch(inputs, b.positions, b.readout, b.candidates)

    wide.encode = encode  # type: ignore[method-assign]
    return wide


@pytest.mark.parametrize("method", ["das", "low_rank", "boundless", "dbm", "pca", "sae"])
def test_verify_follows_the_networks_dtype(method: str, he_network: Any, he_task: Any) -> None:
    """Alignment, scoring, every null (the untrained network retrained, the control task)
    and the diagnostics run on a float64 network, each on its own float64 copies."""
    network, task = _float64(he_network), _float64_inputs(he_task)
    data = counterfactual_dataset(task.model, 3000, [["wx"]], sampler="output", seed=0)
    train, validation, test = split_by_base(data, (0.6, 0.2, 0.2), seed=0)
    verification = verify(
        network,
        task,
        train,
        validation,
        test,
        Location(layer=0),
        ["wx"],
        method=method,
        rank=None if method in ("dbm", "pca", "sae") else 2,
        config=TrainingConfig(epochs=1, batch_size=512, sae_steps=20),
        seeds=1,
    )
    assert {b.name for b in verification.baselines} >= {"untrained", "control", "patch"}
    assert 0.0 <= verification.variables["wx"].iia.value <= 1.0


def test_the_untrained_null_is_placed_like_the_network(he_network: Any) -> None:
    network = _float64(he_network)
    fresh = random_weights(network, seed=1)
    assert {p.dtype for p in fresh.module.parameters()} == {torch.float64}
    plain = random_weights(he_network, seed=1)
    for a, b in zip(fresh.module.parameters(), plain.module.parameters(), strict=True):
        assert torch.equal(a, b.double())  # the same draws, then placed like the network


def test_prefix_caches_and_staircases_follow_the_networks_dtype(
    bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    """A GPT-2 in float64: a sweep over prefix caches with reused keys and values, a
    verification with every null, and a staircase of a position's cells."""
    network = _float64(ioi_prompts.gpt2(bpe_tokenizer, 2))
    task = ioi_prompts.task(bpe_tokenizer, "left")
    data = ioi_prompts.data(240)
    train, validation, test = split_by_base(data, (0.6, 0.2, 0.2), seed=0)
    config = TrainingConfig(epochs=1, batch_size=32)
    found = sweep(network, task, train, validation, ["s"], positions=["last"], config=config)
    verification = verify(
        network,
        task,
        train,
        validation,
        test,
        found.best.location,
        ["s"],
        rank=1,
        config=config,
        seeds=1,
    )
    assert {b.name for b in verification.baselines} >= {"untrained", "control", "patch"}
    cells = PreparedInterchanges.for_locations(
        network, task, train, [Location(layer=layer, position="last") for layer in (0, 1)], ["s"]
    )
    try:
        assert all(cell.start > 0 for cell in cells)  # keys and values reused
        alignments = fit_cells(cells, None, task, ["s"], method="low_rank", rank=1, config=config)
        assert len(evaluate_cells(alignments, cells)) == 2
    finally:
        for cell in cells:
            cell.close()
