"""Interventions: values that say how to change an activation, and the hooks that apply them.

Each intervention is a frozen dataclass (printable, comparable, serialisable) with a
pure ``apply(base, source)`` on the selected activation's last dimension:

================== =================================================================
:class:`Patch`      replace the activation (or its ``Location.dims`` slice) by the
                    source's: full patch and dimension-slice patch
:class:`RotatedPatch`  rotate with an orthogonal matrix, swap some rotated
                    coordinates, rotate back (DAS)
:class:`LowRankPatch`  swap the component in the span of orthonormal columns
                    (low-rank DAS)
:class:`BoundlessPatch` swap rotated coordinates weighted by a learned sigmoid mask
                    (boundless DAS)
:class:`MeanAblation`  replace (a subspace of) the activation by a mean activation
:class:`ZeroAblation`  replace (a subspace of) the activation by zeros
================== =================================================================

The math is pyvene's (``VanillaIntervention``, ``RotatedSpaceIntervention``,
``LowRankRotatedSpaceIntervention``, ``BoundlessRotatedSpaceIntervention``,
``ZeroIntervention``); integration tests check outputs equal pyvene's
``IntervenableModel`` on the same network, location and parameters.
:func:`to_pyvene` and :func:`from_pyvene` convert in both directions.

:func:`intervene` runs a network on a base batch with several interventions at
several locations, each taking its source activation from its own source batch;
:func:`collect` reads activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from abstraction.errors import AbstractionError
from abstraction.locations import Location, ResolvedLocation, resolve, resolve_positions
from abstraction.network import Batch, Network, readout_logits

__all__ = [
    "BoundlessPatch",
    "Intervention",
    "InterventionError",
    "LowRankPatch",
    "MeanAblation",
    "Patch",
    "RotatedPatch",
    "ZeroAblation",
    "boundary_mask",
    "collect",
    "from_pyvene",
    "intervene",
    "subspace_interchange",
    "to_pyvene",
]


class InterventionError(AbstractionError, ValueError):
    """An intervention does not fit its location, its source, or the network."""


def subspace_interchange(
    base: torch.Tensor, source: torch.Tensor, basis: torch.Tensor
) -> torch.Tensor:
    """Replace the component of ``base`` in the span of ``basis`` columns by ``source``'s.

    ``basis`` is ``(width, k)`` with orthonormal columns. This is the core of DAS.
    """
    return base + torch.matmul(torch.matmul(source, basis) - torch.matmul(base, basis), basis.T)


def boundary_mask(width: int, boundary: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Boundless DAS's soft mask over rotated coordinates (pyvene's ``sigmoid_boundary``)."""
    population = torch.arange(width, device=boundary.device, dtype=boundary.dtype)
    edge = torch.clamp(boundary, 1e-3, 1.0) * width
    return torch.sigmoid(population / temperature) * torch.sigmoid(
        (edge - population) / temperature
    )


def _tensor_repr(t: torch.Tensor | None) -> str:
    return "None" if t is None else f"tensor{tuple(t.shape)}"


def _check_width(name: str, tensor: torch.Tensor, width: int | None, dim: int = 0) -> None:
    if not tensor.is_floating_point():
        raise InterventionError(
            f"{name} has dtype {tensor.dtype}; it must be a floating-point tensor (it is cast "
            "to the network's dtype and device when applied)"
        )
    if width is not None and tensor.shape[dim] != width:
        raise InterventionError(
            f"{name} has {tensor.shape[dim]} rows but the location's activation has width "
            f"{width}; build it for this location's width"
        )


@dataclass(frozen=True, repr=False, eq=False)
class Intervention:
    """Base class: an intervention at one location."""

    location: Location

    needs_source: bool = field(default=True, init=False)

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        """The new activation, from the base activation and the source activation."""
        raise NotImplementedError

    def check(self, width: int | None) -> None:
        """Raise :class:`InterventionError` when the parameters do not fit ``width``."""

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if k != "needs_source"}
        shown = ", ".join(
            f"{k}={_tensor_repr(v) if isinstance(v, torch.Tensor) else v!s}"
            for k, v in fields.items()
        )
        return f"{type(self).__name__}({shown})"


