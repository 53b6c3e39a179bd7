"""Prefix caching: run the layers before an intervention once, not every step.

Activations before the intervened location do not depend on any trainable
intervention parameter, so alignment training and evaluation compute them once per
dataset (:class:`PrefixCache`) and afterwards run only the network's suffix
(:func:`run_suffix`, with edits applied by :mod:`abstraction.runtime`). The suffix
runs through the model's own ``forward`` with the blocks before the cut replaced by
stand-ins that pass their input through (and the block at the cut by one that returns
the cached, possibly edited, activation); the embeddings still run, which costs one lookup.

**Key/value reuse** (GPT-2): under causal attention an edit at position ``p`` cannot
change any later block's activations at positions before ``p``. A cache built with
``start=p`` therefore keeps block ``cut``'s output only at positions ``p..`` and, for
every block after the cut, the base run's attention keys and values at positions
``..p-1``; the suffix then runs only on positions ``p..`` with those keys and values as
its past (a ``transformers`` ``DynamicCache``), so an intervention at the last token
runs the suffix on one position instead of all of them. For known causal language
models the suffix also stops at the final hidden state and reads the logits at the
readout position from the candidate answers' rows of the unembedding only.

The cache honours a memory budget: above it, activations (and keys and values) are
written to memory-mapped files in chunks instead of held in RAM.
:attr:`PrefixCache.nbytes` and :attr:`PrefixCache.storage` report what was used.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from abstraction.errors import AbstractionError
from abstraction.locations import ResolvedLocation
from abstraction.network import Batch, Network, readout_logits
from abstraction.runtime import Edit, hooked

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "KV_FAMILIES",
    "PrefixCache",
    "cut_layer",
    "run_suffix",
    "stub_blocks",
    "supports_kv_reuse",
]

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""Bytes of activations held in RAM before the cache moves to a memory-mapped file."""


KV_FAMILIES = ("gpt2",)
"""Model families whose suffix can reuse the base run's keys and values (tested exact).
Other families run the suffix on every position."""

_READOUT_FAMILIES = ("gpt2", "gpt_neox", "llama")
"""Causal language models whose logits are ``lm_head(base_model(...))`` exactly, so the
suffix may stop at the final hidden state and unembed only the readout position."""


def supports_kv_reuse(network: Network) -> bool:
    """Whether :class:`PrefixCache` may keep keys and values for ``network`` (``start > 0``)."""
    return network.family in KV_FAMILIES and _unembedding(network) is not None


def _base_model(network: Network) -> nn.Module | None:
    base = getattr(network.module, "base_model", None)
    if not isinstance(base, nn.Module) or base is network.module:
        return None
    return base


