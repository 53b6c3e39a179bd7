"""Prefix caching: run the layers before an intervention once, not every step.

Activations before the intervened location do not depend on any trainable
intervention parameter, so alignment training and evaluation compute them once per
dataset (:class:`PrefixCache`) and afterwards run only the network's suffix
(:func:`run_suffix`, with edits applied by :mod:`abstraction.runtime`). The suffix
runs through the model's own ``forward`` with the blocks before the cut replaced by
stand-ins that pass their input through (and the block at the cut by one that returns
the cached, possibly edited, activation); the embeddings still run, which costs one lookup.

**Key/value reuse** (:data:`KV_FAMILIES`: GPT-2, GPT-NeoX, and the Llama family's
model types, with rotary position embeddings and grouped-query attention): under causal
attention an edit at position ``p`` cannot change any later block's activations at
positions before ``p``. A cache built with ``start=p`` therefore keeps block ``cut``'s
output only at positions ``p..`` and, for every block after the cut, the base run's
attention keys and values at positions ``..p-1`` (as attention stores them: rotated, and
``num_key_value_heads`` of them under grouped-query attention); the suffix then runs only
on positions ``p..`` with those keys and values as its past (a ``transformers``
``DynamicCache``, whose length makes the model number the suffix's positions ``p..``, so
rotary models rotate its queries and keys by their true positions), so an intervention
at the last token runs the suffix on one position instead of all of them. For known
causal language models the suffix also stops at the final hidden state and reads the
logits at the readout position from the candidate answers' rows of the unembedding
only; models whose logits are not ``hidden @ W.T`` (Gemma 2's logit softcapping) get
neither shortcut.

The cache honours a memory budget: above it, activations (and keys and values) are
written to memory-mapped files in chunks instead of held in RAM.
:attr:`PrefixCache.nbytes` and :attr:`PrefixCache.storage` report what was used.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch
from torch import nn

from abstraction.errors import AbstractionError
from abstraction.locations import ResolvedLocation
from abstraction.network import FAMILIES, Batch, Network, readout_logits
from abstraction.runtime import Edit, hooked

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "DEVICE_BUDGET_VARIABLE",
    "KV_FAMILIES",
    "MEMORY_BUDGET_VARIABLE",
    "MemoryWarning",
    "PrefixCache",
    "available_memory",
    "budgeted",
    "cut_layer",
    "device_budget",
    "memory_budget",
    "memory_budget_scope",
    "memory_shortfall",
    "run_suffix",
    "stub_blocks",
    "supports_kv_reuse",
    "tested_model_type",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""Bytes of activations held in RAM before the cache moves to a memory-mapped file."""

MEMORY_BUDGET_VARIABLE = "ABSTRACTION_MEMORY_BUDGET"
"""Environment variable: the memory budget of caches built without an explicit one, in
bytes or with a unit (``512MiB``, ``4GiB``). :func:`memory_budget_scope` sets it."""

