"""Sweeps: align a variable at every layer x position x component x rank, pick on validation.

Every cell trains an alignment on the training pairs and scores it on the
validation pairs; the best cell by validation IIA is the only one evaluated on the
test pairs (the maximum over test cells would be optimistically biased). Each
finished cell is written to ``directory`` as it completes, so an interrupted sweep
resumes where it stopped. Cells run one after another, or on Ray when it is
installed and ``workers`` (or a cluster ``address``) is given.

The sweep computes the cells table; :func:`abstraction.report.draw_heatmap` draws it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from abstraction.alignment.das import TrainingConfig, evaluate, fit
from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.alignment.result import Alignment, AlignmentError
from abstraction.files import atomic_write_json
from abstraction.interventions import random_subspace_patches
from abstraction.locations import Location, resolve
from abstraction.network import Network
from abstraction.statistics import adjust, paired_test
from abstraction.task import Task

__all__ = ["Cell", "SweepResult", "sweep"]


@dataclass(frozen=True)
class Cell:
    """One sweep cell: a location (layer, component, position) and a rank."""

    layer: int
    position: int | str | None
    component: str = "residual"
    rank: int = 1

    @property
    def location(self) -> Location:
        """The cell's location."""
        return Location(layer=self.layer, component=self.component, position=self.position)

    @property
    def key(self) -> str:
        """A file-name-safe identifier."""
        text = f"L{self.layer}-{self.component}-P{self.position}-R{self.rank}"
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


@dataclass
class SweepResult:
    """What a sweep found.

    Attributes:
        cells: one row per cell: layer, component, position, rank, val_iia, seconds,
            p_value (one-sided, against a random subspace of the same ranks on the
            validation pairs) and p_bh (Benjamini-Hochberg across all cells).
        best: the cell with the highest validation IIA.
        alignment: the best cell's alignment.
        test_iia: the best cell's IIA on the test pairs (``None`` without test pairs).
        test_correct: the best cell's per-pair correctness on the test pairs.
    """

    cells: pd.DataFrame
    best: Cell
    alignment: Alignment
    test_iia: float | None = None
    test_correct: torch.Tensor | None = field(default=None, repr=False)


def _run_location(
    network: Network,
    task: Task,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    location: Location,
    variables: Sequence[str],
    ranks: Sequence[int],
    method: str,
    config: TrainingConfig,
) -> list[tuple[int, Alignment, float, float, float]]:
    engine = PreparedInterchanges(network, task, train, location, variables)
    val_engine = PreparedInterchanges(network, task, validation, location, variables)
    results = []
    try:
        for rank in ranks:
            start = time.perf_counter()
            alignment = fit(
                engine, val_engine, task, variables, method=method, rank=rank, config=config
            )
            correct = evaluate(alignment, val_engine)
            p_value = _null_p_value(alignment, val_engine, correct, validation, config.seed)
            results.append(
                (
                    rank,
                    alignment,
                    float(correct.float().mean()),
                    time.perf_counter() - start,
                    p_value,
                )
            )
    finally:
        engine.close()
        val_engine.close()
    return results


def _null_p_value(
    alignment: Alignment,
    engine: PreparedInterchanges,
    correct: torch.Tensor,
    data: pd.DataFrame,
    seed: int,
) -> float:
    """One-sided p-value of a cell against a random subspace of the same ranks."""
    if alignment.basis is None:
        return float("nan")
    generator = torch.Generator().manual_seed(seed + 7919)
    patches = random_subspace_patches(
        alignment.location, alignment.subspaces, engine.width, generator
    )
    null = engine.correct(patches)
    return paired_test(
        correct.numpy(), null.numpy(), data["base_id"].to_numpy(), permutations=999, seed=seed
    ).p_value