def _unembedding(network: Network) -> nn.Linear | None:
    """The output embedding when the logits are exactly ``hidden @ W.T (+ b)``."""
    if network.family not in _READOUT_FAMILIES or _base_model(network) is None:
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
            ``..start-1`` of every block after the cut, each ``(batch, heads, start, dim)``.
    """
    batch = batch.to(network.device)
    head = _unembedding(network) if batch.readout is not None else None
    if head is None:
        if start:
            raise AbstractionError("a suffix from position > 0 needs a known unembedding")
        with stub_blocks(network, cut, hidden, tuple_len), hooked(network, edits):
            output = network.call(batch.inputs)
        return readout_logits(output, batch)
    base = _base_model(network)
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
        inputs[_cache_keyword(base)] = _past_cache(past, cut, len(network.blocks), start, hidden)
    with stub_blocks(network, cut, hidden, tuple_len), hooked(network, edits):
        output = base(**inputs, use_cache=False)
    final = getattr(output, "last_hidden_state", None)
    if final is None:
        final = output[0]
    rows = torch.arange(final.shape[0], device=final.device)
    return _unembed(final[rows, batch.readout - start], head, batch.candidates)


def _unembed(
    hidden: torch.Tensor, head: nn.Linear, candidates: torch.Tensor | None
) -> torch.Tensor:
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


def _past_cache(
    past: Sequence[tuple[torch.Tensor, torch.Tensor]],
    cut: int,
    n_blocks: int,
    start: int,
    hidden: torch.Tensor,
) -> Any:
    """A ``DynamicCache`` holding ``past`` for blocks ``cut+1..``; the skipped blocks hold
    a one-wide stand-in of length ``start`` (read only for the cache's length)."""
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


class PrefixCache:
    """Block ``cut``'s output for every row of a dataset, computed once in chunks.

    Args:
        network: the network.
        batch: the whole dataset as one batch (rows are examples).
        cut: the block whose output is cached.
        memory_budget: bytes allowed in RAM; above it the cache is memory-mapped files.
        batch_size: rows per forward pass while filling the cache.
        directory: where a memory-mapped cache is written (a temporary directory by
            default, removed with the cache).
        start: keep block ``cut``'s output only from this position on, and the keys
            and values of every later block before it (needs
            :func:`supports_kv_reuse`); 0 keeps the whole sequence and no keys/values.
    """

    def __init__(
        self,
        network: Network,
        batch: Batch,
        cut: int,
        *,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        batch_size: int = 2048,
        directory: str | Path | None = None,
        start: int = 0,
    ) -> None:
        blocks = network.blocks
        if blocks is None or not 0 <= cut < len(blocks):
            raise AbstractionError(f"cannot cache block {cut} of {network.name}")
        if start < 0:
            raise AbstractionError(f"start must be a position >= 0, got {start}")
        if start > 0 and not supports_kv_reuse(network):
            raise AbstractionError(
                f"{network.name} ({network.family}) cannot reuse keys and values; "
                f"supported families: {', '.join(KV_FAMILIES)}. Use start=0"
            )
        self.cut = cut
        self.start = start
        self.rows = len(batch)
        self.tuple_len = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._data: torch.Tensor | np.ndarray | None = None
        self._kv: torch.Tensor | np.ndarray | None = None
        self._budget = memory_budget
        self._directory = directory
        captured: dict[str, Any] = {}

        def capture(module: nn.Module, args: Any, output: Any) -> None:
            captured["hidden"] = output[0] if isinstance(output, tuple) else output
            captured["tuple_len"] = len(output) if isinstance(output, tuple) else 0

        later = range(cut + 1, len(blocks))
        handle = blocks[cut].register_forward_hook(capture)
        try:
            with torch.no_grad():
                for first in range(0, self.rows, batch_size):
                    chunk = batch.select(slice(first, first + batch_size)).to(network.device)
                    kv = None
                    if start == 0:
                        network.call_reaching(chunk.inputs, [f"{network.blocks_path}.{cut}"])
                    else:
                        kv = _keys_values(network, chunk, later, start)
                    hidden = captured["hidden"].detach()[:, start:].to("cpu")
                    self._store(first, hidden, kv)
        finally:
            handle.remove()
        self.tuple_len = int(captured.get("tuple_len", 0))

    def _store(self, first: int, hidden: torch.Tensor, kv: torch.Tensor | None) -> None:
        if self._data is None:
            shapes = {"hidden": (self.rows, *hidden.shape[1:])}
            if kv is not None:
                shapes["kv"] = (self.rows, *kv.shape[1:])
            nbytes = sum(int(np.prod(shape)) * hidden.element_size() for shape in shapes.values())
            arrays = {
                name: self._allocate(name, shape, hidden.dtype, nbytes)
                for name, shape in shapes.items()
            }
            self._data = arrays["hidden"]
            self._kv = arrays.get("kv")
        for target, values in ((self._data, hidden), (self._kv, kv)):
            if target is None or values is None:
                continue
            if isinstance(target, torch.Tensor):
                target[first : first + len(values)] = values
            else:
                target[first : first + len(values)] = values.numpy()

    def _allocate(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, nbytes: int
    ) -> torch.Tensor | np.ndarray:
        if nbytes <= self._budget:
            return torch.empty(shape, dtype=dtype)
        directory = self._directory
        if directory is None:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="abstraction-cache-")
            directory = self._tmp.name
        path = Path(directory) / f"prefix-block{self.cut}-{name}.npy"
        return np.lib.format.open_memmap(path, mode="w+", dtype=_numpy_dtype(dtype), shape=shape)

    @property
    def storage(self) -> str:
        """``"memory"`` or ``"disk"`` (memory-mapped)."""
        return "memory" if isinstance(self._data, torch.Tensor) else "disk"

    @property
    def nbytes(self) -> int:
        """Size of the cached activations (and keys and values) in bytes."""
        assert self._data is not None
        return int(self._data.nbytes) + (int(self._kv.nbytes) if self._kv is not None else 0)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(rows, ..., width)`` of the cached block output (positions ``start..``)."""
        assert self._data is not None
        return tuple(self._data.shape)

    def get(self, rows: torch.Tensor | slice) -> torch.Tensor:
        """The cached activations of some rows (positions ``start..``)."""
        assert self._data is not None
        return _rows(self._data, rows)

    def past(self, rows: torch.Tensor | slice) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each later block's ``(keys, values)`` at positions ``..start-1`` for some rows."""
        if self._kv is None:
            return []
        kv = _rows(self._kv, rows)  # (rows, blocks, 2, heads, start, dim)
        return [(kv[:, i, 0], kv[:, i, 1]) for i in range(kv.shape[1])]

    def reordered(self, order: torch.Tensor) -> PrefixCache:
        """An in-memory copy with rows permuted by ``order`` (for shuffled training)."""
        assert isinstance(self._data, torch.Tensor), "only in-memory caches are reordered"
        view = copy.copy(self)
        view._data = self._data[order]
        view._kv = self._kv[order] if isinstance(self._kv, torch.Tensor) else None
        view._tmp = None
        return view

    def close(self) -> None:
        """Release the cache (and delete its files, when it made some)."""
        self._data = None
        self._kv = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __repr__(self) -> str:
        size = f"{self.nbytes / 2**20:.1f} MiB" if self._data is not None else "closed"
        kv = f", keys/values before position {self.start}" if self.start else ""
        return f"PrefixCache(block={self.cut}, rows={self.rows}{kv}, {size} in {self.storage})"


