"""The key/value-reusing suffix: same logits as a full forward with the intervention.

An interchange at position ``p`` of a GPT-2's residual stream leaves every later block
unchanged at positions before ``p`` (causal attention), so the prefix cache keeps the
base run's keys and values there and the suffix runs only on positions from ``p`` on.
These tests compare that suffix with a full forward through the hook runtime
(:func:`abstraction.intervene`) at the first, a middle and the last position, with
left and right padding, at the first, a middle and the last layer: on GPT-2, and on
every other model type of :data:`~abstraction.alignment.prefix_cache.KV_FAMILIES`
(rotary position embeddings; grouped-query attention; sliding-window layers with a
window shorter than the prompts).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from abstraction import (
    Location,
    LowRankPatch,
    Network,
    PreparedInterchanges,
    intervene,
)
from abstraction.alignment.prefix_cache import KV_FAMILIES, PrefixCache, supports_kv_reuse
from abstraction.network import FAMILIES

LAYERS = 4

SLIDING = {
    "mistral": {"sliding_window": 12},
    "qwen2": {"use_sliding_window": True, "sliding_window": 12, "max_window_layers": 2},
}
"""Settings of the tiny models beyond their sizes: a window of 12 hides the first keys
from the last queries of the 14-token prompts, while the 11-token ones still reach their
first token (Qwen2: layers 2.. slide)."""

SOFTCAPPED = ("gemma2",)
"""Llama-family model types whose logits are softcapped (not ``hidden @ W.T``): no fast path."""

ROTARY_KINDS = (
    "gpt_neox",
    *(kind for kind in FAMILIES["llama"].model_types if kind not in SOFTCAPPED),
)
"""Every model type of the key/value-reusing families but GPT-2 (whose own tests follow)
and the softcapped ones."""


def tiny_causal_lm(model_type: str, tokenizer: Any, layers: int = LAYERS) -> Network:
    """A random causal LM of ``model_type`` over ``tokenizer``: width 32, 4 query heads of
    width 8 and (rotary families but GPT-NeoX) 2 key/value heads."""
    import transformers

    sizes: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if model_type != "gpt_neox":  # GPT-NeoX has neither setting
        sizes.update(num_key_value_heads=2, head_dim=8)
    config = transformers.AutoConfig.for_model(model_type, **sizes, **SLIDING.get(model_type, {}))
    return Network.from_config(config, seed=0)


@pytest.fixture(scope="module")
def network(bpe_tokenizer: Any, ioi_prompts: Any) -> Network:
    network: Network = ioi_prompts.gpt2(bpe_tokenizer, LAYERS)
    return network


@pytest.fixture(scope="module", params=ROTARY_KINDS)
def rotary(request: pytest.FixtureRequest, bpe_tokenizer: Any) -> Network:
    """A tiny network of each rotary model type (one at a time, module-scoped)."""
    return tiny_causal_lm(request.param, bpe_tokenizer)


def test_every_family_with_key_value_reuse_is_tested() -> None:
    """KV_FAMILIES lists only families every model type of which the tests here build."""
    assert set(KV_FAMILIES) == {"gpt2", "gpt_neox", "llama"}
    tested = {"gpt2", *ROTARY_KINDS, *SOFTCAPPED}
    for family in KV_FAMILIES:
        assert set(FAMILIES[family].model_types) <= tested, family


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("position", [0, "s.last", "last"], ids=["first", "middle", "last"])
@pytest.mark.parametrize("layer", [0, 1, LAYERS - 1])
def test_kv_suffix_equals_a_full_forward(
    network: Network,
    bpe_tokenizer: Any,
    ioi_prompts: Any,
    padding: str,
    position: int | str,
    layer: int,
) -> None:
    task = ioi_prompts.task(bpe_tokenizer, padding)
    data = ioi_prompts.data(96)
    location = Location(layer=layer, position=position)
    prepared = PreparedInterchanges(network, task, data, location, ["s"])
    base = task.batch(data, "base.")
    length = base.inputs["input_ids"].shape[1]
    assert prepared.cache is not None
    if position == "last" and padding == "left":
        assert prepared.start == length - 1  # one position runs; the rest is reused
    if position != 0:
        assert prepared.start > 0
        assert len(prepared.cache.past(slice(0, 2))) == LAYERS - 1 - layer
        assert prepared.cache.shape[1] == length - prepared.start
    basis = torch.linalg.qr(torch.randn(32, 2, generator=torch.Generator().manual_seed(1)))[0]
    patch = LowRankPatch(location, basis)
    cached = prepared.logits(slice(None), {"s": patch})
    reference = intervene(network, base, [patch], [task.batch(data, "source.s.")])
    torch.testing.assert_close(cached, reference, rtol=1e-5, atol=1e-5)
    # and the intervention changed something: the comparison is not between two no-ops
    # (after the last block only an edit at the read-out position can reach the logits)
    if layer < LAYERS - 1 or position == "last":
        plain = intervene(network, base, [])
        assert not torch.allclose(reference, plain, atol=1e-4)
    prepared.close()


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("position", [0, "s.last", "last"], ids=["first", "middle", "last"])
def test_kv_suffix_equals_a_full_forward_on_rotary_families(
    rotary: Network, bpe_tokenizer: Any, ioi_prompts: Any, padding: str, position: int | str
) -> None:
    """As above, for each rotary model type: the first, a middle and the last layer's
    cells prepared together (one cache, one start) each equal a full forward."""
    network = rotary
    assert supports_kv_reuse(network)
    task = ioi_prompts.task(bpe_tokenizer, padding)
    data = ioi_prompts.data(48)
    layers = [0, 1, LAYERS - 1]
    locations = [Location(layer=layer, position=position) for layer in layers]
    cells = PreparedInterchanges.for_locations(network, task, data, locations, ["s"])
    base = task.batch(data, "base.")
    source = task.batch(data, "source.s.")
    length = base.inputs["input_ids"].shape[1]
    plain = intervene(network, base, [])
    for layer, location, prepared in zip(layers, locations, cells, strict=True):
        assert prepared.cache is not None
        if position == "last" and padding == "left":
            assert prepared.start == length - 1
        if position != 0:
            assert prepared.start > 0
            past = prepared.cache.past(slice(0, 2))
            assert len(past) == LAYERS - 1 - layer
            # the keys and values stored are the key/value heads', not the query heads'
            for keys, values in past:
                assert keys.shape == values.shape == (2, network.kv_heads, prepared.start, 8)
        basis = torch.linalg.qr(torch.randn(32, 2, generator=torch.Generator().manual_seed(1)))[0]
        patch = LowRankPatch(location, basis)
        cached = prepared.logits(slice(None), {"s": patch})
        reference = intervene(network, base, [patch], [source])
        torch.testing.assert_close(cached, reference, rtol=1e-5, atol=1e-5)
        if layer < LAYERS - 1 or position == "last":
            assert not torch.allclose(reference, plain, atol=1e-4)
        prepared.close()


@pytest.mark.parametrize("kind", SOFTCAPPED)
def test_softcapped_logits_run_the_whole_suffix(
    bpe_tokenizer: Any, ioi_prompts: Any, kind: str
) -> None:
    """Gemma 2 is laid out as Llama, but its logits are softcapped: no key/value reuse,
    and the suffix (on every position, through the model's own head) is still exact."""
    network = tiny_causal_lm(kind, bpe_tokenizer)
    assert network.family == "llama" and not supports_kv_reuse(network)
    task = ioi_prompts.task(bpe_tokenizer, "left")
    data = ioi_prompts.data(24)
    location = Location(layer=1, position="last")
    prepared = PreparedInterchanges(network, task, data, location, ["s"])
    assert prepared.start == 0
    patch = LowRankPatch(location, torch.eye(32)[:, :2])
    reference = intervene(
        network, task.batch(data, "base."), [patch], [task.batch(data, "source.s.")]
    )
    cached = prepared.logits(slice(None), {"s": patch})
    torch.testing.assert_close(cached, reference, rtol=1e-5, atol=1e-5)
    prepared.close()


@pytest.mark.parametrize("kind", ["gpt2", *ROTARY_KINDS])
def test_gradients_flow_through_the_kv_suffix(
    network: Network, bpe_tokenizer: Any, ioi_prompts: Any, kind: str
) -> None:
    if kind != "gpt2":
        network = tiny_causal_lm(kind, bpe_tokenizer)
    task = ioi_prompts.task(bpe_tokenizer, "left")
    data = ioi_prompts.data(96)
    location = Location(layer=1, position="last")
    fast = PreparedInterchanges(network, task, data, location, ["s"])
    slow = PreparedInterchanges(network, task, data, location, ["s"], reuse_keys_values=False)
    assert fast.start > 0 and slow.start == 0
    grads = []
    for prepared in (fast, slow):
        weight = torch.linalg.qr(torch.randn(32, 1, generator=torch.Generator().manual_seed(2)))[0]
        weight.requires_grad_(True)
        logits = prepared.logits(slice(None), {"s": LowRankPatch(location, weight)})
        logits.logsumexp(-1).sum().backward()
        assert weight.grad is not None
        grads.append(weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_disk_spilled_kv_cache_equals_the_in_memory_one(
    network: Network, bpe_tokenizer: Any, ioi_prompts: Any, tmp_path: Any
) -> None:
    task = ioi_prompts.task(bpe_tokenizer, "right")
    base = task.batch(ioi_prompts.data(96), "base.")
    memory = PrefixCache(network, base, 1, start=5)
    disk = PrefixCache(network, base, 1, start=5, memory_budget=0, directory=tmp_path)
    assert (memory.storage, disk.storage) == ("memory", "disk")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "prefix-hidden1.npy",
        *(f"prefix-kv{j}.npy" for j in range(2, LAYERS)),
    ]
    rows = torch.tensor([7, 3, 50, 0])
    torch.testing.assert_close(memory.get(rows), disk.get(rows), rtol=0, atol=0)
    for (k1, v1), (k2, v2) in zip(memory.past(rows), disk.past(rows), strict=True):
        torch.testing.assert_close(k1, k2, rtol=0, atol=0)
        torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    assert len(memory.past(rows)) == LAYERS - 2


def test_disk_spilled_prepared_interchanges_give_the_same_logits(
    network: Network, bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    task = ioi_prompts.task(bpe_tokenizer, "left")
    data = ioi_prompts.data(96)
    location = Location(layer=0, position="last")
    memory = PreparedInterchanges(network, task, data, location, ["s"])
    disk = PreparedInterchanges(network, task, data, location, ["s"], memory_budget=0)
    assert memory.cache is not None and disk.cache is not None
    assert (memory.cache.storage, disk.cache.storage) == ("memory", "disk")
    patch = LowRankPatch(location, torch.eye(32)[:, :3])
    rows = torch.tensor([5, 1, 90, 33])
    torch.testing.assert_close(
        memory.logits(rows, {"s": patch}), disk.logits(rows, {"s": patch}), rtol=0, atol=0
    )
    disk.close()
    memory.close()


def test_other_families_fall_back_to_the_whole_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model type no family lists (generic), one wrapped as a family it is not listed
    in, and one whose logits are softcapped get no key/value reuse."""
    import transformers

    from abstraction import network as network_module
    from abstraction.errors import AbstractionError
    from abstraction.network import Batch

    monkeypatch.setattr(network_module, "_warned_model_types", set())

    sizes = {
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "vocab_size": 40,
    }
    with pytest.warns(UserWarning, match="generic"):
        starcoder = Network.from_config(transformers.Starcoder2Config(**sizes), seed=0)
    assert starcoder.family == "generic"
    wrapped = Network.wrap(starcoder.module, family="llama")  # its layout, but not tested
    # logits that are not hidden @ W.T (Gemma 2 softcaps them): no readout-only unembedding
    capped = Network.from_config(transformers.LlamaConfig(**sizes), seed=0)
    capped.module.config.final_logit_softcapping = 30.0  # type: ignore[union-attr]
    batch_ids = torch.randint(0, 40, (3, 6), generator=torch.Generator().manual_seed(0))
    for other in (starcoder, wrapped, capped):
        assert not supports_kv_reuse(other), other.name
        with pytest.raises(AbstractionError, match="cannot reuse keys and values"):
            PrefixCache(other, Batch({"input_ids": batch_ids}), 0, start=2)


@pytest.mark.parametrize("position", [0, "last"], ids=["first", "last"])
def test_locations_prepared_together_equal_each_prepared_alone(
    network: Network, bpe_tokenizer: Any, ioi_prompts: Any, position: int | str
) -> None:
    task = ioi_prompts.task(bpe_tokenizer, "right")
    data = ioi_prompts.data(96)
    locations = [Location(layer=layer, position=position) for layer in range(LAYERS)]
    together = PreparedInterchanges.for_locations(network, task, data, locations, ["s"])
    basis = torch.linalg.qr(torch.randn(32, 1, generator=torch.Generator().manual_seed(3)))[0]
    rows = torch.tensor([4, 80, 2, 41])
    for location, shared in zip(locations, together, strict=True):
        alone = PreparedInterchanges(network, task, data, location, ["s"])
        assert shared.start == alone.start or position == "last"  # shared: earliest of all
        torch.testing.assert_close(shared.sources["s"], alone.sources["s"], rtol=0, atol=1e-6)
        patch = {"s": LowRankPatch(location, basis)}
        torch.testing.assert_close(
            shared.logits(rows, patch), alone.logits(rows, patch), rtol=1e-5, atol=1e-5
        )
        alone.close()
    for shared in together:
        shared.close()


def test_training_on_a_disk_spilled_cache_equals_training_in_memory(
    network: Network, bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    """Shuffled training reads a disk cache through the permutation: same rows, same result."""
    from abstraction import TrainingConfig
    from abstraction.alignment.das import fit, reproducible

    task = ioi_prompts.task(bpe_tokenizer, "left")
    data = ioi_prompts.data(96)
    location = Location(layer=1, position="last")
    config = TrainingConfig(epochs=2, batch_size=16, lr=1e-2, seed=0)
    bases = []
    for budget in (2**30, 0):
        prepared = PreparedInterchanges(network, task, data, location, ["s"], memory_budget=budget)
        assert prepared.cache is not None
        assert prepared.cache.storage == ("memory" if budget else "disk")
        alignment = reproducible(fit)(
            prepared, None, task, ["s"], method="low_rank", rank=1, config=config
        )
        bases.append(alignment.basis)
        prepared.close()
    assert bases[0] is not None and bases[1] is not None
    torch.testing.assert_close(bases[0], bases[1], rtol=1e-5, atol=1e-6)


def test_sweep_prepares_each_position_once_with_the_same_results(
    network: Network, bpe_tokenizer: Any, ioi_prompts: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from abstraction import TrainingConfig, sweep
    from abstraction.alignment import sweep as sweep_module

    task = ioi_prompts.task(bpe_tokenizer, "right")
    data = ioi_prompts.data(96)
    config = TrainingConfig(epochs=1, batch_size=32)
    calls: list[int] = []
    together = sweep_module._prepare_together

    def counting(*args: Any) -> Any:
        calls.append(len(args[4]))
        return together(*args)

    monkeypatch.setattr(sweep_module, "_prepare_together", counting)
    shared = sweep(network, task, data, data, ["s"], positions=["s.last", "last"], config=config)
    assert calls == [LAYERS, LAYERS]  # one shared preparation per position
    monkeypatch.setattr(sweep_module, "_prepare_together", lambda *args: None)
    alone = sweep(network, task, data, data, ["s"], positions=["s.last", "last"], config=config)
    assert shared.cells["val_iia"].tolist() == alone.cells["val_iia"].tolist()
    assert shared.alignment.basis is not None and alone.alignment.basis is not None
    torch.testing.assert_close(shared.alignment.basis, alone.alignment.basis, rtol=1e-5, atol=1e-6)


def test_sweep_prepares_every_head_of_a_position_once_with_the_same_results(
    bpe_tokenizer: Any, ioi_prompts: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heads of several layers at one position share one preparation (their layers' cuts
    are stored once) and score as if each were prepared alone; on grouped-query attention."""
    from abstraction import TrainingConfig, sweep
    from abstraction.alignment import sweep as sweep_module

    network = tiny_causal_lm("llama", bpe_tokenizer)
    task = ioi_prompts.task(bpe_tokenizer, "right")
    data = ioi_prompts.data(64)
    config = TrainingConfig(epochs=1, batch_size=32)
    calls: list[int] = []
    together = sweep_module._prepare_together

    def counting(*args: Any) -> Any:
        calls.append(len(args[4]))
        return together(*args)

    where = {"positions": ["last"], "components": ["head"], "layers": [1, 3], "config": config}
    monkeypatch.setattr(sweep_module, "_prepare_together", counting)
    shared = sweep(network, task, data, data, ["s"], **where)  # type: ignore[arg-type]
    assert calls == [2 * 4]  # 2 layers x 4 query heads, one preparation
    monkeypatch.setattr(sweep_module, "_prepare_together", lambda *args: None)
    alone = sweep(network, task, data, data, ["s"], **where)  # type: ignore[arg-type]
    assert shared.cells["head"].tolist() == alone.cells["head"].tolist()
    assert shared.cells["val_iia"].tolist() == alone.cells["val_iia"].tolist()
    assert shared.alignment.basis is not None and alone.alignment.basis is not None
    torch.testing.assert_close(shared.alignment.basis, alone.alignment.basis, rtol=1e-5, atol=1e-6)
