"""The staircase: a sweep's cells at one position run together, equal to one at a time.

Cells prepared together at every layer of a GPT-2 (first, middle and last position,
left and right padding) give the same logits from one staircase as from their own
suffixes, and :func:`fit_cells` trains the same rotations as fitting each cell alone
(the per-cell fit each benchmark and sweep ran before). The same holds on every other
model type of :data:`~abstraction.alignment.staircase.STAIRCASE_FAMILIES`: GPT-NeoX and
the Llama family's (rotary position embeddings, which the stacked cells must get for
their true positions; grouped-query attention; sliding-window layers).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from abstraction import (
    Location,
    LowRankPatch,
    Network,
    PreparedInterchanges,
    PromptTask,
    TrainingConfig,
)
from abstraction.alignment import staircase
from abstraction.alignment.das import LearnedRotation, LearnedRotationStack, fit, reproducible
from abstraction.alignment.prefix_cache import DEVICE_BUDGET_VARIABLE, device_budget
from abstraction.alignment.result import AlignmentError
from abstraction.alignment.staircase import (
    evaluate_cells,
    fit_cells,
    run_staircase,
    staircase_logits,
    staircase_unsupported,
)
from abstraction.errors import AbstractionError
from abstraction.network import FAMILIES
from abstraction.op_counts import OpCounts, per_step

LAYERS = 4
SOFTCAPPED = ("gemma2",)
"""Llama-family model types whose logits are softcapped: no staircase (no unembedding)."""
ROTARY_KINDS = (
    "gpt_neox",
    *(kind for kind in FAMILIES["llama"].model_types if kind not in SOFTCAPPED),
)
"""Every model type of the staircase's families but GPT-2 and the softcapped ones."""
SLIDING = {
    "mistral": {"sliding_window": 12},
    "qwen2": {"use_sliding_window": True, "sliding_window": 12, "max_window_layers": 2},
}
"""A window of 12 hides the first keys from the last queries of the 14-token prompts,
while the 11-token ones still reach their first token (as in test_kv_suffix.py)."""
ADAM_ROUNDING = 1e-2
"""How far a trained basis may move from rounding alone (the cells stacked along
positions sum attention over more keys than one cell does): a fraction of one
learning-rate-sized Adam step (lr 5e-2) on near-zero gradient components; a wrong
gradient moves it by far more. 5e-3 held on earlier machines; an AVX-512 FP16 CPU
under the floor versions moved one OLMo-2 basis entry by 5.2e-3."""


def tiny_causal_lm(model_type: str, tokenizer: Any) -> Network:
    """A random causal LM of ``model_type``: width 32, 4 query heads of width 8 and (but
    GPT-NeoX) 2 key/value heads."""
    import transformers

    sizes: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if model_type != "gpt_neox":
        sizes.update(num_key_value_heads=2, head_dim=8)
    config = transformers.AutoConfig.for_model(model_type, **sizes, **SLIDING.get(model_type, {}))
    return Network.from_config(config, seed=0)


@pytest.fixture(scope="module")
def gpt2(bpe_tokenizer: Any, ioi_prompts: Any) -> Network:
    network: Network = ioi_prompts.gpt2(bpe_tokenizer, LAYERS)
    return network


@pytest.fixture(scope="module", params=["gpt2", *ROTARY_KINDS])
def network(request: pytest.FixtureRequest, gpt2: Network, bpe_tokenizer: Any) -> Network:
    """GPT-2, then a tiny network of each other model type the staircase runs on."""
    if request.param == "gpt2":
        return gpt2
    return tiny_causal_lm(request.param, bpe_tokenizer)


def test_every_family_the_staircase_runs_on_is_tested() -> None:
    assert set(staircase.STAIRCASE_FAMILIES) == {"gpt2", "gpt_neox", "llama"}
    for family in staircase.STAIRCASE_FAMILIES:
        assert set(FAMILIES[family].model_types) <= {"gpt2", *ROTARY_KINDS, *SOFTCAPPED}, family


