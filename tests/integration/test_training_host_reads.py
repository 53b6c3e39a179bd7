"""Training loops read nothing back per step: losses add up where they are computed and
are read once an epoch (on a GPU, each read would make the host wait every step)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from abstraction import Location, PreparedInterchanges, TrainingConfig
from abstraction.alignment.das import fit, reproducible
from abstraction.alignment.staircase import fit_cells, fitted_apart
from abstraction.op_counts import per_step

BATCH = 8


@pytest.fixture(scope="module")
def cells(bpe_tokenizer: Any, ioi_prompts: Any) -> dict[int, list[PreparedInterchanges]]:
    """The 4 layers' cells at the last token, over 2 and over 4 batches of pairs."""
    network = ioi_prompts.gpt2(bpe_tokenizer, 4)
    task = ioi_prompts.task(bpe_tokenizer, "left")
    data = ioi_prompts.data(4 * BATCH)
    locations = [Location(layer=layer, position="last") for layer in range(4)]
    return {
        n: PreparedInterchanges.for_locations(
            network, task, data.iloc[: n * BATCH], locations, ["s"]
        )
        for n in (2, 4)
    }


CONFIG = TrainingConfig(epochs=1, batch_size=BATCH, select_epoch=False)


def test_a_staircase_step_reads_no_loss(
    cells: dict[int, list[PreparedInterchanges]], bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    task = ioi_prompts.task(bpe_tokenizer, "left")
    assert fitted_apart(cells[2], None, "das", CONFIG) is None  # it trains as a staircase

    def run(batches: int) -> None:
        reproducible(fit_cells)(
            cells[batches], None, task, ["s"], method="das", rank=1, config=CONFIG
        )

    step = per_step(run, 2, 2)
    losses = {k: v for k, v in step.by_host_read.items() if k in ("__float__", "item")}
    assert losses == {}, step.by_host_read
    assert step.operations > 0


@pytest.mark.parametrize("method", ["das", "boundless", "dbm"])
def test_a_cell_step_reads_no_loss(
    method: str,
    cells: dict[int, list[PreparedInterchanges]],
    bpe_tokenizer: Any,
    ioi_prompts: Any,
) -> None:
    task = ioi_prompts.task(bpe_tokenizer, "left")

    def run(batches: int) -> None:
        # masks score every epoch (they keep the best); one epoch either way
        config = replace(CONFIG, select_epoch=method == "dbm")
        rank = None if method == "dbm" else 1
        cell = cells[batches][1]
        reproducible(fit)(cell, None, task, ["s"], method=method, rank=rank, config=config)

    step = per_step(run, 2, 2)
    assert not {"__float__", "item"} & set(step.by_host_read), step.by_host_read


def test_a_non_finite_loss_still_stops_training(
    cells: dict[int, list[PreparedInterchanges]], bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    from abstraction.alignment.result import AlignmentError

    task = ioi_prompts.task(bpe_tokenizer, "left")
    with pytest.raises(AlignmentError, match=r"loss of cell .* became nan in epoch 0"):
        reproducible(fit_cells)(
            cells[2], None, task, ["s"], method="das", rank=1, config=replace(CONFIG, lr=1e30)
        )
