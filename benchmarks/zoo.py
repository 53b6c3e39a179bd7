"""Train every zoo network from scratch and print its training time and test accuracy.

Training is deterministic (the same seed gives the same weights hash on one machine),
so the script trains twice into a temporary cache and checks the hashes agree (and, for
a language model, that the tokenizer files are byte for byte the same).

    python benchmarks/zoo.py
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from abstraction import zoo


def _tokenizer_hash(name: str) -> str:
    """SHA-256 of the tokenizer files saved beside a zoo network ('' when it has none)."""
    digest = hashlib.sha256()
    for file in sorted(zoo.path(name, 0).glob("tokenizer*.json")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        os.environ["ABSTRACTION_CACHE"] = directory
        print(f"{'network':28s}{'seconds':>9s}{'test accuracy':>15s}{'deterministic':>15s}")
        for entry in zoo.entries():
            first = zoo.load(entry.name, seed=0, retrain=True)
            tokenizer = _tokenizer_hash(entry.name)
            metrics = zoo.metrics(entry.name, 0)
            again = zoo.load(entry.name, seed=0, retrain=True)
            same = first.hash == again.hash and tokenizer == _tokenizer_hash(entry.name)
            print(
                f"{entry.name:28s}{metrics['train_seconds']:9.1f}"
                f"{metrics['test_accuracy']:15.4f}{same!s:>15s}"
            )


if __name__ == "__main__":
    main()
