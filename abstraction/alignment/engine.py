"""The interchange engine: one counterfactual dataset prepared at one location.

Preparing computes, once, everything that does not depend on the subspaces being
trained or scored: the base activations up to the cut (prefix cache), each
variable's source activation at the location, the intervention masks (``do.<var>``)
and the labels. Training, evaluation, baselines and sweeps then only run the
network's suffix with an edit of the selected activation, in large batches.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import torch

from abstraction.cache import DEFAULT_MEMORY_BUDGET, PrefixCache, cut_layer, run_suffix
from abstraction.errors import AbstractionError
from abstraction.interventions import _positions, _replace, _select, collect, hooks
from abstraction.locations import Location, resolve
from abstraction.network import Batch, Network, readout_logits
from abstraction.task import Task

__all__ = ["Edit", "InterchangeEngine", "patch_edit", "random_bases", "subspace_edit"]

Edit = Callable[[torch.Tensor, "torch.Tensor | slice"], torch.Tensor]
"""``edit(selected_base_activation, rows) -> new activation``."""


class InterchangeEngine:
    """A counterfactual dataset prepared for interchange interventions at one location.

    Args:
        network: the network.
        task: encodes the dataset's inputs and labels.
        data: a counterfactual dataset (see :mod:`abstraction.counterfactuals`).
        location: the intervention site.
        variables: the causal variables whose sources are prepared.
        memory_budget: bytes of cached activations held in RAM before using disk.
        batch_size: rows per forward pass while preparing.
    """

    def __init__(
        self,
        network: Network,
        task: Task,
        data: pd.DataFrame,
        location: Location,
        variables: Sequence[str],
        *,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        batch_size: int = 16384,
    ) -> None:
        if len(data) == 0:
            raise AbstractionError("the counterfactual dataset is empty; generate some pairs first")
        self.network = network
        self.site = resolve(network, location)
        self.rows = len(data)
        self.variables = tuple(variables)
        self.base = task.batch(data, "base.")
        self.labels = task.labels(data, "label")
        self.base_labels = task.labels(data, "base_label")
        self.changed = torch.tensor(data["changed"].to_numpy(dtype=bool))
        self.do = {}
        for v in self.variables:
            if f"do.{v}" not in data:
                raise AbstractionError(
                    f"the dataset never intervenes on {v!r}; generate it with "
                    f"interventions=[[{v!r}], ...]"
                )
            self.do[v] = torch.tensor(data[f"do.{v}"].to_numpy(dtype=bool))
        self.sources = {
            v: self._collect(task.batch(data, f"source.{v}."), batch_size) for v in self.variables
        }
        self.cut = cut_layer(self.site) if network.blocks is not None else None
        self.cache = (
            PrefixCache(
                network, self.base, self.cut, memory_budget=memory_budget, batch_size=batch_size
            )
            if self.cut is not None
            else None
        )

    def _collect(self, batch: Batch, batch_size: int) -> torch.Tensor:
        parts = []
        with torch.no_grad():
            for start in range(0, len(batch), batch_size):
                chunk = batch.select(slice(start, start + batch_size))
                parts.append(collect(self.network, chunk, [self.site.location])[0].cpu())
        return torch.cat(parts)

    @property
    def width(self) -> int:
        """The width of the selected activation."""
        return int(self.sources[self.variables[0]].shape[-1]) if self.variables else 0

    def logits(self, rows: torch.Tensor | slice, edit: Edit | None) -> torch.Tensor:
        """Readout logits of base rows ``rows`` with the selected activation edited."""
        base = self.base.select(rows)
        device = self.network.device
        if self.cache is None:
            edits = [] if edit is None else [(self.site, self._hook(base, rows, edit))]
            batch = base.to(device)
            with hooks(self.network, edits):
                return readout_logits(self.network.call(batch.inputs), batch)
        hidden = self.cache.get(rows).to(device)
        if self.site.is_block_output:
            if edit is not None:
                hidden = self._hook(base, rows, edit)(hidden)
            return run_suffix(
                self.network, base, self.cache.cut, hidden, tuple_len=self.cache.tuple_len
            )
        edits = [] if edit is None else [(self.site, self._hook(base, rows, edit))]
        return run_suffix(
            self.network, base, self.cache.cut, hidden, edits, tuple_len=self.cache.tuple_len
        )

    def _hook(
        self, base: Batch, rows: torch.Tensor | slice, edit: Edit
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        def apply(act: torch.Tensor) -> torch.Tensor:
            positions = _positions(self.site, base, act)
            selected = _select(act, self.site, positions)
            return _replace(act, self.site, positions, edit(selected, rows))

        return apply

    @torch.no_grad()
    def predict(
        self, edit: Edit | None, rows: torch.Tensor | None = None, batch_size: int = 8192
    ) -> torch.Tensor:
        """Predicted class ids for ``rows`` (default: all) under ``edit``."""
        if rows is None:
            rows = torch.arange(self.rows)
        preds = [
            self.logits(rows[s : s + batch_size], edit).argmax(-1).cpu()
            for s in range(0, len(rows), batch_size)
        ]
        return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)

    def correct(self, edit: Edit | None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row booleans: does the edited network predict the counterfactual label?"""
        rows = torch.arange(self.rows) if rows is None else rows
        return self.predict(edit, rows) == self.labels[rows]

    def reordered(self, order: torch.Tensor) -> InterchangeEngine:
        """A view of this engine with rows permuted by ``order``, materialised once.

        Training takes contiguous slices of a shuffled copy instead of gathering
        random rows at every step, which is several times faster for small networks.
        A disk-backed prefix cache stays on disk (rows are then gathered per step).
        """
        view = copy.copy(self)
        view.base = self.base.select(order)
        view.labels = self.labels[order]
        view.base_labels = self.base_labels[order]
        view.changed = self.changed[order]
        view.do = {v: m[order] for v, m in self.do.items()}
        view.sources = {v: t[order] for v, t in self.sources.items()}
        if self.cache is not None and self.cache.storage == "memory":
            view.cache = self.cache.reordered(order)
        return view

    def close(self) -> None:
        """Free the prefix cache."""
        if self.cache is not None:
            self.cache.close()


