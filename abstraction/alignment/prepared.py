"""Prepared interchanges: one counterfactual dataset made ready for interventions at one site.

Preparing computes, once, everything that does not depend on the subspaces being
trained or scored: the base activations up to the cut (prefix cache), each
variable's source activation at the location, the intervention masks (``do.<var>``)
and the labels. Training, evaluation, baselines and sweeps then pass
:class:`~abstraction.interventions.Intervention` objects, which run through
:mod:`abstraction.runtime` on the network's suffix only, in large batches.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from abstraction.alignment.prefix_cache import (
    PrefixCache,
    cut_layer,
    device_budget,
    run_suffix,
    supports_kv_reuse,
)
from abstraction.errors import AbstractionError, UnknownNameError, nearest
from abstraction.interventions import Intervention, InterventionError
from abstraction.locations import Location, ResolvedLocation, resolve, resolve_positions
from abstraction.network import FAMILIES, Batch, Network, readout_logits
from abstraction.runtime import Applied, Edit, collect, hooked, site_edit
from abstraction.task import Task

__all__ = ["PASS_BYTES", "Interventions", "PreparedInterchanges"]

PASS_BYTES = 256 * 2**20
"""Bytes one forward pass of preparation or evaluation may work on (rows are chunked)."""

Interventions = Mapping[str, Intervention] | Sequence[Intervention] | None
"""What to apply to prepared rows: a mapping ``variable -> intervention`` (each takes
that variable's source activation, on the rows that intervene on it), a sequence of
source-free interventions applied to every row (ablations), or ``None`` (no edit)."""


def _rows(at: torch.Tensor | None, rows: torch.Tensor | slice) -> torch.Tensor | None:
    if at is None or isinstance(rows, slice):
        return None if at is None else at[rows]
    return at[rows.to(at.device)]


_Encoded = tuple[Batch, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]


def _encode(task: Task, data: pd.DataFrame, variables: Sequence[str]) -> _Encoded:
    """The base batch, labels, base labels, ``changed`` and ``do.<var>`` masks of ``data``."""
    if len(data) == 0:
        raise AbstractionError("the counterfactual dataset is empty; generate some pairs first")
    do = {}
    for v in variables:
        if f"do.{v}" not in data:
            raise AbstractionError(
                f"the dataset never intervenes on {v!r}; generate it with "
                f"interventions=[[{v!r}], ...]"
            )
        do[v] = torch.tensor(data[f"do.{v}"].to_numpy(dtype=bool))
    return (
        task.batch(data, "base."),
        task.labels(data, "label"),
        task.labels(data, "base_label"),
        torch.tensor(data["changed"].to_numpy(dtype=bool)),
        do,
    )


def _collect(
    network: Network, batch: Batch, sites: Sequence[ResolvedLocation], batch_size: int
) -> list[torch.Tensor]:
    """Activations of every row of ``batch`` at each of ``sites``, from one pass per chunk."""
    parts: list[list[torch.Tensor]] = [[] for _ in sites]
    with torch.no_grad():
        for start in range(0, len(batch), batch_size):
            chunk = _causal_prefix(network, batch.select(slice(start, start + batch_size)), sites)
            found = collect(network, chunk, [site.location for site in sites])
            for part, activations in zip(parts, found, strict=True):
                part.append(activations.cpu())
    return [torch.cat(part) for part in parts]


def _causal_prefix(network: Network, batch: Batch, sites: Sequence[ResolvedLocation]) -> Batch:
    """``batch`` without the tokens after the last position any site reads.

    In a causal language model nothing at position ``p`` depends on later tokens, so
    collecting a source at the first token needs one position of each sequence, not
    all of them. Other networks, and sites without a position, get ``batch`` as is.
    """
    family = FAMILIES.get(network.family)
    ids = batch.inputs.get("input_ids")
    causal = getattr(network.config, "is_causal", True) is not False
    if family is None or family.auto_class != "AutoModelForCausalLM" or not causal:
        return batch
    if ids is None or ids.dim() != 2:
        return batch
    length = int(ids.shape[1])
    wanted = [resolve_positions(site.location.position, batch, length) for site in sites]
    if any(positions is None or len(positions) == 0 for positions in wanted):
        return batch
    last = max(int(positions.max()) for positions in wanted if positions is not None)
    if last + 1 >= length:
        return batch
    inputs = {
        k: v[:, : last + 1] if v.dim() >= 2 and v.shape[1] == length else v
        for k, v in batch.inputs.items()
    }
    readout = None if batch.readout is None else batch.readout.clamp(max=last)
    cut = Batch(inputs, batch.positions, readout, batch.candidates)
    for site, positions in zip(sites, wanted, strict=True):
        # positions counted from a sequence's end would move: keep those whole
        again = resolve_positions(site.location.position, cut, last + 1)
        if again is None or positions is None or not torch.equal(again, positions):
            return batch
    return cut


class PreparedInterchanges:
    """A counterfactual dataset prepared for interchange interventions.

    Usually all variables live at one site. With a mapping ``variable -> location``
    each variable has its own site (IOI's subject at ``s.last`` and indirect object at
    ``io.last``): each variable's source activations are collected at its site, a row
    intervening on several variables edits every site with its own source (a joint
    multi-source interchange), and the prefix cache is cut before the earliest site.

    Args:
        network: the network.
        task: encodes the dataset's inputs and labels.
        data: a counterfactual dataset (see :mod:`abstraction.counterfactuals`).
        location: the intervention site, or one site per variable.
        variables: the causal variables whose sources are prepared.
        memory_budget: bytes of cached activations held in RAM before using disk
            (default: :func:`~abstraction.alignment.prefix_cache.memory_budget`).
        batch_size: rows per forward pass while preparing.
        reuse_keys_values: allow the key/value-reusing suffix where it applies
            (``False``: always run the suffix on every position, e.g. to compare).
    """

    def __init__(
        self,
        network: Network,
        task: Task,
        data: pd.DataFrame,
        location: Location | Mapping[str, Location],
        variables: Sequence[str],
        *,
        memory_budget: int | None = None,
        batch_size: int = 16384,
        reuse_keys_values: bool = True,
    ) -> None:
        self._setup(network, task, data, location, variables, _encode(task, data, variables))
        batch_size = min(batch_size, self.rows_per_pass())
        self.sources: dict[str, torch.Tensor] = {
            v: _collect(network, task.batch(data, f"source.{v}."), [self.sites[v]], batch_size)[0]
            for v in self.variables
        }
        self.start = self._first_position() if reuse_keys_values else 0
        self.cache = (
            PrefixCache(
                network,
                self.base,
                self.cut,
                memory_budget=memory_budget,
                batch_size=batch_size,
                start=self.start,
            )
            if self.cut is not None
            else None
        )
        self._resolve_positions()

    @classmethod
    def for_locations(
        cls,
        network: Network,
        task: Task,
        data: pd.DataFrame,
        locations: Sequence[Location],
        variables: Sequence[str],
        *,
        memory_budget: int | None = None,
        batch_size: int = 16384,
        reuse_keys_values: bool = True,
    ) -> list[PreparedInterchanges]:
        """The same dataset prepared at several locations (a sweep's cells) in one pass.

        Each variable's sources run through the network once for all locations, and
        so do the bases: one shared prefix cache (:meth:`PrefixCache.shared`) holds
        every location's cut, with keys and values stored once, within
        ``memory_budget`` for all of them. The suffix starts at the earliest position
        any location needs. Equal to preparing each location on its own; only faster.
        """
        encoded = _encode(task, data, variables)
        prepared = []
        for location in locations:
            item = cls.__new__(cls)
            item._setup(network, task, data, location, variables, encoded)
            prepared.append(item)
        if not prepared:
            return []
        first = prepared[0]
        batch_size = min(batch_size, first.rows_per_pass())
        for v in first.variables:
            sites = [item.sites[v] for item in prepared]
            found = _collect(network, task.batch(data, f"source.{v}."), sites, batch_size)
            for item, activations in zip(prepared, found, strict=True):
                item.sources[v] = activations
        cuts = [item.cut for item in prepared]
        start = min(item._first_position() for item in prepared) if reuse_keys_values else 0
        if None in cuts:
            for item in prepared:
                item.start = 0
                item.cache = None
                item._resolve_positions()
            return prepared
        caches = PrefixCache.shared(
            network,
            first.base,
            [c for c in cuts if c is not None],
            memory_budget=memory_budget,
            batch_size=batch_size,
            start=start,
        )
        for item, cache in zip(prepared, caches, strict=True):
            item.start = start
            item.cache = cache
            item._resolve_positions()
        return prepared

    def _resolve_positions(self) -> None:
        """Each site's position in every row, resolved and checked once.

        An edit then indexes these (on the network's device) instead of resolving
        positions from the attention mask at every step, which would read the mask back
        to the host and check it there: a GPU synchronisation per cell and step. Sites
        at the cut count positions from the suffix's first one.
        """
        self._positions: dict[Location, torch.Tensor] = {}
        first = next(iter(self.base.inputs.values()), None)
        if first is None or first.dim() < 2:
            return
        length = int(first.shape[1])
        for site in self._distinct:
            if not site.sequence:
                continue
            at = resolve_positions(site.location.position, self.base, length)
            if at is None:
                continue
            offset = self.start if self.at_cut(site) else 0
            if offset and bool((at < offset).any()):
                raise InterventionError(
                    f"at {site.location}: a row's position is before {offset}, the first "
                    "position this suffix runs on; prepare the data at this location"
                )
            self._positions[site.location] = (at - offset).to(self.network.device)

    def _setup(
        self,
        network: Network,
        task: Task,
        data: pd.DataFrame,
        location: Location | Mapping[str, Location],
        variables: Sequence[str],
        encoded: _Encoded,
    ) -> None:
        self.network = network
        self.rows = len(data)
        self.variables = tuple(variables)
        if isinstance(location, Mapping):
            missing = [v for v in self.variables if v not in location]
            if missing:
                raise AbstractionError(
                    f"no location is given for variable(s) {missing}; give every aligned "
                    "variable a location"
                )
            if not self.variables:
                raise AbstractionError(
                    "one location per variable needs variables; pass a single Location "
                    "for source-free interventions"
                )
            self.sites = {v: resolve(network, location[v]) for v in self.variables}
            self.site = self.sites[self.variables[0]]
        else:
            self.site = resolve(network, location)
            self.sites = dict.fromkeys(self.variables, self.site)
        by_location = {site.location: site for site in (self.site, *self.sites.values())}
        self._distinct = tuple(by_location.values())
        self.base, self.labels, self.base_labels, self.changed, self.do = encoded
        # variables every row intervenes on (read once here): their edits need no row mask
        self._everywhere = frozenset(v for v, m in self.do.items() if bool(m.all()))
        self.sources = {}
        cuts = [cut_layer(site) for site in self._distinct]
        self.cut = (
            min(c for c in cuts if c is not None)
            if network.blocks is not None and None not in cuts
            else None
        )

    def rows_per_pass(self, cached_bytes_per_row: int = 0) -> int:
        """Rows per forward pass that keep its working set near :data:`PASS_BYTES`.

        A block's working set is about 24 floats per position and unit of width
        (queries, keys, values, the MLP's four-fold hidden layer, their gradients).
        """
        first = next(iter(self.base.inputs.values()))
        length = int(first.shape[1]) if first.dim() >= 2 else 1
        per_row = length * int(self.network.width or 1) * 4 * 24 + cached_bytes_per_row
        return max(1, PASS_BYTES // per_row)

    def _first_position(self) -> int:
        """The first position the suffix must run on (0: all of them)."""
        network, base = self.network, self.base
        if self.cut is None or not supports_kv_reuse(network) or base.readout is None:
            return 0
        ids = base.inputs.get("input_ids")
        if ids is None or ids.dim() != 2:
            return 0
        first = int(base.readout.min())
        for site in self._distinct:
            if not (site.is_block_output and cut_layer(site) == self.cut):
                return 0  # a hooked site after the cut sees whole sequences
            positions = resolve_positions(site.location.position, base, ids.shape[1])
            if positions is None:
                return 0
            first = min(first, int(positions.min()))
        return max(first, 0)

    @property
    def multi_site(self) -> bool:
        """Whether the variables live at more than one site."""
        return len(self._distinct) > 1

    @property
    def locations(self) -> dict[str, Location]:
        """Each variable's location."""
        return {v: site.location for v, site in self.sites.items()}

    def width_of(self, variable: str) -> int:
        """The width of the activation selected at ``variable``'s site."""
        return int(self.sources[variable].shape[-1])

    def _site_width(self, site: ResolvedLocation) -> int:
        for v in self.variables:
            if self.sites[v].location == site.location:
                return self.width_of(v)
        return int(site.width or 0)

    @property
    def width(self) -> int:
        """The width of the selected activation (of the first variable's site)."""
        return self._site_width(self.site)

    def applied(self, rows: torch.Tensor | slice, interventions: Interventions) -> list[Applied]:
        """``interventions`` bound to the sources and masks of base rows ``rows``."""
        if interventions is None:
            return []
        if isinstance(interventions, Mapping):
            pairs: list[tuple[str | None, Intervention]] = list(interventions.items())
        else:
            pairs = [(None, iv) for iv in interventions]
        out = []
        for variable, iv in pairs:
            if variable is not None:
                site = self.sites.get(variable, self.site)
            else:  # a source-free ablation: at whichever prepared site it names
                site = next((s for s in self._distinct if s.location == iv.location), self.site)
            if iv.location != site.location:
                raise InterventionError(
                    f"{iv!r} is at {iv.location} but these interchanges were prepared at "
                    f"{site.location}; prepare the data at the intervention's location"
                )
            iv.check(self._site_width(site))
            if variable is None:
                if iv.needs_source:
                    raise InterventionError(
                        f"{iv!r} needs a source: pass a mapping variable -> intervention so "
                        "it takes that variable's source activations"
                    )
                out.append(Applied(iv))
                continue
            if variable not in self.sources:
                raise UnknownNameError(
                    f"no source activations were prepared for {variable!r}; "
                    + nearest(variable, self.variables)
                )
            source = self.sources[variable][rows] if iv.needs_source else None
            mask = None if variable in self._everywhere else self.do[variable][rows]
            out.append(Applied(iv, source, mask))
        return out

    def logits(
        self, rows: torch.Tensor | slice, interventions: Interventions = None
    ) -> torch.Tensor:
        """Readout logits of base rows ``rows`` with ``interventions`` applied."""
        base = self.base.select(rows)
        if self.cache is None:
            edits = self._edits(base, rows, interventions, 0)
            batch = base.to(self.network.device)
            with hooked(self.network, edits):
                return readout_logits(self.network.call(batch.inputs), batch)
        hidden, hooks = self.suffix_input(rows, interventions, base)
        past = [
            (k.to(self.network.device), v.to(self.network.device)) for k, v in self.cache.past(rows)
        ]
        return run_suffix(
            self.network,
            base,
            self.cache.cut,
            hidden,
            hooks,
            tuple_len=self.cache.tuple_len,
            start=self.cache.start,
            past=past if self.cache.start else None,
        )

    def suffix_input(
        self,
        rows: torch.Tensor | slice,
        interventions: Interventions = None,
        base: Batch | None = None,
    ) -> tuple[torch.Tensor, list[tuple[ResolvedLocation, Edit]]]:
        """The cached block output of ``rows`` with the edits at the cut applied, and
        the edits of sites after the cut (to hook into the suffix)."""
        assert self.cache is not None, "no prefix cache: these interchanges run whole passes"
        base = self.base.select(rows) if base is None else base
        hidden = self.cache.get(rows).to(self.network.device)
        hooks = []
        for site, edit in self._edits(base, rows, interventions, self.cache.start):
            if self.at_cut(site):
                # The cached block output is the site itself: edit it before the suffix runs.
                hidden = edit(hidden)
            else:
                hooks.append((site, edit))
        return hidden, hooks

    def _edits(
        self, base: Batch, rows: torch.Tensor | slice, interventions: Interventions, start: int
    ) -> list[tuple[ResolvedLocation, Edit]]:
        applied = self.applied(rows, interventions)
        edits = []
        for site in self._distinct:
            here = [a for a in applied if a.intervention.location == site.location]
            if not here:
                continue
            at = self._positions.get(site.location) if start == self.start else None
            offset = start if self.at_cut(site) else 0
            edits.append(
                (site, site_edit(site, base, here, offset=offset, positions=_rows(at, rows)))
            )
        return edits

    def at_cut(self, site: ResolvedLocation) -> bool:
        return self.cache is not None and site.is_block_output and cut_layer(site) == self.cache.cut

    @torch.no_grad()
    def predict(
        self,
        interventions: Interventions = None,
        rows: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Predicted class ids for ``rows`` (default: all) under ``interventions``.

        ``batch_size``: rows per pass (default: at most 8192, fewer where a pass would
        work on more than :data:`PASS_BYTES`).
        """
        if rows is None:
            rows = torch.arange(self.rows)
        if batch_size is None:
            cached = self.cache.nbytes // max(1, self.rows) if self.cache is not None else 0
            batch_size = min(8192, self.rows_per_pass(cached))
        preds = [
            self.logits(rows[s : s + batch_size], interventions).argmax(-1).cpu()
            for s in range(0, len(rows), batch_size)
        ]
        return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)

    def correct(
        self, interventions: Interventions = None, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-row booleans: does the intervened network predict the counterfactual label?"""
        rows = torch.arange(self.rows) if rows is None else rows
        return self.predict(interventions, rows) == self.labels[rows]

    def reordered(self, order: torch.Tensor, *, keys_values: bool = True) -> PreparedInterchanges:
        """A view with rows permuted by ``order``, materialised once.

        Training takes contiguous slices of a shuffled copy instead of gathering
        random rows at every step, which is several times faster for small networks.
        A prefix cache on disk (or too large to copy) stays where it is and is read
        through the permutation (see :meth:`PrefixCache.reordered`). ``keys_values=False``
        leaves the cached keys and values out of the view (a staircase of cells reads
        them from one cell only). On an accelerator, a view whose rows fit
        :func:`~abstraction.alignment.prefix_cache.device_budget` keeps them there
        (cache, keys and values, sources, labels), so a step gathers its batch on the
        device instead of copying it from host memory.
        """
        view = copy.copy(self)
        view.base = self.base.select(order)
        view.labels = self.labels[order]
        view.base_labels = self.base_labels[order]
        view.changed = self.changed[order]
        view.do = {v: m[order] for v, m in self.do.items()}
        view.sources = {v: t[order] for v, t in self.sources.items()}
        view._positions = {
            location: at[order.to(at.device)] for location, at in self._positions.items()
        }
        if self.cache is not None:
            view.cache = self.cache.reordered(order, keys_values=keys_values)
        device = self.network.device
        if device.type != "cpu" and view._training_bytes() <= device_budget(device):
            view._move_to(device)
        return view

    def _training_bytes(self) -> int:
        """Bytes of this view's rows that a training step reads (cache and sources)."""
        cached = self.cache.nbytes if self.cache is not None else 0
        return cached + sum(int(t.nbytes) for t in self.sources.values())

    def _move_to(self, device: torch.device) -> None:
        """Keep this (reordered) view's rows on ``device``: each step then gathers its
        batch there instead of copying it from host memory. A cache that cannot move
        (on disk, or read through a permutation) stays where it is."""
        moved = self.cache.on_device(device) if self.cache is not None else None
        if self.cache is not None and moved is None:
            return
        self.cache = moved
        self.base = self.base.to(device)
        self.labels = self.labels.to(device)
        self.do = {v: m.to(device) for v, m in self.do.items()}
        self.sources = {v: t.to(device) for v, t in self.sources.items()}

    def close(self) -> None:
        """Free the prefix cache."""
        if self.cache is not None:
            self.cache.close()
