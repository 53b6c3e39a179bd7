"""On a CUDA GPU, the examples give the CPU's verdicts and numbers.

Every test runs the same work twice, with ``--device cpu`` and ``--device cuda`` (or
``device=`` from Python), and compares what the report says: the same verdict, the
same pair counts, and IIAs within :data:`IIA_TOLERANCE` (baselines, which retrain DAS
under a null, within :data:`NULL_TOLERANCE`). The two devices round differently, so
trained subspaces differ in their last bits and a few borderline test pairs may flip;
a device mistake (a tensor left on the CPU, a null network that stays there) fails
outright or moves these numbers far more.

Skipped where torch sees no CUDA GPU; nothing heavy runs at import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
IIA_TOLERANCE = 0.02
"""Largest |IIA on CUDA - IIA on the CPU| allowed for a hypothesis's variable."""
NULL_TOLERANCE = 0.05
"""The same for each baseline's IIA (DAS retrained under a null, a random network)."""

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _cli(command: str, name: str, device: str, out: Path) -> dict[str, Any]:
    """``abstraction COMMAND hypotheses/NAME.py --quick --device DEVICE``'s results.json."""
    from typer.testing import CliRunner

    from abstraction.cli import app

    where = out / device
    result = CliRunner().invoke(
        app,
        [
            command,
            str(ROOT / "hypotheses" / f"{name}.py"),
            "--quick",
            "--device",
            device,
            "--out",
            str(where),
            "--alignments",
            str(where / "alignments"),
        ],
    )
    assert result.exit_code == 0, f"{device}: {result.output}"
    results: dict[str, Any] = json.loads((where / name / "results.json").read_text())
    return results


def _close(cpu: float | None, cuda: float | None, tolerance: float) -> bool:
    if cpu is None or cuda is None:
        return cpu is cuda
    return abs(cpu - cuda) <= tolerance


def _same_findings(cpu: dict[str, Any], cuda: dict[str, Any]) -> None:
    """The two results.json say the same thing (verdict, pairs, IIAs, nulls, methods)."""
    assert cuda["verdict"] == cpu["verdict"], (cpu["reasons"], cuda["reasons"])
    assert cuda["config"]["pairs"] == cpu["config"]["pairs"]
    assert _close(cpu["behavior"]["accuracy"], cuda["behavior"]["accuracy"], 0.01)
    assert set(cuda["variables"]) == set(cpu["variables"])
    for name, ours in cpu["variables"].items():
        theirs = cuda["variables"][name]
        assert _close(ours["iia"], theirs["iia"], IIA_TOLERANCE), (name, ours["iia"], theirs["iia"])
        assert set(theirs["baselines"]) == set(ours["baselines"]), name
        for null, value in ours["baselines"].items():
            assert _close(value, theirs["baselines"][null], NULL_TOLERANCE), (name, null)
    for rival, other in zip(cpu["rivals"], cuda["rivals"], strict=True):
        assert other["name"] == rival["name"] and other["verdict"] == rival["verdict"]
    if cpu.get("methods"):
        assert cuda["methods"]["best"] == cpu["methods"]["best"]
        for name, rows in cpu["methods"]["variables"].items():
            for row, other in zip(rows, cuda["methods"]["variables"][name], strict=True):
                assert other["method"] == row["method"]
                assert _close(row["iia"], other["iia"], IIA_TOLERANCE), (name, row["method"])
                assert _close(row["untrained_iia"], other["untrained_iia"], NULL_TOLERANCE)


@pytest.mark.parametrize(
    ("command", "name"),
    [
        pytest.param("run", "hierarchical_equality", id="run-das-every-null"),
        pytest.param("sweep", "addition_carry", id="sweep"),
        pytest.param("run", "hierarchical_equality_methods", id="every-method-mlp"),
        pytest.param("run", "addition_methods", id="every-method-gpt2"),
        pytest.param("run", "ioi", id="lm-ioi"),
        pytest.param("run", "binding", id="lm-binding"),
    ],
)
def test_a_quick_run_on_cuda_finds_what_the_cpu_finds(
    command: str, name: str, tmp_path: Path
) -> None:
    cpu = _cli(command, name, "cpu", tmp_path)
    cuda = _cli(command, name, "cuda", tmp_path)
    _same_findings(cpu, cuda)


@pytest.mark.parametrize("method", ["das", "low_rank", "boundless", "patch", "dbm", "pca", "sae"])
def test_verify_on_cuda_matches_the_cpu_for_every_method(method: str) -> None:
    """``verify(device=...)`` with every null and the diagnostics, one method at a time."""
    from abstraction import Location, TrainingConfig, counterfactual_dataset, verify, zoo
    from abstraction.counterfactuals import split_by_base

    task = zoo.task("hierarchical_equality_mlp")
    data = counterfactual_dataset(task.model, 12_000, [["wx"]], sampler="output", seed=0)
    train, validation, test = split_by_base(data, (0.7, 0.15, 0.15), seed=0)
    found = {}
    for device in ("cpu", "cuda"):
        network = zoo.load("hierarchical_equality_mlp")  # a fresh copy: verify moves it
        found[device] = verify(
            network,
            task,
            train,
            validation,
            test,
            Location(layer=0),
            ["wx"],
            method=method,
            rank=None if method in ("dbm", "pca", "sae") else 4,
            config=TrainingConfig(epochs=2, batch_size=512, lr=5e-3, sae_steps=300),
            seeds=2,
            device=device,
        )
        assert network.device.type == device
    cpu, cuda = found["cpu"], found["cuda"]
    assert cuda.verdict == cpu.verdict
    assert abs(cuda.variables["wx"].iia.value - cpu.variables["wx"].iia.value) <= IIA_TOLERANCE
    for null, value in cpu.variables["wx"].baselines.items():
        assert abs(cuda.variables["wx"].baselines[null] - value) <= NULL_TOLERANCE, null
    untrained = next(b for b in cuda.baselines if b.name == "untrained")
    assert untrained.correct.device.type == "cpu"  # statistics read host arrays


