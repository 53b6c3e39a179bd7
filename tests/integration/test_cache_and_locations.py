"""Prefix caching equals the uncached path; locations resolve per example and fail early."""

from __future__ import annotations

import pytest
import torch

from abstraction.alignment.prefix_cache import PrefixCache, cut_layer, run_suffix
from abstraction.featurizers import SparseAutoencoder
from abstraction.interventions import FeaturePatch, InterventionError, LowRankPatch, Patch
from abstraction.locations import Location, LocationError, resolve
from abstraction.network import Batch, Network
from abstraction.runtime import Applied, collect, intervene, select, site_edit


def _padded_batches(left: bool) -> tuple[Batch, Batch]:
    gen = torch.Generator().manual_seed(0)
    n, length = 6, 7
    ids = torch.randint(1, 20, (n, length), generator=gen)
    src = torch.randint(1, 20, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    pad = slice(0, 2) if left else slice(length - 2, length)
    mask[0, pad] = 0
    mask[3, pad] = 0
    ends = (mask * torch.arange(length)).max(dim=1).values
    return (
        Batch({"input_ids": ids, "attention_mask": mask}, readout=ends),
        Batch({"input_ids": src, "attention_mask": mask}, readout=ends),
    )


def _sae(width: int = 32, features: int = 64) -> SparseAutoencoder:
    gen = torch.Generator().manual_seed(2)
    return SparseAutoencoder(
        torch.randn(width, features, generator=gen) / width**0.5,
        torch.zeros(features),
        torch.randn(features, width, generator=gen) / width**0.5,
        torch.randn(width, generator=gen) * 0.1,
    )


@pytest.mark.parametrize("kind", ["low_rank", "sae_features"])
@pytest.mark.parametrize("left", [True, False])
@pytest.mark.parametrize("component", ["residual", "mlp_output"])
def test_cached_suffix_equals_uncached(
    small_gpt2: Network, left: bool, component: str, kind: str
) -> None:
    """DAS's subspace swap and DBM's feature swap (an SAE's, with the error carried)."""
    base, source = _padded_batches(left)
    basis = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(1)))[0]
    sae, mask = _sae(), (torch.arange(64) < 10).float()
    for layer in range(small_gpt2.n_layers):
        loc = Location(layer=layer, component=component, position="last")
        iv = (
            LowRankPatch(loc, basis=basis[:, :5])
            if kind == "low_rank"
            else FeaturePatch(loc, sae, mask)
        )
        reference = intervene(small_gpt2, base, [iv], source)
        site = resolve(small_gpt2, loc)
        cut = cut_layer(site)
        if cut is None:
            continue
        budget = 10 if layer % 2 else 10**9  # alternate disk-backed and in-memory caches
        cache = PrefixCache(small_gpt2, base, cut, memory_budget=budget)
        assert cache.storage == ("disk" if layer % 2 else "memory")
        assert cache.nbytes == 6 * 7 * 32 * 4
        src_act = collect(small_gpt2, source, [loc])[0]
        hidden = cache.get(slice(None))
        edit = site_edit(site, base, [Applied(iv, src_act)])
        if site.is_block_output:
            out = run_suffix(small_gpt2, base, cut, edit(hidden), tuple_len=cache.tuple_len)
        else:
            out = run_suffix(
                small_gpt2, base, cut, hidden, [(site, edit)], tuple_len=cache.tuple_len
            )
        assert torch.equal(out, reference), (layer, component)
        assert not torch.equal(reference, intervene(small_gpt2, base, [], source))  # it acts
        cache.close()


@pytest.mark.parametrize("left", [True, False])
def test_named_positions_resolve_per_example(small_gpt2: Network, left: bool) -> None:
    base, _ = _padded_batches(left)
    # an activation whose value is its own position index shows which position was selected
    act = torch.arange(7.0).view(1, 7, 1).expand(6, 7, 32)
    site = resolve(small_gpt2, Location(layer=0, position="last"))
    positions = select(act, site, base)[:, 0].long()
    assert positions.tolist() == base.readout.tolist()  # type: ignore[union-attr]
    site = resolve(small_gpt2, Location(layer=0, position=0))
    first = select(act, site, base)[:, 0].long()
    expected_first = [2 if left and row in (0, 3) else 0 for row in range(6)]
    assert first.tolist() == expected_first


def test_bad_locations_are_rejected_before_running(small_gpt2: Network) -> None:
    with pytest.raises(LocationError, match="did you mean 'mlp_output'"):
        resolve(small_gpt2, Location(layer=0, component="mlp_out"))
    with pytest.raises(LocationError, match="valid: 0 to 2"):
        resolve(small_gpt2, Location(layer=7))
    with pytest.raises(LocationError, match="valid: 0 to 3"):
        resolve(small_gpt2, Location(layer=0, component="head", head=9))
    with pytest.raises(KeyError, match=r"transformer\.h\.0\.mlp"):
        resolve(small_gpt2, Location.module("transformer.h.0.mpl"))
    with pytest.raises(LocationError, match="0 <= start < stop <= 32"):
        resolve(small_gpt2, Location(layer=0, dims=(0, 40)))
    base, source = _padded_batches(left=True)
    with pytest.raises(LocationError, match="beyond the sequence in row 0"):
        intervene(small_gpt2, base, [Patch(Location(layer=0, position=6))], source)
    with pytest.raises(LocationError, match="not defined by the task"):
        intervene(small_gpt2, base, [Patch(Location(layer=0, position="second_name"))], source)


def test_bad_interventions(small_gpt2: Network) -> None:
    base, source = _padded_batches(left=True)
    loc = Location(layer=0, position=-1)
    with pytest.raises(InterventionError, match="width 32"):
        intervene(small_gpt2, base, [LowRankPatch(loc, basis=torch.zeros(64, 2))], source)
    with pytest.raises(InterventionError, match="floating-point"):
        intervene(
            small_gpt2,
            base,
            [LowRankPatch(loc, basis=torch.zeros(32, 2, dtype=torch.long))],
            source,
        )
    with pytest.raises(InterventionError, match="needs a source"):
        intervene(small_gpt2, base, [Patch(loc)], None)
    with pytest.raises(InterventionError, match="base has 6"):
        intervene(small_gpt2, base, [Patch(loc)], source.select(slice(0, 3)))