def _keys_values(network: Network, chunk: Batch, later: range, start: int) -> torch.Tensor | None:
    """Blocks ``later``'s keys and values at positions ``..start-1``, rows first:
    ``(rows, blocks, 2, heads, start, dim)`` (``None`` when no block follows the cut)."""
    base = _base_model(network)
    assert base is not None
    output = base(**chunk.inputs, use_cache=True)
    if not later:
        return None
    cache = getattr(output, "cache", None) or output.past_key_values
    kv = torch.stack(
        [
            torch.stack([cache.layers[i].keys[:, :, :start], cache.layers[i].values[:, :, :start]])
            for i in later
        ],
        dim=2,
    )  # (2, rows, blocks, heads, start, dim)
    return kv.permute(1, 2, 0, 3, 4, 5).to("cpu")


def _rows(data: torch.Tensor | np.ndarray, rows: torch.Tensor | slice) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data[rows]
    if isinstance(rows, torch.Tensor):
        index = rows.numpy()
        order = np.argsort(index, kind="stable")
        inverse = np.argsort(order, kind="stable")
        # memory-mapped reads are faster in file order
        return torch.from_numpy(np.ascontiguousarray(data[index[order]][inverse]))
    return torch.from_numpy(np.ascontiguousarray(data[rows]))


def _numpy_dtype(dtype: torch.dtype) -> Any:
    return torch.empty(0, dtype=dtype).numpy().dtype
