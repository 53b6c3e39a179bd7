"""Each zoo network retrains to the weights its committed reports were made with (or, on
a CPU class recorded to round MKL's pinned code path differently, to that class's).

The hash is a property of the packages as well as the recipe, so it is checked where
the installed versions are those of ``requirements/test.lock`` (README's test command
and CI); elsewhere the test says why it is skipped.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
from pathlib import Path

import pytest

from abstraction import zoo

LOCK = Path(__file__).resolve().parents[2] / "requirements" / "test.lock"


def _differences_from_the_lock() -> list[str]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", LOCK.read_text(), flags=re.M)
    out = []
    for name, version in pins:
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} missing")
            continue
        if installed != version:
            out.append(f"{name} {installed} (lock: {version})")
    return out


@pytest.mark.parametrize("entry", zoo.entries(), ids=lambda e: e.name)
def test_zoo_network_retrains_to_its_reference_hash(entry: zoo.ZooEntry) -> None:
    assert entry.reference_hash is not None, f"{entry.name} records no reference hash"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("reference hashes are recorded for x86-64")
    differences = _differences_from_the_lock()
    if differences:
        pytest.skip(
            "installed versions differ from requirements/test.lock: " + ", ".join(differences[:5])
        )
    # trained (in the pinned child process) on a fresh clone; loaded from the cache after;
    # the reference, or the hash recorded for a CPU class that rounds MKL's pinned path
    # differently (the same on every run there: test_zoo_is_deterministic)
    known = (entry.reference_hash, *entry.other_hashes)
    assert zoo.load(entry.name).hash in known
    assert zoo.metrics(entry.name)["network_hash"] in known
