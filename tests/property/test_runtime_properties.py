"""The runtime's row masks: rows that do not intervene are left bit for bit as they were."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from abstraction.interventions import (
    BoundlessPatch,
    Intervention,
    LowRankPatch,
    MeanAblation,
    Patch,
    RotatedPatch,
    ZeroAblation,
)
from abstraction.locations import Location
from abstraction.runtime import Applied, apply_all

LOC = Location(layer=0)


def _kind(index: int, width: int, generator: torch.Generator) -> Intervention:
    q = torch.linalg.qr(torch.randn(width, width, generator=generator))[0]
    kinds: list[Intervention] = [
        Patch(LOC),
        RotatedPatch(LOC, rotation=q, subspace=(0, max(1, width // 2))),
        LowRankPatch(LOC, basis=q[:, :2]),
        BoundlessPatch(LOC, rotation=q, boundary=0.4, temperature=1.0),
        MeanAblation(LOC, mean=torch.randn(width, generator=generator), basis=q[:, :1]),
        ZeroAblation(LOC),
    ]
    return kinds[index]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 12),
    width=st.integers(2, 8),
    kinds=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    seed=st.integers(0, 10_000),
)
def test_masked_rows_are_untouched_and_others_intervened(
    rows: int, width: int, kinds: list[int], seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, width, generator=generator) * 10
    out = base
    applied = []
    expected = base.clone()
    for kind in kinds:
        iv = _kind(kind, width, generator)
        source = torch.randn(rows, width, generator=generator) if iv.needs_source else None
        mask = torch.rand(rows, generator=generator) < 0.5
        applied.append(Applied(iv, source, mask))
        step = iv.apply(expected, source)
        expected = torch.where(mask.unsqueeze(1), step, expected)
    out = apply_all(base, applied)
    untouched = ~torch.stack([a.rows for a in applied if a.rows is not None]).any(0)
    assert torch.equal(out[untouched], base[untouched])  # bit for bit
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-5)
