"""The differential check of tests/property/test_batch_semantics.py on many more programs.

Generates random causal models (identity tests, None, strings, tuples, mixed-type
branches, boolean operators, arithmetic that may raise) over random finite domains and
checks, on every combination of inputs, that ``run_batch`` equals per-row ``run`` value
for value and type for type (or that both raise), and that ``counterfactual_dataset``
labels equal per-row ``interchange``. Prints how many programs were checked, of which
kind, and the time; exits non-zero on the first disagreement (hypothesis shrinks it).

    python benchmarks/batch_semantics.py                # 10,000 programs
    python benchmarks/batch_semantics.py --programs 500
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "property"))

import test_batch_semantics as differential


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # generated programs trip SyntaxWarnings on purpose
    counts: collections.Counter[str] = collections.Counter()

    @settings(
        max_examples=args.programs,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @seed(args.seed)
    @given(differential.programs())
    def check(program: tuple[str, dict[str, list[object]]]) -> None:
        counts[differential.check_program(*program)] += 1

    start = time.perf_counter()
    check()
    seconds = time.perf_counter() - start
    total = sum(counts.values())
    print(
        f"{total:,} generated programs, batch == per-row Python on every input combination: "
        f"{counts['labels']:,} also checked counterfactual labels against interchange, "
        f"{counts['values']:,} values only, {counts['raised']:,} raised on both paths, "
        f"{counts['rejected']:,} rejected at declaration; {seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
