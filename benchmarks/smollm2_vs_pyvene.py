"""SmolLM2-135M DAS sweeps on IOI prompts: pyvene 0.1.8 and ours on identical work.

The network is the real pretrained SmolLM2-135M-Instruct from the zoo
(``zoo.load("smollm2-135m")``: a Llama-architecture model, 30 layers, d_model 576, 9
query and 3 key/value heads of 64, MLP 1,536 wide, vocabulary 49,152, float32). It
reads indirect-object-identification prompts

    When Mary and John went to the store, John gave a drink to

(three templates, places and things as in ``hypotheses/ioi_smollm2.py``; 20 names, each
checked to be one token with its leading space), left-padded, and answers at the last
token over the prompt's two names (``PromptTask(candidates=("a", "b"))``). The causal
model is that hypothesis's: ``s_position`` records which name the subject repeats (the
first or the second) and the answer is the other one; a pair's counterfactual label is
the base's name that the source's ``s_position`` picks. For each of three intervened
positions - the first real token (0; a template word, which cannot know ``s_position``),
the subject's second mention (``s.last``, the middle) and the last token - a rank-1 DAS
sweep covers the residual stream after each chosen layer (default all 30). Both tools
do the same work per cell: the same training pairs, rank 1, the same initial basis,
epochs, batch size and Adam learning rate, cross-entropy over the two candidates at the
last token; IIA on the same held-out pairs, compared with a paired test clustered by
base. pyvene runs its ``IntervenableModel`` as its tutorials do (a source and a base
forward pass through the whole model, logits at every position, and a backward pass
every step). Ours prepares a position's cells from one pass over the sources (each cut
after the intervened position: causal attention) and one over the bases (keys and values
of the base run kept for the positions before the intervened one), then trains and
scores each cell on the suffix after its layer, keeping the last epoch with nothing
scored between epochs as pyvene's loop does (``TrainingConfig(select_epoch=False)``).
Where a cell's step is small (the last position) ours trains the cells as one staircase
(``fit_cells``) and times each cell alone apart from the sweep.
Per training step of the sweep it also prints the operations each tool dispatches and
its host reads (``abstraction.op_counts``: a kernel launch at most and a GPU
synchronisation each, counted the same on any device).

pyvene's cell: ``abstraction.pyvene_interop.to_pyvene`` maps our locations to pyvene's
components for GPT-2 and pyvene's MLP only; it refuses Llama ("no pyvene component is
known for ... in llama"). For a Llama network this benchmark therefore builds pyvene's
config itself, as pyvene's tutorials do: ``RepresentationConfig(layer, "block_output",
"pos", max_number_of_units=1, intervention=LowRankRotatedSpaceIntervention(embed_dim=576,
low_rank_dimension=1))`` (pyvene's llama mapping hooks ``block_output`` on
``model.layers[i]``), with the same initial basis assigned to ``rotate_layer.weight``
(through pyvene's orthogonal parametrisation). Before any timing, one check runs both
tools once at the first chosen layer of each position with that basis and prints the
largest difference of the candidate logits (about 1e-5 when they agree).

The transformers 5 trap: this environment runs pyvene 0.1.8 (written against
transformers 4) under transformers 5. Its ``LowRankRotatedSpaceIntervention`` and the
other interventions are plain torch modules that ``IntervenableModel`` neither casts nor
moves, and they cast activations to their rotation's dtype; transformers 5 loads
pretrained checkpoints in their stored dtype unless told otherwise (``dtype="auto"`` by
default) and returns a decoder layer's hidden states as a tensor, not a tuple. Here the
zoo's network is float32 (the GGUF file is dequantized once), so the interventions stay
float32 and on the network's device, and the conformance line above is what shows that
pyvene's ``block_output`` hook reads and writes the tensor each Llama layer returns.

Printed: per position, phase times (activations, training, evaluation) as medians of
the repeats with ranges; the ideal speed-up from counted FLOPs (q/k/v/o with the
grouped-query key/value width, gate/up/down MLP, two RMSNorms per block and the final
one, attention over the sequence, the 49,152-wide unembedding) beside the achieved one,
for the training steps and for the whole sweep, and the "of ideal" ratio; our training
time per layer against the blocks its suffix runs; FLOP rates against a plain matmul of
the MLP's shape; peak RSS of each tool (each runs in its own forked process), and on a
GPU its peak device memory; IIA of both with the paired test; the network's own accuracy
on the test bases; and the goal line: achieved >= 0.7 of the counted-FLOP ideal (the
training steps', as in ``benchmarks/gpt2_small_vs_pyvene.py``; the whole sweep's shown
beside it) at every position at one epoch.

    python benchmarks/smollm2_vs_pyvene.py            # 2,000 pairs, 30 layers, 3 repeats: ~1 day
    python benchmarks/smollm2_vs_pyvene.py --quick    # 64 pairs, 1 repeat, 30 layers: ~20 min
    python benchmarks/smollm2_vs_pyvene.py --pairs 48 --repeats 1 --layers 20,28 --positions last
    python benchmarks/smollm2_vs_pyvene.py --pairs 48 --repeats 1 --layers 28
    python benchmarks/smollm2_vs_pyvene.py --quick --device cuda   # on a GPU

On a GPU (``--device cuda``) the parent process never initialises CUDA (it runs the
conformance check and the accuracy on the CPU): each forked run moves the network to
the GPU itself and runs one small forward pass before its clocks start, and every clock
read waits for the GPU's queued work. On the CPU nothing changes.

The times after the first two commands are estimates for a 2-core CPU, one torch thread
per tool, from the tiny runs (pyvene about 0.1-0.13 s per pair and layer for a training
step and 0.09 s per test pair and layer; its side is about 2.5 hours per position and
repeat at 2,000 pairs), not measurements.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from abstraction import (
    Location,
    LowRankPatch,
    Network,
    PreparedInterchanges,
    PromptTask,
    TrainingConfig,
    causal_model,
    counterfactual_dataset,
    zoo,
)
from abstraction.alignment.das import LearnedRotation, fit, reproducible
from abstraction.alignment.staircase import evaluate_cells, fit_cells, fitted_apart
from abstraction.interventions import InterventionError
from abstraction.locations import resolve_positions
from abstraction.network import Batch, import_pyvene, resolve_device
from abstraction.op_counts import per_step
from abstraction.pyvene_interop import to_pyvene
from abstraction.runtime import intervene
from abstraction.statistics import iia, paired_test

ZOO_NAME = "smollm2-135m"
VARIABLE = "s_position"
POSITIONS: dict[str, int | str] = {"first": 0, "middle": "s.last", "last": "last"}
DEVICE = torch.device("cpu")
"""Where both tools run (``--device``); set in ``main`` before any process forks."""

# the IOI data of hypotheses/ioi_smollm2.py (copied: that file builds an experiment on import)
NAMES = (
    *("Mary", "John", "Alice", "Bob", "Tom", "Sarah", "James", "Emma", "David", "Anna"),
    *("Michael", "Lisa", "Paul", "Kate", "Mark", "Laura", "Peter", "Susan", "Daniel", "Rachel"),
)
PLACES = (
    *("store", "park", "school", "office", "garden", "station", "hospital", "restaurant"),
    *("library", "beach", "market"),
)
THINGS = (
    *("drink", "book", "ball", "letter", "gift", "key", "bag", "ring", "flower", "pen"),
    *("cake", "bottle"),
)
TEMPLATES = (
    "When {a} and {b} went to the {place}, {s} gave a {thing} to",
    "After {a} and {b} arrived at the {place}, {s} handed a {thing} to",
    "While {a} and {b} were working at the {place}, {s} threw a {thing} to",
)
INPUTS = {"a": NAMES, "b": NAMES, "s": NAMES, "place": PLACES, "thing": THINGS}


@causal_model(inputs=INPUTS)
def ioi(a, b, s, place, thing):  # type: ignore[no-untyped-def]
    s_position = 1 if s == a else 2
    io = b if s_position == 1 else a
    return io


def ioi_inputs(rng: np.random.Generator, n: int) -> dict[str, list[str]]:
    """Two different names, the subject one of them (either, equally often)."""
    first = rng.integers(0, len(NAMES), n)
    second = (first + rng.integers(1, len(NAMES), n)) % len(NAMES)
    subject = [
        NAMES[f] if pick else NAMES[s]
        for f, s, pick in zip(first, second, rng.integers(0, 2, n), strict=True)
    ]
    return {
        "a": [NAMES[i] for i in first],
        "b": [NAMES[i] for i in second],
        "s": subject,
        "place": [PLACES[i] for i in rng.integers(0, len(PLACES), n)],
        "thing": [THINGS[i] for i in rng.integers(0, len(THINGS), n)],
    }


def ioi_task(network: Network) -> PromptTask:
    """The IOI prompt task on ``network``'s tokenizer, left-padded; every name one token."""
    tokenizer = network.tokenizer
    split = [n for n in NAMES if len(tokenizer(f" {n}", add_special_tokens=False).input_ids) != 1]
    if split:
        raise SystemExit(f"names that are not one token with a leading space: {split}")
    return PromptTask("ioi", ioi, tokenizer, TEMPLATES, candidates=("a", "b"), padding="left")


