"""GPT-2-small DAS sweeps: pyvene 0.1.8 and ours on identical work, at three positions.

A GPT-2-small-sized network (12 layers, d_model 768, 12 heads, vocabulary 50,257;
random weights from ``GPT2Config``) reads prompts of 16-24 random tokens, left-padded
to 24, with a key token (one of two) in the middle; the answer is read at the last
token over the two key tokens' logits. The causal model copies the key to the answer,
and a pair's counterfactual label is the source's key. For each of three intervened
positions - the first real token, the key (middle) and the last token - a rank-1 DAS
sweep covers the residual stream after each of the 12 layers. Both tools do the same
work per cell: the same training pairs, rank 1, the same initial basis, epochs, batch
size and Adam learning rate, cross-entropy over the two candidates at the last token;
IIA on the same held-out pairs. pyvene runs its ``IntervenableModel`` as its
tutorials do (a source and a base forward pass through the whole model and a
backward pass every step). Ours prepares each position's 12 cells from one pass over
the sources and one over the bases (keys and values of the base run kept for the
positions before the intervened one), then trains and scores each cell on the suffix
after its layer. Ours keeps the last epoch and scores nothing between epochs, as pyvene's
loop does (``TrainingConfig(select_epoch=False)``; by default ours scores the
validation pairs after every epoch and keeps the best). Where a cell's step is small
(the last position) ours trains the 12 cells as one staircase (``fit_cells``) and
times each cell alone apart from the sweep. Sources are run only up to the intervened
position (causal attention).

Printed: per position, phase times (activations, training, evaluation) as medians of
the repeats with ranges; the ideal speed-up from counted FLOPs of one training step
(pyvene's forward and backward against ours, summed over the layers) beside the
achieved one; our training time per layer against the blocks its suffix runs; the
FLOP rate of our training phase against this machine's matmul rate (a plain torch
matmul of the model's shapes, timed in the same run); peak RSS of each tool (each
runs in its own forked process), and on a GPU its peak device memory; IIA of both with
a paired test; per training step of the sweep, the operations each tool
dispatches and its host reads (``abstraction.op_counts``: a kernel launch at most and a
GPU synchronisation each, counted the same on any device). The last line is the
last-position sweep's speed-up.

On a GPU (``--device cuda``) the parent process never initialises CUDA (its device
check reads NVML): each forked run moves the network to the GPU itself and runs one
small forward pass before its clocks start, every clock read waits for the GPU's
queued work (``torch.cuda.synchronize``), and the matmul rate is measured on the GPU
in a forked process too. On the CPU nothing changes.

    python benchmarks/gpt2_small_vs_pyvene.py            # 2,000 pairs, 3 repeats: hours here
    python benchmarks/gpt2_small_vs_pyvene.py --quick    # 64 pairs, 1 repeat: minutes
    python benchmarks/gpt2_small_vs_pyvene.py --quick --repeats 3 --positions last --epochs 8
    python benchmarks/gpt2_small_vs_pyvene.py --quick --device cuda   # on a GPU
    python benchmarks/gpt2_small_vs_pyvene.py --quick --device cuda --capture --precision tf32

``--precision`` runs both tools' training steps in TF32 or under bfloat16 autocast (off
by default: fp32) and then also trains ours in fp32, printing the two IIAs with a paired
test; ``--capture`` compiles our training step once and replays it (CUDA graphs on a
GPU); pyvene's step stays eager, and the header line says so.

At one epoch our activations phase (each source and base through all 12 blocks once)
bounds the last position's speed-up (the "ceiling" line); more epochs amortise it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import GPT2Config

from abstraction import (
    Location,
    LowRankPatch,
    Network,
    PreparedInterchanges,
    TrainingConfig,
    causal_model,
    counterfactual_dataset,
)
from abstraction.alignment.das import LearnedRotation, fit, reproducible
from abstraction.alignment.staircase import evaluate_cells, fit_cells, fitted_apart
from abstraction.alignment.step import PRECISIONS, step_precision
from abstraction.locations import resolve_positions
from abstraction.network import Batch, import_pyvene, resolve_device
from abstraction.op_counts import per_step
from abstraction.pyvene_interop import to_pyvene
from abstraction.statistics import iia, paired_test
from abstraction.task import Task

LAYERS, WIDTH, HEADS, VOCAB = 12, 768, 12, 50257
SHORTEST, LONGEST = 16, 24
KEY_TOKENS = (1000, 2000)
POSITIONS: dict[str, int | str] = {"first": 0, "middle": "key", "last": "last"}
DEVICE = torch.device("cpu")
"""Where both tools run (``--device``); set in ``main`` before any process forks."""


def now() -> float:
    """``time.perf_counter()`` once the GPU's queued work is done (on a GPU, kernels run
    asynchronously: a clock read without waiting would time their launch only)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter()