@dataclass(frozen=True, repr=False, eq=False)
class Patch(Intervention):
    """Replace the activation (or its ``location.dims`` slice) by the source's."""

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        assert source is not None
        return source.to(base.device, base.dtype).expand_as(base)


@dataclass(frozen=True, repr=False, eq=False)
class RotatedPatch(Intervention):
    """DAS: rotate by an orthogonal ``(w, w)`` matrix, swap coordinates ``dims``, rotate back."""

    rotation: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    dims: tuple[int, int] = (0, 0)

    def check(self, width: int | None) -> None:
        _check_width("rotation", self.rotation, width)
        w = self.rotation.shape[0]
        if self.rotation.shape != (w, w):
            raise InterventionError(f"rotation must be square, got {tuple(self.rotation.shape)}")
        start, stop = self.dims
        if not 0 <= start < stop <= w:
            raise InterventionError(f"dims {self.dims} must satisfy 0 <= start < stop <= {w}")

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        assert source is not None
        r = self.rotation.to(base.device, base.dtype)
        rotated = torch.matmul(base, r)
        rotated_source = torch.matmul(source.to(base.device, base.dtype), r)
        start, stop = self.dims
        rotated = torch.cat(
            [
                rotated[..., :start],
                rotated_source[..., start:stop].expand_as(rotated[..., start:stop]),
                rotated[..., stop:],
            ],
            dim=-1,
        )
        return torch.matmul(rotated, r.T)


@dataclass(frozen=True, repr=False, eq=False)
class LowRankPatch(Intervention):
    """Low-rank DAS: swap the component in the span of ``basis`` (``(w, k)``, orthonormal)."""

    basis: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def check(self, width: int | None) -> None:
        _check_width("basis", self.basis, width)
        if self.basis.dim() != 2 or self.basis.shape[1] > self.basis.shape[0]:
            raise InterventionError(
                f"basis must be (width, rank) with rank <= width, got {tuple(self.basis.shape)}"
            )

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        assert source is not None
        return subspace_interchange(
            base, source.to(base.device, base.dtype), self.basis.to(base.device, base.dtype)
        )


@dataclass(frozen=True, repr=False, eq=False)
class BoundlessPatch(Intervention):
    """Boundless DAS: interpolate rotated coordinates with a sigmoid mask of learned size."""

    rotation: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    boundary: float = 0.5
    temperature: float = 50.0

    def check(self, width: int | None) -> None:
        _check_width("rotation", self.rotation, width)

    def mask(self) -> torch.Tensor:
        """The mask over rotated coordinates (1 = taken from the source)."""
        return boundary_mask(
            self.rotation.shape[0], torch.tensor(self.boundary), torch.tensor(self.temperature)
        )

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        assert source is not None
        r = self.rotation.to(base.device, base.dtype)
        mask = self.mask().to(base.device, base.dtype)
        rotated = torch.matmul(base, r)
        rotated_source = torch.matmul(source.to(base.device, base.dtype), r)
        mixed = (1.0 - mask) * rotated + mask * rotated_source
        return torch.matmul(mixed, r.T)


@dataclass(frozen=True, repr=False, eq=False)
class MeanAblation(Intervention):
    """Replace the activation, or its component in the span of ``basis``, by ``mean``."""

    mean: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    basis: torch.Tensor | None = None
    needs_source: bool = field(default=False, init=False)

    def check(self, width: int | None) -> None:
        _check_width("mean", self.mean, width, dim=-1)
        if self.basis is not None:
            _check_width("basis", self.basis, width)

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        mean = self.mean.to(base.device, base.dtype).expand_as(base)
        if self.basis is None:
            return mean
        return subspace_interchange(base, mean, self.basis.to(base.device, base.dtype))


