"""The zoo: small reference networks trained here, deterministically, and cached.

No pretrained weights can be downloaded where this library is developed and tested,
so examples and tests use networks trained on the spot from a config and a seed:

* ``hierarchical_equality_mlp``: pyvene's tutorial MLP (16-dim input of four 4-dim
  entity vectors, 3 layers of width 16, ReLU) trained on hierarchical equality;
* ``addition_gpt2``: a 2-layer GPT-2 predicting the tens digit of a two-digit sum,
  whose algorithm has a known intermediate variable (the carry);
* ``lookup_gpt2``: a 2-layer GPT-2 that reads three name-digit pairs and a query and
  outputs the queried name's digit, a positional task that needs attention (the
  intermediate variable is the index of the matching pair).

Each network is saved with ``save_pretrained`` (safetensors + config.json) under the
cache directory (``ABSTRACTION_CACHE`` or the user cache dir), keyed by name, config,
seed and library version, and reloaded through :meth:`Network.from_pretrained`, the
path a user's real checkpoint takes. ``zoo.json`` records the weights' hash at
training; every load checks it, so a damaged cache raises
:class:`~abstraction.errors.DamagedFileError` (with the command that retrains it)
instead of being used.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from abstraction.causal_model import CausalModel, causal_model
from abstraction.counterfactuals import balanced, factual_dataset, from_function
from abstraction.errors import DamagedFileError, UnknownNameError, nearest
from abstraction.files import atomic_directory, atomic_write_json, read_json
from abstraction.network import Network, import_pyvene, restore_default_linear_init
from abstraction.task import EntityVectorTask, Task, TokenTask

__all__ = ["ZooEntry", "cache_dir", "entries", "load", "task"]

VERSION = "3"
"""Bump when a zoo recipe changes, so cached networks are retrained.

3: the warmup + cosine schedule is ``transformers.get_cosine_schedule_with_warmup``.
"""


def cache_dir() -> Path:
    """Where zoo networks are cached: ``$ABSTRACTION_CACHE`` or the user cache directory."""
    env = os.environ.get("ABSTRACTION_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("abstraction"))


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
class ZooEntry:
    """A reference network: its task, config and training recipe."""

    name: str
    description: str
    task: Callable[[], Task]
    config: dict[str, Any]
    train: Callable[
        [ZooEntry, int, Callable[[str, float], None] | None], tuple[Any, dict[str, Any]]
    ]

    def key(self, seed: int) -> str:
        """The cache key: name, config, seed and recipe version."""
        text = json.dumps(
            {"name": self.name, "config": self.config, "seed": seed, "v": VERSION}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _train_hierarchical_equality(
    entry: ZooEntry, seed: int, progress: Callable[[str, float], None] | None
) -> tuple[Any, dict[str, Any]]:
    import_pyvene()
    from pyvene.models.mlp.modelings_mlp import MLPConfig, MLPForClassification

    cfg = entry.config
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
    # likely cases), which the balanced sampler reproduces.
    data = factual_dataset(task.model, cfg["examples"], sampler=balanced(["wx", "yz"]), seed=seed)
    x = task.batch(data).inputs["inputs_embeds"]
    y = task.labels(data, task.model.output)
    _fit(module, lambda idx: _logits(module(inputs_embeds=x[idx])), y, cfg, seed, progress)
    test = factual_dataset(task.model, 20_000, sampler=balanced(["wx", "yz"]), seed=seed + 10_000)
    with torch.no_grad():
        logits = _logits(module(inputs_embeds=task.batch(test).inputs["inputs_embeds"]))
    accuracy = float((logits.argmax(-1) == task.labels(test, task.model.output)).float().mean())
    return module, {"test_accuracy": accuracy, "test_examples": len(test)}


def _train_gpt2(
    entry: ZooEntry,
    seed: int,
    progress: Callable[[str, float], None] | None,
    train: Any,
    test: Any,
    vocab: tuple[str, ...],
) -> tuple[Any, dict[str, Any]]:
    """Train a small GPT-2 to predict the task's output token at its readout position."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = entry.config
    task = entry.task()
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
    y = task.labels(train, task.model.output)
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
    accuracy = float((pred == task.labels(test, task.model.output)).float().mean())
    return module, {"test_accuracy": accuracy, "test_examples": len(test)}


def _train_addition(
    entry: ZooEntry, seed: int, progress: Callable[[str, float], None] | None
) -> tuple[Any, dict[str, Any]]:
    data = factual_dataset(addition_tens, exhaustive=True)
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = int(len(data) * entry.config["test_fraction"])
    train, test = data.iloc[order[n_test:]], data.iloc[order[:n_test]]
    return _train_gpt2(entry, seed, progress, train, test, ADDITION_VOCAB)


def _train_lookup(
    entry: ZooEntry, seed: int, progress: Callable[[str, float], None] | None
) -> tuple[Any, dict[str, Any]]:
    sampler = from_function(lookup_inputs)
    train = factual_dataset(lookup, entry.config["examples"], sampler=sampler, seed=seed)
    test = factual_dataset(lookup, 5_000, sampler=sampler, seed=seed + 10_000)
    test = test[~test["input_id"].isin(set(train["input_id"]))]  # unseen inputs only
    return _train_gpt2(entry, seed, progress, train, test, LOOKUP_VOCAB)


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
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0)
    )
    module.train()
    n = len(labels)
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
    step = 0
    for _ in range(cfg["epochs"]):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg["batch_size"]):
            idx = order[start : start + cfg["batch_size"]]
            loss = torch.nn.functional.cross_entropy(logits(idx), labels[idx])
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
    ),
}


def entries() -> list[ZooEntry]:
    """Every reference network."""
    return list(_ENTRIES.values())


def _entry(name: str) -> ZooEntry:
    if name not in _ENTRIES:
        raise UnknownNameError(f"no zoo network {name!r}; {nearest(name, _ENTRIES)}")
    return _ENTRIES[name]


def task(name: str) -> Task:
    """The task a zoo network was trained on."""
    return _entry(name).task()


def path(name: str, seed: int = 0) -> Path:
    """The cache directory of a zoo network (it may not exist yet)."""
    entry = _entry(name)
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
        progress: called with (message, fraction done) while training.
    """
    entry = _entry(name)
    target = path(name, seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    # parallel processes (test workers, notebooks) wait here and train a network once
    with FileLock(target.with_name(target.name + ".lock")):
        if retrain or not (target / "zoo.json").is_file():
            _train_and_save(entry, name, seed, target, progress)
        return _load_checked(target, name, seed)


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
    start = time.perf_counter()
    # One thread, whatever the caller uses: float reductions then run in one order, so
    # the same seed gives the same weights in a test worker, a CLI run or a notebook.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        module, metrics = entry.train(entry, seed, progress)
    finally:
        torch.set_num_threads(threads)
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
        network = Network(module, name=name)
        network.save_pretrained(staging)
        # checked on every load: a cache whose weights changed is never used silently
        metrics["network_hash"] = network.hash
        atomic_write_json(staging / "zoo.json", metrics)


def metrics(name: str, seed: int = 0) -> dict[str, Any]:
    """Training metrics recorded when the zoo network was trained (accuracy, seconds)."""
    file = path(name, seed) / "zoo.json"
    if not file.is_file():
        load(name, seed)
    return read_json(file, fix=f"train it again: zoo.load({name!r}, seed={seed}, retrain=True)")
