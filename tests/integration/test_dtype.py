"""Networks in bf16 and fp16: weights cast, caches in the network's dtype (also when
memory-mapped), alignments train, and results stay close to float32's."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_kv_suffix import tiny_causal_lm

from abstraction import Location, PreparedInterchanges, TrainingConfig
from abstraction.alignment.das import fit, reproducible
from abstraction.network import Network, NetworkError, resolve_dtype


def test_dtype_names_resolve_and_others_are_refused() -> None:
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("BFloat16") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16
    for bad in ("int8", "half-ish", torch.int64, torch.float64):
        with pytest.raises(NetworkError, match="bfloat16"):
            resolve_dtype(bad)  # type: ignore[arg-type]


def test_casting_a_network_changes_its_dtype_and_hash(bpe_tokenizer: Any) -> None:
    network = tiny_causal_lm("llama", bpe_tokenizer)
    before = network.hash
    assert network.to(dtype="float32").hash == before  # no cast, same weights
    network.to(dtype="bf16")
    assert network.dtype is torch.bfloat16
    assert network.hash != before


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_caches_take_the_network_dtype_in_memory_and_on_disk(
    dtype: torch.dtype, bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    network = tiny_causal_lm("llama", bpe_tokenizer).to(dtype=dtype)
    task = ioi_prompts.task(bpe_tokenizer, "right")
    data = ioi_prompts.data(64)
    location = Location(layer=1, position="last")
    config = TrainingConfig(epochs=2, batch_size=16, lr=1e-2, seed=0)
    bases, rows = [], []
    for budget in (2**30, 0):
        prepared = PreparedInterchanges(network, task, data, location, ["s"], memory_budget=budget)
        assert prepared.cache is not None
        assert prepared.cache.storage == ("memory" if budget else "disk")
        first = prepared.cache.get(torch.arange(8))
        assert first.dtype is dtype
        assert all(k.dtype is dtype for pair in prepared.cache.past(torch.arange(8)) for k in pair)
        rows.append(first)
        alignment = reproducible(fit)(
            prepared, None, task, ["s"], method="low_rank", rank=1, config=config
        )
        assert alignment.basis is not None and alignment.basis.dtype is torch.float32
        bases.append(alignment.basis)
        prepared.close()
    assert torch.equal(rows[0], rows[1])  # the memory-mapped copy is bit-identical
    torch.testing.assert_close(bases[0], bases[1], rtol=1e-5, atol=1e-6)


def test_bf16_scores_close_to_float32(bpe_tokenizer: Any, ioi_prompts: Any) -> None:
    """The same trained rotation scored on the float32 network and its bf16 cast."""
    from abstraction.alignment.staircase import evaluate_cells

    task = ioi_prompts.task(bpe_tokenizer, "right")
    data = ioi_prompts.data(128)
    location = Location(layer=2, position="last")
    config = TrainingConfig(epochs=3, batch_size=16, lr=1e-2, seed=0)
    full = tiny_causal_lm("llama", bpe_tokenizer)
    prepared = PreparedInterchanges(full, task, data, location, ["s"])
    alignment = reproducible(fit)(
        prepared, None, task, ["s"], method="low_rank", rank=1, config=config
    )
    scores = evaluate_cells([alignment], [prepared])[0].float()
    prepared.close()
    half: Network = tiny_causal_lm("llama", bpe_tokenizer).to(dtype="bf16")
    cast = PreparedInterchanges(half, task, data, location, ["s"])
    half_scores = evaluate_cells([alignment], [cast])[0].float()
    cast.close()
    assert abs(float(scores.mean()) - float(half_scores.mean())) <= 0.05
    assert float((scores == half_scores).float().mean()) >= 0.9
