"""Locations: where in a network an activation lives.

A :class:`Location` names an activation by the conventional scheme shared across
model families, ``Location(layer=3, component="mlp_output", position="last")``, or by
submodule path, ``Location.module("transformer.h.3.mlp")``. Components:

================== ===========================================================
``residual``        the residual stream after block ``layer`` (the block output)
``residual_input``  the residual stream entering block ``layer``
``attention_output`` the attention sublayer's output in block ``layer``
``mlp_output``      the MLP sublayer's output in block ``layer``
``head``            one attention head's output (before the output projection),
                    with ``head=``
``activation``      the hidden activation of an MLP block (pyvene's MLP)
================== ===========================================================

``head=`` counts **query** heads (``config.num_attention_heads``): the input of the
output projection is split into that many slices of ``head_dim``. Under grouped-query
attention (``num_key_value_heads`` < ``num_attention_heads``, Llama 3, Qwen2, Mistral)
query head ``h`` reads key/value head ``h // (num_attention_heads //
num_key_value_heads)`` (:attr:`~abstraction.network.Network.kv_heads`), so the heads of
one group share their keys and values but each has its own output slice.

Networks of the ``"generic"`` family (a ``transformers`` model type no family lists)
have only ``residual`` and ``residual_input``; pass ``family=`` to
:meth:`~abstraction.network.Network.wrap` when the layout is a known family's.

Positions are resolved **per example**, so batches with padding (left or right) or
prompts of different lengths point at the right token in each row: a non-negative
int counts real tokens from the start, a negative int counts from the last real
token (``-1`` is the last), ``"last"`` is the last real token, and any other name is
a position the task supplies (``"second_name"``, ``"s.last"``), and a name may carry an
offset in tokens (``"last-1"``, ``"s.last+1"``). ``position=None`` means every
position (and is the only choice for networks without a sequence dimension).

Locations are validated against a network before any forward pass
(:func:`resolve`); errors list the nearest valid names and the valid ranges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from abstraction.errors import AbstractionError, nearest
from abstraction.network import FAMILIES, GENERIC, GENERIC_LACKS, Batch, Network

__all__ = [
    "Location",
    "LocationError",
    "ResolvedLocation",
    "resolve",
    "resolve_positions",
    "split_position",
]


class LocationError(AbstractionError, ValueError):
    """A location does not exist in the network, or a position is out of range."""


@dataclass(frozen=True)
class Location:
    """An activation site: layer, component, position, optional head and dimensions.

    Attributes:
        layer: the block index (negative counts from the last block).
        component: see the module docstring.
        position: token position (int, negative int, ``"last"``, a task-named
            position) or ``None`` for every position.
        head: the attention (query) head, for ``component="head"``; under grouped-query
            attention several query heads share one key/value head (module docstring).
        dims: a ``(start, stop)`` slice of the activation's last dimension.
        path: an explicit submodule path (instead of ``layer``/``component``).
        hook: for ``path`` locations: the submodule's ``"output"`` or ``"input"``.
    """

    layer: int | None = None
    component: str = "residual"
    position: int | str | None = None
    head: int | None = None
    dims: tuple[int, int] | None = None
    path: str | None = None
    hook: str = "output"

    @classmethod
    def module(
        cls,
        path: str,
        *,
        hook: str = "output",
        position: int | str | None = None,
        dims: tuple[int, int] | None = None,
    ) -> Location:
        """A location at a submodule path, e.g. ``Location.module("h.3.mlp")``."""
        return cls(path=path, hook=hook, position=position, dims=dims, component="module")

    def at(self, position: int | str | None) -> Location:
        """The same location at another position."""
        return Location(
            self.layer, self.component, position, self.head, self.dims, self.path, self.hook
        )

    def __str__(self) -> str:
        site = (
            f"{self.path} ({self.hook})"
            if self.path is not None
            else f"layer {self.layer} {self.component}"
        )
        if self.head is not None:
            site += f" head {self.head}"
        if self.position is not None:
            site += f" @ {self.position}"
        if self.dims is not None:
            site += f" [{self.dims[0]}:{self.dims[1]}]"
        return site

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready description."""
        return {
            "layer": self.layer,
            "component": self.component,
            "position": self.position,
            "head": self.head,
            "dims": list(self.dims) if self.dims else None,
            "path": self.path,
            "hook": self.hook,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Location:
        """Inverse of :meth:`to_dict`."""
        dims = data.get("dims")
        return cls(
            layer=data.get("layer"),  # type: ignore[arg-type]
            component=str(data.get("component", "residual")),
            position=data.get("position"),  # type: ignore[arg-type]
            head=data.get("head"),  # type: ignore[arg-type]
            dims=(int(dims[0]), int(dims[1])) if isinstance(dims, list) else None,
            path=data.get("path"),  # type: ignore[arg-type]
            hook=str(data.get("hook", "output")),
        )


@dataclass(frozen=True)
class ResolvedLocation:
    """A location checked against one network.

    Attributes:
        location: what the user asked for.
        module_path: the submodule whose input or output is the activation.
        hook: ``"input"`` or ``"output"``.
        layer: the block index (non-negative), when the location is in a block.
        head: ``(head index, head width)`` when the activation is one head.
        width: the width of the selected activation (after head and dims), if known.
        sequence: whether the activation has a position dimension.
    """

    location: Location
    module_path: str
    hook: str
    layer: int | None
    head: tuple[int, int] | None
    width: int | None
    sequence: bool

    @property
    def is_block_output(self) -> bool:
        """Whether the activation is a whole block's output (the residual stream)."""
        return self.location.component == "residual" and self.location.path is None


def resolve(network: Network, location: Location) -> ResolvedLocation:
    """Check ``location`` against ``network`` and find its submodule, before any forward pass."""
    if location.hook not in ("input", "output"):
        raise LocationError(f"hook must be 'input' or 'output', not {location.hook!r}")
    if location.path is not None:
        network.submodule(location.path)  # raises with the nearest valid paths
        width = _module_width(network, location.path, location.hook)
        layout = network.layout
        sequence = layout.sequence if layout is not None else True
        resolved = ResolvedLocation(
            location, location.path, location.hook, None, None, width, sequence
        )
        return _with_dims(resolved, location)
    family = network.layout
    if family is None or network.blocks_path is None:
        raise LocationError(
            f"{network.name} is not a known model family (GPT-2, GPT-NeoX, Llama, BERT, "
            "pyvene MLP) and its blocks were not found, so layer/component names cannot be "
            "resolved; use Location.module('<submodule path>') instead"
        )
    if location.component not in family.components:
        if family is GENERIC:
            model_type = getattr(network.config, "model_type", None)
            kind = f"model_type {model_type!r}" if model_type else type(network.module).__name__
            raise LocationError(
                f"component {location.component!r} does not exist for {network.name}: "
                f"{kind} is in no known family, so the network is 'generic' and has only "
                f"{', '.join(repr(c) for c in family.components)}; it lacks {GENERIC_LACKS}. "
                f"If its layout is a known family's, use Network.wrap(module, family=...) "
                f"with one of {', '.join(FAMILIES)}"
            )
        raise LocationError(
            f"component {location.component!r} does not exist for {family.name} networks; "
            + nearest(location.component, family.components)
        )
    n_layers = network.n_layers
    if location.layer is None:
        raise LocationError(
            f"give layer= (0 to {n_layers - 1}) for component {location.component!r}"
        )
    layer = location.layer + n_layers if location.layer < 0 else location.layer
    if not 0 <= layer < n_layers:
        raise LocationError(
            f"layer {location.layer} is out of range: {network.name} has {n_layers} layers "
            f"(valid: 0 to {n_layers - 1}, or -1 to -{n_layers})"
        )
    inner, hook = family.components[location.component]
    module_path = f"{network.blocks_path}.{layer}" + (f".{inner}" if inner else "")
    network.submodule(module_path)
    width = network.width
    head: tuple[int, int] | None = None
    if location.component == family.head_component:
        n_heads, head_width = network.n_heads, network.head_width
        if location.head is None:
            raise LocationError(f"component 'head' needs head= (0 to {(n_heads or 1) - 1})")
        if n_heads is None or head_width is None:
            raise LocationError(
                f"{network.name}'s config does not give its number of heads "
                "(num_attention_heads); address the activation with Location.module(...) and dims="
            )
        if not 0 <= location.head < n_heads:
            kv_heads = network.kv_heads
            grouped = (
                f"; heads count query heads: {kv_heads} key/value head(s), each shared by "
                f"{n_heads // kv_heads} query heads (head h reads key/value head "
                f"h // {n_heads // kv_heads})"
                if kv_heads is not None and kv_heads < n_heads
                else ""
            )
            raise LocationError(
                f"head {location.head} is out of range: layer {layer} has {n_heads} heads "
                f"(valid: 0 to {n_heads - 1}){grouped}"
            )
        head = (location.head, head_width)
        width = head_width
    elif location.head is not None:
        raise LocationError(
            f"head= only applies to component {family.head_component!r}, not {location.component!r}"
        )
    if location.component == "activation":
        width = _module_width(network, module_path, hook) or width
    if not family.sequence and location.position is not None:
        raise LocationError(
            f"{network.name} has no sequence dimension: use position=None, not "
            f"{location.position!r}"
        )
    resolved = ResolvedLocation(location, module_path, hook, layer, head, width, family.sequence)
    return _with_dims(resolved, location)


def _with_dims(resolved: ResolvedLocation, location: Location) -> ResolvedLocation:
    if location.dims is None:
        return resolved
    start, stop = location.dims
    width = resolved.width
    if start < 0 or stop <= start or (width is not None and stop > width):
        valid = f"0 <= start < stop <= {width}" if width is not None else "0 <= start < stop"
        raise LocationError(f"dims {location.dims} are invalid for {location}: need {valid}")
    return ResolvedLocation(
        resolved.location,
        resolved.module_path,
        resolved.hook,
        resolved.layer,
        resolved.head,
        stop - start,
        resolved.sequence,
    )


def _module_width(network: Network, path: str, hook: str) -> int | None:
    module = network.submodule(path)
    attr = "out_features" if hook == "output" else "in_features"
    value = getattr(module, attr, None)
    if isinstance(value, int):
        return value
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and type(module).__name__ == "Conv1D":
        return int(weight.shape[1] if hook == "output" else weight.shape[0])
    if path == network.blocks_path or (
        network.blocks_path
        and path.startswith(network.blocks_path)
        and path.count(".") == network.blocks_path.count(".") + 1
    ):
        return network.width
    return None


_OFFSET = re.compile(r"^(?P<name>.+?)\s*(?P<offset>[+-]\s*\d+)$")


def split_position(position: str) -> tuple[str, int]:
    """``"s.last+1"`` -> ``("s.last", 1)``; a name without an offset -> ``(name, 0)``."""
    match = _OFFSET.match(position)
    if match is None:
        return position, 0
    return match["name"], int(match["offset"].replace(" ", ""))


def resolve_positions(position: int | str | None, batch: Batch, length: int) -> torch.Tensor | None:
    """Absolute indices ``(batch,)`` of ``position`` in each row, or ``None`` for all positions.

    Args:
        position: the location's position.
        batch: the batch (its attention mask gives each row's real tokens).
        length: the (padded) sequence length of the activation.
    """
    if position is None:
        return None
    n = len(batch)
    mask = batch.attention_mask
    if mask is None:
        starts = torch.zeros(n, dtype=torch.long)
        ends = torch.full((n,), length - 1, dtype=torch.long)
    else:
        mask = mask.to("cpu").bool()
        idx = torch.arange(mask.shape[1]).expand_as(mask)
        starts = torch.where(mask, idx, mask.shape[1]).min(dim=1).values
        ends = torch.where(mask, idx, -1).max(dim=1).values
    if isinstance(position, int) and not isinstance(position, bool):
        index = starts + position if position >= 0 else ends + position + 1
    elif isinstance(position, str):
        name, offset = (position, 0) if position in batch.positions else split_position(position)
        if name == "last":
            index = ends + offset
        elif name in batch.positions:
            index = batch.positions[name].to("cpu").long() + offset
        else:
            raise LocationError(
                f"position {position!r} is not defined by the task; "
                + nearest(name, ["last", *batch.positions])
            )
    else:
        raise LocationError(f"position must be an int, a name or None, not {position!r}")
    bad = (index < starts) | (index > ends)
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise LocationError(
            f"position {position!r} is beyond the sequence in row {row}: it resolves to index "
            f"{int(index[row])}, but that row's tokens span {int(starts[row])} to "
            f"{int(ends[row])}; use a position inside every example (e.g. 'last' or -1)"
        )
    return index
