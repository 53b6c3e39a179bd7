"""A training step's execution options: captured (compiled once, replayed) and precision.

``TrainingConfig(capture=True)`` compiles the step's forward with ``torch.compile`` and
must train the same bases as the eager step (up to the rounding fused kernels bring),
for a staircase of cells and for one cell's DAS, low-rank and boundless fits; where
compiling fails it warns and trains exactly what eager trains. ``precision="bf16"`` runs
the forward under bfloat16 autocast: a different (rounded) trajectory, not a no-op.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from abstraction import Location, PreparedInterchanges, TrainingConfig
from abstraction.alignment.das import fit, reproducible
from abstraction.alignment.result import AlignmentError
from abstraction.alignment.staircase import fit_cells, fitted_apart
from abstraction.alignment.step import StepCaptureWarning, captured

LAYERS = 4
ADAM_ROUNDING = 5e-3
"""As in test_staircase.py: how far rounding alone may move a trained basis (Adam's
steps are about lr * sign(gradient) where a gradient component is near zero)."""


@pytest.fixture(scope="module")
def setup(bpe_tokenizer: Any, ioi_prompts: Any) -> Any:
    network = ioi_prompts.gpt2(bpe_tokenizer, LAYERS)
    task = ioi_prompts.task(bpe_tokenizer, "left")
    data = ioi_prompts.data(80, seed=0)
    return network, task, data


def _cells(setup: Any) -> list[PreparedInterchanges]:
    network, task, data = setup
    locations = [Location(layer=layer, position="last") for layer in range(LAYERS)]
    return PreparedInterchanges.for_locations(network, task, data, locations, ["s"])


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_a_captured_staircase_trains_the_eager_staircases_bases(setup: Any) -> None:
    _, task, _ = setup
    cells = _cells(setup)
    # 80 pairs in batches of 32: two full batches and a shorter last one
    eager = TrainingConfig(epochs=2, batch_size=32, lr=5e-2, seed=3, select_epoch=False)
    assert fitted_apart(cells, None, "low_rank", eager) is None  # a staircase
    reference = reproducible(fit_cells)(cells, None, task, ["s"], method="low_rank", config=eager)
    torch._dynamo.reset()
    graphs = _compiled_graphs()
    capture = TrainingConfig(**{**vars(eager), "capture": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error", StepCaptureWarning)  # a fallback would fail here
        replayed = reproducible(fit_cells)(
            cells, None, task, ["s"], method="low_rank", config=capture
        )
    assert _compiled_graphs() > graphs  # the step was compiled, not run eagerly
    for a, b in zip(replayed, reference, strict=True):
        assert not torch.equal(a.basis, torch.zeros_like(a.basis))
        torch.testing.assert_close(a.basis, b.basis, rtol=0, atol=ADAM_ROUNDING)
        assert [e["loss"] for e in a.curve] == pytest.approx([e["loss"] for e in b.curve], abs=1e-4)
        assert a.config == {**b.config, "capture": True}
    for cell in cells:
        cell.close()


@pytest.mark.parametrize("method", ["das", "low_rank", "boundless"])
def test_a_captured_fit_trains_the_eager_fits_basis(setup: Any, method: str) -> None:
    network, task, data = setup
    cell = PreparedInterchanges(network, task, data, Location(layer=1, position="last"), ["s"])
    eager = TrainingConfig(epochs=2, batch_size=32, lr=2e-2, seed=1)
    reference = reproducible(fit)(cell, None, task, ["s"], method=method, rank=2, config=eager)
    torch._dynamo.reset()
    graphs = _compiled_graphs()
    capture = TrainingConfig(**{**vars(eager), "capture": True})
    replayed = reproducible(fit)(cell, None, task, ["s"], method=method, rank=2, config=capture)
    assert _compiled_graphs() > graphs
    torch.testing.assert_close(replayed.basis, reference.basis, rtol=0, atol=ADAM_ROUNDING)
    assert replayed.subspaces == reference.subspaces
    assert [e["val_iia"] for e in replayed.curve] == pytest.approx(
        [e["val_iia"] for e in reference.curve], abs=0.05
    )
    cell.close()


def test_a_step_that_cannot_compile_warns_and_trains_exactly_what_eager_trains(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, task, _ = setup
    cells = _cells(setup)
    eager = TrainingConfig(epochs=1, batch_size=32, lr=5e-2, seed=2, select_epoch=False)
    reference = reproducible(fit_cells)(cells, None, task, ["s"], method="low_rank", config=eager)

    def broken(function: Any, **kwargs: Any) -> Any:
        def fails(*args: Any, **kw: Any) -> Any:
            raise RuntimeError("no C++ compiler found\nmore detail")

        return fails

    monkeypatch.setattr(torch, "compile", broken)
    capture = TrainingConfig(**{**vars(eager), "capture": True})
    with pytest.warns(StepCaptureWarning, match="no C\\+\\+ compiler found"):
        fallback = reproducible(fit_cells)(
            cells, None, task, ["s"], method="low_rank", config=capture
        )
    for a, b in zip(fallback, reference, strict=True):
        assert torch.equal(a.basis, b.basis)
    for cell in cells:
        cell.close()


def test_the_steps_own_errors_are_not_taken_for_compiler_failures() -> None:
    def refuses(x: torch.Tensor) -> torch.Tensor:
        raise AlignmentError("bad rows")

    step = captured(refuses, enabled=True, device=torch.device("cpu"))
    with pytest.raises(AlignmentError, match="bad rows"):
        step(torch.zeros(2))


def test_bf16_trains_under_autocast_and_stays_near_fp32(setup: Any) -> None:
    network, task, data = setup
    cell = PreparedInterchanges(network, task, data, Location(layer=2, position="last"), ["s"])
    fp32 = TrainingConfig(epochs=2, batch_size=32, lr=2e-2, seed=1)
    bf16 = TrainingConfig(**{**vars(fp32), "precision": "bf16"})
    exact = reproducible(fit)(cell, None, task, ["s"], method="low_rank", config=fp32)
    rounded = reproducible(fit)(cell, None, task, ["s"], method="low_rank", config=bf16)
    assert not torch.equal(exact.basis, rounded.basis)  # bf16 rounding changed the steps
    cosine = torch.nn.functional.cosine_similarity(exact.basis, rounded.basis, dim=0).abs()
    assert float(cosine.min()) > 0.9  # but it trained the same direction
    assert rounded.config["precision"] == "bf16" and "precision" not in exact.config
    cell.close()


def test_training_config_refuses_unknown_precisions_and_mask_methods_refuse_both(
    setup: Any,
) -> None:
    with pytest.raises(AlignmentError, match="precision must be one of fp32, tf32, bf16"):
        TrainingConfig(precision="fp16")  # type: ignore[arg-type]
    network, task, data = setup
    cell = PreparedInterchanges(network, task, data, Location(layer=1, position="last"), ["s"])
    for config in (TrainingConfig(capture=True), TrainingConfig(precision="bf16")):
        with pytest.raises(AlignmentError, match="DAS methods' training step"):
            fit(cell, None, task, ["s"], method="dbm", config=config)
    cell.close()
