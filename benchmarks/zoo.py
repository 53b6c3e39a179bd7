"""Train every zoo network from scratch and print its training time and test accuracy.

Training is deterministic (the same seed gives the same weights hash on one machine),
so the script trains twice into a temporary cache and checks the hashes agree.

    python benchmarks/zoo.py
"""

from __future__ import annotations

import os
import tempfile

from abstraction import zoo


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        os.environ["ABSTRACTION_CACHE"] = directory
        print(f"{'network':28s}{'seconds':>9s}{'test accuracy':>15s}{'deterministic':>15s}")
        for entry in zoo.entries():
            first = zoo.load(entry.name, seed=0, retrain=True)
            metrics = zoo.metrics(entry.name, 0)
            again = zoo.load(entry.name, seed=0, retrain=True)
            print(
                f"{entry.name:28s}{metrics['train_seconds']:9.1f}"
                f"{metrics['test_accuracy']:15.4f}{first.hash == again.hash!s:>15s}"
            )


if __name__ == "__main__":
    main()
