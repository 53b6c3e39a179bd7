"""GGUF files as checkpoints: dequantized once, cached as a Hugging Face directory.

A GGUF file (the llama.cpp format) holds a model's quantized weights, its config and
its tokenizer. ``transformers`` reads one (``from_pretrained(dir, gguf_file=name)``,
with the ``gguf`` package installed) by dequantizing every tensor to float32, which
takes tens of seconds for a 135M-parameter model. :func:`converted` does that once per
file: it writes the dequantized model with ``save_pretrained`` (safetensors) and the
tokenizer beside it into the cache directory, under a key made of the file's SHA-256,
so a second load reads safetensors in seconds, and a changed file (same name, other
bytes) is converted again rather than confused with the old one.

``gguf.json`` in that directory records the source file, its SHA-256 and the hash of
the weights as first loaded; :func:`check_network_hash` compares every later load with
it, like the zoo's networks, so a damaged cache is never used silently.
:meth:`abstraction.Network.from_gguf` is the public way in.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from abstraction.errors import AbstractionError, DamagedFileError
from abstraction.files import atomic_directory, atomic_write_json, cache_dir, read_json, sha256_file

__all__ = ["GGUF_EXTRA", "INDEX", "check_network_hash", "converted", "directory_for"]

GGUF_EXTRA = "pip install gguf accelerate (the extra abstraction-verifier[gguf])"
"""How to install what reading a GGUF file needs."""

INDEX = "gguf.json"
"""The file in a converted directory that records its source and weights' hash."""


def _say(text: str) -> None:
    print(f"gguf: {text}", file=sys.stderr, flush=True)


def _check_file(path: Path) -> None:
    if path.suffix.lower() != ".gguf":
        raise AbstractionError(
            f"{path} is not a GGUF file (its name does not end in .gguf); for a directory "
            "written by save_pretrained use Network.from_pretrained"
        )
    if not path.is_file():
        raise AbstractionError(f"no GGUF file at {path}: check the path")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise DamagedFileError(
            path,
            f"it does not start with the GGUF magic bytes (found {magic!r})",
            "download or copy the file again; an interrupted copy is the usual cause",
        )


def _require_packages() -> None:
    missing = []
    for module in ("gguf", "accelerate"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise AbstractionError(
            f"reading a GGUF file needs the package(s) {', '.join(missing)}: {GGUF_EXTRA}"
        )


def directory_for(path: str | Path, sha256: str | None = None) -> Path:
    """The cache directory of a GGUF file's converted checkpoint (may not exist yet)."""
    path = Path(path)
    digest = sha256 or sha256_file(path)
    return cache_dir() / "gguf" / f"{path.stem}-{digest[:16]}"


@contextlib.contextmanager
def _locked(lock: FileLock, name: str) -> Iterator[None]:
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _say(f"waiting for another process that is converting {name} ({lock.lock_file})")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def converted(
    path: str | Path, *, progress: Callable[[str], None] | None = None
) -> tuple[Path, dict[str, Any]]:
    """The Hugging Face directory holding ``path``'s dequantized model and tokenizer.

    Converts the file on first use (reporting on stderr, or through ``progress``) and
    reuses the cached directory afterwards. Returns the directory and its index
    (``gguf.json``: source name, SHA-256, seconds taken, the weights' hash once known).

    Raises:
        AbstractionError: the path is not a GGUF file, or ``gguf``/``accelerate`` are
            missing (the message has the install line).
        DamagedFileError: the file is not GGUF, or the cache's index is damaged.
    """
    path = Path(path).expanduser().resolve()
    _check_file(path)
    say = progress or _say
    digest = sha256_file(path)
    target = directory_for(path, digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    index = target / INDEX
    fix = f"delete {target} and load the GGUF file again (it is converted anew)"
    with _locked(FileLock(str(target) + ".lock"), path.name):
        if not index.is_file():
            _require_packages()
            say(
                f"converting {path.name} ({path.stat().st_size / 2**20:.0f} MiB) to float32 "
                f"safetensors once; cached in {target}"
            )
            start = time.perf_counter()
            with atomic_directory(target) as staging:
                _convert(path, staging, say)
                seconds = round(time.perf_counter() - start, 1)
                atomic_write_json(
                    staging / INDEX,
                    {
                        "gguf_file": path.name,
                        "sha256": digest,
                        "bytes": path.stat().st_size,
                        "convert_seconds": seconds,
                    },
                )
            say(f"converted {path.name} in {seconds} s")
        meta = read_json(index, fix=fix, what="GGUF conversion index")
    if meta.get("sha256") != digest:
        raise DamagedFileError(
            index,
            f"it records SHA-256 {str(meta.get('sha256'))[:16]}… but {path.name} hashes to "
            f"{digest[:16]}…",
            fix,
        )
    return target, meta


def _convert(path: Path, staging: Path, say: Callable[[str], None]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    say("reading the tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    say("dequantizing the weights (transformers shows a bar per tensor)")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise AbstractionError(
            f"transformers cannot read {path.name} as a causal language model "
            f"({type(exc).__name__}: {exc}); it reads GGUF files of the architectures it "
            "lists in transformers.integrations.ggml"
        ) from None
    # The weights are now plain float32: saved as they are, and loaded without a quantizer.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    say("writing safetensors")
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))


def check_network_hash(directory: Path, network_hash: str) -> None:
    """Record the converted weights' hash on first load; afterwards, refuse a mismatch.

    Raises:
        DamagedFileError: the weights in ``directory`` hash otherwise than when first
            loaded (the files changed or were damaged).
    """
    index = directory / INDEX
    fix = f"delete {directory} and load the GGUF file again (it is converted anew)"
    meta = read_json(index, fix=fix, what="GGUF conversion index")
    recorded = meta.get("network_hash")
    if recorded is None:
        atomic_write_json(index, {**meta, "network_hash": network_hash})
    elif recorded != network_hash:
        raise DamagedFileError(
            directory,
            f"the cached weights hash to {network_hash}, but {INDEX} records {recorded}: "
            "the files were changed or damaged since the conversion",
            fix,
        )
