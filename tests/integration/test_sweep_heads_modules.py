"""Sweeps over attention heads, and over submodule-path patterns on a network of no family."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from transformers import GPT2Config

from abstraction import (
    Batch,
    Experiment,
    Network,
    PromptTask,
    Search,
    Task,
    TrainingConfig,
    causal_model,
    counterfactual_dataset,
    run,
    split_by_base,
    sweep,
)
from abstraction.locations import LocationError

NAMES = ("Mary", "John", "Anna", "Kasimir", "Bob", "Theodora")


@causal_model(inputs={"a": NAMES, "b": NAMES, "s_first": (True, False)})
def ioi(a, b, s_first):  # type: ignore[no-untyped-def]
    s = a if s_first else b
    io = b if s == a else a
    return io


def distinct_names(rng: np.random.Generator, n: int) -> dict[str, Any]:
    pairs = np.array([(x, y) for x in NAMES for y in NAMES if x != y])
    chosen = pairs[rng.integers(len(pairs), size=n)]
    return {"a": chosen[:, 0], "b": chosen[:, 1], "s_first": rng.random(n) < 0.5}


def test_head_sweep_tries_every_requested_head_and_resumes(
    bpe_tokenizer: Any, tmp_path: Path
) -> None:
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        n_positions=64,
        vocab_size=len(bpe_tokenizer),
        pad_token_id=bpe_tokenizer.pad_token_id,
    )
    network = Network.from_config(config, seed=0)
    task = PromptTask(
        "ioi",
        ioi,
        bpe_tokenizer,
        "Then {a} and {b} had fun. {s} handed it to",
        candidates=("a", "b"),
    )
    data = counterfactual_dataset(
        ioi, 600, [["s"]], sampler=distinct_names, source_sampler=distinct_names, seed=0
    )
    train, validation, test = split_by_base(data, (0.6, 0.2, 0.2), seed=0)
    finished: list[Any] = []
    kwargs: dict[str, Any] = {
        "layers": [0, 1],
        "positions": ["s.last", "last"],
        "components": ["head", "residual"],
        "heads": [0, 3],
        "config": TrainingConfig(epochs=1),
        "test": test,
        "directory": tmp_path,
        "progress": lambda cell, iia: finished.append(cell),
    }
    result = sweep(network, task, train, validation, ["s"], **kwargs)
    cells = result.cells
    assert len(cells) == 2 * 2 * (2 + 1)  # layers x positions x (two heads + residual)
    heads = cells.loc[cells["component"] == "head", "head"]
    assert sorted(set(heads)) == [0, 3]
    assert cells.loc[cells["component"] == "residual", "head"].isna().all()
    assert len(finished) == len(cells)
    assert result.alignment.location == result.best.location

    finished.clear()
    again = sweep(network, task, train, validation, ["s"], **kwargs)
    assert finished == []  # every cell, heads included, was read back
    assert again.best == result.best


def test_heads_can_be_swept_at_their_own_positions() -> None:
    config = GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=64, vocab_size=50)
    network = Network.from_config(config, seed=0)
    from abstraction.alignment.sweep import planned_cells

    common = {"layers": [1, 2], "components": ["residual", "head"], "ranks": [1, 2]}
    everywhere = planned_cells(network, positions=["s.last", "last"], **common)
    assert everywhere == 2 * 2 * (1 + 4) * 2  # layers x positions x (residual + heads) x ranks
    at_last = planned_cells(
        network, positions=["s.last", "last"], head_positions=["last"], **common
    )
    assert at_last == 2 * (2 * 1 + 1 * 4) * 2  # residual at both positions, heads at one
    some_layers = planned_cells(
        network, positions=["s.last", "last"], head_positions=["last"], head_layers=[2], **common
    )
    assert some_layers == (2 * 2 * 1 + 1 * 1 * 4) * 2  # heads in layer 2 only
    only_heads = planned_cells(
        network, layers=[0], components=["head"], positions=["last"], head_layers=[1, 2]
    )
    assert only_heads == 2 * 4  # head_layers replaces layers for the head component


def test_a_quick_run_thins_a_sweep_over_every_layer_of_a_deep_network(
    bpe_tokenizer: Any,
) -> None:
    from abstraction.experiment import QUICK_LAYERS, _quick_layers

    task = PromptTask(
        "ioi", ioi, bpe_tokenizer, "Then {a} and {b} ran. {s} gave it to", candidates=("a", "b")
    )
    every = Experiment(
        "x", ioi, task, "tiny_lm", ["s"], search=Search(positions=["last"], ranks=[1])
    )
    thinned, layers = _quick_layers(every, 30)
    assert len(layers) == QUICK_LAYERS and layers == sorted(set(layers))
    assert layers[0] >= 0 and layers[-1] < 30 and layers[-1] - layers[0] >= 20  # spread out
    assert isinstance(thinned.search, Search) and list(thinned.search.layers or []) == layers
    assert _quick_layers(every, 6) == (every, [])  # shallow networks keep every layer
    chosen = replace(every, search=Search(layers=[3, 4], positions=["last"]))
    assert _quick_layers(chosen, 30) == (chosen, [])  # layers the user chose are kept


class Blocks(nn.Module):
    """A network of no known family: two residual blocks, called with ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 16)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(2))
        self.out = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


DIGITS = range(10)


@causal_model(inputs={"a": DIGITS, "b": DIGITS, "c": DIGITS})
def big_sum(a, b, c):  # type: ignore[no-untyped-def]
    ab = a + b
    big = ab + c >= 14
    return big


class DigitsTask(Task):
    def __init__(self) -> None:
        self.name, self.model = "digits", big_sum

    @property
    def n_classes(self) -> int:
        return 2

    def encode(self, columns: Any) -> Batch:
        x = np.stack([columns[v] for v in self.model.inputs], axis=1)
        return Batch({"x": torch.tensor(x, dtype=torch.float32) / 9})

    def label_ids(self, values: Any, inputs: Any = None) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.int64))


def test_module_patterns_search_any_network() -> None:
    torch.manual_seed(0)
    network = Network.wrap(Blocks(), name="blocks")
    experiment = Experiment(
        name="blocks",
        model=big_sum,
        task=DigitsTask(),
        network=network,
        variables=["ab"],
        search=Search(
            layers=[0, 1], components=(), modules=["blocks.{layer}", "blocks.{layer}:input"]
        ),
        pairs=2000,
        training=TrainingConfig(epochs=1),
        baselines=("random_subspace",),
    )
    result = run(experiment)
    paths = [cell.path for cell in result.sweep.cells]  # type: ignore[union-attr]
    assert paths == ["blocks.0", "blocks.0", "blocks.1", "blocks.1"]
    location = result.config.location
    assert location.path in ("blocks.0", "blocks.1") and location.hook in ("input", "output")
    assert result.sweep.chosen.path == location.path  # type: ignore[union-attr]


def test_module_pattern_without_a_layer_field_is_refused() -> None:
    network = Network.wrap(Blocks(), name="blocks")
    data = counterfactual_dataset(big_sum, 100, [["ab"]], seed=0)
    with pytest.raises(LocationError, match="no \\{layer\\} field"):
        sweep(
            network, DigitsTask(), data, data, ["ab"], layers=[0], components=(), modules=["embed"]
        )
    with pytest.raises(LocationError, match="give layers="):
        sweep(network, DigitsTask(), data, data, ["ab"], components=(), modules=["blocks.{layer}"])
