"""Atomic, durable file writes: a reader sees the old file or the new one, never half of one.

Every file the library writes for a user (alignments, sweep cells, reports, zoo
networks) goes through :func:`atomic_write` or :func:`atomic_directory`: the content
is written to a temporary file (or directory) beside the target, flushed to disk with
``fsync``, renamed over the target in one step, and the rename itself made durable by
an ``fsync`` of the parent directory. A process killed at any moment (``SIGKILL``,
power loss after the call returns) leaves either the old target or the new one.

Files get the mode an ordinary ``open(..., "w")`` would give them: ``0o666`` (and
directories ``0o777``) less the process's umask - ``0o644`` / ``0o755`` under the
usual umask ``022`` - not the owner-only ``0o600`` of :func:`tempfile.mkstemp`.

:func:`read_json` is the one way the library reads a JSON file it (or a user) wrote:
a missing, unreadable or malformed file raises
:class:`~abstraction.errors.DamagedFileError` naming the file and the fix, never a raw
``JSONDecodeError``. :func:`sha256_file` hashes a file's bytes, for formats that record
the hash of a companion file and check it on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from abstraction.errors import DamagedFileError

__all__ = [
    "atomic_directory",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "cache_dir",
    "file_mode",
    "fsync_directory",
    "read_json",
    "remove_temporaries",
    "sha256_file",
]


def _umask() -> int:
    """The process's umask, read without changing it where the OS allows."""
    try:  # Linux >= 4.7 reports it; os.umask can only be read by setting it (racy)
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(directory: bool = False) -> int:
    """The mode a new file (or directory) gets: ``0o666`` (``0o777``) less the umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def fsync_directory(directory: str | Path) -> None:
    """Make renames and creations inside ``directory`` durable (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def cache_dir() -> Path:
    """Where the library caches networks it trains or converts (the zoo, GGUF files):
    ``$ABSTRACTION_CACHE`` or the user cache directory."""
    env = os.environ.get("ABSTRACTION_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("abstraction"))


def sha256_file(path: str | Path) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(target: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)``, then move the temporary file over ``target``.

    The temporary file lives in ``target``'s directory (created when missing) so the
    final rename never crosses file systems. It is fsynced before the rename and the
    directory after it. On any error the target is untouched and the temporary file
    removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        # mkstemp creates files readable by their owner only; files we publish are
        # read by others (committed reports, shared caches): honour the umask instead.
        os.chmod(tmp, file_mode())
        _fsync_file(tmp)
        os.replace(tmp, target)
        fsync_directory(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}$")
"""Names :func:`atomic_write` gives its temporary files: ``.<target name>.<8 random>``."""


def remove_temporaries(directory: str | Path) -> int:
    """Delete the temporary files a killed :func:`atomic_write` left under ``directory``.

    Only call it while no other process writes there (hold a lock); returns how many
    files were removed.
    """
    removed = 0
    for path in Path(directory).rglob(".*"):
        if path.is_file() and _TEMPORARY.match(path.name) and path.name != ".lock":
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write_text(target: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(target: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``target`` atomically."""
    return atomic_write_text(target, json.dumps(data, indent=2, default=str) + "\n")


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a staging directory beside ``target``; on success it replaces ``target`` whole.

    For outputs that are several files (a report, a saved network): readers see the
    old directory or the new one, never a mix. Every file written into the staging
    directory is fsynced, an existing ``target`` is moved aside, the staging directory
    renamed into place, the parent directory fsynced, and the old one removed; on any
    error the staging directory is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        os.chmod(staging, file_mode(directory=True))  # mkdtemp's 0700 hides it from others
        yield staging
        for root, _, names in os.walk(staging):
            for name in names:
                _fsync_file(Path(root) / name)
            fsync_directory(root)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}-old-{os.getpid()}")
            os.replace(target, old)
        os.replace(staging, target)
        fsync_directory(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def read_json(path: str | Path, *, fix: str, what: str = "file") -> dict[str, Any]:
    """Read a JSON object from ``path``, or raise :class:`DamagedFileError` saying ``fix``.

    Args:
        path: the file.
        fix: what the user should do when the file is missing or damaged.
        what: what the file is, for the message (``"alignment metadata"``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DamagedFileError(path, f"the {what} does not exist", fix) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedFileError(path, f"the {what} cannot be read ({exc})", fix) from None
    if not text.strip():
        raise DamagedFileError(path, f"the {what} is empty (a write was interrupted?)", fix)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DamagedFileError(
            path, f"the {what} is not valid JSON (line {exc.lineno}: {exc.msg})", fix
        ) from None
    if not isinstance(data, dict):
        raise DamagedFileError(
            path, f"the {what} holds a JSON {type(data).__name__}, not an object", fix
        )
    return data
