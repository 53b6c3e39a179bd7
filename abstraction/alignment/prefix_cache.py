"""Prefix caching: run the layers before an intervention once, not every step.

Activations before the intervened location do not depend on any trainable
intervention parameter, so alignment training and evaluation compute them once per
dataset (:class:`PrefixCache`) and afterwards run only the network's suffix
(:func:`run_suffix`, with edits applied by :mod:`abstraction.runtime`). The suffix
runs through the model's own ``forward`` with the blocks before the cut replaced by
stand-ins that pass their input through (and the block at the cut by one that returns
the cached, possibly edited, activation); the embeddings still run, which costs one lookup.

The cache honours a memory budget: above it, activations are written to a
memory-mapped file in chunks instead of held in RAM. :attr:`PrefixCache.nbytes` and
:attr:`PrefixCache.storage` report what was used.
"""

from __future__ import annotations

import contextlib
import copy
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

__all__ = ["DEFAULT_MEMORY_BUDGET", "PrefixCache", "cut_layer", "run_suffix", "stub_blocks"]

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""Bytes of activations held in RAM before the cache moves to a memory-mapped file."""


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
) -> torch.Tensor:
    """Readout logits when block ``cut`` outputs ``hidden``; earlier blocks do not run.

    Args:
        network: the network.
        batch: the base batch (its inputs still drive embeddings, masks and readout).
        cut: the block whose output ``hidden`` replaces.
        hidden: that block's output, ``(batch, ..., width)``, possibly edited.
        edits: further edits at sites after the cut (applied by hooks).
        tuple_len: how many elements the real blocks return (0 for a bare tensor).
    """
    batch = batch.to(network.device)
    with stub_blocks(network, cut, hidden, tuple_len), hooked(network, edits):
        output = network.call(batch.inputs)
    return readout_logits(output, batch)


class PrefixCache:
    """Block ``cut``'s output for every row of a dataset, computed once in chunks.

    Args:
        network: the network.
        batch: the whole dataset as one batch (rows are examples).
        cut: the block whose output is cached.
        memory_budget: bytes allowed in RAM; above it the cache is a memory-mapped file.
        batch_size: rows per forward pass while filling the cache.
        directory: where a memory-mapped cache is written (a temporary directory by
            default, removed with the cache).
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
    ) -> None:
        blocks = network.blocks
        if blocks is None or not 0 <= cut < len(blocks):
            raise AbstractionError(f"cannot cache block {cut} of {network.name}")
        self.cut = cut
        self.rows = len(batch)
        self.tuple_len = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._data: torch.Tensor | np.ndarray | None = None
        captured: dict[str, Any] = {}

        def capture(module: nn.Module, args: Any, output: Any) -> None:
            captured["hidden"] = output[0] if isinstance(output, tuple) else output
            captured["tuple_len"] = len(output) if isinstance(output, tuple) else 0

        handle = blocks[cut].register_forward_hook(capture)
        try:
            with torch.no_grad():
                for start in range(0, self.rows, batch_size):
                    chunk = batch.select(slice(start, start + batch_size)).to(network.device)
                    network.call(chunk.inputs)
                    hidden = captured["hidden"].detach().to("cpu")
                    self._store(start, hidden, memory_budget, directory)
        finally:
            handle.remove()
        self.tuple_len = int(captured.get("tuple_len", 0))

    def _store(
        self, start: int, hidden: torch.Tensor, budget: int, directory: str | Path | None
    ) -> None:
        if self._data is None:
            shape = (self.rows, *hidden.shape[1:])
            nbytes = int(np.prod(shape)) * hidden.element_size()
            if nbytes <= budget:
                self._data = torch.empty(shape, dtype=hidden.dtype)
            else:
                if directory is None:
                    self._tmp = tempfile.TemporaryDirectory(prefix="abstraction-cache-")
                    directory = self._tmp.name
                path = Path(directory) / f"prefix-block{self.cut}.npy"
                self._data = np.lib.format.open_memmap(
                    path, mode="w+", dtype=_numpy_dtype(hidden.dtype), shape=shape
                )
        if isinstance(self._data, torch.Tensor):
            self._data[start : start + len(hidden)] = hidden
        else:
            self._data[start : start + len(hidden)] = hidden.numpy()

    @property
    def storage(self) -> str:
        """``"memory"`` or ``"disk"`` (memory-mapped)."""
        return "memory" if isinstance(self._data, torch.Tensor) else "disk"

    @property
    def nbytes(self) -> int:
        """Size of the cached activations in bytes."""
        assert self._data is not None
        return int(self._data.nbytes)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(rows, ..., width)``."""
        assert self._data is not None
        return tuple(self._data.shape)

    def get(self, rows: torch.Tensor | slice) -> torch.Tensor:
        """The cached activations of some rows."""
        assert self._data is not None
        if isinstance(self._data, torch.Tensor):
            return self._data[rows]
        index = rows.numpy() if isinstance(rows, torch.Tensor) else rows
        if isinstance(index, np.ndarray):
            index = np.sort(index)  # memory-mapped reads are faster in file order
            order = np.argsort(np.argsort(rows.numpy()))  # type: ignore[union-attr]
            return torch.from_numpy(np.ascontiguousarray(self._data[index][order]))
        return torch.from_numpy(np.ascontiguousarray(self._data[index]))

    def reordered(self, order: torch.Tensor) -> PrefixCache:
        """An in-memory copy with rows permuted by ``order`` (for shuffled training)."""
        assert isinstance(self._data, torch.Tensor), "only in-memory caches are reordered"
        view = copy.copy(self)
        view._data = self._data[order]
        view._tmp = None
        return view

    def close(self) -> None:
        """Release the cache (and delete its file, when it made one)."""
        self._data = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __repr__(self) -> str:
        size = f"{self.nbytes / 2**20:.1f} MiB" if self._data is not None else "closed"
        return f"PrefixCache(block={self.cut}, rows={self.rows}, {size} in {self.storage})"


def _numpy_dtype(dtype: torch.dtype) -> Any:
    return torch.empty(0, dtype=dtype).numpy().dtype
