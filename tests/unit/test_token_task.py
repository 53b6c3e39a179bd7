"""TokenTask reads out over its answers' tokens and refuses answers that share one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abstraction import DeclarationError, TokenTask, causal_model

VOCAB = ["<pad>", "0", "1", "2", "+", "="]


@causal_model(inputs={"a": range(2), "b": range(2)})
def add(a, b):  # type: ignore[no-untyped-def]
    total = a + b
    return total


def test_the_readout_is_over_the_answer_tokens_only() -> None:
    task = TokenTask("add", add, template=["a", "+", "b", "="], vocab=VOCAB)
    assert task.n_classes == 3  # the output values 0, 1, 2, not the 6-token vocabulary
    assert task.answer_ids.tolist() == [1, 2, 3]
    batch = task.encode({"a": np.array([0, 1]), "b": np.array([1, 1])})
    assert batch.candidates is not None and torch.equal(batch.candidates, task.answer_ids)
    assert task.label_ids(np.array([2, 0])).tolist() == [2, 0]  # class indices


def test_answers_that_share_a_token_are_refused() -> None:
    with pytest.raises(DeclarationError, match="cannot tell"):
        TokenTask(
            "add",
            add,
            template=["a", "+", "b", "="],
            vocab=VOCAB,
            labels_map={0: "0", 1: "1", 2: "1"},
        )