@causal_model(inputs={"prompt": range(1_000_000), "key": range(2)})
def recall(prompt, key):  # type: ignore[no-untyped-def]
    answer = key
    return answer


class RandomPrompts(Task):
    """Prompt ``prompt`` (a seed): 16-24 random tokens with the key token in the middle."""

    def __init__(self) -> None:
        self.name = "recall"
        self.model = recall

    @property
    def n_classes(self) -> int:
        return 2

    @property
    def positions(self) -> tuple[str, ...]:
        return ("key",)

    def encode(self, columns: Mapping[str, np.ndarray]) -> Batch:
        n = len(columns["prompt"])
        ids = torch.zeros(n, LONGEST, dtype=torch.long)
        mask = torch.zeros(n, LONGEST, dtype=torch.long)
        key_at = torch.zeros(n, dtype=torch.long)
        for row, (prompt, key) in enumerate(zip(columns["prompt"], columns["key"], strict=True)):
            rng = np.random.default_rng(int(prompt))
            length = int(rng.integers(SHORTEST, LONGEST + 1))
            tokens = rng.integers(3000, VOCAB, size=length)
            tokens[length // 2] = KEY_TOKENS[int(key)]
            pad = LONGEST - length
            ids[row, pad:] = torch.from_numpy(tokens)
            mask[row, pad:] = 1
            key_at[row] = pad + length // 2
        return Batch(
            {"input_ids": ids, "attention_mask": mask},
            positions={"key": key_at},
            readout=torch.full((n,), LONGEST - 1),
            candidates=torch.tensor(KEY_TOKENS),
        )

    def label_ids(
        self, values: np.ndarray, inputs: Mapping[str, np.ndarray] | None = None
    ) -> torch.Tensor:
        return torch.tensor(np.asarray(values, dtype=np.int64))


def gpt2_small(seed: int) -> Network:
    config = GPT2Config(
        n_layer=LAYERS,
        n_embd=WIDTH,
        n_head=HEADS,
        vocab_size=VOCAB,
        n_positions=1024,
        architectures=["GPT2LMHeadModel"],
    )
    return Network.from_config(config, seed=seed, name="gpt2-small (random)")


def initial_basis(seed: int) -> torch.Tensor:
    """The rank-1 basis our DAS starts from with this seed (given to pyvene too)."""
    return reproducible(
        lambda: LearnedRotation(WIDTH, 1, torch.Generator().manual_seed(seed))
    )().weight


# -- FLOP counts ------------------------------------------------------------------------------


def block_flops(queries: int, keys: int) -> float:
    """Forward FLOPs of one GPT-2 block for ``queries`` positions attending to ``keys``."""
    dense = 2 * queries * 12 * WIDTH * WIDTH  # qkv 3d^2, out d^2, MLP 8d^2
    attention = 2 * 2 * queries * keys * WIDTH  # QK^T and AV
    return float(dense + attention)


def pyvene_step_flops(layer: int, length: int) -> float:
    """Forward+backward FLOPs per pair of one pyvene DAS step at ``layer``.

    Two full forward passes (source and base; blocks and the unembedding at every
    position), and a backward pass from the logits down to the intervened layer
    (weights are frozen, so backward computes input gradients only: about one forward).
    """
    full = LAYERS * block_flops(length, length) + 2 * length * WIDTH * VOCAB
    after = (LAYERS - 1 - layer) * block_flops(length, length) + 2 * length * WIDTH * VOCAB
    return 2 * full + after


def our_step_flops(layer: int, length: int, start: int) -> float:
    """Forward+backward FLOPs per pair of one of our DAS steps at ``layer``: the blocks
    after it on positions ``start..`` (keys of all positions), two candidate logits."""
    suffix = (LAYERS - 1 - layer) * block_flops(length - start, length)
    return 2 * (suffix + 2 * 2 * WIDTH)


def sweep_flops(
    task: RandomPrompts,
    frames: dict[str, pd.DataFrame],
    position: int | str,
    start: int,
    epochs: int,
) -> tuple[float, float]:
    """Counted FLOPs of a whole 12-layer sweep (every phase): (pyvene's, ours).

    pyvene: per cell, ``epochs`` training passes over the pairs (:func:`pyvene_step_flops`)
    and a source and a base forward pass per test pair. Ours: each source once through
    the 12 blocks up to the position the sites read (no unembedding), each base once
    through the 12 blocks at every position, then per cell the training steps
    (:func:`our_step_flops`) and a forward pass of its suffix per test pair.
    """
    full = LAYERS * block_flops(LONGEST, LONGEST) + 2 * LONGEST * WIDTH * VOCAB
    pairs, held_out = len(frames["train"]), len(frames["test"])
    theirs = sum(
        epochs * pairs * pyvene_step_flops(layer, LONGEST) + held_out * 2 * full
        for layer in range(LAYERS)
    )
    ours = 0.0
    for frame in frames.values():
        source = task.batch(frame, "source.answer.")
        read = resolve_positions(position, source, LONGEST) + 1  # a causal prefix per source
        ours += sum(LAYERS * block_flops(int(n), int(n)) for n in read)
        ours += len(frame) * LAYERS * block_flops(LONGEST, LONGEST)
    ours += sum(
        epochs * pairs * our_step_flops(layer, LONGEST, start)
        + held_out * our_step_flops(layer, LONGEST, start) / 2
        for layer in range(LAYERS)
    )
    return theirs, ours


# -- the two tools ------------------------------------------------------------------------------


def cell_locations(position: int | str) -> list[Location]:
    return [Location(layer=layer, position=position) for layer in range(LAYERS)]


def run_ours(
    network: Network,
    task: RandomPrompts,
    frames: dict[str, pd.DataFrame],
    position: int | str,
    config: TrainingConfig,
    budget: int,
) -> dict[str, Any]:
    locations = cell_locations(position)
    times: dict[str, float] = {}
    clock = now()
    prepared = {
        split: PreparedInterchanges.for_locations(
            network, task, frames[split], locations, ["answer"], memory_budget=budget
        )
        for split in ("train", "test")
    }
    times["activations"] = now() - clock
    train = prepared["train"]
    cache = train[0].cache
    clock = now()
    alignments, layer_seconds, staircase = train_ours(train, task, config)
    times["training"] = now() - clock
    clock = now()
    correct = [hits.numpy() for hits in evaluate_cells(alignments, prepared["test"])]
    times["evaluation"] = now() - clock
    for cell in train if staircase else []:  # each cell alone, outside the timed sweep
        began = now()
        reproducible(fit)(cell, None, task, ["answer"], method="low_rank", rank=1, config=config)
        layer_seconds.append(now() - began)
    out = {
        "times": times,
        "layer_seconds": layer_seconds,
        "correct": correct,
        "start": train[0].start,
        "staircase": staircase,
        "cache": (
            f"{sum(c.cache.nbytes for c in train[:1] if c.cache) / 2**20:.0f} MiB for layer 0 in "
            f"{cache.storage if cache else '-'}"
        ),
    }
    for cells in prepared.values():
        for cell in cells:
            cell.close()
    return out


def train_ours(
    train: list[PreparedInterchanges],
    task: RandomPrompts,
    config: TrainingConfig,
    staircase: bool | None = None,
) -> tuple[list[Any], list[float], bool]:
    """Our training phase: the cells as one staircase where that is faster, else one by
    one (then with each cell's seconds); ``staircase`` overrides that choice."""
    layer_seconds: list[float] = []
    alignments: list[Any] = []
    if staircase is None:
        staircase = fitted_apart(train, None, "low_rank", config) is None
    if staircase:  # all cells train together: no time per cell to report
        alignments = reproducible(fit_cells)(
            train, None, task, ["answer"], method="low_rank", rank=1, config=config
        )
    for cell in [] if staircase else train:
        began = now()
        alignments.append(
            reproducible(fit)(
                cell, None, task, ["answer"], method="low_rank", rank=1, config=config
            )
        )
        layer_seconds.append(now() - began)
    return alignments, layer_seconds, staircase


PyveneInputs = tuple[Batch, Batch, list[int], list[int], torch.Tensor]


def pyvene_tensors(task: RandomPrompts, frame: pd.DataFrame, position: int | str) -> PyveneInputs:
    """pyvene's inputs for ``frame``: base and source batches, their intervened positions
    (Python ints, as pyvene's ``unit_locations`` takes them) and labels."""
    base = task.batch(frame, "base.")
    source = task.batch(frame, "source.answer.")
    return (
        base,
        source,
        resolve_positions(position, base, LONGEST).tolist(),
        resolve_positions(position, source, LONGEST).tolist(),
        task.labels(frame, "label"),
    )


def epoch_orders(rows: int, config: TrainingConfig) -> list[list[int]]:
    """The order of the training rows in each epoch, drawn before training (as a data
    loader would hand them over: nothing read back from the device per step)."""
    generator = torch.Generator().manual_seed(config.seed)
    return [torch.randperm(rows, generator=generator).tolist() for _ in range(config.epochs)]


def train_pyvene(
    network: Network,
    location: Location,
    tensors: PyveneInputs,
    config: TrainingConfig,
    orders: list[list[int]] | None = None,
) -> Any:
    """One cell trained as pyvene's tutorials do (``orders``: each epoch's row order,
    default :func:`epoch_orders`); its ``IntervenableModel``."""
    pyvene = import_pyvene()
    component, intervention = to_pyvene(LowRankPatch(location, initial_basis(config.seed)), network)
    model = pyvene.IntervenableModel(
        pyvene.IntervenableConfig(
            representations=[
                pyvene.RepresentationConfig(
                    **component, max_number_of_units=1, intervention=intervention
                )
            ]
        ),
        network.module,
    )
    model.disable_model_gradients()
    optimizer = torch.optim.Adam(model.get_trainable_parameters(), lr=config.lr)
    base, source, base_at, source_at, labels = tensors
    for order in epoch_orders(len(labels), config) if orders is None else orders:
        for first in range(0, len(order), config.batch_size):
            rows = order[first : first + config.batch_size]
            with step_precision(config.precision, DEVICE):  # --precision: as ours
                loss = torch.nn.functional.cross_entropy(
                    pyvene_logits(model, rows, base, source, base_at, source_at),
                    labels[torch.tensor(rows)].to(DEVICE),
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


COUNT_BATCH = 8
"""Rows per batch when counting operations (see :func:`count_steps`)."""


def count_steps(
    network: Network,
    task: RandomPrompts,
    counting: pd.DataFrame,
    position: int | str,
    config: TrainingConfig,
    budget: int,
) -> dict[str, Any]:
    """Operations dispatched and host reads per training step of the sweep (one step of
    every cell), for both tools: one epoch over 4 batches of ``counting`` pairs counted
    against one over 2, the difference halved, so set-up and once-an-epoch work cancel.
    :data:`COUNT_BATCH` rows per batch."""
    # the operations of a step do not depend on its rows: count on small batches (fast),
    # on the path (staircase or cell by cell) the real batch size takes
    bs = COUNT_BATCH
    locations = cell_locations(position)
    one_epoch = replace(config, epochs=1, batch_size=bs)
    frames_by_batches = {n: counting.iloc[: n * bs] for n in (2, 4)}
    prepared = {
        n: PreparedInterchanges.for_locations(
            network, task, rows, locations, ["answer"], memory_budget=budget
        )
        for n, rows in frames_by_batches.items()
    }
    tensors = {n: pyvene_tensors(task, rows, position) for n, rows in frames_by_batches.items()}
    orders = {n: epoch_orders(n * bs, one_epoch) for n in frames_by_batches}

    staircase = fitted_apart(prepared[2], None, "low_rank", config) is None

    def ours(batches: int) -> None:
        train_ours(prepared[batches], task, one_epoch, staircase)

    def theirs(batches: int) -> None:
        for location in locations:
            train_pyvene(network, location, tensors[batches], one_epoch, orders[batches])

    counted = {"ours": per_step(ours, 2, 2), "pyvene": per_step(theirs, 2, 2)}
    for cells in prepared.values():
        for cell in cells:
            cell.close()
    return {
        name: {"operations": c.operations, "host_reads": c.host_reads, "reads": c.by_host_read}
        for name, c in counted.items()
    }


def print_counts(counts: dict[str, Any], cells: int = LAYERS) -> None:
    """One line: operations dispatched and host reads per training step of the sweep."""
    mine, other = counts["ours"], counts["pyvene"]
    print(
        f"per training step of the sweep (one step of each of the {cells} cells; counted "
        "with torch's dispatch mode, the same on any device): operations dispatched "
        f"abstraction {mine['operations']:,.0f}, pyvene {other['operations']:,.0f} "
        f"({other['operations'] / cells:,.0f} per cell); host reads (a GPU synchronisation "
        f"each) abstraction {mine['host_reads']:.1f} {mine['reads']}, pyvene "
        f"{other['host_reads']:.1f} {other['reads']}"
    )


def run_pyvene(
    network: Network,
    task: RandomPrompts,
    frames: dict[str, pd.DataFrame],
    position: int | str,
    config: TrainingConfig,
) -> dict[str, Any]:
    tensors = {split: pyvene_tensors(task, frames[split], position) for split in ("train", "test")}
    times = {"activations": 0.0, "training": 0.0, "evaluation": 0.0}
    layer_seconds, correct = [], []
    for location in cell_locations(position):
        began = now()
        model = train_pyvene(network, location, tensors["train"], config)
        seconds = now() - began
        layer_seconds.append(seconds)
        times["training"] += seconds
        began = now()
        base, source, base_at, source_at, labels = tensors["test"]
        predictions = []
        with torch.no_grad():
            for first in range(0, len(labels), config.batch_size):
                rows = list(range(first, min(first + config.batch_size, len(labels))))
                out = pyvene_logits(model, rows, base, source, base_at, source_at)
                predictions.append(out.argmax(-1).cpu())
        correct.append((torch.cat(predictions) == labels).numpy())
        times["evaluation"] += now() - began
    return {"times": times, "layer_seconds": layer_seconds, "correct": correct}


def pyvene_logits(
    model: Any,
    rows: list[int],
    base: Batch,
    source: Batch,
    base_at: list[int],
    source_at: list[int],
) -> torch.Tensor:
    """pyvene's interchange of ``rows``: source position -> base position, candidate logits."""
    index = torch.tensor(rows)
    b, s = base.select(index).to(DEVICE), source.select(index).to(DEVICE)
    units = ([[[source_at[r]] for r in rows]], [[[base_at[r]] for r in rows]])
    _, out = model(b.inputs, [s.inputs], unit_locations={"sources->base": units})
    every = torch.arange(len(rows), device=out.logits.device)
    logits: torch.Tensor = out.logits[every, LONGEST - 1]
    return logits[:, torch.tensor(KEY_TOKENS, device=logits.device)]


def _child(conn: Any, fn: Any, args: tuple[Any, ...]) -> None:
    if DEVICE.type == "cuda":
        # CUDA starts here, in the child: a process forked after CUDA started cannot use it
        for arg in args:
            if isinstance(arg, Network):
                arg.to(DEVICE)
                with torch.no_grad():  # warm: CUDA context, cuBLAS, the kernels' first load
                    arg.module(input_ids=torch.zeros(2, LONGEST, dtype=torch.long, device=DEVICE))
        torch.cuda.synchronize(DEVICE)
        torch.cuda.reset_peak_memory_stats(DEVICE)
    result = fn(*args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if DEVICE.type == "cuda":
        result["peak_device_mib"] = torch.cuda.max_memory_allocated(DEVICE) / 2**20
    conn.send(result)
    conn.close()


def forked(fn: Any, *args: Any) -> dict[str, Any]:
    """``fn(*args)`` in a forked process (its own peak RSS and, on a GPU, peak device
    memory), its result sent back."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, fn, args))
    process.start()
    result: dict[str, Any] = receive.recv()
    process.join()
    return result


def matmul_rate(rows: int) -> float:
    """FLOP/s of a plain torch matmul of the model's MLP shape on ``rows`` positions."""
    a = torch.randn(rows, WIDTH).to(DEVICE)
    b = torch.randn(WIDTH, 4 * WIDTH).to(DEVICE)
    a @ b
    best = float("inf")
    for _ in range(5):
        began = now()
        for _ in range(10):
            a @ b
        best = min(best, (now() - began) / 10)
    return 2 * rows * WIDTH * 4 * WIDTH / best


def _matmul_rate(rows: int) -> dict[str, Any]:
    return {"rate": matmul_rate(rows)}


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 pairs, 1 repeat")
    parser.add_argument("--pairs", type=int, help="training pairs (default 2,000; quick 64)")
    parser.add_argument("--repeats", type=int, help="runs per tool (default 3; quick 1)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--positions", default="first,middle,last", help="of first,middle,last")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both tools")
    parser.add_argument("--memory-budget", type=float, default=2.0, help="GiB for our cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda, cuda:N")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="both tools' training steps (fp32: exact; tf32: TF32 matmuls on CUDA; bf16: "
        "bfloat16 autocast); other than fp32, ours also trains in fp32 and IIAs are compared",
    )
    parser.add_argument(
        "--capture",
        action="store_true",
        help="our training step compiled once and replayed (torch.compile; CUDA graphs on "
        "CUDA); pyvene's runs eagerly",
    )
    parser.add_argument(
        "--counts-only",
        action="store_true",
        help="print only the operations and host reads per training step (minutes)",
    )
    args = parser.parse_args()
    global DEVICE
    if args.device != "cpu":
        # the parent checks the device through NVML and never initialises CUDA (which
        # would leave the forked runs unable to use it)
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    DEVICE = resolve_device(args.device)
    pairs = args.pairs or (64 if args.quick else 2000)
    repeats = args.repeats or (1 if args.quick else 3)
    held_out = max(32, pairs // 4)
    torch.set_num_threads(args.threads)
    os.environ["ABSTRACTION_THREADS"] = str(args.threads)
    budget = int(args.memory_budget * 2**30)
    network = gpt2_small(args.seed)
    task = RandomPrompts()
    frames = {
        "train": counterfactual_dataset(recall, pairs, [["answer"]], seed=args.seed),
        "test": counterfactual_dataset(recall, held_out, [["answer"]], seed=args.seed + 1),
    }
    # pairs apart from the training set, enough for 4 batches whatever --pairs says
    counting = counterfactual_dataset(recall, 4 * args.batch_size, [["answer"]], seed=args.seed + 2)
    network.hash  # noqa: B018 - hashed once here, not in every forked run
    config = TrainingConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.epochs,
        seed=args.seed,
        select_epoch=False,  # pyvene's loop: no scoring between epochs, the last one kept
        precision=args.precision,
        capture=args.capture,
    )
    import_pyvene()
    print(
        f"GPT-2 small (12 x 768, random weights), prompts {SHORTEST}-{LONGEST} tokens left-padded "
        f"to {LONGEST}; {pairs:,} training pairs, {held_out:,} test pairs; rank-1 DAS, "
        f"{args.epochs} epoch(s), batch "
        f"{args.batch_size}, Adam {args.lr}; {repeats} repeat(s); torch threads {args.threads}; "
        f"our memory budget {args.memory_budget} GiB"
        + (f"; device {DEVICE}" if DEVICE.type != "cpu" else "")
        + (f"; both tools' steps in {args.precision}" if args.precision != "fp32" else "")
        + ("; our step captured (pyvene's eager)" if args.capture else "")
    )
    if args.counts_only:
        for name in args.positions.split(","):
            print(f"\n== position {name} ({POSITIONS[name]!r})")
            counts = forked(count_steps, network, task, counting, POSITIONS[name], config, budget)
            print_counts(counts)
        return
    speedups: dict[str, float] = {}
    for name in args.positions.split(","):
        position = POSITIONS[name]
        ours = [forked(run_ours, network, task, frames, position, config, budget)]
        theirs = [forked(run_pyvene, network, task, frames, position, config)]
        for _ in range(repeats - 1):
            ours.append(forked(run_ours, network, task, frames, position, config, budget))
            theirs.append(forked(run_pyvene, network, task, frames, position, config))
        start = ours[0]["start"]
        print(
            f"\n== position {name} ({position!r}): our suffix runs positions {start}..{LONGEST - 1}"
            f"; cache {ours[0]['cache']}"
        )
        print(f"{'phase':14s}{'abstraction s':>24s}{'pyvene s':>24s}{'ratio':>8s}")
        totals = {"ours": [0.0] * repeats, "pyvene": [0.0] * repeats}
        for phase in ("activations", "training", "evaluation"):
            a = [r["times"][phase] for r in ours]
            b = [r["times"][phase] for r in theirs]
            for i in range(repeats):
                totals["ours"][i] += a[i]
                totals["pyvene"][i] += b[i]
            ratio = statistics.median(b) / statistics.median(a) if statistics.median(a) else 0.0
            print(f"{phase:14s}{median_range(a):>24s}{median_range(b):>24s}{ratio:7.1f}x")
        speedup = statistics.median(totals["pyvene"]) / statistics.median(totals["ours"])
        speedups[name] = speedup
        print(
            f"{'sweep':14s}{median_range(totals['ours']):>24s}"
            f"{median_range(totals['pyvene']):>24s}{speedup:7.1f}x"
        )
        ceiling = statistics.median(totals["pyvene"]) / statistics.median(
            [r["times"]["activations"] for r in ours]
        )
        how = "as one staircase of all 12 cells" if ours[0]["staircase"] else "cell by cell"
        print(
            f"ceiling set by our activations phase alone (pyvene's sweep / our activations; "
            f"training and evaluation free): {ceiling:.1f}x; our training ran {how}"
        )
        theirs_all, ours_all = sweep_flops(task, frames, position, start, args.epochs)
        print(
            f"whole sweep: ideal speed-up from counted FLOPs of every phase "
            f"{theirs_all / ours_all:.1f}x ({theirs_all / 1e12:.1f} against "
            f"{ours_all / 1e12:.2f} TFLOP), achieved {speedup:.1f}x "
            f"({speedup / (theirs_all / ours_all):.2f} of ideal)"
        )
        ideal = sum(pyvene_step_flops(layer, LONGEST) for layer in range(LAYERS)) / sum(
            our_step_flops(layer, LONGEST, start) for layer in range(LAYERS)
        )
        trained = statistics.median([r["times"]["training"] for r in ours])
        achieved = statistics.median([r["times"]["training"] for r in theirs]) / trained
        print(
            f"training steps: ideal speed-up from counted FLOPs {ideal:.1f}x, achieved "
            f"{achieved:.1f}x ({achieved / ideal:.2f} of ideal)"
        )
        theirs_flops = sum(pyvene_step_flops(layer, LONGEST) for layer in range(LAYERS))
        theirs_trained = statistics.median([r["times"]["training"] for r in theirs])
        theirs_rate = theirs_flops * pairs * args.epochs / theirs_trained
        print(f"pyvene's training phase: {theirs_rate / 1e9:.2f} GFLOP/s counted")
        steps = args.epochs * -(-pairs // args.batch_size)
        flops = sum(our_step_flops(layer, LONGEST, start) for layer in range(LAYERS))
        flops *= pairs * args.epochs
        rows = args.batch_size * (LONGEST - start)
        # on a GPU in a forked process, like the runs: this process never starts CUDA
        rate = matmul_rate(rows) if DEVICE.type == "cpu" else forked(_matmul_rate, rows)["rate"]
        print(
            f"our training phase: {flops / trained / 1e9:.2f} GFLOP/s counted; a "
            f"({args.batch_size * (LONGEST - start)} x {WIDTH}) @ ({WIDTH} x {4 * WIDTH}) matmul "
            f"here: {rate / 1e9:.2f} GFLOP/s; ratio {flops / trained / rate:.2f} "
            f"({steps} steps per layer)"
        )
        print_counts(forked(count_steps, network, task, counting, position, config, budget))
        alone = " (each cell alone, timed apart from the staircase)" if ours[0]["staircase"] else ""
        print(f"per layer (median s): layer, suffix blocks, ours{alone}, ours per block, pyvene")
        for layer in range(LAYERS):
            mine = statistics.median([r["layer_seconds"][layer] for r in ours])
            blocks = LAYERS - 1 - layer
            other = statistics.median([r["layer_seconds"][layer] for r in theirs])
            per = f"{mine / blocks:.3f}" if blocks else "-"
            print(f"  {layer:2d} {blocks:3d} {mine:8.2f} {per:>8s} {other:8.2f}")
        print(
            f"peak RSS MiB: abstraction {max(r['peak_rss_mib'] for r in ours):,.0f}, pyvene "
            f"{max(r['peak_rss_mib'] for r in theirs):,.0f}"
        )
        if DEVICE.type == "cuda":
            print(
                f"peak device memory MiB (torch.cuda.max_memory_allocated): abstraction "
                f"{max(r['peak_device_mib'] for r in ours):,.0f}, pyvene "
                f"{max(r['peak_device_mib'] for r in theirs):,.0f}"
            )
        bases = frames["test"]["base_id"].to_numpy() if "base_id" in frames["test"] else None
        a_correct = np.concatenate(ours[0]["correct"])
        b_correct = np.concatenate(theirs[0]["correct"])
        clusters = np.tile(bases, LAYERS) if bases is not None else None
        a_iia, b_iia = iia(a_correct, clusters), iia(b_correct, clusters)
        test = paired_test(a_correct, b_correct, clusters, alternative="two-sided")
        best = max(range(LAYERS), key=lambda layer: ours[0]["correct"][layer].mean())
        print(
            f"IIA over the 12 cells x {held_out} test pairs: abstraction {a_iia.value:.3f} "
            f"({a_iia.low:.3f}-{a_iia.high:.3f}), pyvene {b_iia.value:.3f} "
            f"({b_iia.low:.3f}-{b_iia.high:.3f}); difference {test.difference.value:+.3f} "
            f"(95% CI {test.difference.low:+.3f} to {test.difference.high:+.3f}), two-sided "
            f"p = {test.p_value:.3g}; best cell (ours) layer {best}: "
            f"{ours[0]['correct'][best].mean():.3f} vs {theirs[0]['correct'][best].mean():.3f}"
        )
        if args.precision != "fp32":
            exact = forked(
                run_ours, network, task, frames, position, replace(config, precision="fp32"), budget
            )
            e_correct = np.concatenate(exact["correct"])
            e_iia = iia(e_correct, clusters)
            versus = paired_test(a_correct, e_correct, clusters, alternative="two-sided")
            print(
                f"IIA of ours in {args.precision} against ours in fp32: {a_iia.value:.3f} vs "
                f"{e_iia.value:.3f} ({e_iia.low:.3f}-{e_iia.high:.3f}); difference "
                f"{versus.difference.value:+.3f} (95% CI {versus.difference.low:+.3f} to "
                f"{versus.difference.high:+.3f}), two-sided p = {versus.p_value:.3g}; fp32 "
                f"training {exact['times']['training']:.2f} s"
            )
    print("\nspeed-up per position: " + ", ".join(f"{k} {v:.1f}x" for k, v in speedups.items()))
    print("(targets: last >= 30x, first >= 3x)")
    print(f"speedup_vs_pyvene={speedups.get('last', next(iter(speedups.values()))):.2f}")


if __name__ == "__main__":
    main()