@dataclass(frozen=True, repr=False, eq=False)
class ZeroAblation(Intervention):
    """Replace the activation, or its component in the span of ``basis``, by zeros."""

    basis: torch.Tensor | None = None
    needs_source: bool = field(default=False, init=False)

    def check(self, width: int | None) -> None:
        if self.basis is not None:
            _check_width("basis", self.basis, width)

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        if self.basis is None:
            return torch.zeros_like(base)
        return subspace_interchange(
            base, torch.zeros_like(base), self.basis.to(base.device, base.dtype)
        )


# -- reading and writing activations ---------------------------------------------------


def _hidden(value: Any) -> torch.Tensor:
    hidden = value[0] if isinstance(value, tuple) else value
    if not isinstance(hidden, torch.Tensor):
        raise InterventionError(
            f"the hooked module produced {type(hidden).__name__}, not a tensor; choose a "
            "location whose activation is a tensor"
        )
    return hidden


def _select(
    act: torch.Tensor, site: ResolvedLocation, positions: torch.Tensor | None
) -> torch.Tensor:
    view = act
    if site.head is not None:
        head, size = site.head
        view = view.reshape(*view.shape[:-1], -1, size)[..., head, :]
    if site.location.dims is not None:
        start, stop = site.location.dims
        view = view[..., start:stop]
    if positions is not None:
        rows = torch.arange(view.shape[0], device=view.device)
        view = view[rows, positions.to(view.device)]
    return view


def _replace(
    act: torch.Tensor, site: ResolvedLocation, positions: torch.Tensor | None, new: torch.Tensor
) -> torch.Tensor:
    out = act.clone()
    view = out
    if site.head is not None:
        head, size = site.head
        view = view.view(*view.shape[:-1], -1, size)[..., head, :]
    if site.location.dims is not None:
        start, stop = site.location.dims
        view = view[..., start:stop]
    if positions is not None:
        rows = torch.arange(view.shape[0], device=view.device)
        view[rows, positions.to(view.device)] = new.to(view.dtype)
    else:
        view[...] = new.to(view.dtype)
    return out


def _positions(site: ResolvedLocation, batch: Batch, act: torch.Tensor) -> torch.Tensor | None:
    if not site.sequence or act.dim() < 3:
        return None
    return resolve_positions(site.location.position, batch, act.shape[1])


Edit = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def hooks(network: Network, edits: Sequence[tuple[ResolvedLocation, Edit]]) -> Iterator[None]:
    """Temporarily hook ``network`` so each site's full activation passes through its edit."""
    handles = []
    by_site: dict[tuple[str, str], list[Edit]] = {}
    for site, edit in edits:
        by_site.setdefault((site.module_path, site.hook), []).append(edit)
    for (path, hook), fns in by_site.items():
        module = network.submodule(path)

        def run_all(act: torch.Tensor, fns: list[Edit] = fns) -> torch.Tensor:
            for fn in fns:
                act = fn(act)
            return act

        if hook == "output":

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
            found[i] = _select(act, site, _positions(site, batch, act))
            return act

        return record

    with hooks(network, [(site, recorder(i, site)) for i, site in enumerate(sites)]):
        network.call(batch.to(network.device).inputs)
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

    def editor(iv: Intervention, site: ResolvedLocation, source: torch.Tensor | None) -> Edit:
        def edit(act: torch.Tensor) -> torch.Tensor:
            positions = _positions(site, base, act)
            selected = _select(act, site, positions)
            if source is not None and source.shape != selected.shape:
                raise InterventionError(
                    f"at {site.location}: the source activation has shape {tuple(source.shape)} "
                    f"but the base's has {tuple(selected.shape)}; base and source must have "
                    "the same length when position=None"
                )
            return _replace(act, site, positions, iv.apply(selected, source))

        return edit

    edits = [
        (site, editor(iv, site, src))
        for iv, site, src in zip(interventions, sites, source_acts, strict=True)
    ]
    batch = base.to(network.device)
    with hooks(network, edits):
        output = network.call(batch.inputs)
    return readout_logits(output, batch)


# -- pyvene interoperability -----------------------------------------------------------


