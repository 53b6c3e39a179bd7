"""Sources of a causal language model are collected from the prompt's prefix only.

Nothing at position ``p`` of a causal LM depends on later tokens, so preparing
interchanges runs each source chunk only up to the last position a site reads. These
tests check that the activations are the ones a whole-sequence pass gives, for GPT-2,
GPT-NeoX and Llama with left and right padding, at positions counted from the start,
a named token and positions counted from the end (which must not be cut).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

from abstraction import Location, Network
from abstraction.alignment.prepared import _causal_prefix, _collect
from abstraction.locations import resolve
from abstraction.runtime import collect

TEMPLATES = (
    "When {a} and {b} went to the store, {s} gave a drink to",
    "Then {a} and {b} had fun at the lake for a long time. {s} handed it to",
)


def _network(family: str, tokenizer: Any) -> Network:
    ids = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    small = {
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    }
    if family == "gpt2":
        config: Any = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, **ids)
    elif family == "gpt_neox":
        config = GPTNeoXConfig(**small, **ids)
    else:
        config = LlamaConfig(**small, num_key_value_heads=2, **ids)
    return Network.from_config(config, seed=0)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize(
    ("position", "cut"),
    [(0, True), ("a.last", True), ("s.last", True), ("last", None), (-3, None)],
    ids=["first", "a", "s", "last", "third-from-end"],
)
def test_sources_from_the_prefix_equal_whole_sequences(
    family: str,
    padding: str,
    position: int | str,
    cut: bool | None,
    bpe_tokenizer: Any,
    ioi_prompts: Any,
) -> None:
    network = _network(family, bpe_tokenizer)
    task = ioi_prompts.task(bpe_tokenizer, padding, TEMPLATES)
    data = ioi_prompts.data(48)
    batch = task.batch(data, "source.s.")
    sites = [
        resolve(network, Location(layer=0, position=position)),
        resolve(network, Location(layer=1, component="head", head=2, position=position)),
    ]
    length = batch.inputs["input_ids"].shape[1]
    shortened = _causal_prefix(network, batch, sites)
    shorter = shortened.inputs["input_ids"].shape[1] < length
    if cut is not None:
        assert shorter  # the two templates differ in length, so the tail is cut
    elif padding == "left":
        assert not shorter  # counted from the end: nothing may be cut
    found = _collect(network, batch, sites, batch_size=20)
    whole = collect(network, batch, [site.location for site in sites])
    for mine, reference in zip(found, whole, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-6)


def test_networks_that_are_not_causal_lms_are_never_cut(
    bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=len(bpe_tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        pad_token_id=bpe_tokenizer.pad_token_id,
    )
    network = Network.from_config(config, seed=0)
    task = ioi_prompts.task(bpe_tokenizer, templates=TEMPLATES)
    batch = task.batch(ioi_prompts.data(8), "source.s.")
    sites = [resolve(network, Location(layer=0, position=0))]
    assert _causal_prefix(network, batch, sites) is batch
    assert np.isfinite(_collect(network, batch, sites, 4)[0].numpy()).all()
