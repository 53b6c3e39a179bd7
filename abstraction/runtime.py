"""The hook runtime: the one path by which interventions change a network's activations.

Everything that edits activations goes through here: :func:`intervene` (the public
one-call API), alignment training and evaluation on prepared data, the null
baselines and the prefix-cached suffix runs. So the pyvene conformance tests, which
compare :func:`intervene` with pyvene's ``IntervenableModel``, cover the code that
produces every reported number.

Vocabulary:

* an :class:`Applied` is an :class:`~abstraction.interventions.Intervention` with what it
  needs to run on a batch: the source activation (already selected at the
  intervention's location) and which rows it applies to;
* an :data:`Edit` maps a module's whole activation to its edited version;
  :func:`site_edit` builds one from ``Applied`` interventions at one site;
* :func:`hooked` installs edits on a network for the duration of a ``with`` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from abstraction.interventions import Intervention, InterventionError
from abstraction.locations import Location, ResolvedLocation, resolve, resolve_positions
from abstraction.network import Batch, Network, readout_logits

__all__ = [
    "Applied",
    "Edit",
    "apply_all",
    "collect",
    "hooked",
    "intervene",
    "select",
    "site_edit",
]

Edit = Callable[[torch.Tensor], torch.Tensor]
"""A module's whole activation in, the edited activation out."""


@dataclass(frozen=True)
class Applied:
    """An intervention ready to run on one batch.

    Attributes:
        intervention: what to do.
        source: the source activation at the intervention's location, selected like
            the base's (one row per base row), or ``None`` for ablations.
        rows: a boolean mask of the base rows it applies to (``None``: all rows).
    """

    intervention: Intervention
    source: torch.Tensor | None = None
    rows: torch.Tensor | None = None


def apply_all(selected: torch.Tensor, applied: Sequence[Applied]) -> torch.Tensor:
    """Apply interventions one after another to a selected activation, row-masked.

    A row outside an intervention's mask takes its own current activation as the
    source, so the interchange leaves it exactly as it was (see
    :meth:`Intervention.apply`); source-free interventions are masked on their output.
    """
    out = selected
    for item in applied:
        # lerp with weights that are exactly 0 or 1 returns one input or the other
        # exactly, and is several times faster than torch.where with a broadcast mask
        mask = None
        if item.rows is not None:
            shape = (-1,) + (1,) * (out.dim() - 1)
            mask = item.rows.to(selected.device, selected.dtype).view(shape)
        source = item.source
        if source is None:
            new = item.intervention.apply(out, None)
            out = new if mask is None else torch.lerp(out, new, mask)
            continue
        source = source.to(selected.device, selected.dtype)
        if source.shape != selected.shape:
            raise InterventionError(
                f"at {item.intervention.location}: the source activation has shape "
                f"{tuple(source.shape)} but the base's has {tuple(selected.shape)}; base "
                "and source must have the same length when position=None"
            )
        if mask is not None:
            source = torch.lerp(out, source, mask)
        out = item.intervention.apply(out, source)
    return out


# -- reading and writing the selected part of an activation -------------------------------


def _hidden(value: Any) -> torch.Tensor:
    hidden = value[0] if isinstance(value, tuple) else value
    if not isinstance(hidden, torch.Tensor):
        raise InterventionError(
            f"the hooked module produced {type(hidden).__name__}, not a tensor; choose a "
            "location whose activation is a tensor"
        )
    return hidden


def _view(act: torch.Tensor, site: ResolvedLocation, *, writable: bool = False) -> torch.Tensor:
    view = act
    if site.head is not None:
        head, size = site.head
        shape = (*view.shape[:-1], -1, size)
        # writing needs a true view of a (contiguous) clone; reading may copy
        view = (view.view(shape) if writable else view.reshape(shape))[..., head, :]
    if site.location.dims is not None:
        start, stop = site.location.dims
        view = view[..., start:stop]
    return view


def _positions(
    site: ResolvedLocation, batch: Batch, act: torch.Tensor, offset: int = 0
) -> torch.Tensor | None:
    if not site.sequence or act.dim() < 3:
        return None
    positions = resolve_positions(site.location.position, batch, act.shape[1] + offset)
    if positions is None:
        return None
    if offset and bool((positions < offset).any()):
        raise InterventionError(
            f"at {site.location}: a row's position is before {offset}, the first position "
            "this suffix runs on; prepare the data at this location"
        )
    return positions - offset


def select(act: torch.Tensor, site: ResolvedLocation, batch: Batch) -> torch.Tensor:
    """The part of a module's activation that ``site`` addresses (head, dims, position)."""
    view = _view(act, site)
    positions = _positions(site, batch, act)
    if positions is not None:
        rows = torch.arange(view.shape[0], device=view.device)
        view = view[rows, positions.to(view.device)]
    return view