@pytest.mark.parametrize("kind", SOFTCAPPED)
def test_softcapped_logits_are_fitted_cell_by_cell(
    kind: str, bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    network = tiny_causal_lm(kind, bpe_tokenizer)
    task = _task(ioi_prompts, bpe_tokenizer, "left")
    cells = _cells(network, task, "last", ioi_prompts)
    assert "unembedding" in (staircase_unsupported(cells) or "")
    config = TrainingConfig(epochs=1, batch_size=16, seed=0)
    assert "unembedding" in (staircase.fitted_apart(cells, None, "low_rank", config) or "")
    for cell in cells:
        cell.close()


def _cells(
    network: Network, task: PromptTask, position: int | str, ioi_prompts: Any, seed: int = 0
) -> Any:
    data = ioi_prompts.data(80, seed=seed)
    locations = [Location(layer=layer, position=position) for layer in range(LAYERS)]
    return PreparedInterchanges.for_locations(network, task, data, locations, ["s"])


def _task(ioi_prompts: Any, tokenizer: Any, padding: str) -> PromptTask:
    task: PromptTask = ioi_prompts.task(tokenizer, padding)
    return task


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("position", [0, "s.last", "last"], ids=["first", "middle", "last"])
def test_staircase_logits_equal_each_cells_own_suffix(
    network: Network, bpe_tokenizer: Any, ioi_prompts: Any, padding: str, position: int | str
) -> None:
    cells = _cells(network, _task(ioi_prompts, bpe_tokenizer, padding), position, ioi_prompts)
    assert staircase_unsupported(cells) is None
    if position != 0:
        assert cells[0].start > 0
    generator = torch.Generator().manual_seed(3)
    patches = [
        {
            "s": LowRankPatch(
                cell.site.location, torch.linalg.qr(torch.randn(32, 2, generator=generator))[0]
            )
        }
        for cell in cells
    ]
    for chosen in patches:
        chosen["s"].basis.requires_grad_(True)
    rows = torch.arange(5, 61)
    together = staircase_logits(cells, rows, patches)
    torch.stack([logits.logsumexp(-1).sum() for logits in together]).sum().backward()
    stacked_grads = [chosen["s"].basis.grad.clone() for chosen in patches]  # type: ignore[union-attr]
    for cell, chosen, logits, grad in zip(cells, patches, together, stacked_grads, strict=True):
        own = cell.logits(rows, chosen)
        torch.testing.assert_close(logits, own, rtol=1e-5, atol=1e-5)
        # each rotation gets exactly its own cell's gradient (no cell leaks into another)
        chosen["s"].basis.grad = None
        own.logsumexp(-1).sum().backward()
        scale = float(grad.abs().max())
        torch.testing.assert_close(grad, chosen["s"].basis.grad, rtol=1e-4, atol=1e-5 * scale)
        logits, own = logits.detach(), own.detach()
        # the edit matters: an unedited run gives other logits at every layer but the last
        if cell.site.location.layer < LAYERS - 1 or position == "last":
            assert not torch.allclose(logits, cell.logits(rows, None), atol=1e-4)
    # a subset of the cells, in another order, gives the same as the whole staircase
    subset = staircase_logits([cells[2], cells[1]], rows, [patches[2], patches[1]])
    torch.testing.assert_close(subset[0], together[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(subset[1], together[1], rtol=1e-5, atol=1e-5)
    for cell in cells:
        cell.close()


@pytest.mark.parametrize("position", [0, "last"], ids=["first", "last"])
def test_fit_cells_trains_what_each_cell_trains_alone(
    network: Network,
    bpe_tokenizer: Any,
    ioi_prompts: Any,
    position: int | str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = _task(ioi_prompts, bpe_tokenizer, "left")
    cells = _cells(network, task, position, ioi_prompts)
    validation = _cells(network, task, position, ioi_prompts, seed=1)
    config = TrainingConfig(epochs=3, batch_size=16, lr=5e-2, patience=1, seed=4)
    calls = []
    stacked = staircase._run_stacked
    monkeypatch.setattr(
        staircase, "_run_stacked", lambda *a, **k: calls.append(1) or stacked(*a, **k)
    )
    together = reproducible(fit_cells)(
        cells, validation, task, ["s"], method="low_rank", rank=2, config=config
    )
    alone = [
        reproducible(fit)(cell, val, task, ["s"], method="low_rank", rank=2, config=config)
        for cell, val in zip(cells, validation, strict=True)
    ]
    # 16 pairs at one position are small steps (a staircase); at every position not
    steps = config.batch_size * (
        1 if position == "last" else cells[0].base.inputs["input_ids"].shape[1]
    )
    assert (steps <= staircase.SMALL_STEP_ROWS) == (position == "last")
    assert bool(calls) == (position == "last")
    reason = staircase.fitted_apart(cells, validation, "low_rank", config)
    assert (reason is None) == (position == "last")
    if position != "last":
        assert reason is not None and "SMALL_STEP_ROWS" in reason
    assert "cell by cell" in (staircase.fitted_apart(cells, validation, "dbm", config) or "")
    for a, b in zip(together, alone, strict=True):
        assert a.location == b.location
        # equal up to rounding (logits and gradients agree to 1e-5 above), which Adam
        # amplifies where a gradient component is near zero: its step is then about
        # lr * sign(gradient) whatever the gradient's size
        torch.testing.assert_close(a.basis, b.basis, rtol=0, atol=ADAM_ROUNDING)
        assert [e["epoch"] for e in a.curve] == [e["epoch"] for e in b.curve]  # same stopping
        # a validation pair whose two candidate logits are within rounding of each other
        # may flip (one did on an AVX-512 FP16 CPU): at most one pair per entry
        one_pair = 1 / validation[0].rows + 1e-6
        assert [e["val_iia"] for e in a.curve] == pytest.approx(
            [e["val_iia"] for e in b.curve], abs=one_pair
        )
        assert a.config == b.config
    scored = evaluate_cells(together, validation)
    for alignment, cell, hits in zip(together, validation, scored, strict=True):
        assert torch.equal(hits, cell.correct(alignment.interventions()))
    for cell in (*cells, *validation):
        cell.close()


def test_cells_prepared_apart_are_fitted_one_at_a_time(
    network: Network, bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    task = _task(ioi_prompts, bpe_tokenizer, "left")
    data = ioi_prompts.data(40)
    apart = [
        PreparedInterchanges(network, task, data, Location(layer=layer, position="last"), ["s"])
        for layer in (0, 2)
    ]
    assert "prepared together" in (staircase_unsupported(apart) or "")
    config = TrainingConfig(epochs=1, batch_size=16, seed=0)
    fitted = reproducible(fit_cells)(apart, None, task, ["s"], method="low_rank", config=config)
    reference = reproducible(fit)(apart[1], None, task, ["s"], method="low_rank", config=config)
    assert torch.equal(fitted[1].basis, reference.basis)
    heads = PreparedInterchanges.for_locations(
        network,
        task,
        data,
        [Location(layer=1, component="head", head=h, position="last") for h in (0, 1)],
        ["s"],
    )
    assert "not the cached block output" in (staircase_unsupported(heads) or "")


def test_fit_cells_without_epoch_selection_keeps_each_cells_last_epoch(
    network: Network, bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    task = _task(ioi_prompts, bpe_tokenizer, "left")
    cells = _cells(network, task, "last", ioi_prompts)
    config = TrainingConfig(epochs=2, batch_size=16, lr=5e-2, seed=1, select_epoch=False)
    together = reproducible(fit_cells)(cells, None, task, ["s"], method="low_rank", config=config)
    for cell, alignment in zip(cells, together, strict=True):
        alone = reproducible(fit)(cell, None, task, ["s"], method="low_rank", config=config)
        torch.testing.assert_close(alignment.basis, alone.basis, rtol=0, atol=ADAM_ROUNDING)
        assert [e["val_iia"] for e in alignment.curve] == [None, None]
        cell.close()


def test_staircase_needs_attention_that_takes_its_mask(
    network: Network, bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    task = _task(ioi_prompts, bpe_tokenizer, "right")
    cells = _cells(network, task, "last", ioi_prompts)
    generator = torch.Generator().manual_seed(5)
    patches = [
        {"s": LowRankPatch(cell.site.location, torch.randn(32, 1, generator=generator))}
        for cell in cells
    ]
    rows = torch.arange(0, 24)
    module = network.module
    try:
        module.set_attn_implementation("eager")  # type: ignore[operator]
        assert staircase_unsupported(cells) is None
        together = staircase_logits(cells, rows, patches)
        for cell, chosen, logits in zip(cells, patches, together, strict=True):
            torch.testing.assert_close(logits, cell.logits(rows, chosen), rtol=1e-5, atol=1e-5)
        module.config._attn_implementation = "flash_attention_2"  # type: ignore[union-attr]
        assert "block-diagonal mask" in (staircase_unsupported(cells) or "")
    finally:
        module.set_attn_implementation("sdpa")  # type: ignore[operator]
    assert staircase_unsupported(cells) is None
    for cell in cells:
        cell.close()


def test_a_readout_outside_the_suffix_is_refused(
    network: Network, bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    """Stacked, a readout before the suffix would read the neighbouring cell's positions."""
    cells = _cells(network, _task(ioi_prompts, bpe_tokenizer, "left"), "last", ioi_prompts)
    rows = torch.arange(8)
    base = cells[0].base.select(rows)
    stages = []
    for cell in cells:
        hidden, _ = cell.suffix_input(rows, None, base)
        stages.append((cell.cache.cut, hidden))  # type: ignore[union-attr]
    start = cells[0].cache.start  # type: ignore[union-attr]
    past = dict(enumerate(cells[0].cache.past(rows), start=1))  # type: ignore[union-attr]
    assert len(run_staircase(network, base, stages, start=start, past=past)) == LAYERS
    assert base.readout is not None
    before = dataclasses.replace(base, readout=base.readout - 1)  # before the suffix
    with pytest.raises(AlignmentError, match="outside the suffix"):
        run_staircase(network, before, stages, start=start, past=past)
    for cell in cells:
        cell.close()


def test_a_staircase_step_reads_nothing_back_and_its_rotations_cost_the_same_for_any_count(
    gpt2: Network, bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    """What a GPU pays per training step: no host read (positions, readouts and the NaN
    check are settled outside the step) and one batched parametrisation for all cells."""
    task = _task(ioi_prompts, bpe_tokenizer, "left")
    config = TrainingConfig(epochs=1, batch_size=8, seed=0, select_epoch=False)
    # an epoch of 2 batches of 8 and one of 4: their difference is 2 steps
    prepared = {
        batches: PreparedInterchanges.for_locations(
            gpt2,
            task,
            ioi_prompts.data(8 * batches, seed=batches),
            [Location(layer=layer, position="last") for layer in range(LAYERS)],
            ["s"],
        )
        for batches in (2, 4)
    }

    def per_step_of(count: int) -> OpCounts:
        def run(batches: int) -> None:
            cells = prepared[batches][:count]
            assert staircase.fitted_apart(cells, None, "low_rank", config) is None
            fit_cells(cells, None, task, ["s"], method="low_rank", config=config)

        return per_step(run, 2, 2)

    fewer, every = per_step_of(2), per_step_of(LAYERS)
    assert fewer.host_reads == 0 and every.host_reads == 0
    assert every.operations > fewer.operations  # the count sees the extra cells' work
    # the rotations' parametrisation runs once for all cells: another cell adds its
    # blocks and its edit, never another Householder product
    assert fewer.by_operation["linalg_householder_product"] == 1
    assert every.by_operation["linalg_householder_product"] == 1
    for cells in prepared.values():
        for cell in cells:
            cell.close()


def test_rotation_stack_gives_each_rotation_its_weight_and_its_gradient() -> None:
    generator = torch.Generator().manual_seed(0)
    rotations = [LearnedRotation(16, 3, generator) for _ in range(4)]
    with torch.no_grad():
        for rotation in rotations:
            original = rotation.parametrizations.weight.original
            original.add_(0.1 * torch.randn(original.shape, generator=generator))
    stacked = LearnedRotationStack(rotations).weights()
    torch.testing.assert_close(stacked, torch.stack([r.weight for r in rotations]))
    probe = torch.randn(stacked.shape, generator=generator)
    (stacked * probe).sum().backward()
    together = [r.parametrizations.weight.original.grad.clone() for r in rotations]
    for rotation, grad, direction in zip(rotations, together, probe, strict=True):
        rotation.zero_grad()
        (rotation.weight * direction).sum().backward()
        torch.testing.assert_close(grad, rotation.parametrizations.weight.original.grad)


def test_training_rows_move_to_the_device_as_one_copy_and_give_the_same_logits(
    gpt2: Network, bpe_tokenizer: Any, ioi_prompts: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device-resident path, run here with the CPU standing in for the device (the
    GPU test compares trained bases on a real one)."""
    assert device_budget(torch.device("cpu")) == 0  # host memory is the CPU's device
    monkeypatch.setenv(DEVICE_BUDGET_VARIABLE, "1GiB")
    assert device_budget(torch.device("meta")) == 2**30
    monkeypatch.setenv(DEVICE_BUDGET_VARIABLE, "lots")
    with pytest.raises(AbstractionError, match="512MiB, 4GiB"):
        device_budget(torch.device("meta"))
    task = _task(ioi_prompts, bpe_tokenizer, "left")
    cells = _cells(gpt2, task, "last", ioi_prompts)
    cpu = torch.device("cpu")
    assert cells[1].cache is not None and cells[1].cache.on_device(cpu) is None  # shared
    order = torch.randperm(cells[1].rows, generator=torch.Generator().manual_seed(0))
    view = cells[1].reordered(order)
    moved = cells[1].reordered(order)
    assert view.cache is not None and moved.cache is not None
    moved._move_to(cpu)
    assert moved.cache.on_device(cpu) is not None  # a view copied in order can move
    rows = slice(3, 19)
    chosen = {"s": LowRankPatch(cells[1].site.location, torch.eye(gpt2.width or 0)[:, :2])}
    torch.testing.assert_close(moved.logits(rows, chosen), view.logits(rows, chosen))
    # a cache on disk is read through the permutation: it stays where it is
    on_disk = PreparedInterchanges(
        gpt2,
        task,
        ioi_prompts.data(40),
        Location(layer=1, position="last"),
        ["s"],
        memory_budget=0,
    )
    assert on_disk.cache is not None and on_disk.cache.storage == "disk"
    shuffled = on_disk.reordered(torch.arange(40).flip(0))
    assert shuffled.cache is not None and shuffled.cache.on_device(cpu) is None
    before = shuffled.cache
    shuffled._move_to(cpu)
    assert shuffled.cache is before
    for cell in (*cells, on_disk):
        cell.close()
