"""Sweeps: align a variable at every layer x position x component x rank, pick on validation.

Every cell trains an alignment on the training pairs and scores it on the
validation pairs; the best cell by validation IIA is the only one evaluated on the
test pairs (the maximum over test cells would be optimistically biased). Cells run
one after another, or on Ray when it is installed and ``workers`` (or a cluster
``address``) is given.

Resuming. Each finished cell is written to ``directory`` as it completes, under a
*run key* that hashes everything that changes a cell's result: the network's weights,
the causal model's source, the variables, the method and training configuration, and
the content of the training and validation pairs together with the task's encoding of
them (the exact input tensors and labels the network sees). A sweep resumed with the
same key skips the finished cells; with any other key it starts afresh in its own
directory, so files of another run are never read::

    directory/<run key>/cells/<cell>.json                         the cell's record
    directory/<run key>/cells/<cell>/alignment.{json,safetensors}  its alignment

The alignment is written first and the record last (both atomically, fsynced), and
the record holds the alignment JSON's SHA-256: a cell exists only when both are
complete, a process killed at any moment loses at most the cells in progress, and a
finished cell is never computed again. A sweep holds a lock on its run directory
(``.lock``), so two processes never compute the same cells at once, and removes the
temporary files a killed run left there. Damaged records raise
:class:`~abstraction.errors.DamagedFileError` naming the file to delete.

The sweep computes the cells table; :func:`abstraction.report.draw_heatmap` draws it.
"""

from __future__ import annotations

import contextlib
import functools
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
from filelock import FileLock

from abstraction.alignment.das import TrainingConfig, evaluate, fit, reproducible
from abstraction.alignment.method import Method, method_named
from abstraction.alignment.prefix_cache import budgeted
from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.alignment.result import Alignment, AlignmentError
from abstraction.errors import DamagedFileError
from abstraction.files import atomic_write_json, read_json, remove_temporaries, sha256_file
from abstraction.interventions import random_subspace_patches
from abstraction.locations import Location, LocationError, resolve
from abstraction.network import Network, resolve_device
from abstraction.statistics import adjust, paired_test
from abstraction.task import Task

__all__ = ["Cell", "SweepResult", "planned_cells", "run_key", "sweep"]

CELL_FORMAT = 1
"""Version of the cell record; part of the run key, so a new format never reads an old one."""

CellResult = tuple[int, Alignment, float, float, float]
"""What one cell produced: rank, alignment, validation IIA, seconds, p-value."""


@dataclass(frozen=True)
class Cell:
    """One sweep cell: a location (layer, component, position, head or path) and a rank.

    ``path`` is set for cells of a submodule-path pattern (``Location.module``), whose
    ``layer`` is the layer the pattern was filled with.
    """

    layer: int
    position: int | str | None
    component: str = "residual"
    rank: int = 1
    head: int | None = None
    path: str | None = None

    @classmethod
    def at(cls, layer: int, location: Location, rank: int) -> Cell:
        """The cell of ``location`` (searched as layer ``layer``) with ``rank``."""
        return cls(layer, location.position, location.component, rank, location.head, location.path)

    @property
    def location(self) -> Location:
        """The cell's location."""
        if self.path is not None:
            return Location.module(self.path, position=self.position)
        return Location(
            layer=self.layer, component=self.component, position=self.position, head=self.head
        )

    @property
    def key(self) -> str:
        """A file-name-safe identifier."""
        where = self.path if self.path is not None else self.component
        head = f"-H{self.head}" if self.head is not None else ""
        text = f"L{self.layer}-{where}{head}-P{self.position}-R{self.rank}"
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
    on_result: Callable[[CellResult], None] | None = None,
    prepared: tuple[PreparedInterchanges, PreparedInterchanges] | None = None,
) -> list[CellResult]:
    """Train and score the cells of one location (one per rank), preparing the data once.

    Each cell's result is independent of every other cell's: its fit seeds its own
    generator and starts from a fixed global RNG state (``reproducible``: the orthogonal
    parametrisation of a low-rank basis completes it with global random draws), so a
    resumed sweep may pass only the cells still missing, and a serial sweep, a Ray sweep
    and a resumed one give the same numbers.
    ``on_result`` is called as soon as each rank finishes (to persist it).
    ``prepared``: the training and validation pairs already prepared at ``location``
    (closed here, like the ones prepared here).
    """
    if prepared is None:
        engine = PreparedInterchanges(network, task, train, location, variables)
        val_engine = PreparedInterchanges(network, task, validation, location, variables)
    else:
        engine, val_engine = prepared
    results = []
    try:
        for rank in ranks:
            start = time.perf_counter()
            alignment = reproducible(fit)(
                engine, val_engine, task, variables, method=method, rank=rank, config=config
            )
            correct = evaluate(alignment, val_engine)
            p_value = _null_p_value(alignment, val_engine, correct, validation, config.seed)
            result = (
                rank,
                alignment,
                float(correct.float().mean()),
                time.perf_counter() - start,
                p_value,
            )
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        engine.close()
        val_engine.close()
    return results


