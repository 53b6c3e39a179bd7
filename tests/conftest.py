"""Shared fixtures: small networks built from configs, and zoo networks trained once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Zoo networks are trained once and reused across test runs (and xdist workers, which
# share the cache through a file lock).
os.environ.setdefault("ABSTRACTION_CACHE", str(ROOT / ".cache" / "abstraction"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers share the cores: one thread each, or the small-tensor ops of
    # alignment training spin-wait against each other and run many times slower.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def he_network():  # type: ignore[no-untyped-def]
    from abstraction import zoo

    return zoo.load("hierarchical_equality_mlp")


@pytest.fixture(scope="session")
def he_task():  # type: ignore[no-untyped-def]
    from abstraction import zoo

    return zoo.task("hierarchical_equality_mlp")


@pytest.fixture(scope="session")
def he_pairs(he_task):  # type: ignore[no-untyped-def]
    """Hierarchical-equality pairs over {wx}, {yz}, {wx, yz}, split by base (train, val, test)."""
    from abstraction import counterfactual_dataset
    from abstraction.counterfactuals import split_by_base

    data = counterfactual_dataset(
        he_task.model,
        60_000,
        [["wx"], ["yz"], ["wx", "yz"]],
        sampler="output",
        source_sampler="value",
        seed=0,
    )
    return split_by_base(data, (0.8, 0.1, 0.1), seed=0)


@pytest.fixture(scope="session")
def addition_network():  # type: ignore[no-untyped-def]
    from abstraction import zoo

    return zoo.load("addition_gpt2")


@pytest.fixture(scope="session")
def addition_task():  # type: ignore[no-untyped-def]
    from abstraction import zoo

    return zoo.task("addition_gpt2")


@pytest.fixture
def small_gpt2():  # type: ignore[no-untyped-def]
    from transformers import GPT2Config

    from abstraction.network import Network

    config = GPT2Config(
        n_layer=3,
        n_embd=32,
        n_head=4,
        vocab_size=20,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
        architectures=["GPT2LMHeadModel"],
    )
    return Network.from_config(config, seed=0)


@pytest.fixture
def small_mlp():  # type: ignore[no-untyped-def]
    from abstraction.network import import_pyvene

    import_pyvene()
    from pyvene.models.mlp.modelings_mlp import MLPConfig

    from abstraction.network import Network

    config = MLPConfig(h_dim=16, n_layer=3, num_classes=2, activation_function="relu", pdrop=0.0)
    return Network.from_config(config, seed=0)


TOKENIZER_NAMES = ("Mary", "John", "Anna", "Kasimir", "Bob", "Theodora")


@pytest.fixture(scope="session")
def tokenizer_corpus() -> list[str]:
    """A small corpus of prompts with names, containers and objects (for test tokenizers)."""
    import itertools

    lines = []
    for a, b in itertools.permutations(TOKENIZER_NAMES, 2):
        lines.append(f"When {a} and {b} went to the store, {a} gave a drink to {b}")
        lines.append(f"Then {a} and {b} had fun. {b} handed it to {a}")
    for c, o in itertools.product(("box", "bag", "jar"), ("apple", "key", "coin")):
        lines.append(f"The {c} contains the {o}. It is yes or no")
    return lines * 3


@pytest.fixture(scope="session")
def bpe_tokenizer(tokenizer_corpus):  # type: ignore[no-untyped-def]
    """A GPT-2-style byte-level BPE trained on ``tokenizer_corpus`` (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(tokenizer_corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")


class IOIPrompts:
    """The IOI causal model over six names, its prompt templates and a distinct-name
    sampler, shared by the prompt tests (kv suffix, staircase, source prefix, multi-site)."""

    names = TOKENIZER_NAMES
    templates = (
        "When {a} and {b} went to the store, {s} gave a drink to",
        "Then {a} and {b} had fun. {s} handed it to",
    )

    def __init__(self) -> None:
        from abstraction import causal_model

        @causal_model(inputs={"a": self.names, "b": self.names, "s_first": (True, False)})
        def ioi(a, b, s_first):  # type: ignore[no-untyped-def]
            s = a if s_first else b
            other = s != a  # is the indirect object the first name?
            io = a if other else b
            return io

        self.model = ioi

    def sample(self, rng, n):  # type: ignore[no-untyped-def]
        """Two distinct names per row and which of them is the subject."""
        import numpy as np

        pairs = np.array([(x, y) for x in self.names for y in self.names if x != y])
        chosen = pairs[rng.integers(len(pairs), size=n)]
        return {"a": chosen[:, 0], "b": chosen[:, 1], "s_first": rng.random(n) < 0.5}

    def data(self, n: int, seed: int = 0):  # type: ignore[no-untyped-def]
        """``n`` counterfactual pairs intervening on ``s``."""
        from abstraction import counterfactual_dataset

        return counterfactual_dataset(
            self.model, n, [["s"]], sampler=self.sample, source_sampler=self.sample, seed=seed
        )

    def gpt2(self, tokenizer, layers):  # type: ignore[no-untyped-def]
        """A random GPT-2 (width 32, 4 heads) over ``tokenizer``'s vocabulary."""
        from transformers import GPT2Config

        from abstraction.network import Network

        config = GPT2Config(
            n_layer=layers,
            n_embd=32,
            n_head=4,
            n_positions=64,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        )
        return Network.from_config(config, seed=0)

    def task(self, tokenizer, padding=None, templates=None):  # type: ignore[no-untyped-def]
        """A prompt task reading the answer over the two names."""
        from abstraction import PromptTask

        return PromptTask(
            "ioi",
            self.model,
            tokenizer,
            templates or self.templates,
            candidates=("a", "b"),
            padding=padding,
        )


@pytest.fixture(scope="session")
def ioi_prompts() -> IOIPrompts:
    """See :class:`IOIPrompts`."""
    return IOIPrompts()
