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