def _same_position(
    todo: list[tuple[Location, list[int]]],
) -> list[list[tuple[Location, list[int]]]]:
    """``todo`` grouped by position and component (the order within each kept); the heads
    of one position share a group, as their layers' cuts are stored once."""
    groups: dict[tuple[object, ...], list[tuple[Location, list[int]]]] = {}
    for loc, missing in todo:
        key = (loc.position, loc.component, loc.path, loc.hook, loc.dims)
        groups.setdefault(key, []).append((loc, missing))
    return list(groups.values())


def _prepare_together(
    network: Network,
    task: Task,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    group: list[tuple[Location, list[int]]],
    variables: Sequence[str],
) -> tuple[list[PreparedInterchanges], list[PreparedInterchanges]] | None:
    """Training and validation pairs prepared at every location of ``group`` in one pass
    each (:meth:`PreparedInterchanges.for_locations`); ``None`` for a single location."""
    if len(group) < 2:
        return None
    locations = [loc for loc, _ in group]
    return (
        PreparedInterchanges.for_locations(network, task, train, locations, variables),
        PreparedInterchanges.for_locations(network, task, validation, locations, variables),
    )


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


@budgeted
@reproducible
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
    heads: Sequence[int] | None = None,
    modules: Sequence[str] = (),
    ranks: Sequence[int] = (1,),
    method: str | Method = "das",
    test: pd.DataFrame | None = None,
    head_positions: Sequence[int | str | None] | None = None,
    head_layers: Sequence[int] | None = None,
    config: TrainingConfig | None = None,
    directory: str | Path | None = None,
    workers: int | None = None,
    address: str | None = None,
    progress: Callable[[Cell, float], None] | None = None,
    device: str | torch.device | None = None,
    memory_budget: int | None = None,
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
        components: components to try (``"head"`` tries each of ``heads``).
        heads: attention heads tried for the ``"head"`` component (default: all).
        modules: submodule-path patterns tried at every layer, with ``{layer}`` for the
            layer (``"blocks.{layer}.mlp"``), for networks of any family; a path
            ending in ``:input`` hooks the module's input.
        ranks: subspace dimensions per variable to try.
        method: the alignment method (its name, or a
            :class:`~abstraction.alignment.method.Method`).
        test: held-out pairs on which only the chosen cell is evaluated.
        head_positions: the positions where the ``"head"`` component is tried (default:
            ``positions``); e.g. every head at the last token only, where a sweep of
            heads at every position would multiply the cells by the positions.
        head_layers: the layers where the ``"head"`` component is tried (default:
            ``layers``).
        config: training configuration for every cell.
        directory: where finished cells are written (and read back on resume).
        workers: run cells in parallel on a local Ray instance with this many workers
            (CPU workers: a network on a GPU is refused).
        address: run cells on the Ray cluster at this address.
        progress: called after each finished cell with its validation IIA.
        device: move the network there first (default: where it is).
        memory_budget: bytes of cached activations each prefix cache holds in RAM
            before it moves to memory-mapped files (default:
            :func:`~abstraction.alignment.prefix_cache.memory_budget`); Ray workers use
            their own ``ABSTRACTION_MEMORY_BUDGET``.
    """
    config = config or TrainingConfig()
    method = method_named(method).name  # cells, run keys and Ray workers carry the name
    where = resolve_device(device) if device is not None else network.device
    if (workers or address) and where.type != "cpu":
        raise AlignmentError(
            f"the network runs on {where}, and Ray sweeps run their cells on CPU workers "
            "(a network on a GPU cannot be shipped to them); run the sweep without "
            "workers/address, which runs it on that device, or on the CPU"
        )
    if device is not None:
        network.to(device)
    layers = list(range(network.n_layers)) if layers is None else list(layers)
    searched = _search_locations(
        network, layers, components, positions, heads, modules, head_positions, head_layers
    )
    locations = [loc for _, loc in searched]
    layer_of = dict(zip(locations, (layer for layer, _ in searched), strict=True))
    task.check_network(network)  # fail before training anything
    for loc in locations:
        resolve(network, loc)
    key = run_key(network, task, variables, method, config, train, validation)
    run_dir = Path(directory) / key if directory is not None else None

    with contextlib.ExitStack() as stack:
        if run_dir is not None:
            # one process per run directory: a second sweep with the same key waits, then
            # finds the cells done; temporary files of a killed run are removed under it
            run_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(FileLock(str(run_dir / ".lock")))
            remove_temporaries(run_dir)

        def cell_file(cell: Cell) -> Path | None:
            return None if run_dir is None else run_dir / "cells" / f"{cell.key}.json"

        done: dict[Cell, tuple[Alignment | None, float, float, float]] = {}
        todo: list[tuple[Location, list[int]]] = []
        for loc in locations:
            missing = []
            for rank in ranks:
                cell = Cell.at(layer_of[loc], loc, rank)
                file = cell_file(cell)
                if file is not None and file.is_file():
                    done[cell] = (None, *_read_cell(file, cell, key))
                else:
                    missing.append(rank)
            if missing:
                todo.append((loc, missing))

        def record(loc: Location, result: CellResult) -> None:
            rank, alignment, val_iia, seconds, p_value = result
            cell = Cell.at(layer_of[loc], loc, rank)
            done[cell] = (alignment, val_iia, seconds, p_value)
            file = cell_file(cell)
            if file is not None:
                # the alignment first, the record last: the record commits the cell
                saved = alignment.save(file.with_suffix("") / "alignment")
                atomic_write_json(
                    file,
                    {
                        "format_version": CELL_FORMAT,
                        "run_key": key,
                        **alignment.location.to_dict(),
                        "rank": rank,
                        "val_iia": val_iia,
                        "seconds": seconds,
                        "p_value": p_value,
                        "alignment_sha256": sha256_file(saved),
                    },
                )
            if progress is not None:
                progress(cell, val_iia)

        args = (network, task, train, validation)
        if (workers or address) and todo:
            _run_on_ray(args, todo, variables, method, config, workers, address, record)
        else:
            for group in _same_position(todo):
                # the locations of one position and component share one pass over the data
                shared = _prepare_together(network, task, train, validation, group, variables)
                for i, (loc, missing) in enumerate(group):
                    _run_location(
                        *args,
                        loc,
                        variables,
                        missing,
                        method,
                        config,
                        functools.partial(record, loc),
                        None if shared is None else (shared[0][i], shared[1][i]),
                    )

        # one canonical order, whatever order cells finished or were resumed in
        order = [Cell.at(layer_of[loc], loc, rank) for loc in locations for rank in ranks]
        rows = [
            {
                "layer": c.layer,
                "component": c.component,
                "position": c.position,
                "head": c.head,
                "path": c.path,
                "rank": c.rank,
                "val_iia": done[c][1],
                "seconds": done[c][2],
                "p_value": done[c][3],
            }
            for c in order
        ]
        table = pd.DataFrame(rows).sort_values(["layer", "component", "rank"], kind="stable")
        table = table.reset_index(drop=True)
        # Benjamini-Hochberg across cells: which locations beat a random subspace on the
        # validation pairs, with the false discovery rate controlled over the whole sweep.
        finite = table["p_value"].notna()
        table["p_bh"] = float("nan")
        if finite.any():
            table.loc[finite, "p_bh"] = adjust(table.loc[finite, "p_value"].tolist(), "bh")
        best_cell = max(order, key=lambda c: (done[c][1], -c.rank, -c.layer))
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


def run_key(
    network: Network,
    task: Task,
    variables: Sequence[str],
    method: str,
    config: TrainingConfig,
    train: pd.DataFrame,
    validation: pd.DataFrame,
) -> str:
    """The key under which a sweep's cells are stored: a hash of all that changes them.

    It covers the network's weights and architecture, the causal model's source, the
    variables, the method, the training configuration, and for the training and
    validation pairs both their content (every column, in order) and the task's
    encoding of them: the base and source input tensors, named positions, readout and
    label ids the network is given. Changing any of these - another template, other
    entity vectors, a relabelled split, a different learning rate - gives another key.
    """
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            [
                CELL_FORMAT,
                network.hash,
                task.model.source_hash,
                type(task).__qualname__,
                task.n_classes,
                list(variables),
                method,
                config.to_dict(),
            ],
            default=str,
        ).encode()
    )
    for frame in (train, validation):
        _hash_frame(digest, frame)
        for prefix in ("base.", *(f"source.{v}." for v in variables)):
            if all(f"{prefix}{i}" in frame for i in task.model.inputs):
                _hash_batch(digest, task.batch(frame, prefix))
        for column in ("label", "base_label"):
            if column in frame:
                _hash_tensor(digest, task.labels(frame, column))
    return digest.hexdigest()[:16]


def _hash_frame(digest: Any, frame: pd.DataFrame) -> None:
    """Column names, dtypes and every value of ``frame``, in row order."""
    digest.update(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    digest.update(len(frame).to_bytes(8, "little"))
    for column in frame.columns:
        series = frame[column]
        try:
            hashed = pd.util.hash_pandas_object(series, index=False).to_numpy()
            digest.update(hashed.tobytes())
        except TypeError:  # unhashable values (lists): their text stands for them
            digest.update(repr(series.tolist()).encode())


def _hash_tensor(digest: Any, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    if tensor.numel():
        digest.update(tensor.view(torch.uint8).numpy().tobytes())


def _hash_batch(digest: Any, batch: Any) -> None:
    for group in (batch.inputs, batch.positions):
        for name in sorted(group):
            digest.update(name.encode())
            _hash_tensor(digest, group[name])
    if batch.readout is not None:
        _hash_tensor(digest, batch.readout)


def planned_cells(
    network: Network,
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int | str | None] = (None,),
    components: Sequence[str] = ("residual",),
    heads: Sequence[int] | None = None,
    modules: Sequence[str] = (),
    head_positions: Sequence[int | str | None] | None = None,
    head_layers: Sequence[int] | None = None,
    ranks: Sequence[int] = (1,),
) -> int:
    """How many cells :func:`sweep` trains with these arguments (cells already on disk
    from an earlier run included): for progress reports and estimates."""
    layers = list(range(network.n_layers)) if layers is None else list(layers)
    found = _search_locations(
        network, layers, components, positions, heads, modules, head_positions, head_layers
    )
    return len(found) * len(ranks)


def _cells_at(
    network: Network,
    layer: int,
    component: str,
    position: int | str | None,
    heads: Sequence[int] | None,
) -> list[tuple[int, Location]]:
    """The locations of one layer, component and position (one per head for heads)."""
    if component != "head":
        return [(layer, Location(layer=layer, component=component, position=position))]
    if network.n_heads is None:
        raise LocationError(
            f"{network.name} has no attention heads to search; drop 'head' from components"
        )
    return [
        (layer, Location(layer=layer, component="head", head=head, position=position))
        for head in (range(network.n_heads) if heads is None else heads)
    ]


def _search_locations(
    network: Network,
    layers: Sequence[int],
    components: Sequence[str],
    positions: Sequence[int | str | None],
    heads: Sequence[int] | None,
    modules: Sequence[str],
    head_positions: Sequence[int | str | None] | None = None,
    head_layers: Sequence[int] | None = None,
) -> list[tuple[int, Location]]:
    """Every location a sweep tries, with the layer it is searched as."""
    if not layers:
        raise LocationError(
            f"{network.name} has no blocks this library knows, so there are no layers to "
            "search; give layers=[0, 1, ...] (they fill {layer} in module patterns)"
        )
    out: list[tuple[int, Location]] = []
    at_heads = positions if head_positions is None else head_positions
    head_layers = layers if head_layers is None else head_layers
    for layer in sorted({*layers, *(head_layers if "head" in components else ())}):
        for component in components:
            if layer not in (head_layers if component == "head" else layers):
                continue
            for position in at_heads if component == "head" else positions:
                out.extend(_cells_at(network, layer, component, position, heads))
    for pattern, layer, position in itertools.product(modules, layers, positions):
        if "{layer}" not in pattern:
            raise LocationError(
                f"module pattern {pattern!r} has no {{layer}} field; write e.g. "
                "'blocks.{layer}.mlp' (or give the path once in location=Location.module(...))"
            )
        path, _, hook = pattern.format(layer=layer).partition(":")
        out.append((layer, Location.module(path, hook=hook or "output", position=position)))
    if not out:
        raise LocationError("the sweep has no location to try: give components or modules")
    return out


def _read_cell(file: Path, cell: Cell, key: str) -> tuple[float, float, float]:
    """A finished cell's (val_iia, seconds, p_value), checked; damage names the file."""
    fix = (
        f"delete {file} (and the folder {file.with_suffix('').name}/ beside it) and resume: "
        "the cell is computed again"
    )
    saved = read_json(file, fix=fix, what="sweep cell")
    if saved.get("format_version") != CELL_FORMAT or saved.get("run_key") != key:
        raise DamagedFileError(
            file,
            f"the record's format {saved.get('format_version')!r} and run key "
            f"{saved.get('run_key')!r} do not match {CELL_FORMAT} and {key} (its folder)",
            fix,
        )
    where = tuple(saved.get(k) for k in ("component", "position", "head", "path", "rank"))
    if where != (cell.component, cell.position, cell.head, cell.path, cell.rank) or (
        cell.path is None and saved.get("layer") != cell.layer
    ):
        raise DamagedFileError(file, f"the record describes another cell than {cell.key}", fix)
    values = []
    for name in ("val_iia", "seconds", "p_value"):
        value = saved.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DamagedFileError(file, f"{name!r} is {value!r}, not a number", fix)
        values.append(float(value))
    if not 0.0 <= values[0] <= 1.0:
        raise DamagedFileError(file, f"val_iia is {values[0]}, outside [0, 1]", fix)
    alignment = file.with_suffix("") / "alignment.json"
    if not alignment.is_file() or sha256_file(alignment) != saved.get("alignment_sha256"):
        raise DamagedFileError(
            alignment,
            "the cell's alignment is missing or is not the one its record "
            f"{file.name} was written with",
            fix,
        )
    return values[0], values[1], values[2]


def _run_on_ray(
    args: tuple[Network, Task, pd.DataFrame, pd.DataFrame],
    todo: list[tuple[Location, list[int]]],
    variables: Sequence[str],
    method: str,
    config: TrainingConfig,
    workers: int | None,
    address: str | None,
    record: Callable[[Location, CellResult], None],
) -> None:
    """Run each location as one Ray task; record every result as soon as its task ends.

    The network, task and data are put in Ray's object store once and passed by
    reference, so each node receives them once, not once per cell. A task lost with
    its node is retried elsewhere (Ray's ``max_retries``); results are recorded in the
    order tasks finish, so a driver killed midway keeps every cell finished so far.
    """
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
        remote: Any = ray.remote(max_retries=3, retry_exceptions=False)(reproducible(_run_location))
        shared = [ray.put(a) for a in args]
        pending = {
            remote.remote(*shared, loc, list(variables), missing, method, config): loc
            for loc, missing in todo
        }
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                loc = pending.pop(ref)
                for result in ray.get(ref):
                    record(loc, result)
    finally:
        if started:
            ray.shutdown()