def now() -> float:
    """``time.perf_counter()`` once the GPU's queued work is done."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter()


# -- FLOP counts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """The Llama shapes the FLOP counts need (from the network's config)."""

    layers: int
    width: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    vocab: int

    @classmethod
    def of(cls, network: Network) -> Shape:
        c: Any = network.module.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return cls(
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            head_dim,
            c.intermediate_size,
            c.vocab_size,
        )

    def block(self, queries: int, keys: int) -> float:
        """Forward FLOPs of one Llama block for ``queries`` positions attending to ``keys``:
        q and o (``heads x head_dim``), k and v (grouped-query: ``kv_heads x head_dim``),
        gate/up/down, two RMSNorms (about 4 FLOPs an element), QK^T and AV over every
        query head. RoPE, softmax and SiLU (elementwise, under 1 %) are not counted."""
        d, q, kv = self.width, self.heads * self.head_dim, self.kv_heads * self.head_dim
        dense = 2 * queries * (d * q + 2 * d * kv + q * d + 3 * d * self.mlp)
        norms = 2 * 4 * queries * d
        attention = 2 * 2 * queries * keys * q
        return float(dense + norms + attention)

    def full(self, length: int) -> float:
        """A whole forward pass of one sequence: every block, the final norm, and the
        unembedding at every position (what ``LlamaForCausalLM`` computes)."""
        d = self.width
        return (
            self.layers * self.block(length, length) + 4 * length * d + 2 * length * d * self.vocab
        )

    def pyvene_step(self, layer: int, base: int, source: int) -> float:
        """Forward+backward FLOPs per pair of one pyvene DAS step at ``layer``: a source
        and a base forward pass through the whole model, and a backward pass from the logits
        down to the intervened layer (frozen weights: input gradients only, about one
        forward of the blocks after it, the final norm and the unembedding)."""
        d = self.width
        after = (
            (self.layers - 1 - layer) * self.block(base, base)
            + 4 * base * d
            + 2 * base * d * self.vocab
        )
        return self.full(source) + self.full(base) + after

    def our_step(self, layer: int, length: int, start: int) -> float:
        """Forward+backward FLOPs per pair of one of our DAS steps at ``layer``: the blocks
        after it on positions ``start..`` (keys of all positions), the final norm at the
        readout and two candidate logits."""
        suffix = (self.layers - 1 - layer) * self.block(length - start, length)
        return 2 * (suffix + 4 * self.width + 2 * 2 * self.width)


def lengths(task: PromptTask, frame: pd.DataFrame) -> tuple[int, int]:
    """Padded lengths of the frame's base and source batches (both tools encode whole frames)."""
    base = task.batch(frame, "base.").inputs["input_ids"].shape[1]
    source = task.batch(frame, f"source.{VARIABLE}.").inputs["input_ids"].shape[1]
    return int(base), int(source)


def positions(position: int | str, batch: Batch) -> torch.Tensor:
    """Each row's absolute index of ``position`` in ``batch``."""
    found = resolve_positions(position, batch, int(batch.inputs["input_ids"].shape[1]))
    assert found is not None
    return found


def sweep_flops(
    shape: Shape,
    task: PromptTask,
    frames: dict[str, pd.DataFrame],
    position: int | str,
    layers: list[int],
    starts: dict[str, int],
    epochs: int,
) -> tuple[float, float]:
    """Counted FLOPs of a whole sweep (every phase): (pyvene's, ours).

    pyvene: per cell, ``epochs`` training passes over the pairs and a source and a base
    forward pass per test pair. Ours: the sources through the blocks up to the deepest
    chosen layer, cut after the last position the sites read (the frame's latest), the
    bases through all blocks at every position (keys and values for every suffix), then
    per cell the training steps and a forward pass of its suffix per test pair.
    """
    (train_base, train_source), (test_base, test_source) = (
        lengths(task, frames["train"]),
        lengths(task, frames["test"]),
    )
    pairs, held_out = len(frames["train"]), len(frames["test"])
    theirs = sum(
        epochs * pairs * shape.pyvene_step(layer, train_base, train_source)
        + held_out * (shape.full(test_base) + shape.full(test_source))
        for layer in layers
    )
    ours = 0.0
    for frame in frames.values():
        source = task.batch(frame, f"source.{VARIABLE}.")
        cut = int(positions(position, source).max()) + 1
        ours += len(frame) * (max(layers) + 1) * shape.block(cut, cut)
        base = int(task.batch(frame, "base.").inputs["input_ids"].shape[1])
        ours += len(frame) * shape.layers * shape.block(base, base)
    ours += sum(
        epochs * pairs * shape.our_step(layer, train_base, starts["train"])
        + held_out * shape.our_step(layer, test_base, starts["test"]) / 2
        for layer in layers
    )
    return theirs, ours


# -- the two tools ------------------------------------------------------------------------------


def initial_basis(width: int, seed: int) -> torch.Tensor:
    """The rank-1 basis our DAS starts from with this seed (given to pyvene too)."""
    return reproducible(
        lambda: LearnedRotation(width, 1, torch.Generator().manual_seed(seed))
    )().weight


def pyvene_cell(network: Network, layer: int, basis: torch.Tensor) -> tuple[dict[str, Any], Any]:
    """pyvene's representation fields and rank-1 intervention at ``layer``'s residual
    stream, starting from ``basis``: through ``to_pyvene`` where it knows the family,
    else built as pyvene's tutorials do (its llama mapping: ``block_output``, unit ``pos``)."""
    try:
        return to_pyvene(LowRankPatch(Location(layer=layer, position="last"), basis), network)
    except InterventionError:  # to_pyvene has no Llama components
        pass
    pyvene = import_pyvene()
    intervention = pyvene.LowRankRotatedSpaceIntervention(
        embed_dim=basis.shape[0], low_rank_dimension=basis.shape[1]
    ).to(basis.dtype)  # pyvene casts activations to its rotation's dtype
    intervention.rotate_layer.weight = basis.clone()  # through its orthogonal parametrisation
    component = {"layer": layer, "component": "block_output", "unit": "pos"}
    return component, intervention.to(network.device)  # IntervenableModel does not move it


def pyvene_model(network: Network, layer: int, basis: torch.Tensor) -> Any:
    pyvene = import_pyvene()
    component, intervention = pyvene_cell(network, layer, basis)
    return pyvene.IntervenableModel(
        pyvene.IntervenableConfig(
            representations=[
                pyvene.RepresentationConfig(
                    **component, max_number_of_units=1, intervention=intervention
                )
            ]
        ),
        network.module,
    )


def pyvene_route(network: Network) -> str:
    try:
        basis = initial_basis(int(network.width or 0), 0)
        to_pyvene(LowRankPatch(Location(layer=0, position="last"), basis), network)
    except InterventionError as error:
        return (
            f"built here (to_pyvene: {error}): RepresentationConfig(layer, 'block_output', 'pos') "
            "with LowRankRotatedSpaceIntervention"
        )
    return "to_pyvene"


def run_ours(
    network: Network,
    task: PromptTask,
    frames: dict[str, pd.DataFrame],
    position: int | str,
    layers: list[int],
    config: TrainingConfig,
    budget: int,
) -> dict[str, Any]:
    locations = [Location(layer=layer, position=position) for layer in layers]
    times: dict[str, float] = {}
    clock = now()
    prepared = {
        split: PreparedInterchanges.for_locations(
            network, task, frames[split], locations, [VARIABLE], memory_budget=budget
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
        reproducible(fit)(cell, None, task, [VARIABLE], method="low_rank", rank=1, config=config)
        layer_seconds.append(now() - began)
    out = {
        "times": times,
        "layer_seconds": layer_seconds,
        "correct": correct,
        "starts": {"train": train[0].start, "test": prepared["test"][0].start},
        "staircase": staircase,
        "cache": (
            f"{sum(c.cache.nbytes for c in train[:1] if c.cache) / 2**20:.0f} MiB for layer "
            f"{layers[0]} in {cache.storage if cache else '-'}"
        ),
    }
    for cells in prepared.values():
        for cell in cells:
            cell.close()
    return out


def train_ours(
    train: list[PreparedInterchanges],
    task: PromptTask,
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
            train, None, task, [VARIABLE], method="low_rank", rank=1, config=config
        )
    for cell in [] if staircase else train:
        began = now()
        alignments.append(
            reproducible(fit)(
                cell, None, task, [VARIABLE], method="low_rank", rank=1, config=config
            )
        )
        layer_seconds.append(now() - began)
    return alignments, layer_seconds, staircase


PyveneInputs = tuple[Batch, Batch, list[int], list[int], torch.Tensor]


def pyvene_tensors(task: PromptTask, frame: pd.DataFrame, position: int | str) -> PyveneInputs:
    """A frame's base and source batches, the intervened position in each (Python ints,
    as pyvene's ``unit_locations`` takes them), the labels."""
    base = task.batch(frame, "base.")
    source = task.batch(frame, f"source.{VARIABLE}.")
    return (
        base,
        source,
        positions(position, base).tolist(),
        positions(position, source).tolist(),
        task.labels(frame, "label"),
    )


def epoch_orders(rows: int, config: TrainingConfig) -> list[list[int]]:
    """The order of the training rows in each epoch, drawn before training (as a data
    loader would hand them over: nothing read back from the device per step)."""
    generator = torch.Generator().manual_seed(config.seed)
    return [torch.randperm(rows, generator=generator).tolist() for _ in range(config.epochs)]


def train_pyvene(
    network: Network,
    layer: int,
    tensors: PyveneInputs,
    config: TrainingConfig,
    orders: list[list[int]] | None = None,
) -> Any:
    """One cell trained as pyvene's tutorials do (``orders``: each epoch's row order,
    default :func:`epoch_orders`); its ``IntervenableModel``."""
    torch.manual_seed(config.seed)  # pyvene completes the basis from torch's global stream
    model = pyvene_model(network, layer, initial_basis(int(network.width or 0), config.seed))
    model.disable_model_gradients()
    optimizer = torch.optim.Adam(model.get_trainable_parameters(), lr=config.lr)
    base, source, base_at, source_at, labels = tensors
    for order in epoch_orders(len(labels), config) if orders is None else orders:
        for first in range(0, len(order), config.batch_size):
            rows = order[first : first + config.batch_size]
            loss = torch.nn.functional.cross_entropy(
                pyvene_logits(model, rows, base, source, base_at, source_at),
                labels[torch.tensor(rows)].to(DEVICE),
            )
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    return model


COUNT_BATCH = 8
"""Rows per batch when counting operations (see :func:`count_steps`)."""


def count_steps(
    network: Network,
    task: PromptTask,
    counting: pd.DataFrame,
    position: int | str,
    layers: list[int],
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
    locations = [Location(layer=layer, position=position) for layer in layers]
    one_epoch = replace(config, epochs=1, batch_size=bs)
    frames_by_batches = {n: counting.iloc[: n * bs] for n in (2, 4)}
    prepared = {
        n: PreparedInterchanges.for_locations(
            network, task, rows, locations, [VARIABLE], memory_budget=budget
        )
        for n, rows in frames_by_batches.items()
    }
    tensors = {n: pyvene_tensors(task, rows, position) for n, rows in frames_by_batches.items()}
    orders = {n: epoch_orders(n * bs, one_epoch) for n in frames_by_batches}

    staircase = fitted_apart(prepared[2], None, "low_rank", config) is None

    def ours(batches: int) -> None:
        train_ours(prepared[batches], task, one_epoch, staircase)

    def theirs(batches: int) -> None:
        for layer in layers:
            train_pyvene(network, layer, tensors[batches], one_epoch, orders[batches])

    counted = {"ours": per_step(ours, 2, 2), "pyvene": per_step(theirs, 2, 2)}
    for cells in prepared.values():
        for cell in cells:
            cell.close()
    return {
        name: {"operations": c.operations, "host_reads": c.host_reads, "reads": c.by_host_read}
        for name, c in counted.items()
    }


def print_counts(counts: dict[str, Any], cells: int = 30) -> None:
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
    task: PromptTask,
    frames: dict[str, pd.DataFrame],
    position: int | str,
    layers: list[int],
    config: TrainingConfig,
) -> dict[str, Any]:
    tensors = {split: pyvene_tensors(task, frames[split], position) for split in frames}
    times = {"activations": 0.0, "training": 0.0, "evaluation": 0.0}
    layer_seconds, correct = [], []
    for layer in layers:
        began = now()
        model = train_pyvene(network, layer, tensors["train"], config)
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
    """pyvene's interchange of ``rows``: source position -> base position; the logits of
    each base prompt's two candidate names at its readout (the last token)."""
    index = torch.tensor(rows)
    b, s = base.select(index).to(DEVICE), source.select(index).to(DEVICE)
    units = ([[[source_at[r]] for r in rows]], [[[base_at[r]] for r in rows]])
    _, out = model(b.inputs, [s.inputs], unit_locations={"sources->base": units})
    every = torch.arange(len(rows), device=out.logits.device)
    assert b.readout is not None and b.candidates is not None
    logits: torch.Tensor = out.logits[every, b.readout]
    return logits.gather(1, b.candidates)


def conformance(
    network: Network, task: PromptTask, frame: pd.DataFrame, layers: list[int], seed: int
) -> str:
    """Both tools once on ``frame`` at each position's first chosen layer, the initial
    basis: the largest difference of the candidate logits (on the CPU, in this process)."""
    basis = initial_basis(int(network.width or 0), seed)
    worst = 0.0
    for position in POSITIONS.values():
        base, source, base_at, source_at, _ = pyvene_tensors(task, frame, position)
        patch = LowRankPatch(Location(layer=layers[0], position=position), basis)
        with torch.no_grad():
            ours = intervene(network, base, [patch], source)
            theirs = pyvene_logits(
                pyvene_model(network, layers[0], basis),
                list(range(len(frame))),
                base,
                source,
                base_at,
                source_at,
            )
        worst = max(worst, float((ours - theirs).abs().max()))
    return (
        f"conformance: ours and pyvene, initial basis, layer {layers[0]}, {len(frame)} test "
        f"pairs, positions {', '.join(map(str, POSITIONS.values()))}: largest candidate-logit "
        f"difference {worst:.1e}"
    )


def _child(conn: Any, fn: Any, args: tuple[Any, ...]) -> None:
    if DEVICE.type == "cuda":
        # CUDA starts here, in the child: a process forked after CUDA started cannot use it
        for arg in args:
            if isinstance(arg, Network):
                arg.to(DEVICE)
                with torch.no_grad():  # warm: CUDA context, cuBLAS, the kernels' first load
                    arg.module(input_ids=torch.zeros(2, 16, dtype=torch.long, device=DEVICE))
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


def matmul_rate(shape: Shape, rows: int) -> float:
    """FLOP/s of a plain torch matmul of the model's MLP shape on ``rows`` positions."""
    a = torch.randn(rows, shape.width).to(DEVICE)
    b = torch.randn(shape.width, shape.mlp).to(DEVICE)
    a @ b
    best = float("inf")
    for _ in range(5):
        began = now()
        for _ in range(10):
            a @ b
        best = min(best, (now() - began) / 10)
    return 2 * rows * shape.width * shape.mlp / best


def _matmul_rate(shape: Shape, rows: int) -> dict[str, Any]:
    return {"rate": matmul_rate(shape, rows)}


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"


def network_accuracy(network: Network, task: PromptTask, frame: pd.DataFrame) -> float:
    """The network's accuracy over the two names on the frame's bases (no intervention)."""
    base = task.batch(frame, "base.")
    labels = task.labels(frame, "base_label")
    return float((network.predict(base, batch_size=64) == labels).float().mean())


def parse_layers(text: str, layers: int) -> list[int]:
    if text == "all":
        return list(range(layers))
    chosen = sorted({int(part) for part in text.split(",")})
    if not chosen or chosen[0] < 0 or chosen[-1] >= layers:
        raise SystemExit(f"--layers takes layers 0-{layers - 1}, comma-separated, or 'all'")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 pairs, 1 repeat")
    parser.add_argument("--pairs", type=int, help="training pairs (default 2,000; quick 64)")
    parser.add_argument("--repeats", type=int, help="runs per tool (default 3; quick 1)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--positions", default="first,middle,last", help="of first,middle,last")
    parser.add_argument("--layers", default="all", help="'all' (default: 30) or e.g. 0,10,20")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both tools")
    parser.add_argument("--memory-budget", type=float, default=2.0, help="GiB for our cache")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda, cuda:N")
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
    names = args.positions.split(",")
    unknown = [name for name in names if name not in POSITIONS]
    if unknown:
        raise SystemExit(f"--positions takes {', '.join(POSITIONS)}; not {unknown}")
    pairs = args.pairs or (64 if args.quick else 2000)
    repeats = args.repeats or (1 if args.quick else 3)
    held_out = max(32, pairs // 4)
    torch.set_num_threads(args.threads)
    os.environ["ABSTRACTION_THREADS"] = str(args.threads)
    budget = int(args.memory_budget * 2**30)
    network = zoo.load(ZOO_NAME)
    if next(network.module.parameters()).dtype != torch.float32:
        raise SystemExit(f"{network.name} is not float32; pyvene's interventions would cast")
    shape = Shape.of(network)
    layers = parse_layers(args.layers, shape.layers)
    task = ioi_task(network)
    frames = {
        split: counterfactual_dataset(
            ioi, n, [[VARIABLE]], sampler=ioi_inputs, source_sampler=ioi_inputs, seed=seed
        )
        for split, n, seed in (("train", pairs, args.seed), ("test", held_out, args.seed + 1))
    }
    # pairs apart from the training set, enough for 4 batches whatever --pairs says
    counting = counterfactual_dataset(
        ioi,
        4 * args.batch_size,
        [[VARIABLE]],
        sampler=ioi_inputs,
        source_sampler=ioi_inputs,
        seed=args.seed + 2,
    )
    network.hash  # noqa: B018 - hashed once here, not in every forked run
    config = TrainingConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.epochs,
        seed=args.seed,
        select_epoch=False,  # pyvene's loop: no scoring between epochs, the last one kept
    )
    import_pyvene()
    (train_base, train_source), (test_base, test_source) = (
        lengths(task, frames["train"]),
        lengths(task, frames["test"]),
    )
    print(
        f"SmolLM2-135M-Instruct (pretrained; {shape.layers} x {shape.width}, {shape.heads} query "
        f"/ {shape.kv_heads} key-value heads, MLP {shape.mlp}, vocabulary {shape.vocab:,}); IOI "
        f"prompts left-padded (train: bases {train_base}, sources {train_source} tokens; test: "
        f"{test_base}, {test_source}); variable {VARIABLE}; {pairs:,} training pairs, "
        f"{held_out:,} test pairs; layers {','.join(map(str, layers))}; rank-1 DAS, "
        f"{args.epochs} epoch(s), batch {args.batch_size}, Adam {args.lr}; {repeats} repeat(s); "
        f"torch threads {args.threads}; our memory budget {args.memory_budget} GiB"
        + (f"; device {DEVICE}" if DEVICE.type != "cpu" else "")
    )
    print(f"pyvene's cells: {pyvene_route(network)}")
    accuracy = network_accuracy(network, task, frames["test"])
    print(f"{network.name} on the {held_out} test bases (no intervention): accuracy {accuracy:.3f}")
    print(conformance(network, task, frames["test"].iloc[:4], layers, args.seed))
    if args.counts_only:
        for name in names:
            print(f"\n== position {name} ({POSITIONS[name]!r})")
            position = POSITIONS[name]
            counts = forked(count_steps, network, task, counting, position, layers, config, budget)
            print_counts(counts, len(layers))
        return
    speedups: dict[str, float] = {}
    of_ideal: dict[str, tuple[float, float]] = {}
    for name in names:
        position = POSITIONS[name]
        ours, theirs = [], []
        for _ in range(repeats):
            ours.append(forked(run_ours, network, task, frames, position, layers, config, budget))
            theirs.append(forked(run_pyvene, network, task, frames, position, layers, config))
        starts = ours[0]["starts"]
        print(
            f"\n== position {name} ({position!r}): our suffix runs positions "
            f"{starts['train']}..{train_base - 1} (test {starts['test']}..{test_base - 1}); "
            f"cache {ours[0]['cache']}"
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
        how = (
            f"as one staircase of all {len(layers)} cells"
            if ours[0]["staircase"]
            else "cell by cell"
        )
        print(
            f"ceiling set by our activations phase alone (pyvene's sweep / our activations; "
            f"training and evaluation free): {ceiling:.1f}x; our training ran {how}"
        )
        theirs_all, ours_all = sweep_flops(
            shape, task, frames, position, layers, starts, args.epochs
        )
        sweep_ratio = speedup / (theirs_all / ours_all)
        print(
            f"whole sweep: ideal speed-up from counted FLOPs of every phase "
            f"{theirs_all / ours_all:.1f}x ({theirs_all / 1e12:.2f} against "
            f"{ours_all / 1e12:.3f} TFLOP), achieved {speedup:.1f}x ({sweep_ratio:.2f} of ideal)"
        )
        theirs_flops = sum(shape.pyvene_step(layer, train_base, train_source) for layer in layers)
        our_flops = sum(shape.our_step(layer, train_base, starts["train"]) for layer in layers)
        ideal = theirs_flops / our_flops
        trained = statistics.median([r["times"]["training"] for r in ours])
        theirs_trained = statistics.median([r["times"]["training"] for r in theirs])
        achieved = theirs_trained / trained
        of_ideal[name] = (achieved / ideal, sweep_ratio)
        print(
            f"training steps: ideal speed-up from counted FLOPs {ideal:.1f}x, achieved "
            f"{achieved:.1f}x ({achieved / ideal:.2f} of ideal)"
        )
        theirs_rate = theirs_flops * pairs * args.epochs / theirs_trained
        print(f"pyvene's training phase: {theirs_rate / 1e9:.2f} GFLOP/s counted")
        steps = args.epochs * -(-pairs // args.batch_size)
        rows = args.batch_size * (train_base - starts["train"])
        # on a GPU in a forked process, like the runs: this process never starts CUDA
        rate = (
            matmul_rate(shape, rows)
            if DEVICE.type == "cpu"
            else forked(_matmul_rate, shape, rows)["rate"]
        )
        ours_rate = our_flops * pairs * args.epochs / trained
        print(
            f"our training phase: {ours_rate / 1e9:.2f} GFLOP/s counted; a ({rows} x "
            f"{shape.width}) @ ({shape.width} x {shape.mlp}) matmul here: {rate / 1e9:.2f} "
            f"GFLOP/s; ratio {ours_rate / rate:.2f} ({steps} steps per layer)"
        )
        print_counts(
            forked(count_steps, network, task, counting, position, layers, config, budget),
            len(layers),
        )
        alone = " (each cell alone, timed apart from the staircase)" if ours[0]["staircase"] else ""
        print(f"per layer (median s): layer, suffix blocks, ours{alone}, ours per block, pyvene")
        for i, layer in enumerate(layers):
            mine = statistics.median([r["layer_seconds"][i] for r in ours])
            blocks = shape.layers - 1 - layer
            other = statistics.median([r["layer_seconds"][i] for r in theirs])
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
        bases = frames["test"]["base_id"].to_numpy()
        a_correct = np.concatenate(ours[0]["correct"])
        b_correct = np.concatenate(theirs[0]["correct"])
        clusters = np.tile(bases, len(layers))
        a_iia, b_iia = iia(a_correct, clusters), iia(b_correct, clusters)
        test = paired_test(a_correct, b_correct, clusters, alternative="two-sided")
        best = max(range(len(layers)), key=lambda i: ours[0]["correct"][i].mean())
        print(
            f"IIA over the {len(layers)} cells x {held_out} test pairs: abstraction "
            f"{a_iia.value:.3f} ({a_iia.low:.3f}-{a_iia.high:.3f}), pyvene {b_iia.value:.3f} "
            f"({b_iia.low:.3f}-{b_iia.high:.3f}); difference {test.difference.value:+.3f} "
            f"(95% CI {test.difference.low:+.3f} to {test.difference.high:+.3f}), two-sided "
            f"paired p = {test.p_value:.3g}; best cell (ours) layer {layers[best]}: "
            f"{ours[0]['correct'][best].mean():.3f} vs {theirs[0]['correct'][best].mean():.3f}"
        )
        print(
            "IIA per layer (ours, pyvene): "
            + ", ".join(
                f"{layer} {ours[0]['correct'][i].mean():.2f}/{theirs[0]['correct'][i].mean():.2f}"
                for i, layer in enumerate(layers)
            )
        )
    print("\nspeed-up per position: " + ", ".join(f"{k} {v:.1f}x" for k, v in speedups.items()))
    print(
        "of the counted-FLOP ideal (training steps, whole sweep): "
        + ", ".join(f"{k} {t:.2f}, {s:.2f}" for k, (t, s) in of_ideal.items())
    )
    met = all(t >= 0.7 for t, _ in of_ideal.values())
    sweep_met = all(s >= 0.7 for _, s in of_ideal.values())
    scope = "" if args.epochs == 1 else f" (this run: {args.epochs} epochs, not one)"
    if set(names) != set(POSITIONS):
        scope += f" (this run: positions {','.join(names)} only)"
    print(
        f"goal: achieved >= 0.7 of the counted-FLOP ideal at every position at one epoch: "
        f"{'met' if met else 'not met'} (training steps; whole sweep "
        f"{'met' if sweep_met else 'not met'}){scope}"
    )
    print(f"speedup_vs_pyvene={speedups.get('last', next(iter(speedups.values()))):.2f}")


if __name__ == "__main__":
    main()
