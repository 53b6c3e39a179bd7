"""Atomic writes: durable (file and directory fsynced), umask-honouring, all-or-nothing."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from abstraction.files import (
    atomic_directory,
    atomic_write,
    atomic_write_text,
    remove_temporaries,
    sha256_file,
)


@pytest.fixture
def umask() -> Iterator[object]:
    """Set the process umask for one test and restore it after."""
    previous = os.umask(0o022)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(previous)


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"),
    [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750), (0o002, 0o664, 0o775)],
)
def test_files_honour_the_umask(
    umask: object, tmp_path: Path, mask: int, file_mode: int, dir_mode: int
) -> None:
    umask(mask)  # type: ignore[operator]
    written = atomic_write_text(tmp_path / "a.txt", "hello")
    assert stat.S_IMODE(written.stat().st_mode) == file_mode
    with atomic_directory(tmp_path / "report") as staging:
        atomic_write_text(staging / "index.html", "<html/>")
    assert stat.S_IMODE((tmp_path / "report").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "report" / "index.html").stat().st_mode) == file_mode


def test_file_and_directory_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[tuple[bool, int]] = []  # (is a directory, inode)
    real = os.fsync

    def spy(fd: int) -> None:
        info = os.fstat(fd)
        synced.append((stat.S_ISDIR(info.st_mode), info.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = atomic_write_text(tmp_path / "cell.json", "{}")
    assert (False, target.stat().st_ino) in synced  # the content, before the rename
    assert (True, tmp_path.stat().st_ino) in synced  # the rename, after it
    synced.clear()
    with atomic_directory(tmp_path / "net") as staging:
        (staging / "weights.bin").write_bytes(b"x" * 10)  # written without atomic_write
    assert (False, (tmp_path / "net" / "weights.bin").stat().st_ino) in synced
    assert (True, tmp_path.stat().st_ino) in synced


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "x.txt", "old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "b"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_remove_temporaries_keeps_everything_else(tmp_path: Path) -> None:
    import tempfile

    atomic_write_text(tmp_path / "sub" / "cell.json", "{}")
    fd, left = tempfile.mkstemp(prefix=".cell.json.", dir=tmp_path / "sub")  # a killed write
    os.close(fd)
    (tmp_path / ".lock").write_text("")
    (tmp_path / ".hidden.txt").write_text("mine")
    assert remove_temporaries(tmp_path) == 1
    assert not Path(left).exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        ".hidden.txt",
        ".lock",
        "cell.json",
        "sub",
    ]