def pyvene_component(network: Network, location: Location) -> dict[str, Any]:
    """pyvene's ``RepresentationConfig`` fields for ``location``."""
    site = resolve(network, location)
    if location.path is not None:
        return {"component": f"{location.path}.{location.hook}", "unit": "pos"}
    names = {
        ("residual", "mlp"): "block_output",
        ("residual_input", "mlp"): "block_input",
        ("activation", "mlp"): "mlp_activation",
        ("residual", "gpt2"): "block_output",
        ("residual_input", "gpt2"): "block_input",
        ("attention_output", "gpt2"): "attention_output",
        ("mlp_output", "gpt2"): "mlp_output",
        ("head", "gpt2"): "head_attention_value_output",
    }
    key = (location.component, network.family)
    if key not in names:
        raise InterventionError(f"no pyvene component is known for {location} in {network.family}")
    unit = "h.pos" if site.head is not None else "pos"
    return {"layer": site.layer, "component": names[key], "unit": unit}


def to_pyvene(intervention: Intervention, network: Network) -> tuple[dict[str, Any], Any]:
    """Convert to pyvene: its representation config fields and an intervention object.

    The returned pyvene intervention carries this intervention's parameters, so
    ``IntervenableModel`` built from them computes the same outputs.
    """
    import pyvene

    site = resolve(network, intervention.location)
    width = site.width
    component = pyvene_component(network, intervention.location)
    if isinstance(intervention, Patch):
        obj = pyvene.VanillaIntervention(embed_dim=width)
    elif isinstance(intervention, RotatedPatch):
        obj = pyvene.RotatedSpaceIntervention(embed_dim=width)
        obj.rotate_layer.weight = intervention.rotation.clone()
        obj.set_interchange_dim(intervention.dims[1])
        if intervention.dims[0] != 0:
            raise InterventionError("pyvene swaps rotated dims from 0; use dims=(0, k)")
    elif isinstance(intervention, LowRankPatch):
        rank = intervention.basis.shape[1]
        obj = pyvene.LowRankRotatedSpaceIntervention(embed_dim=width, low_rank_dimension=rank)
        obj.rotate_layer.weight = intervention.basis.clone()
    elif isinstance(intervention, BoundlessPatch):
        obj = pyvene.BoundlessRotatedSpaceIntervention(embed_dim=width)
        obj.rotate_layer.weight = intervention.rotation.clone()
        obj.set_intervention_boundaries(intervention.boundary)
        obj.set_temperature(torch.tensor(intervention.temperature))
    elif isinstance(intervention, ZeroAblation) and intervention.basis is None:
        obj = pyvene.ZeroIntervention(embed_dim=width)
    elif isinstance(intervention, MeanAblation) and intervention.basis is None:
        obj = pyvene.VanillaIntervention(embed_dim=width, source_representation=intervention.mean)
    else:
        raise InterventionError(f"pyvene has no equivalent of {intervention!r}")
    return component, obj


def from_pyvene(obj: Any, location: Location) -> Intervention:
    """Convert a pyvene intervention object (with its trained parameters) to ours."""
    import pyvene

    if isinstance(obj, pyvene.LowRankRotatedSpaceIntervention):
        return LowRankPatch(location, basis=obj.rotate_layer.weight.detach().clone())
    if isinstance(obj, pyvene.BoundlessRotatedSpaceIntervention):
        return BoundlessPatch(
            location,
            rotation=obj.rotate_layer.weight.detach().clone(),
            boundary=float(obj.intervention_boundaries.detach()[0]),
            temperature=float(obj.temperature.detach()),
        )
    if isinstance(obj, pyvene.RotatedSpaceIntervention):
        k = obj.interchange_dim
        width = obj.rotate_layer.weight.shape[0]
        stop = int(k) if k is not None else width
        return RotatedPatch(
            location, rotation=obj.rotate_layer.weight.detach().clone(), dims=(0, stop)
        )
    if isinstance(obj, pyvene.ZeroIntervention):
        return ZeroAblation(location)
    if isinstance(obj, pyvene.VanillaIntervention):
        if getattr(obj, "source_representation", None) is not None:
            return MeanAblation(location, mean=obj.source_representation.detach().clone())
        return Patch(location)
    raise InterventionError(f"no equivalent of pyvene's {type(obj).__name__}")
