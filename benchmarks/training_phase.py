"""Our training phase alone, on the GPT-2-small benchmark's cells: seconds per position.

The cells of ``gpt2_small_vs_pyvene.py`` (12 layers of a random GPT-2-small-sized
network, rank-1 DAS on the residual stream; the staircase at the last position, cell by
cell elsewhere) are prepared, then only their training is timed, with one torch thread.
Run in a worktree of each of two commits to compare them (alternating, three times each):

    python benchmarks/training_phase.py --pairs 1024 --positions last
    python benchmarks/training_phase.py --pairs 128 --positions middle,first

``--capture`` trains each position twice, eagerly and with the step captured
(``TrainingConfig(capture=True)``), and prints both times and the largest difference
between the trained bases; ``--precision`` sets the step's precision (see
:mod:`abstraction.alignment.step`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpt2_small_vs_pyvene as gpt2

from abstraction import PreparedInterchanges, TrainingConfig, counterfactual_dataset
from abstraction.alignment.step import PRECISIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1024, help="training pairs")
    parser.add_argument("--positions", default="last", help="of first,middle,last")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--capture", action="store_true", help="eager, then captured")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ["ABSTRACTION_THREADS"] = "1"
    network, task = gpt2.gpt2_small(0), gpt2.RandomPrompts()
    frame = counterfactual_dataset(gpt2.recall, args.pairs, [["answer"]], seed=0)
    config = TrainingConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=1e-2,
        patience=args.epochs,
        seed=0,
        select_epoch=False,
        precision=args.precision,
    )
    print(
        f"{args.pairs:,} pairs, {args.epochs} epoch(s), batch {args.batch_size}, "
        f"{args.precision}; training seconds, one torch thread"
    )
    for name in args.positions.split(","):
        cells = PreparedInterchanges.for_locations(
            network,
            task,
            frame,
            gpt2.cell_locations(gpt2.POSITIONS[name]),
            ["answer"],
            memory_budget=2**31,
        )
        times, bases = [], []
        for capture in (False, True) if args.capture else (False,):
            began = time.perf_counter()
            alignments, _, staircase = gpt2.train_ours(
                cells, task, replace(config, capture=capture)
            )
            times.append(time.perf_counter() - began)
            bases.append([a.basis for a in alignments])
        how = "staircase" if staircase else "cell by cell"
        line = f"{name} ({how}): {times[0]:.2f} s"
        if args.capture:
            difference = max(float((a - b).abs().max()) for a, b in zip(*bases, strict=True))
            line += (
                f"; captured {times[1]:.2f} s (compiling included); largest basis "
                f"difference {difference:.2g}"
            )
        print(line, flush=True)
        for cell in cells:
            cell.close()


if __name__ == "__main__":
    main()
