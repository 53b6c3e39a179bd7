"""Networks load through from_pretrained, zoo networks meet their accuracy, alignments persist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from abstraction import zoo
from abstraction.alignment import Alignment, AlignmentError
from abstraction.locations import Location
from abstraction.network import Batch, Network, NetworkError


def test_from_pretrained_round_trip(small_gpt2: Network, tmp_path: Path) -> None:
    small_gpt2.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    loaded = Network.from_pretrained(tmp_path / "ckpt")
    assert loaded.hash == small_gpt2.hash
    ids = torch.randint(0, 20, (3, 5))
    batch = Batch({"input_ids": ids}, readout=torch.full((3,), 4))
    assert torch.equal(loaded.logits(batch), small_gpt2.logits(batch))


def test_hash_changes_with_weights(small_gpt2: Network) -> None:
    before = small_gpt2.hash
    other = Network.from_config(small_gpt2.module.config, seed=1)
    assert other.hash != before


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NetworkError, match=r"no config\.json"):
        Network.from_pretrained(tmp_path)


def test_zoo_networks_meet_accuracy(he_network: Network, addition_network: Network) -> None:
    assert zoo.metrics("hierarchical_equality_mlp")["test_accuracy"] >= 0.99
    assert zoo.metrics("addition_gpt2")["test_accuracy"] >= 0.98
    assert he_network.family == "mlp" and addition_network.family == "gpt2"


def test_positional_lookup_network() -> None:
    network = zoo.load("lookup_gpt2")
    metrics = zoo.metrics("lookup_gpt2")
    assert metrics["test_accuracy"] >= 0.98 and metrics["test_examples"] > 1000
    task = zoo.task("lookup_gpt2")
    # the causal model agrees with the network on fresh valid inputs
    import numpy as np

    from abstraction import factual_dataset, from_function

    facts = factual_dataset(task.model, 500, sampler=from_function(zoo.lookup_inputs), seed=99)
    predicted = network.predict(task.batch(facts))
    assert float((predicted == task.labels(facts, "answer")).float().mean()) >= 0.98
    assert set(np.unique(facts["index"])) == {1, 2, 3}


def test_zoo_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ABSTRACTION_CACHE", str(tmp_path))
    first = zoo.load("hierarchical_equality_mlp", seed=3).hash
    again = zoo.load("hierarchical_equality_mlp", seed=3, retrain=True).hash
    assert first == again
    # one directory per network, readable by others, no staging directory left behind
    target = zoo.path("hierarchical_equality_mlp", seed=3)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name, target.name + ".lock"]
    assert target.stat().st_mode & 0o777 == 0o755
    assert (target / "zoo.json").stat().st_mode & 0o777 == 0o644
    assert json.loads((target / "zoo.json").read_text())["version"] == zoo.VERSION
    with pytest.raises(KeyError, match="did you mean"):
        zoo.load("hierarchical_equality_mpl")


def _alignment(network: Network) -> Alignment:
    basis = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))[0]
    return Alignment(
        "das",
        Location(layer=0),
        basis,
        {"wx": (0, 8), "yz": (8, 16)},
        network.hash,
        "model123",
        curve=[{"epoch": 1.0, "val_iia": 0.9}],
    )


def test_alignment_save_load(he_network: Network, tmp_path: Path) -> None:
    alignment = _alignment(he_network)
    json_file = alignment.save(tmp_path / "alignments" / "he")
    meta = json.loads(json_file.read_text())
    assert meta["network_hash"] == he_network.hash and meta["subspaces"]["yz"] == [8, 16]
    assert sorted(p.name for p in json_file.parent.iterdir()) == ["he.json", "he.safetensors"]
    loaded = Alignment.load(json_file, he_network)
    assert torch.equal(loaded.basis, alignment.basis)  # type: ignore[arg-type]
    assert loaded.location == alignment.location and loaded.curve == alignment.curve
    assert torch.equal(loaded.variable_basis("yz"), alignment.basis[:, 8:16])  # type: ignore[index]


def test_alignment_refuses_other_network(
    he_network: Network, small_mlp: Network, tmp_path: Path
) -> None:
    path = _alignment(he_network).save(tmp_path / "he")
    with pytest.raises(AlignmentError, match="allow_hash_mismatch=True"):
        Alignment.load(path, small_mlp)
    assert Alignment.load(path, small_mlp, allow_hash_mismatch=True).network_hash == he_network.hash


def test_task_with_model_requires_the_same_inputs() -> None:
    from abstraction.task import TaskError

    task = zoo.task("hierarchical_equality_mlp")
    with pytest.raises(TaskError, match="build a task"):
        task.with_model(zoo.addition_tens)
    rival = task.with_model(zoo.hierarchical_equality)
    assert rival.model is zoo.hierarchical_equality and rival is not task
