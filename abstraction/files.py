"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the library writes for a user (alignments, sweep cells, reports, zoo
networks) goes through :func:`atomic_write`: the content is written to a temporary
file beside the target, flushed to disk, and renamed over the target in one step.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_directory", "atomic_write", "atomic_write_json", "atomic_write_text"]


def atomic_write(target: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)``, then move the temporary file over ``target``.

    The temporary file lives in ``target``'s directory (created when missing) so the
    final rename never crosses file systems. On any error the target is untouched and
    the temporary file removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        # mkstemp creates files readable by their owner only; files we publish are
        # read by others (committed reports, shared caches), so use the usual mode.
        os.chmod(tmp, 0o644)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


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
    old directory or the new one, never a mix. An existing ``target`` is moved aside,
    the staging directory renamed into place, and the old one removed; on any error
    the staging directory is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the directory from others
        yield staging
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}-old-{os.getpid()}")
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
