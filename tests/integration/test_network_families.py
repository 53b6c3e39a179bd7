"""Every known family, built from a tiny config: sizes come from the config, locations resolve.

Families are recognised from ``config.model_type`` only: a model type no family lists
is ``"generic"`` (its blocks found by count, the residual stream named, and a warning
saying what it lacks), however much its module paths look like a known family's.
Nothing is downloaded: ``transformers`` builds each model from a config here.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from torch import nn

from abstraction import network as network_module
from abstraction.alignment.prefix_cache import supports_kv_reuse
from abstraction.locations import Location, LocationError, resolve
from abstraction.network import FAMILIES, Batch, Network, NetworkError, import_pyvene

ROOT = Path(__file__).resolve().parents[2]

CONFIGS: dict[str, Callable[[], Any]] = {
    "gpt2": lambda: transformers.GPT2Config(
        n_layer=3, n_embd=32, n_head=4, vocab_size=40, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    ),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        vocab_size=40, max_position_embeddings=16, bos_token_id=0, eos_token_id=0,
    ),
    "llama": lambda: transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=40, max_position_embeddings=16, bos_token_id=0,
        eos_token_id=0,
    ),
    **{
        model_type: functools.partial(
            transformers.AutoConfig.for_model, model_type, num_hidden_layers=2,
            hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
            intermediate_size=64, vocab_size=40, max_position_embeddings=16,
            bos_token_id=0, eos_token_id=0,
        )
        for model_type in FAMILIES["llama"].model_types
        if model_type != "llama"
    },
    "bert": lambda: transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
        vocab_size=40, max_position_embeddings=16,
    ),
    "roberta": lambda: transformers.RobertaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
        vocab_size=40, max_position_embeddings=20, pad_token_id=1,
    ),
}  # fmt: skip
FAMILY = {"roberta": "bert", **{t: "llama" for t in FAMILIES["llama"].model_types}}
HEAD_MAPPING = {
    **{kind: transformers.MODEL_FOR_CAUSAL_LM_MAPPING for kind in CONFIGS},
    "bert": transformers.MODEL_FOR_MASKED_LM_MAPPING,
    "roberta": transformers.MODEL_FOR_MASKED_LM_MAPPING,
}

UNLISTED: dict[str, Callable[[], Any]] = {
    # model.layers with self_attn.dense: taken for GPT-NeoX by its paths before
    "phi": lambda: transformers.PhiConfig(
        num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        vocab_size=40,
    ),
    # transformer.h: taken for GPT-2 by its paths before
    "falcon": lambda: transformers.FalconConfig(
        num_hidden_layers=3, hidden_size=32, num_attention_heads=4, vocab_size=40,
    ),
    # Llama's paths (self_attn.o_proj, mlp), but an untested model type
    "starcoder2": lambda: transformers.Starcoder2Config(
        num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=40,
    ),
    # model.decoder.layers
    "opt": lambda: transformers.OPTConfig(
        num_hidden_layers=3, hidden_size=32, num_attention_heads=4, ffn_dim=64,
        word_embed_proj_dim=32, vocab_size=40,
    ),
}  # fmt: skip
"""Model types no family lists, each with the block paths found for it."""
UNLISTED_BLOCKS = {
    "phi": "model.layers",
    "falcon": "transformer.h",
    "starcoder2": "model.layers",
    "opt": "model.decoder.layers",
}


def _batch(n: int = 3, length: int = 6) -> Batch:
    ids = torch.randint(2, 40, (n, length), generator=torch.Generator().manual_seed(0))
    return Batch({"input_ids": ids}, readout=torch.full((n,), length - 1))


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_sizes_come_from_the_config(kind: str) -> None:
    config = CONFIGS[kind]()
    network = Network.from_config(config)
    assert network.family == FAMILY.get(kind, kind)
    assert network.width == config.hidden_size
    assert network.n_layers == config.num_hidden_layers
    assert network.n_heads == config.num_attention_heads
    assert network.head_width == config.hidden_size // config.num_attention_heads
    # the logits head of the family's AutoModelFor... class, not the bare model
    assert type(network.module) is HEAD_MAPPING[kind][type(config)]
    assert network.logits(_batch()).shape == (3, config.vocab_size)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_every_component_resolves(kind: str) -> None:
    config = CONFIGS[kind]()
    network = Network.from_config(config)
    family = FAMILIES[network.family]
    for component in family.components:
        head = 1 if component == family.head_component else None
        site = resolve(network, Location(layer=-1, component=component, head=head))
        assert network.submodule(site.module_path) is not None
        assert site.layer == config.num_hidden_layers - 1
        expected = config.hidden_size // config.num_attention_heads if head else config.hidden_size
        assert site.width == expected, component
    with pytest.raises(LocationError, match="out of range"):
        resolve(network, Location(layer=config.num_hidden_layers))


def test_head_width_follows_config_head_dim() -> None:
    config = transformers.LlamaConfig(
        num_hidden_layers=1, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
        head_dim=16, intermediate_size=64, vocab_size=40, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    network = Network.from_config(config)
    assert network.head_width == 16
    site = resolve(network, Location(layer=0, component="head", head=3))
    assert site.head == (3, 16) and site.width == 16


def test_heads_of_grouped_query_attention_are_query_heads() -> None:
    """``head=h`` is query head ``h`` (a slice of ``o_proj``'s input); under grouped-query
    attention it reads key/value head ``h // (heads // kv_heads)``."""
    network = Network.from_config(CONFIGS["llama"]())  # 4 query heads, 2 key/value heads
    assert (network.n_heads, network.kv_heads, network.head_width) == (4, 2, 12)
    assert Network.from_config(CONFIGS["gpt2"]()).kv_heads == 4  # no grouping: one each
    site = resolve(network, Location(layer=0, component="head", head=3))
    assert site.module_path == "model.layers.0.self_attn.o_proj" and site.hook == "input"
    assert site.head == (3, 12)
    with pytest.raises(LocationError, match=r"2 key/value head\(s\).*h // 2"):
        resolve(network, Location(layer=0, component="head", head=4))
    # silencing key/value head 1's values silences query heads 2 and 3, and only them
    blocks = network.blocks
    assert blocks is not None
    attention = blocks[0].self_attn
    seen: list[torch.Tensor] = []
    hook = attention.o_proj.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    try:
        network.logits(_batch())
        with torch.no_grad():
            attention.v_proj.weight[12:24] = 0.0
        network.logits(_batch())
    finally:
        hook.remove()
    before, after = (activation.view(3, 6, 4, 12) for activation in seen)
    assert torch.equal(before[:, :, :2], after[:, :, :2])
    assert float(before[:, :, 2:].abs().max()) > 0 and float(after[:, :, 2:].abs().max()) == 0


@pytest.mark.parametrize("kind", list(UNLISTED))
def test_unlisted_model_types_are_generic(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network_module, "_warned_model_types", set())
    config = UNLISTED[kind]()
    with pytest.warns(UserWarning, match=r"family 'generic'.*key/value reuse.*family="):
        network = Network.from_config(config)
    assert network.family == "generic" and network.layout is network_module.GENERIC
    assert network.blocks_path == UNLISTED_BLOCKS[kind]
    assert network.n_layers == config.num_hidden_layers == 3
    assert not supports_kv_reuse(network)
    for component in ("residual", "residual_input"):
        site = resolve(network, Location(layer=-1, component=component, position="last"))
        assert site.module_path == f"{UNLISTED_BLOCKS[kind]}.2" and site.width == 32
    for component in ("attention_output", "mlp_output", "head"):
        with pytest.raises(LocationError, match=r"'generic'.*key/value reuse.*family="):
            resolve(network, Location(layer=0, component=component, head=0))
    assert network.logits(_batch()).shape == (3, 40)  # it still runs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Network.from_config(config)  # the warning is said once per model type


def test_an_unlisted_model_type_wrapped_as_a_family_resolves_its_components(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(network_module, "_warned_model_types", set())
    with pytest.warns(UserWarning, match="generic"):
        module = Network.from_config(UNLISTED["starcoder2"]()).module
    wrapped = Network.wrap(module, family="llama")
    site = resolve(wrapped, Location(layer=1, component="attention_output"))
    assert site.module_path == "model.layers.1.self_attn"
    assert not supports_kv_reuse(wrapped)  # its fast paths are not tested: still off


def test_pyvene_mlp_sizes_come_from_its_blocks(small_mlp: Network) -> None:
    config = small_mlp.module.config
    assert small_mlp.family == "mlp" and small_mlp.n_heads is None
    assert small_mlp.width == config.h_dim and small_mlp.n_layers == config.n_layer
    site = resolve(small_mlp, Location(layer=1, component="activation"))
    assert site.module_path == "mlp.h.1.act" and site.width == config.h_dim and not site.sequence


class _Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        result: torch.Tensor = self.out(x)
        return result


def test_plain_torch_modules_without_a_config() -> None:
    plain = Network.wrap(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    assert plain.family == "generic" and plain.width is None and plain.n_layers == 0
    assert resolve(plain, Location.module("0")).width == 4
    with pytest.raises(LocationError, match=r"Location\.module"):
        resolve(plain, Location(layer=0))
    stack = Network.wrap(_Stack())  # blocks found by path; sizes from the blocks
    assert stack.n_layers == 2 and stack.width == 8 and stack.n_heads is None
    assert stack.call({"x": torch.zeros(1, 8)}).shape == (1, 3)  # no use_cache passed


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_from_pretrained_round_trip_every_family(kind: str, tmp_path: Path) -> None:
    network = Network.from_config(CONFIGS[kind](), seed=1)
    network.save_pretrained(tmp_path)
    loaded = Network.from_pretrained(tmp_path)
    assert type(loaded.module) is type(network.module) and loaded.hash == network.hash
    assert torch.equal(loaded.logits(_batch()), network.logits(_batch()))


def test_bare_models_get_a_logits_head(tmp_path: Path) -> None:
    config = CONFIGS["gpt2"]()
    config.architectures = ["GPT2Model"]
    assert isinstance(Network.from_config(config).module, transformers.GPT2LMHeadModel)
    transformers.GPT2Model(CONFIGS["gpt2"]()).save_pretrained(tmp_path)
    loaded = Network.from_pretrained(tmp_path)
    assert isinstance(loaded.module, transformers.GPT2LMHeadModel)
    assert loaded.logits(_batch()).shape == (3, 40)


def test_saved_head_class_is_kept(tmp_path: Path) -> None:
    config = CONFIGS["bert"]()
    config.num_labels = 3
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path)
    loaded = Network.from_pretrained(tmp_path)
    assert isinstance(loaded.module, transformers.BertForSequenceClassification)
    assert loaded.logits(Batch({"input_ids": _batch().inputs["input_ids"]})).shape == (3, 3)


def test_config_without_a_logits_model_says_how_to_fix() -> None:
    class ToyConfig(transformers.PretrainedConfig):
        model_type = "toy_without_models"

    with pytest.raises(NetworkError, match=r"Network\.wrap"):
        Network.from_config(ToyConfig())


def test_import_pyvene_returns_the_module() -> None:
    assert import_pyvene().IntervenableModel is not None


def test_a_run_prints_no_library_noise(tmp_path: Path) -> None:
    """A fresh interpreter: no nnsight notice, no weight-loading bar, no UserWarning."""
    script = textwrap.dedent(
        f"""
        import numpy as np
        from abstraction import counterfactual_dataset, zoo
        from abstraction.network import Network, _pyvene_mlp

        config_class, _ = _pyvene_mlp()
        config = config_class(h_dim=8, n_layer=2, num_classes=2, pdrop=0.0)
        Network.from_config(config).save_pretrained({str(tmp_path)!r})
        Network.from_pretrained({str(tmp_path)!r})
        for name in ("hierarchical_equality_mlp", "addition_gpt2"):
            task = zoo.task(name)
            frame = counterfactual_dataset(task.model, 64, seed=0)
            task.batch(frame, "base.")
            task.labels(frame)
            columns = {{v: frame["base." + v].to_numpy() for v in task.model.inputs}}
            for column in columns.values():
                column.flags.writeable = False
            task.encode(columns)
            values = frame["label"].to_numpy()
            values.flags.writeable = False
            task.label_ids(values)
        print("done")
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert result.stdout.strip() == "done", output
    assert "nnsight" not in output and "Loading weights" not in output, output