def site_edit(
    site: ResolvedLocation,
    batch: Batch,
    applied: Sequence[Applied],
    *,
    offset: int = 0,
    positions: torch.Tensor | None = None,
) -> Edit:
    """An :data:`Edit` that applies ``applied`` to the part of the activation ``site`` selects.

    ``offset``: the activation holds positions ``offset..`` of ``batch``'s sequences
    only (a suffix that reuses the keys and values before them).
    ``positions``: each row's position in the activation (``offset`` already taken
    off), resolved and checked beforehand; without it they are resolved from
    ``batch`` at every call, which reads the attention mask back to the host (a GPU
    synchronisation) and checks the positions there.
    """

    def edit(act: torch.Tensor) -> torch.Tensor:
        at = (
            positions
            if positions is not None and act.dim() >= 3
            else _positions(site, batch, act, offset)
        )
        view = _view(act, site)
        if at is not None:
            rows = torch.arange(view.shape[0], device=view.device)
            at = at.to(view.device)
            view = view[rows, at]
        new = apply_all(view, applied)
        out = act.clone()
        target = _view(out, site, writable=True)
        if at is not None:
            target[rows, at] = new.to(target.dtype)
        else:
            target[...] = new.to(target.dtype)
        return out

    return edit


@contextlib.contextmanager
def hooked(network: Network, edits: Sequence[tuple[ResolvedLocation, Edit]]) -> Iterator[None]:
    """Within the context, each site's whole activation passes through its edits."""
    handles = []
    by_site: dict[tuple[str, str], list[Edit]] = {}
    for site, edit in edits:
        by_site.setdefault((site.module_path, site.hook), []).append(edit)
    for (path, side), fns in by_site.items():
        module = network.submodule(path)

        def run_all(act: torch.Tensor, fns: list[Edit] = fns) -> torch.Tensor:
            for fn in fns:
                act = fn(act)
            return act

        if side == "output":

            def output_hook(mod: Any, args: Any, output: Any, run_all: Any = run_all) -> Any:
                new = run_all(_hidden(output))
                return (new, *output[1:]) if isinstance(output, tuple) else new

            handles.append(module.register_forward_hook(output_hook))
        else:

            def input_hook(mod: Any, args: Any, kwargs: Any, run_all: Any = run_all) -> Any:
                if args:
                    return (run_all(_hidden(args[0])), *args[1:]), kwargs
                key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
                return args, {**kwargs, key: run_all(_hidden(kwargs[key]))}

            handles.append(module.register_forward_pre_hook(input_hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def collect(network: Network, batch: Batch, locations: Sequence[Location]) -> list[torch.Tensor]:
    """The activations at ``locations`` (selected by position, head and dims) on ``batch``."""
    sites = [resolve(network, loc) for loc in locations]
    found: list[torch.Tensor | None] = [None] * len(sites)

    def recorder(i: int, site: ResolvedLocation) -> Edit:
        def record(act: torch.Tensor) -> torch.Tensor:
            found[i] = select(act, site, batch)
            return act

        return record

    with hooked(network, [(site, recorder(i, site)) for i, site in enumerate(sites)]):
        network.call_reaching(batch.to(network.device).inputs, [s.module_path for s in sites])
    result = []
    for loc, act in zip(locations, found, strict=True):
        if act is None:
            raise InterventionError(f"location {loc} was not reached by the forward pass")
        result.append(act)
    return result


def intervene(
    network: Network,
    base: Batch,
    interventions: Sequence[Intervention],
    sources: Sequence[Batch | None] | Batch | None = None,
) -> torch.Tensor:
    """Readout logits of ``base`` with every intervention applied.

    Args:
        network: the network.
        base: the base batch.
        interventions: interventions, possibly at several locations.
        sources: one source batch per intervention (``None`` for ablations), or one
            batch shared by all.
    """
    if isinstance(sources, Batch) or sources is None:
        source_list: list[Batch | None] = [sources] * len(interventions)
    else:
        source_list = list(sources)
    if len(source_list) != len(interventions):
        raise InterventionError(
            f"{len(interventions)} interventions but {len(source_list)} sources; give one "
            "source batch per intervention"
        )
    sites = [resolve(network, iv.location) for iv in interventions]
    for iv, site, src in zip(interventions, sites, source_list, strict=True):
        iv.check(site.width)
        if iv.needs_source and src is None:
            raise InterventionError(f"{iv!r} needs a source batch")
        if src is not None and len(src) != len(base):
            raise InterventionError(
                f"source batch has {len(src)} rows but base has {len(base)}; pair each base "
                "row with one source row"
            )
    source_acts: list[torch.Tensor | None] = [None] * len(interventions)
    grouped: dict[int, list[int]] = {}
    for i, (iv, src) in enumerate(zip(interventions, source_list, strict=True)):
        if iv.needs_source and src is not None:
            grouped.setdefault(id(src), []).append(i)
    with torch.no_grad():
        for indices in grouped.values():
            src = source_list[indices[0]]
            assert src is not None
            acts = collect(network, src, [interventions[i].location for i in indices])
            for i, act in zip(indices, acts, strict=True):
                source_acts[i] = act
    edits = [
        (site, site_edit(site, base, [Applied(iv, src)]))
        for iv, site, src in zip(interventions, sites, source_acts, strict=True)
    ]
    batch = base.to(network.device)
    with hooked(network, edits):
        output = network.call(batch.inputs)
    return readout_logits(output, batch)
