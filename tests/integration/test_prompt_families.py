"""One PromptTask experiment, end to end, on every supported language-model family.

Each model is built from a config with random weights, saved with ``save_pretrained``
beside a tokenizer, and loaded from its directory the way a downloaded checkpoint is.
No accuracy is asked: the pipeline, positions, heads, padding and the candidate
readout must work on every family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    Qwen2Config,
)

from abstraction import (
    Experiment,
    Location,
    Network,
    PromptTask,
    TrainingConfig,
    causal_model,
    results_schema,
    run,
)

NAMES = ("Mary", "John", "Anna", "Kasimir", "Bob", "Theodora")
TEMPLATES = (
    "When {a} and {b} went to the store, {s} gave a drink to",
    "Then {a} and {b} had fun. {s} handed it to",
)


@causal_model(inputs={"a": NAMES, "b": NAMES, "s_first": (True, False)})
def ioi(a, b, s_first):  # type: ignore[no-untyped-def]
    s = a if s_first else b
    io = b if s == a else a
    return io


def distinct_names(rng: np.random.Generator, n: int) -> dict[str, Any]:
    pairs = np.array([(x, y) for x in NAMES for y in NAMES if x != y])
    chosen = pairs[rng.integers(len(pairs), size=n)]
    return {"a": chosen[:, 0], "b": chosen[:, 1], "s_first": rng.random(n) < 0.5}


def _config(family: str, vocab: int, pad: int, eos: int) -> Any:
    ids = {"vocab_size": vocab, "pad_token_id": pad, "bos_token_id": eos, "eos_token_id": eos}
    small = {
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    }
    if family == "gpt2-small":  # GPT-2-small's shape: 12 layers, width 768, 12 heads
        return GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=64, **ids)
    if family == "gpt2":
        return GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, **ids)
    if family == "gpt_neox":
        return GPTNeoXConfig(**small, **ids)
    if family == "llama":
        return LlamaConfig(**small, num_key_value_heads=2, **ids)
    if family == "qwen2":
        return Qwen2Config(**small, num_key_value_heads=2, **ids)
    return GemmaConfig(**small, num_key_value_heads=1, head_dim=8, **ids)


CASES = [
    pytest.param(
        "gpt2-small",
        "left",
        Location(layer=6, component="head", head=11, position="s.last"),
        marks=pytest.mark.slow,  # about a minute on 2 cores; .ci/run runs slow tests
    ),
    ("gpt2", "left", Location(layer=0, component="head", head=1, position="s.last")),
    ("gpt_neox", "right", Location(layer=1, position="s.last")),
    ("llama", "left", Location(layer=1, component="mlp_output", position="last")),
    ("qwen2", "right", Location(layer=0, component="head", head=3, position="last")),
    ("gemma", "left", Location(layer=1, component="attention_output", position="b.first")),
]


@pytest.mark.parametrize(("model_type", "padding", "location"), CASES)
def test_prompt_experiment_runs_on_every_family(
    model_type: str, padding: str, location: Location, bpe_tokenizer: Any, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    bpe_tokenizer.save_pretrained(tmp_path)
    # the tokenizer as a user loads it (a family's tokenizer class may add special tokens)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    config = _config(model_type, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)

    network = Network.from_pretrained(tmp_path)
    family = {"qwen2": "llama", "gemma": "llama", "gpt2-small": "gpt2"}.get(model_type, model_type)
    assert network.family == family
    task = PromptTask("ioi", ioi, tokenizer, TEMPLATES, candidates=("a", "b"), padding=padding)
    experiment = Experiment(
        name=f"ioi-{model_type}",
        model=ioi,
        task=task,
        network=tmp_path,  # a local directory, as for a downloaded checkpoint
        variables=["s"],
        location=location,
        pairs=400,
        sampler=distinct_names,
        source_sampler=distinct_names,
        training=TrainingConfig(epochs=1),
        baselines=("random_subspace", "untrained"),
    )
    result = run(experiment)

    data = json.loads(result.to_json())
    jsonschema.validate(data, results_schema())
    assert data["config"]["location"]["position"] == location.position
    # Every readout is over the prompt's two candidate names, so IIA and the untrained
    # null are rates over two answers, never an argmax over the whole vocabulary
    # (which a random network would almost never hit).
    untrained = next(b for b in data["baselines"] if b["name"] == "untrained")
    assert 0.15 < untrained["iia"] < 0.85
    assert 0.15 < data["behavior"]["accuracy"] < 0.85
