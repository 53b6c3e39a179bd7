"""Sweep cells on disk: stored under a run key that covers everything that changes them,
checked on resume, and never mixed with another run's files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from abstraction import DamagedFileError, TrainingConfig, counterfactual_dataset, sweep, zoo
from abstraction.alignment.sweep import Cell, run_key
from abstraction.counterfactuals import split_by_base
from abstraction.network import Network
from abstraction.task import EntityVectorTask

CONFIG = TrainingConfig(epochs=1, batch_size=256, lr=1e-2)


@pytest.fixture(scope="module")
def pairs() -> tuple[pd.DataFrame, pd.DataFrame]:
    task = zoo.task("hierarchical_equality_mlp")
    data = counterfactual_dataset(task.model, 600, [["wx"], ["yz"], ["wx", "yz"]], seed=0)
    train, validation = split_by_base(data, (0.6, 0.4), seed=0)
    return train, validation


def _key(network: Network, train: pd.DataFrame, validation: pd.DataFrame, **change: object) -> str:
    task = change.pop("task", zoo.task("hierarchical_equality_mlp"))
    settings: dict[str, object] = {"variables": ["wx", "yz"], "method": "das", "config": CONFIG}
    settings.update(change)
    return run_key(network, task, train=train, validation=validation, **settings)  # type: ignore[arg-type]


def test_run_key_covers_everything_that_changes_a_cell(
    small_mlp: Network, pairs: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    train, validation = pairs
    key = _key(small_mlp, train, validation)
    assert key == _key(small_mlp, train.copy(), validation.copy())  # content, not identity
    task = zoo.task("hierarchical_equality_mlp")
    relabelled = train.copy()
    relabelled.loc[relabelled.index[0], "label"] = not relabelled["label"].iloc[0]
    other_source = validation.copy()
    column = "source.wx.w"
    other_source.loc[other_source.index[3], column] = (other_source[column].iloc[3] + 1) % 20
    changed = {
        "other entity vectors (the task's encoding)": _key(
            small_mlp, train, validation, task=EntityVectorTask("he", task.model, dim=4, seed=1)
        ),
        "one label": _key(small_mlp, relabelled, validation),
        "one source input": _key(small_mlp, train, other_source),
        "the same pairs in another order": _key(small_mlp, train.iloc[::-1], validation),
        "the method": _key(small_mlp, train, validation, method="low_rank"),
        "the learning rate": _key(small_mlp, train, validation, config=replace(CONFIG, lr=2e-2)),
        "the seed": _key(small_mlp, train, validation, config=replace(CONFIG, seed=1)),
        "the variables": _key(small_mlp, train, validation, variables=["wx"]),
        "the network": _key(
            Network.from_config(small_mlp.module.config, seed=1), train, validation
        ),
    }
    for what, other in changed.items():
        assert other != key, f"the run key ignores {what}"
    assert len(set(changed.values())) == len(changed)


def _sweep(
    network: Network, pairs: tuple[pd.DataFrame, pd.DataFrame], directory: Path, **kw: object
) -> list[Cell]:
    seen: list[Cell] = []
    settings: dict[str, object] = {"layers": [0, 1], "ranks": [1], "config": CONFIG}
    settings.update(kw)
    sweep(
        network,
        zoo.task("hierarchical_equality_mlp"),
        *pairs,
        ["wx", "yz"],
        directory=directory,
        progress=lambda cell, _: seen.append(cell),
        **settings,  # type: ignore[arg-type]
    )
    return seen


def test_cells_and_alignments_live_under_the_run_key(
    small_mlp: Network, pairs: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    assert len(_sweep(small_mlp, pairs, tmp_path)) == 2
    (key,) = [p.name for p in tmp_path.iterdir()]
    assert key == _key(small_mlp, *pairs)
    files = sorted(
        str(p.relative_to(tmp_path / key))
        for p in (tmp_path / key).rglob("*")
        if p.is_file() and p.name != ".lock"
    )
    assert files == [
        f"cells/L{layer}-residual-PNone-R1{suffix}"
        for layer in (0, 1)
        for suffix in (".json", "/alignment.json", "/alignment.safetensors")
    ]
    first = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert _sweep(small_mlp, pairs, tmp_path) == []  # resumed: nothing computed again
    # other settings: a run of its own, which neither reads nor touches the first's files
    assert len(_sweep(small_mlp, pairs, tmp_path, config=replace(CONFIG, lr=2e-2))) == 2
    assert len(list(tmp_path.iterdir())) == 2
    assert all(p.read_bytes() == content for p, content in first.items())


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda cell: cell.write_text(""), "is empty"),
        (lambda cell: cell.write_text("{"), "not valid JSON"),
        (
            lambda cell: cell.write_text(
                json.dumps({**json.loads(cell.read_text()), "val_iia": "high"})
            ),
            "'val_iia' is 'high'",
        ),
        (
            lambda cell: cell.write_text(json.dumps({**json.loads(cell.read_text()), "rank": 2})),
            "another cell",
        ),
        (
            lambda cell: (cell.with_suffix("") / "alignment.json").write_text("{}"),
            "not the one its record",
        ),
    ],
)
def test_damaged_cell_names_the_file_to_delete(
    damage: object,
    expected: str,
    small_mlp: Network,
    pairs: tuple[pd.DataFrame, pd.DataFrame],
    tmp_path: Path,
) -> None:
    _sweep(small_mlp, pairs, tmp_path, layers=[0])
    (cell,) = tmp_path.glob("*/cells/*.json")
    damage(cell)  # type: ignore[operator]
    with pytest.raises(DamagedFileError) as caught:
        _sweep(small_mlp, pairs, tmp_path, layers=[0])
    assert expected in str(caught.value)
    assert f"fix: delete {cell}" in str(caught.value)
    cell.unlink()  # doing what the message says resumes the sweep
    assert len(_sweep(small_mlp, pairs, tmp_path, layers=[0])) == 1


def test_a_second_sweep_on_the_same_run_waits(
    small_mlp: Network, pairs: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    import threading

    from filelock import FileLock

    run_dir = tmp_path / _key(small_mlp, *pairs)
    run_dir.mkdir()
    computed: list[list[Cell]] = []
    holder = FileLock(str(run_dir / ".lock"))  # another process's sweep, still running
    holder.acquire()
    second = threading.Thread(target=lambda: computed.append(_sweep(small_mlp, pairs, tmp_path)))
    second.start()
    second.join(timeout=2.0)
    assert second.is_alive() and not computed  # waiting, nothing computed
    holder.release()
    second.join(timeout=120)
    assert [len(c) for c in computed] == [2]
