"""Our interventions equal pyvene's IntervenableModel on the same network, site and parameters."""

from __future__ import annotations

import pytest
import pyvene
import torch

from abstraction.interventions import (
    BoundlessPatch,
    Intervention,
    LowRankPatch,
    MeanAblation,
    Patch,
    RotatedPatch,
    ZeroAblation,
    from_pyvene,
    intervene,
    to_pyvene,
)
from abstraction.locations import Location
from abstraction.network import Batch, Network

TOLERANCE = 1e-6


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed)))
    return q


def _kinds(loc: Location, width: int) -> list[Intervention]:
    r = _orthogonal(width, 1)
    return [
        Patch(loc),
        RotatedPatch(loc, rotation=r, dims=(0, width // 2)),
        LowRankPatch(loc, basis=r[:, :3]),
        BoundlessPatch(loc, rotation=r, boundary=0.3, temperature=2.0),
        ZeroAblation(loc),
        MeanAblation(loc, mean=torch.randn(width, generator=torch.Generator().manual_seed(2))),
    ]


def _pyvene_logits(
    network: Network,
    iv: Intervention,
    base: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    units: object,
) -> torch.Tensor:
    component, obj = to_pyvene(iv, network)
    config = pyvene.IntervenableConfig(
        representations=[
            pyvene.RepresentationConfig(**component, max_number_of_units=1, intervention=obj)
        ]
    )
    model = pyvene.IntervenableModel(config, network.module)
    if iv.needs_source:
        _, out = model(base, [source], unit_locations={"sources->base": (units, units)})
    else:
        _, out = model(base, unit_locations={"base": units})
    return out.logits if hasattr(out, "logits") else out[0]


@pytest.mark.parametrize("layer", [0, 2])
def test_mlp_matches_pyvene(small_mlp: Network, layer: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 16, generator=gen), torch.randn(8, 1, 16, generator=gen)
    base, source = Batch({"inputs_embeds": x}), Batch({"inputs_embeds": y})
    plain = small_mlp.logits(base)
    for iv in _kinds(Location(layer=layer), 16):
        ours = intervene(small_mlp, base, [iv], source)
        theirs = _pyvene_logits(small_mlp, iv, {"inputs_embeds": x}, {"inputs_embeds": y}, 0)
        assert (ours - theirs).abs().max().item() <= TOLERANCE, iv
        assert (ours - plain).abs().max().item() > 1e-4, f"{iv} changed nothing"


@pytest.mark.parametrize(
    ("component", "layer", "position", "head"),
    [
        ("residual", 1, 3, None),
        ("mlp_output", 0, -1, None),
        ("attention_output", 1, 5, None),
        ("head", 1, 4, 2),
    ],
)
def test_gpt2_matches_pyvene(
    small_gpt2: Network, component: str, layer: int, position: int, head: int | None
) -> None:
    gen = torch.Generator().manual_seed(0)
    n, length = 6, 7
    ids = torch.randint(0, 20, (n, length), generator=gen)
    src_ids = torch.randint(0, 20, (n, length), generator=gen)
    readout = torch.full((n,), length - 1)
    base = Batch({"input_ids": ids}, readout=readout)
    source = Batch({"input_ids": src_ids}, readout=readout)
    loc = Location(layer=layer, component=component, position=position, head=head)
    width = 8 if component == "head" else 32
    absolute = position if position >= 0 else length + position
    pos_units = [[[absolute]] * n]
    units = [[[[head]] * n, [[absolute]] * n]] if head is not None else pos_units
    for iv in _kinds(loc, width):
        if isinstance(iv, (BoundlessPatch, MeanAblation)) and head is not None:
            continue
        ours = intervene(small_gpt2, base, [iv], source)
        theirs = _pyvene_logits(small_gpt2, iv, {"input_ids": ids}, {"input_ids": src_ids}, units)
        assert (ours - theirs[:, -1]).abs().max().item() <= TOLERANCE, iv


def test_round_trip_through_pyvene(small_mlp: Network) -> None:
    loc = Location(layer=1)
    for iv in _kinds(loc, 16):
        _, obj = to_pyvene(iv, small_mlp)
        back = from_pyvene(obj, loc)
        assert type(back) is type(iv)
        for name in ("rotation", "basis", "mean"):
            if isinstance(getattr(iv, name, None), torch.Tensor):
                assert torch.allclose(getattr(back, name), getattr(iv, name), atol=1e-6)