_UNITS = {"": 1, "B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def memory_budget(value: int | None = None) -> int:
    """The cache budget in bytes: ``value``, else ``$ABSTRACTION_MEMORY_BUDGET``, else
    :data:`DEFAULT_MEMORY_BUDGET`."""
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise AbstractionError(
                f"memory_budget must be a number of bytes >= 0, got {value!r} "
                "(e.g. 4 * 2**30 for 4 GiB; 0 puts every cache on disk)"
            )
        return value
    text = os.environ.get(MEMORY_BUDGET_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MEMORY_BUDGET
    return _size(text, MEMORY_BUDGET_VARIABLE)


def _size(text: str, variable: str) -> int:
    found = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([A-Za-z]*)", text)
    unit = found.group(2).upper() if found else ""
    if found is None or unit not in _UNITS:
        raise AbstractionError(
            f"{variable}={text!r} is not a size; give bytes or a number with a unit: 512MiB, 4GiB"
        )
    return int(float(found.group(1)) * _UNITS[unit])


DEVICE_BUDGET_VARIABLE = "ABSTRACTION_DEVICE_BUDGET"
"""Environment variable: bytes (or a size with a unit) of a training set's prepared rows
kept on an accelerator (see :func:`device_budget`); ``0`` keeps them in host memory."""


def device_budget(device: torch.device) -> int:
    """Bytes of prepared training rows (cached activations, keys and values, sources)
    that may live on ``device`` instead of being copied from host memory every step.

    ``$ABSTRACTION_DEVICE_BUDGET`` when set; else half the device's free memory on a
    CUDA device (what the cache leaves is the training step's); ``0`` on the CPU, where
    host memory is the device's.
    """
    if device.type == "cpu":
        return 0
    text = os.environ.get(DEVICE_BUDGET_VARIABLE, "").strip()
    if text:
        return _size(text, DEVICE_BUDGET_VARIABLE)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 2)
    return 0


class MemoryWarning(UserWarning):
    """A run is likely to need more memory than the machine has available."""


def available_memory() -> int | None:
    """Bytes of memory the system can give a process now (Linux ``MemAvailable``, else
    free pages); ``None`` where neither can be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def memory_shortfall(
    network: Network, budget: int | None = None, available: int | None = None
) -> str | None:
    """Why a run on ``network`` may not fit in memory, or ``None`` when it should.

    A run holds the network's weights, and its training and validation caches hold up to
    ``budget`` bytes each in RAM (the rest goes to memory-mapped files); when that is
    more than ``available`` (default: :func:`available_memory`), the message says how
    much and how to fit.
    """
    budget = memory_budget(budget)
    available = available_memory() if available is None else available
    if available is None:
        return None
    weights = sum(p.numel() * p.element_size() for p in network.module.parameters())
    needed = weights + 2 * budget
    if needed <= available:
        return None
    gib = 1024**3
    return (
        f"this run may need about {needed / gib:.1f} GiB of memory (weights "
        f"{weights / gib:.1f} GiB, and up to {budget / gib:.1f} GiB of cached activations "
        f"for each of training and validation) but {available / gib:.1f} GiB is available: "
        "lower the cache budget (--memory-budget / memory_budget=, e.g. 0.5; caches beyond "
        "it go to memory-mapped files) or free memory"
    )


@contextlib.contextmanager
def memory_budget_scope(value: int | None) -> Iterator[None]:
    """Within the context, caches built without an explicit budget hold ``value`` bytes
    in RAM (``None``: leave the current setting)."""
    if value is None:
        yield
        return
    memory_budget(value)  # refuse a bad value before anything runs
    before = os.environ.get(MEMORY_BUDGET_VARIABLE)
    os.environ[MEMORY_BUDGET_VARIABLE] = str(value)
    try:
        yield
    finally:
        if before is None:
            del os.environ[MEMORY_BUDGET_VARIABLE]
        else:
            os.environ[MEMORY_BUDGET_VARIABLE] = before


def budgeted(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``function`` within :func:`memory_budget_scope` of its ``memory_budget`` keyword
    (an entry point's budget reaches every cache it builds, however deep)."""

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        chosen = kwargs.get("memory_budget")
        with memory_budget_scope(chosen if isinstance(chosen, int) else None):
            return function(*args, **kwargs)

    return wrapper


KV_FAMILIES = ("gpt2", "gpt_neox", "llama")
"""Model families whose suffix can reuse the base run's keys and values (tested exact for
every model type each lists, in tests/integration/test_kv_suffix.py). Other families,
and model types a family does not list (a network wrapped with ``family=``), run the
suffix on every position."""

_READOUT_FAMILIES = ("gpt2", "gpt_neox", "llama")
"""Causal language models whose logits are ``lm_head(base_model(...))`` exactly (for the
model types they list: another model wrapped as one may scale its logits), so the suffix
may stop at the final hidden state and unembed only the readout position."""


def supports_kv_reuse(network: Network) -> bool:
    """Whether :class:`PrefixCache` may keep keys and values for ``network`` (``start > 0``)."""
    return tested_model_type(network, KV_FAMILIES) and unembedding(network) is not None


def tested_model_type(network: Network, families: Sequence[str]) -> bool:
    """Whether ``network`` is of one of ``families`` and its ``config.model_type`` is one
    that family lists: a fast path is on only for the model types its tests cover, not
    for another model wrapped with ``family=``."""
    family = FAMILIES.get(network.family)
    if family is None or family.name not in families:
        return False
    return getattr(network.config, "model_type", None) in family.model_types


def unembedding(network: Network) -> nn.Linear | None:
    """The output embedding when the logits are exactly ``hidden @ W.T (+ b)``."""
    if not tested_model_type(network, _READOUT_FAMILIES) or network.base_model is None:
        return None
    config = network.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    get = getattr(network.module, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Linear) else None


def _cache_keyword(module: nn.Module) -> str:
    """The name under which the base model's ``forward`` takes a KV cache."""
    parameters = inspect.signature(module.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cut_layer(site: ResolvedLocation) -> int | None:
    """The block whose output is cached for ``site`` (``None``: nothing can be skipped).

    A residual-stream site at layer ``l`` is block ``l``'s output itself; a site inside
    block ``l`` (attention, MLP, head, block input) needs block ``l`` to run, so the
    cache holds block ``l - 1``'s output.
    """
    if site.layer is None:
        return None
    cut = site.layer if site.is_block_output else site.layer - 1
    return cut if cut >= 0 else None


class _PassThrough(nn.Module):
    def __init__(self, tuple_len: int) -> None:
        super().__init__()
        self.tuple_len = tuple_len

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
        return _like_block(hidden, self.tuple_len)


class _Constant(nn.Module):
    def __init__(self, value: torch.Tensor, tuple_len: int) -> None:
        super().__init__()
        self.value = value
        self.tuple_len = tuple_len

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return _like_block(self.value, self.tuple_len)


def _like_block(hidden: torch.Tensor, tuple_len: int) -> Any:
    if tuple_len == 0:
        return hidden
    return (hidden, *([None] * (tuple_len - 1)))


@contextlib.contextmanager
def stub_blocks(network: Network, cut: int, hidden: torch.Tensor, tuple_len: int) -> Iterator[None]:
    """Within the context, blocks ``0..cut`` are skipped and block ``cut`` returns ``hidden``."""
    blocks = network.blocks
    if blocks is None:
        raise AbstractionError(f"{network.name} has no known list of blocks to skip")
    saved = [blocks[i] for i in range(cut + 1)]
    try:
        for i in range(cut):
            blocks[i] = _PassThrough(tuple_len)
        blocks[cut] = _Constant(hidden, tuple_len)
        yield
    finally:
        for i, block in enumerate(saved):
            blocks[i] = block


def run_suffix(
    network: Network,
    batch: Batch,
    cut: int,
    hidden: torch.Tensor,
    edits: Sequence[tuple[ResolvedLocation, Edit]] = (),
    *,
    tuple_len: int = 0,
    start: int = 0,
    past: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Readout logits when block ``cut`` outputs ``hidden``; earlier blocks do not run.

    Args:
        network: the network.
        batch: the base batch (its inputs still drive embeddings, masks and readout).
        cut: the block whose output ``hidden`` replaces.
        hidden: that block's output at positions ``start..``, possibly edited.
        edits: further edits at sites after the cut (applied by hooks); only with
            ``start == 0``, since hooks address positions of the whole sequence.
        tuple_len: how many elements the real blocks return (0 for a bare tensor).
        start: the first position the suffix runs on (see :class:`PrefixCache`).
        past: for ``start > 0``, the base run's ``(keys, values)`` at positions
            ``..start-1`` of every block after the cut, each ``(batch, kv_heads, start,
            dim)`` (``kv_heads``: the key/value heads, fewer than the query heads under
            grouped-query attention).
    """
    batch = batch.to(network.device)
    head = unembedding(network) if batch.readout is not None else None
    if head is None:
        if start:
            raise AbstractionError("a suffix from position > 0 needs a known unembedding")
        with stub_blocks(network, cut, hidden, tuple_len), hooked(network, edits):
            output = network.call(batch.inputs)
        return readout_logits(output, batch)
    base = network.base_model
    assert base is not None and batch.readout is not None
    inputs: dict[str, Any] = dict(batch.inputs)
    if start > 0:
        if edits:
            raise AbstractionError("hooks after the cut need the suffix to run on every position")
        if past is None or network.blocks is None:
            raise AbstractionError("a suffix from position > 0 needs the keys and values before it")
        length = hidden.shape[1] + start
        inputs = {
            k: v[:, start:]
            if k != "attention_mask" and v.dim() >= 2 and v.shape[1] == length
            else v
            for k, v in inputs.items()
        }
        inputs[_cache_keyword(base)] = past_cache(past, cut, len(network.blocks), start, hidden)
    with stub_blocks(network, cut, hidden, tuple_len), hooked(network, edits):
        output = base(**inputs, use_cache=False)
    final = getattr(output, "last_hidden_state", None)
    if final is None:
        final = output[0]
    rows = torch.arange(final.shape[0], device=final.device)
    return unembed(final[rows, batch.readout - start], head, batch.candidates)


def unembed(hidden: torch.Tensor, head: nn.Linear, candidates: torch.Tensor | None) -> torch.Tensor:
    """``head(hidden)`` restricted to the candidate ids: only their rows are multiplied."""
    if candidates is None:
        logits: torch.Tensor = head(hidden)
        return logits
    candidates = candidates.to(hidden.device)
    weight = head.weight[candidates]
    if candidates.dim() == 1:
        logits = hidden @ weight.T
    else:
        logits = torch.einsum("bd,bcd->bc", hidden, weight)
    if head.bias is not None:
        logits = logits + head.bias[candidates]
    return logits


def past_cache(
    past: Sequence[tuple[torch.Tensor, torch.Tensor]],
    cut: int,
    n_blocks: int,
    start: int,
    hidden: torch.Tensor,
) -> Any:
    """A ``DynamicCache`` holding ``past`` for blocks ``cut+1..``; the skipped blocks hold
    a one-wide stand-in of length ``start`` (read only for the cache's length, from which
    the model numbers the suffix's positions and sizes its masks).

    Every layer is a plain (full) ``DynamicLayer``, also for sliding-window layers: the
    keys before ``start`` are all kept, and the sliding-window mask the model builds
    hides those outside the window, as in a full forward."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if len(past) != n_blocks - cut - 1:
        raise AbstractionError(
            f"{len(past)} blocks of keys and values for {n_blocks - cut - 1} blocks after the cut"
        )
    filler = torch.zeros(1, 1, 1, 1, dtype=hidden.dtype, device=hidden.device)
    filler = filler.expand(hidden.shape[0], 1, start, 1)
    layers: list[Any] = []
    for i in range(n_blocks):
        k, v = past[i - cut - 1] if i > cut else (filler, filler)
        layer = DynamicLayer()  # type: ignore[no-untyped-call]
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        layers.append(layer)
    cache = DynamicCache()
    cache.layers = list(layers)
    return cache


Array = torch.Tensor | np.ndarray
"""Cached values: a tensor in RAM or a memory-mapped numpy array on disk."""


class PrefixCache:
    """Block ``cut``'s output for every row of a dataset, computed once in chunks.

    Args:
        network: the network.
        batch: the whole dataset as one batch (rows are examples).
        cut: the block whose output is cached.
        memory_budget: bytes allowed in RAM; above it the cache is memory-mapped files
            (default: :func:`memory_budget`).
        batch_size: rows per forward pass while filling the cache.
        directory: where a memory-mapped cache is written (a temporary directory by
            default, removed with the cache).
        start: keep block ``cut``'s output only from this position on, and the keys
            and values of every later block before it (needs
            :func:`supports_kv_reuse`); 0 keeps the whole sequence and no keys/values.

    :meth:`shared` fills the caches of several cuts (a sweep's layers) from one pass.
    """

    def __init__(
        self,
        network: Network,
        batch: Batch,
        cut: int,
        *,
        memory_budget: int | None = None,
        batch_size: int = 2048,
        directory: str | Path | None = None,
        start: int = 0,
    ) -> None:
        filled = _Filled(network, batch, [cut], memory_budget, batch_size, directory, start)
        self._adopt(filled, cut)

    @classmethod
    def shared(
        cls,
        network: Network,
        batch: Batch,
        cuts: Sequence[int],
        *,
        memory_budget: int | None = None,
        batch_size: int = 2048,
        directory: str | Path | None = None,
        start: int = 0,
    ) -> list[PrefixCache]:
        """One cache per cut, filled by one pass over the data and sharing their storage.

        The keys and values of a block are stored once and read by every cut before
        it; ``memory_budget`` bounds all the caches together. Closing any of them
        releases the shared files once all are closed.
        """
        filled = _Filled(network, batch, list(cuts), memory_budget, batch_size, directory, start)
        caches = []
        for cut in cuts:
            cache = cls.__new__(cls)
            cache._adopt(filled, cut)
            caches.append(cache)
        return caches

    def _adopt(self, filled: _Filled, cut: int) -> None:
        self.cut = cut
        self.start = filled.start
        self.rows = filled.rows
        self.tuple_len = filled.tuple_len
        self._filled: _Filled | None = filled
        self._data: Array | None = filled.hidden[cut]
        self._kv: list[Array] = [filled.kv[j] for j in sorted(filled.kv) if j > cut]
        self._order: torch.Tensor | None = None
        filled.users += 1

    @property
    def storage(self) -> str:
        """``"memory"`` or ``"disk"`` (memory-mapped)."""
        return "memory" if isinstance(self._data, torch.Tensor) else "disk"

    @property
    def nbytes(self) -> int:
        """Size of this cut's activations (and keys and values) in bytes."""
        assert self._data is not None
        return int(self._data.nbytes) + sum(int(kv.nbytes) for kv in self._kv)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(rows, ..., width)`` of the cached block output (positions ``start..``)."""
        assert self._data is not None
        return tuple(self._data.shape)

    def _index(self, rows: torch.Tensor | slice) -> torch.Tensor | slice:
        if self._order is None:
            return rows
        return self._order[rows]

    def get(self, rows: torch.Tensor | slice) -> torch.Tensor:
        """The cached activations of some rows (positions ``start..``)."""
        assert self._data is not None, "the cache is closed"
        return _rows(self._data, self._index(rows))

    def past(self, rows: torch.Tensor | slice) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each later block's ``(keys, values)`` at positions ``..start-1`` for some rows."""
        index = self._index(rows)
        out = []
        for kv in self._kv:
            both = _rows(kv, index)  # (rows, 2, heads, start, dim)
            out.append((both[:, 0], both[:, 1]))
        return out

    @staticmethod
    def filled_together(caches: Sequence[PrefixCache]) -> bool:
        """Whether ``caches`` were filled by one pass and share their storage
        (:meth:`for_cuts`), as a staircase of cells needs."""
        first = caches[0]._filled if caches else None
        return first is not None and all(c._filled is first for c in caches)

    def reordered(self, order: torch.Tensor, *, keys_values: bool = True) -> PrefixCache:
        """This cache with rows permuted by ``order`` (for shuffled training).

        A small in-memory cache is copied in the new order (contiguous reads per step);
        a cache on disk, or one whose copy would not fit the memory budget, keeps its
        storage and reads its rows through the permutation. ``keys_values=False``: the
        view holds no keys and values (:meth:`past` returns none).
        """
        assert self._data is not None, "the cache is closed"
        view = copy.copy(self)
        view._filled = None  # a view: closing it leaves the shared storage alone
        if not keys_values:
            view._kv = []
        order = order if self._order is None else self._order[order]
        budget = self._filled.budget if self._filled is not None else 0
        if self.storage == "memory" and 2 * view.nbytes <= budget:
            assert isinstance(self._data, torch.Tensor)
            view._data = self._data[order]
            view._kv = [kv[order] for kv in view._kv]
            view._order = None
        else:
            view._order = order
        return view

    def on_device(self, device: torch.device) -> PrefixCache | None:
        """This view's rows on ``device`` (its own copy, read there at every step), or
        ``None`` when they are on disk or read through a permutation (copy them in order
        with :meth:`reordered` first)."""
        if self.storage != "memory" or self._order is not None or self._filled is not None:
            return None
        assert isinstance(self._data, torch.Tensor)
        view = copy.copy(self)
        view._data = self._data.to(device)
        view._kv = [kv.to(device) for kv in self._kv]  # type: ignore[union-attr]
        return view

    def close(self) -> None:
        """Release the cache (and delete its files once every cache sharing them is closed)."""
        self._data = None
        self._kv = []
        if self._filled is not None:
            self._filled.release()
            self._filled = None

    def __repr__(self) -> str:
        size = f"{self.nbytes / 2**20:.1f} MiB" if self._data is not None else "closed"
        kv = f", keys/values before position {self.start}" if self.start else ""
        return f"PrefixCache(block={self.cut}, rows={self.rows}{kv}, {size} in {self.storage})"


class _Filled:
    """The arrays behind one or more :class:`PrefixCache` objects, filled by one pass."""

    def __init__(
        self,
        network: Network,
        batch: Batch,
        cuts: list[int],
        budget: int | None,
        batch_size: int,
        directory: str | Path | None,
        start: int,
    ) -> None:
        blocks = network.blocks
        if blocks is None or not cuts or not all(0 <= c < len(blocks) for c in cuts):
            raise AbstractionError(f"cannot cache block(s) {cuts} of {network.name}")
        if start < 0:
            raise AbstractionError(f"start must be a position >= 0, got {start}")
        if start > 0 and not supports_kv_reuse(network):
            raise AbstractionError(
                f"{network.name} ({network.family}) cannot reuse keys and values; "
                f"supported families: {', '.join(KV_FAMILIES)}. Use start=0"
            )
        self.rows = len(batch)
        self.start = start
        self.budget = memory_budget(budget)
        self.directory = directory
        self.users = 0
        self.tuple_len = 0
        self.hidden: dict[int, Array] = {}
        self.kv: dict[int, Array] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        later = list(range(min(cuts) + 1, len(blocks))) if start > 0 else []
        captured: dict[int, torch.Tensor] = {}

        def capture(cut: int) -> Any:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                captured[cut] = output[0] if isinstance(output, tuple) else output
                self.tuple_len = len(output) if isinstance(output, tuple) else 0

            return hook

        handles = [blocks[c].register_forward_hook(capture(c)) for c in set(cuts)]
        try:
            with torch.no_grad():
                for first in range(0, self.rows, batch_size):
                    chunk = batch.select(slice(first, first + batch_size)).to(network.device)
                    kv: dict[int, torch.Tensor] = {}
                    if start == 0:
                        paths = [f"{network.blocks_path}.{c}" for c in cuts]
                        network.call_reaching(chunk.inputs, paths)
                    else:
                        kv = _keys_values(network, chunk, later, start)
                    hidden = {c: captured[c].detach()[:, start:].to("cpu") for c in cuts}
                    self._store(first, hidden, kv)
        finally:
            for handle in handles:
                handle.remove()

    def _store(
        self, first: int, hidden: dict[int, torch.Tensor], kv: dict[int, torch.Tensor]
    ) -> None:
        if not self.hidden:
            shapes = {("hidden", c): (self.rows, *h.shape[1:]) for c, h in hidden.items()}
            shapes.update({("kv", j): (self.rows, *t.shape[1:]) for j, t in kv.items()})
            dtype = next(iter(hidden.values())).dtype
            size = torch.empty(0, dtype=dtype).element_size()
            nbytes = sum(int(np.prod(shape)) * size for shape in shapes.values())
            for (kind, index), shape in shapes.items():
                array = self._allocate(f"{kind}{index}", shape, dtype, nbytes)
                (self.hidden if kind == "hidden" else self.kv)[index] = array
        for store, values in ((self.hidden, hidden), (self.kv, kv)):
            for index, chunk in values.items():
                target = store[index]
                if isinstance(target, torch.Tensor):
                    target[first : first + len(chunk)] = chunk
                else:
                    target[first : first + len(chunk)] = _to_numpy(chunk)

    def _allocate(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, nbytes: int
    ) -> Array:
        if nbytes <= self.budget:
            return torch.empty(shape, dtype=dtype)
        directory = self.directory
        if directory is None:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="abstraction-cache-")
            directory = self._tmp.name
        path = Path(directory) / f"prefix-{name}.npy"
        array = np.lib.format.open_memmap(path, mode="w+", dtype=_numpy_dtype(dtype), shape=shape)
        if dtype in _STAND_INS:
            array.torch_dtype = dtype  # type: ignore[attr-defined]  # read back by _rows
        return array

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.hidden, self.kv = {}, {}
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None


def _keys_values(
    network: Network, chunk: Batch, later: Sequence[int], start: int
) -> dict[int, torch.Tensor]:
    """Blocks ``later``'s keys and values at positions ``..start-1``, each
    ``(rows, 2, kv_heads, start, dim)`` on the CPU (as attention caches them: after the
    rotary embedding, before grouped-query attention repeats them per query head)."""
    from transformers import DynamicCache

    base = network.base_model
    assert base is not None
    # a cache without the config: every layer keeps every position (one built from the
    # config keeps only the window of a sliding-window layer)
    cache = DynamicCache()
    base(**chunk.inputs, **{_cache_keyword(base): cache}, use_cache=True)
    layers: list[Any] = list(cache.layers)  # DynamicLayer: .keys and .values
    return {
        i: torch.stack([layers[i].keys[:, :, :start], layers[i].values[:, :, :start]], dim=1).to(
            "cpu"
        )
        for i in later
    }


def _rows(data: Array, rows: torch.Tensor | slice) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data[rows]
    if isinstance(rows, torch.Tensor):
        index = rows.numpy()
        order = np.argsort(index, kind="stable")
        inverse = np.argsort(order, kind="stable")
        # memory-mapped reads are faster in file order
        read = torch.from_numpy(np.ascontiguousarray(data[index[order]][inverse]))
    else:
        read = torch.from_numpy(np.ascontiguousarray(data[rows]))
    dtype = getattr(data, "torch_dtype", None)
    return read if dtype is None else read.view(dtype)


_STAND_INS = {torch.bfloat16: torch.int16}
"""Torch dtypes numpy lacks, stored in memory-mapped files as integers of their width."""


def _numpy_dtype(dtype: torch.dtype) -> Any:
    return torch.empty(0, dtype=_STAND_INS.get(dtype, dtype)).numpy().dtype


def _to_numpy(chunk: torch.Tensor) -> np.ndarray:
    stand_in = _STAND_INS.get(chunk.dtype)
    return (chunk if stand_in is None else chunk.view(stand_in)).numpy()
