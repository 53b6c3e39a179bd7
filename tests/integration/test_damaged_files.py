"""Every file the library reads is checked on load: damage raises a library error naming
the file, what is wrong and what to do - never a raw exception, never a different object."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from abstraction import DamagedFileError
from abstraction.alignment import Alignment
from abstraction.files import sha256_file
from abstraction.locations import Location
from abstraction.network import Network


def _alignment(network: Network, seed: int = 0) -> Alignment:
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=generator))[0]
    return Alignment(
        "das", Location(layer=0), basis, {"wx": (0, 8), "yz": (8, 16)}, network.hash, "m"
    )


def _rewrite_json(json_file: Path, change: Callable[[dict[str, object]], None]) -> None:
    meta = json.loads(json_file.read_text())
    change(meta)
    json_file.write_text(json.dumps(meta))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _no_basis(path: Path) -> None:
    """A valid tensor file without the basis, with its hash and shapes recorded to match."""
    save_file({}, str(path))
    _rewrite_json(
        path.with_suffix(".json"),
        lambda m: m.update(tensors={"sha256": sha256_file(path), "shapes": {}}),
    )


def _narrow_basis(path: Path) -> None:
    save_file({"basis": torch.eye(16)[:, :4].contiguous()}, str(path))
    _rewrite_json(
        path.with_suffix(".json"),
        lambda m: m.update(tensors={"sha256": sha256_file(path), "shapes": {"basis": [16, 16]}}),
    )


DAMAGE: dict[str, tuple[str, str, Callable[[Path], None]]] = {
    # name: (which file is damaged, expected message, damage)
    "truncated tensors": ("safetensors", "SHA-256", _truncate),
    "empty tensors": ("safetensors", "SHA-256", lambda p: p.write_bytes(b"")),
    "tensors from another save": (
        "safetensors",
        "another save",
        lambda p: save_file({"basis": torch.eye(16)}, str(p)),
    ),
    "tensors without the basis": ("safetensors", "needs its basis", _no_basis),
    "shapes differ from the JSON": ("safetensors", "differ from those recorded", _narrow_basis),
    "JSON that is not JSON": ("json", "not valid JSON", lambda p: p.write_text("{'method': ")),
    "empty JSON": ("json", "is empty", lambda p: p.write_text("")),
    "JSON list": ("json", "not an object", lambda p: p.write_text("[1, 2]")),
    "JSON without subspaces": (
        "json",
        "'subspaces' is missing",
        lambda p: _rewrite_json(p, lambda m: m.pop("subspaces")),
    ),
    "JSON with a bad subspace": (
        "json",
        "subspace of 'wx'",
        lambda p: _rewrite_json(p, lambda m: m.update(subspaces={"wx": [8, 2]})),
    ),
    "JSON with an unknown method": (
        "json",
        "unknown method 'dass'",
        lambda p: _rewrite_json(p, lambda m: m.update(method="dass")),
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_alignment_is_refused(case: str, small_mlp: Network, tmp_path: Path) -> None:
    which, expected, damage = DAMAGE[case]
    json_file = _alignment(small_mlp).save(tmp_path / "a")
    damaged = json_file.with_suffix(f".{which}")
    damage(damaged)
    with pytest.raises(DamagedFileError) as caught:
        Alignment.load(json_file, small_mlp)
    message = str(caught.value)
    assert expected in message
    assert caught.value.file == str(damaged) and message.startswith(str(damaged))
    assert "fix: re-run" in message


def test_version_1_alignment_is_checked_for_structure(small_mlp: Network, tmp_path: Path) -> None:
    """Files written before hashes were recorded still load, and are still checked."""
    json_file = _alignment(small_mlp).save(tmp_path / "a")
    _rewrite_json(json_file, lambda m: (m.update(format_version=1), m.pop("tensors")))
    assert torch.equal(Alignment.load(json_file).basis, _alignment(small_mlp).basis)  # type: ignore[arg-type]
    save_file({}, str(json_file.with_suffix(".safetensors")))
    with pytest.raises(DamagedFileError, match="needs its basis"):
        Alignment.load(json_file)


def test_alignment_records_hash_and_shapes(small_mlp: Network, tmp_path: Path) -> None:
    json_file = _alignment(small_mlp).save(tmp_path / "a")
    meta = json.loads(json_file.read_text())
    assert meta["tensors"] == {
        "file": "a.safetensors",
        "sha256": sha256_file(tmp_path / "a.safetensors"),
        "shapes": {"basis": [16, 16]},
    }


# -- checkpoints -------------------------------------------------------------------------


def _drop_a_weight(path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(path), metadata={"format": "pt"})


CHECKPOINT_DAMAGE: dict[str, tuple[str, str, Callable[[Path], None]]] = {
    "config that is not JSON": ("config.json", "not valid JSON", lambda p: p.write_text("{,")),
    "config without model_type": (
        "config.json",
        "names no model_type",
        lambda p: p.write_text(json.dumps({"n_layer": 2})),
    ),
    "truncated weights": (
        "",
        "weights cannot be loaded",
        lambda p: _truncate(p / "model.safetensors"),
    ),
    "a weight missing": (
        "",
        "they would be random",
        lambda p: _drop_a_weight(p / "model.safetensors"),
    ),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_DAMAGE))
def test_damaged_checkpoint_is_refused(case: str, small_gpt2: Network, tmp_path: Path) -> None:
    which, expected, damage = CHECKPOINT_DAMAGE[case]
    small_gpt2.save_pretrained(tmp_path / "ckpt")
    damaged = tmp_path / "ckpt" / which if which else tmp_path / "ckpt"
    damage(damaged)
    with pytest.raises(DamagedFileError) as caught:
        Network.from_pretrained(tmp_path / "ckpt")
    assert expected in str(caught.value)
    assert caught.value.file == str(damaged).rstrip("/")
    assert "save_pretrained" in caught.value.fix


# -- the zoo cache -------------------------------------------------------------------------


@pytest.fixture
def zoo_copy(he_network: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the cached hierarchical-equality network (no retraining)."""
    import shutil

    from abstraction import zoo

    source = zoo.path("hierarchical_equality_mlp")
    monkeypatch.setenv("ABSTRACTION_CACHE", str(tmp_path / "cache"))
    target = zoo.path("hierarchical_equality_mlp")
    shutil.copytree(source, target)
    return target


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # still a valid file: one weight changes slightly
    path.write_bytes(bytes(data))