def sweep(
    network: Network,
    task: Task,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    variables: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int | str | None] = (None,),
    components: Sequence[str] = ("residual",),
    ranks: Sequence[int] = (1,),
    method: str = "das",
    test: pd.DataFrame | None = None,
    config: TrainingConfig | None = None,
    directory: str | Path | None = None,
    workers: int | None = None,
    address: str | None = None,
    progress: Callable[[Cell, float], None] | None = None,
) -> SweepResult:
    """Align ``variables`` in every cell; choose on validation; score the choice on test.

    Args:
        network: the network.
        task: its task.
        train: training pairs.
        validation: pairs for early stopping and for choosing the cell.
        variables: causal variables aligned together in each cell.
        layers: layers to try (default: all).
        positions: positions to try (ints, names, or ``None`` for non-sequence nets).
        components: components to try.
        ranks: subspace dimensions per variable to try.
        method: the alignment method.
        test: held-out pairs on which only the chosen cell is evaluated.
        config: training configuration for every cell.
        directory: where finished cells are written (and read back on resume).
        workers: run cells in parallel on a local Ray instance with this many workers.
        address: run cells on the Ray cluster at this address.
        progress: called after each finished cell with its validation IIA.
    """
    config = config or TrainingConfig()
    layers = list(range(network.n_layers)) if layers is None else list(layers)
    locations = [
        Location(layer=layer, component=component, position=position)
        for layer, component, position in itertools.product(layers, components, positions)
    ]
    for loc in locations:
        resolve(network, loc)  # fail before training anything
    out_dir = Path(directory) if directory is not None else None
    if out_dir is not None:
        (out_dir / "cells").mkdir(parents=True, exist_ok=True)
    signature = _signature(network, task, variables, method, config, train, validation)

    def cell_file(cell: Cell) -> Path | None:
        return None if out_dir is None else out_dir / "cells" / f"{cell.key}.json"

    done: dict[Cell, tuple[Alignment | None, float, float, float]] = {}
    todo: list[Location] = []
    for loc in locations:
        assert loc.layer is not None
        cells = [Cell(loc.layer, loc.position, loc.component, r) for r in ranks]
        finished = True
        for cell in cells:
            file = cell_file(cell)
            if file is not None and file.is_file():
                saved = json.loads(file.read_text())
                if saved.get("signature") == signature:
                    done[cell] = (None, saved["val_iia"], saved["seconds"], saved["p_value"])
                    continue
            finished = False
        if not finished:
            todo.append(loc)

    def record(loc: Location, results: list[tuple[int, Alignment, float, float, float]]) -> None:
        assert loc.layer is not None
        for rank, alignment, val_iia, seconds, p_value in results:
            cell = Cell(loc.layer, loc.position, loc.component, rank)
            done[cell] = (alignment, val_iia, seconds, p_value)
            file = cell_file(cell)
            if file is not None:
                alignment.save(file.with_suffix("") / "alignment")
                atomic_write_json(
                    file,
                    {
                        **alignment.location.to_dict(),
                        "rank": rank,
                        "val_iia": val_iia,
                        "seconds": seconds,
                        "p_value": p_value,
                        "signature": signature,
                    },
                )
            if progress is not None:
                progress(cell, val_iia)

    args = (network, task, train, validation)
    if (workers or address) and todo:
        for loc, results in _run_on_ray(
            args, todo, variables, ranks, method, config, workers, address
        ):
            record(loc, results)
    else:
        for loc in todo:
            record(loc, _run_location(*args, loc, variables, ranks, method, config))

    rows = [
        {
            "layer": c.layer,
            "component": c.component,
            "position": c.position,
            "rank": c.rank,
            "val_iia": v,
            "seconds": s,
            "p_value": p,
        }
        for c, (_, v, s, p) in done.items()
    ]
    table = pd.DataFrame(rows).sort_values(["layer", "component", "rank"], kind="stable")
    table = table.reset_index(drop=True)
    # Benjamini-Hochberg across cells: which locations beat a random subspace on the
    # validation pairs, with the false discovery rate controlled over the whole sweep.
    finite = table["p_value"].notna()
    table["p_bh"] = float("nan")
    if finite.any():
        table.loc[finite, "p_bh"] = adjust(table.loc[finite, "p_value"].tolist(), "bh")
    best_cell = max(done, key=lambda c: (done[c][1], -c.rank, -c.layer))
    best_alignment = done[best_cell][0]
    if best_alignment is None:
        file = cell_file(best_cell)
        assert file is not None
        best_alignment = Alignment.load(file.with_suffix("") / "alignment", network)
    result = SweepResult(table, best_cell, best_alignment)
    if test is not None:
        engine = PreparedInterchanges(network, task, test, best_alignment.location, variables)
        try:
            correct = evaluate(best_alignment, engine)
        finally:
            engine.close()
        result.test_correct = correct
        result.test_iia = float(correct.float().mean())
    return result


def _signature(
    network: Network,
    task: Task,
    variables: Sequence[str],
    method: str,
    config: TrainingConfig,
    train: pd.DataFrame,
    validation: pd.DataFrame,
) -> str:
    """Identifies what a finished cell was computed from, so resume never mixes runs."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            [
                network.hash,
                task.model.source_hash,
                list(variables),
                method,
                config.to_dict(),
                len(train),
                len(validation),
            ],
            default=str,
        ).encode()
    )
    for frame in (train, validation):
        hashed = pd.util.hash_pandas_object(frame["base_id"], index=False).to_numpy()
        digest.update(hashed.tobytes())
    return digest.hexdigest()[:16]


def _run_on_ray(
    args: tuple[Network, Task, pd.DataFrame, pd.DataFrame],
    todo: list[Location],
    variables: Sequence[str],
    ranks: Sequence[int],
    method: str,
    config: TrainingConfig,
    workers: int | None,
    address: str | None,
) -> list[tuple[Location, list[tuple[int, Alignment, float, float, float]]]]:
    try:
        import ray
    except ImportError:
        raise AlignmentError(
            "parallel sweeps run on Ray, which is not installed: pip install "
            "'abstraction-verifier[ray]', or run without workers/address"
        ) from None
    started = False
    if not ray.is_initialized():
        ray.init(
            address=address,
            num_cpus=workers if address is None else None,
            include_dashboard=False,
            log_to_driver=False,
        )
        started = True
    try:
        remote: Any = ray.remote(_run_location)
        shared = [ray.put(a) for a in args]
        futures = [
            remote.remote(*shared, loc, list(variables), list(ranks), method, config)
            for loc in todo
        ]
        return list(zip(todo, ray.get(futures), strict=True))
    finally:
        if started:
            ray.shutdown()
