"""align/verify give the same numbers whatever the caller's thread count and RNG state,
and leave both as the caller set them."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from abstraction import Location, TrainingConfig, align, counterfactual_dataset, verify
from abstraction.counterfactuals import split_by_base
from abstraction.network import Network
from abstraction.task import Task


@pytest.fixture
def caller_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_align_ignores_the_callers_thread_count(
    addition_network: Network, addition_task: Task, caller_threads: None
) -> None:
    # GPT-2's CPU matmuls sum in a thread-dependent order: without a fixed thread count
    # the rotation trained with 1 and 2 threads differs in its last bits
    data = counterfactual_dataset(addition_task.model, 2000, [["carry"]], sampler="value", seed=0)
    train, validation = split_by_base(data, (0.7, 0.3), seed=0)
    config = TrainingConfig(epochs=2, batch_size=256, lr=1e-2)
    bases, curves = [], []
    for caller in (1, 2):
        torch.set_num_threads(caller)
        alignment = align(
            addition_network,
            addition_task,
            train,
            Location(layer=1, position=4),
            ["carry"],
            rank=1,
            validation=validation,
            config=config,
        )
        assert torch.get_num_threads() == caller  # restored
        bases.append(alignment.basis)
        curves.append([(c["loss"], c["val_iia"]) for c in alignment.curve])
    assert torch.equal(bases[0], bases[1])
    assert curves[0] == curves[1]


def test_verify_is_reproducible_and_leaves_the_global_rng(
    he_network: Network, he_task: Task, caller_threads: None
) -> None:
    data = counterfactual_dataset(he_task.model, 3000, [["wx"], ["yz"], ["wx", "yz"]], seed=0)
    train, validation, test = split_by_base(data, (0.6, 0.2, 0.2), seed=0)
    outcomes = []
    for caller, seed in ((1, 0), (2, 123)):
        torch.set_num_threads(caller)
        torch.manual_seed(seed)
        state = torch.get_rng_state()
        result = verify(
            he_network,
            he_task,
            train,
            validation,
            test,
            Location(layer=0),
            ["wx", "yz"],
            config=TrainingConfig(epochs=1, batch_size=512, lr=1e-2),
            baselines=("random_subspace", "untrained"),
            seeds=2,
        )
        assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
        assert torch.get_num_threads() == caller
        outcomes.append(result)
    first, second = outcomes
    assert torch.equal(first.alignment.basis, second.alignment.basis)  # type: ignore[arg-type]
    assert np.array_equal(first.correct.numpy(), second.correct.numpy())
    assert first.verdict == second.verdict and first.overall == second.overall
    assert first.variables == second.variables  # IIA, CIs, baselines, p-values
    for a, b in zip(first.baselines, second.baselines, strict=True):
        assert a.name == b.name and torch.equal(a.correct, b.correct)
