"""pyvene interoperability: our interventions as pyvene's, and back.

pyvene is the field's reference implementation of interchange interventions and
this library's conformance oracle: :func:`to_pyvene` builds the pyvene intervention
(and ``RepresentationConfig`` fields) that computes what ours computes, and
:func:`from_pyvene` converts a pyvene intervention, with its trained parameters,
to ours.
"""

from __future__ import annotations

from typing import Any

import torch

from abstraction.interventions import (
    BoundlessPatch,
    Intervention,
    InterventionError,
    LowRankPatch,
    MeanAblation,
    Patch,
    RotatedPatch,
    ZeroAblation,
)
from abstraction.locations import Location, resolve
from abstraction.network import Network, import_pyvene

__all__ = ["from_pyvene", "pyvene_component", "to_pyvene"]


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

    The returned pyvene intervention carries this intervention's parameters, on the
    network's device, so ``IntervenableModel`` built from them computes the same outputs.
    """
    pyvene = import_pyvene()
    site = resolve(network, intervention.location)
    width = site.width
    component = pyvene_component(network, intervention.location)
    if isinstance(intervention, Patch):
        obj = pyvene.VanillaIntervention(embed_dim=width)
    elif isinstance(intervention, RotatedPatch):
        obj = pyvene.RotatedSpaceIntervention(embed_dim=width)
        _typed(obj, intervention.rotation).rotate_layer.weight = intervention.rotation.clone()
        if intervention.subspace[0] != 0:
            raise InterventionError("pyvene swaps rotated coordinates from 0; use subspace=(0, k)")
        obj.set_interchange_dim(intervention.subspace[1])
    elif isinstance(intervention, LowRankPatch):
        rank = intervention.basis.shape[1]
        obj = pyvene.LowRankRotatedSpaceIntervention(embed_dim=width, low_rank_dimension=rank)
        _typed(obj, intervention.basis).rotate_layer.weight = intervention.basis.clone()
    elif isinstance(intervention, BoundlessPatch):
        obj = pyvene.BoundlessRotatedSpaceIntervention(embed_dim=width)
        _typed(obj, intervention.rotation).rotate_layer.weight = intervention.rotation.clone()
        obj.set_intervention_boundaries(float(torch.as_tensor(intervention.boundary).detach()))
        obj.set_temperature(torch.as_tensor(intervention.temperature).detach().clone())
    elif isinstance(intervention, ZeroAblation) and intervention.basis is None:
        obj = pyvene.ZeroIntervention(embed_dim=width)
    elif isinstance(intervention, MeanAblation) and intervention.basis is None:
        obj = pyvene.VanillaIntervention(embed_dim=width, source_representation=intervention.mean)
    else:
        raise InterventionError(f"pyvene has no equivalent of {intervention!r}")
    # on the network's device, as IntervenableModel runs it (it does not move interventions)
    return component, obj.to(network.device)


def _typed(obj: Any, like: torch.Tensor) -> Any:
    """``obj`` (a pyvene intervention) with its parameters in ``like``'s dtype.

    pyvene casts activations to its rotation's dtype, so a float64 intervention must
    become a float64 pyvene intervention before its weights are assigned.
    """
    return obj.to(like.dtype)


def from_pyvene(obj: Any, location: Location) -> Intervention:
    """Convert a pyvene intervention object (with its trained parameters) to ours."""
    pyvene = import_pyvene()
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
            location, rotation=obj.rotate_layer.weight.detach().clone(), subspace=(0, stop)
        )
    if isinstance(obj, pyvene.ZeroIntervention):
        return ZeroAblation(location)
    if isinstance(obj, pyvene.VanillaIntervention):
        if getattr(obj, "source_representation", None) is not None:
            return MeanAblation(location, mean=obj.source_representation.detach().clone())
        return Patch(location)
    raise InterventionError(f"no equivalent of pyvene's {type(obj).__name__}")