def test_zoo_rechecks_the_weights_hash(zoo_copy: Path, he_network: Network) -> None:
    from abstraction import zoo

    assert json.loads((zoo_copy / "zoo.json").read_text())["network_hash"] == he_network.hash
    assert zoo.load("hierarchical_equality_mlp").hash == he_network.hash
    _flip_last_byte(zoo_copy / "model.safetensors")
    with pytest.raises(DamagedFileError) as caught:
        zoo.load("hierarchical_equality_mlp")
    assert caught.value.file == str(zoo_copy)
    assert "changed or damaged" in caught.value.problem and "retrain=True" in caught.value.fix


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: _truncate(d / "model.safetensors"), "weights cannot be loaded"),
        (lambda d: (d / "zoo.json").write_text("{"), "not valid JSON"),
        (lambda d: (d / "config.json").write_text(""), "is empty"),
    ],
)
def test_damaged_zoo_cache_says_how_to_retrain(
    zoo_copy: Path, damage: Callable[[Path], None], expected: str
) -> None:
    from abstraction import zoo

    damage(zoo_copy)
    with pytest.raises(DamagedFileError) as caught:
        zoo.load("hierarchical_equality_mlp")
    assert expected in caught.value.problem
    assert caught.value.file.startswith(str(zoo_copy))
    assert "retrain=True" in caught.value.fix


def test_zoo_cache_without_a_hash_gets_one(zoo_copy: Path, he_network: Network) -> None:
    """Caches written before hashes were recorded: trusted once, then checked."""
    from abstraction import zoo

    index = zoo_copy / "zoo.json"
    meta = json.loads(index.read_text())
    del meta["network_hash"]
    index.write_text(json.dumps(meta))
    assert zoo.load("hierarchical_equality_mlp").hash == he_network.hash
    assert json.loads(index.read_text())["network_hash"] == he_network.hash


# -- results.json ----------------------------------------------------------------------------

REPORT = Path(__file__).resolve().parents[2] / "reports" / "hierarchical_equality" / "results.json"

RESULTS_DAMAGE: dict[str, tuple[str, Callable[[dict[str, object]], object]]] = {
    "truncated": ("not valid JSON", lambda d: json.dumps(d)[:200]),
    "empty": ("is empty", lambda d: ""),
    "another schema version": (
        "schema_version is 99",
        lambda d: json.dumps({**d, "schema_version": 99}),
    ),
    "a field of the wrong type": (
        "verdict",
        lambda d: json.dumps({**d, "verdict": 3}),
    ),
    "a field missing": (
        "variables",
        lambda d: json.dumps({k: v for k, v in d.items() if k != "variables"}),
    ),
}


@pytest.mark.parametrize("case", sorted(RESULTS_DAMAGE))
def test_damaged_results_json_is_refused(case: str, tmp_path: Path) -> None:
    from abstraction.results import ExperimentResult

    expected, damage = RESULTS_DAMAGE[case]
    path = tmp_path / "results.json"
    path.write_text(str(damage(json.loads(REPORT.read_text()))))
    with pytest.raises(DamagedFileError) as caught:
        ExperimentResult.read(tmp_path)
    assert caught.value.file == str(path)
    assert expected in caught.value.problem
    assert "abstraction run" in caught.value.fix
