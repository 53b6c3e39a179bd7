"""The zoo language model: saved like a downloaded one, and it solves its tasks on unseen words.

Every check here reads the cached directory the way a user's checkpoint is read
(``AutoModelForCausalLM`` / ``AutoTokenizer``) and scores fresh prompts, independently
of the numbers the zoo recorded when it trained the model.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from abstraction import corpus, zoo
from abstraction.errors import AbstractionError
from abstraction.network import Network

NAME = "tiny_lm"


@pytest.fixture(scope="module")
def lm() -> tuple[Any, Any]:
    """The model and tokenizer, loaded from the zoo directory as a real checkpoint is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    zoo.load(NAME)  # trains once, then the cache serves every test run
    directory = str(zoo.path(NAME))
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    return model, AutoTokenizer.from_pretrained(directory)


def test_the_directory_is_a_hugging_face_checkpoint(lm: tuple[Any, Any]) -> None:
    model, tokenizer = lm
    directory = zoo.path(NAME)
    for file in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (directory / file).is_file(), file
    assert type(model).__name__ == "GPT2LMHeadModel"
    assert tokenizer.pad_token == zoo.PAD and tokenizer.eos_token == zoo.EOS
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert Network.from_pretrained(directory).hash == zoo.load(NAME).hash
    assert zoo.tokenizer(NAME).get_vocab() == tokenizer.get_vocab()
    recorded = json.loads((directory / "zoo.json").read_text())
    assert recorded["key"] == zoo._entry(NAME).key(0) and recorded["train_seconds"] > 0


def test_the_tokenizer_splits_every_word_into_several_tokens(lm: tuple[Any, Any]) -> None:
    _, tokenizer = lm
    words = corpus.NAMES + corpus.CONTAINERS + corpus.OBJECTS
    for word in words:
        pieces = tokenizer.tokenize(" " + word)
        assert len(pieces) >= 2, (word, pieces)
        # the first token holds the word's first letter, never a bare space
        assert pieces[0] != "Ġ" and pieces[0][1].lower() == word[0].lower(), (word, pieces)
    heldout = corpus.HELDOUT_NAMES + corpus.HELDOUT_CONTAINERS + corpus.HELDOUT_OBJECTS
    assert all(len(tokenizer(" " + w)["input_ids"]) >= 2 for w in heldout)


def _accuracy(model: Any, tokenizer: Any, examples: list[corpus.Example], side: str) -> float:
    """Candidate accuracy, written apart from the zoo's: the answer's first token must
    beat every other candidate's first token at the prompt's last position."""
    tokenizer.padding_side = side
    try:
        batch = tokenizer([e.prompt for e in examples], padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = "right"
    if side == "left":
        last = torch.full((len(examples),), batch["input_ids"].shape[1] - 1)
    else:
        last = batch["attention_mask"].sum(1) - 1
    with torch.no_grad():
        logits = model(**batch).logits[torch.arange(len(examples)), last]
    right = 0
    for row, example in zip(logits, examples, strict=True):
        first = {c: tokenizer(c)["input_ids"][0] for c in example.candidates}
        assert len(set(first.values())) == len(first), example  # candidates are distinct
        target = row[first[example.answer]]
        right += all(target > row[t] for c, t in first.items() if c != example.answer)
    return right / len(examples)


@pytest.mark.parametrize("task", ["ioi", "binding"])
def test_solves_its_tasks_on_heldout_words(lm: tuple[Any, Any], task: str) -> None:
    model, tokenizer = lm
    examples = corpus.examples(task, 600, split="heldout", seed=2024)  # type: ignore[arg-type]
    assert _accuracy(model, tokenizer, examples, "right") >= 0.95
    # trained with jittered positions, so left padding (positions shifted) reads the same
    assert _accuracy(model, tokenizer, examples, "left") >= 0.95
    assert zoo.metrics(NAME)[f"{task}_heldout_accuracy"] >= 0.95


def test_candidate_accuracy_agrees_with_a_direct_count(lm: tuple[Any, Any]) -> None:
    model, tokenizer = lm
    examples = corpus.examples("ioi", 200, split="heldout", seed=7)
    assert zoo.candidate_accuracy(model, tokenizer, examples) == _accuracy(
        model, tokenizer, examples, "right"
    )


def test_a_language_model_has_no_fixed_task_and_others_no_tokenizer() -> None:
    with pytest.raises(AbstractionError, match=r"zoo\.tokenizer"):
        zoo.task(NAME)
    with pytest.raises(AbstractionError, match="has no tokenizer"):
        zoo.tokenizer("addition_gpt2")


def test_the_cache_key_covers_the_corpus() -> None:
    entry = zoo._entry(NAME)
    assert entry.config["corpus"] == corpus.fingerprint()