def test_the_untrained_null_runs_on_the_networks_device() -> None:
    from abstraction import zoo
    from abstraction.baselines import random_weights

    network = zoo.load("hierarchical_equality_mlp").to("cuda")
    fresh = random_weights(network, seed=1)
    assert {p.device.type for p in fresh.module.parameters()} == {"cuda"}
    on_cpu = random_weights(zoo.load("hierarchical_equality_mlp"), seed=1)
    for a, b in zip(fresh.module.parameters(), on_cpu.module.parameters(), strict=True):
        assert torch.equal(a.cpu(), b)  # the same draws, whatever the device


def test_the_callers_cuda_random_state_is_left_alone() -> None:
    from abstraction import zoo
    from abstraction.baselines import random_weights

    network = zoo.load("hierarchical_equality_mlp").to("cuda")
    before = torch.cuda.get_rng_state()
    random_weights(network, seed=3)
    assert torch.equal(torch.cuda.get_rng_state(), before)


def _last_position_cells_on_cuda(bpe_tokenizer: Any, ioi_prompts: Any) -> tuple[Any, Any]:
    """A 4-layer GPT-2 on the GPU: its cells at the last position (80 IOI pairs), and
    their task."""
    from abstraction import Location
    from abstraction.alignment.prepared import PreparedInterchanges

    layers = 4
    network = ioi_prompts.gpt2(bpe_tokenizer, layers).to("cuda")
    task = ioi_prompts.task(bpe_tokenizer, "left")
    locations = [Location(layer=layer, position="last") for layer in range(layers)]
    cells = PreparedInterchanges.for_locations(
        network, task, ioi_prompts.data(80), locations, ["s"]
    )
    return cells, task


def test_training_rows_kept_on_the_device_train_what_host_rows_train(
    monkeypatch: pytest.MonkeyPatch, bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    """A staircase's prefix cache, keys/values and sources gathered on the GPU give the
    bases they give when every step copies its rows from host memory."""
    from abstraction import TrainingConfig
    from abstraction.alignment.das import reproducible
    from abstraction.alignment.prefix_cache import DEVICE_BUDGET_VARIABLE
    from abstraction.alignment.staircase import fit_cells, fitted_apart

    cells, task = _last_position_cells_on_cuda(bpe_tokenizer, ioi_prompts)
    config = TrainingConfig(epochs=2, batch_size=16, seed=0, select_epoch=False)
    assert fitted_apart(cells, None, "low_rank", config) is None
    found = {}
    for budget in ("0", "1GiB"):
        monkeypatch.setenv(DEVICE_BUDGET_VARIABLE, budget)
        resident = cells[0].reordered(torch.arange(cells[0].rows))
        assert resident.sources["s"].device.type == ("cpu" if budget == "0" else "cuda")
        found[budget] = reproducible(fit_cells)(
            cells, None, task, ["s"], method="low_rank", rank=1, config=config
        )
    for host, device in zip(found["0"], found["1GiB"], strict=True):
        torch.testing.assert_close(host.basis, device.basis, rtol=0, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_a_captured_staircase_on_cuda_trains_the_eager_bases(
    precision: str, bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    """CUDA graphs (``capture=True``: torch.compile's "reduce-overhead" mode) replay the
    staircase step and train the eager step's bases, in each precision; TF32 and bf16
    train near fp32 (the same direction), not the same bits."""
    import warnings

    from abstraction import StepCaptureWarning, TrainingConfig
    from abstraction.alignment.das import reproducible
    from abstraction.alignment.staircase import fit_cells, fitted_apart

    cells, task = _last_position_cells_on_cuda(bpe_tokenizer, ioi_prompts)
    fp32 = TrainingConfig(epochs=2, batch_size=32, lr=5e-2, seed=0, select_epoch=False)
    assert fitted_apart(cells, None, "low_rank", fp32) is None
    eager = TrainingConfig(**{**vars(fp32), "precision": precision})
    captured = TrainingConfig(**{**vars(eager), "capture": True})
    exact = reproducible(fit_cells)(cells, None, task, ["s"], method="low_rank", config=fp32)
    plain = reproducible(fit_cells)(cells, None, task, ["s"], method="low_rank", config=eager)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StepCaptureWarning)
        replayed = reproducible(fit_cells)(
            cells, None, task, ["s"], method="low_rank", config=captured
        )
    for a, b, c in zip(replayed, plain, exact, strict=True):
        torch.testing.assert_close(a.basis, b.basis, rtol=0, atol=5e-3)
        cosine = torch.nn.functional.cosine_similarity(b.basis, c.basis, dim=0).abs()
        assert float(cosine.min()) > 0.9