def subspace_edit(engine: InterchangeEngine, bases: Mapping[str, torch.Tensor]) -> Edit:
    """Interchange each variable's subspace with its own source, on the rows that intervene.

    ``bases`` maps variables to ``(width, k)`` orthonormal columns; the columns of
    different variables must be orthogonal to each other (disjoint subspaces).
    """

    def edit(selected: torch.Tensor, rows: torch.Tensor | slice) -> torch.Tensor:
        out = selected
        for v, basis in bases.items():
            source = engine.sources[v][rows].to(selected.device, selected.dtype)
            mask = engine.do[v][rows].to(selected.device)
            basis = basis.to(selected.device, selected.dtype)
            delta = torch.matmul(torch.matmul(source - selected, basis), basis.T)
            shape = (-1,) + (1,) * (delta.dim() - 1)
            out = out + delta * mask.view(shape).to(delta.dtype)
        return out

    return edit


def patch_edit(engine: InterchangeEngine, variables: Sequence[str]) -> Edit:
    """Replace the whole selected activation by the source's (full-component patch)."""

    def edit(selected: torch.Tensor, rows: torch.Tensor | slice) -> torch.Tensor:
        out = selected
        for v in variables:
            source = engine.sources[v][rows].to(selected.device, selected.dtype)
            mask = engine.do[v][rows].to(selected.device)
            shape = (-1,) + (1,) * (selected.dim() - 1)
            out = torch.where(mask.view(shape), source, out)
        return out

    return edit


def random_bases(
    subspaces: Mapping[str, tuple[int, int]], width: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Random orthonormal subspaces with the same ranks as ``subspaces``, mutually orthogonal.

    The null against which a trained alignment is compared: same location, same
    dimensions, no training.
    """
    total = sum(stop - start for start, stop in subspaces.values())
    q, _ = torch.linalg.qr(torch.randn(width, max(total, 1), generator=generator))
    bases, offset = {}, 0
    for v, (start, stop) in subspaces.items():
        bases[v] = q[:, offset : offset + (stop - start)]
        offset += stop - start
    return bases
