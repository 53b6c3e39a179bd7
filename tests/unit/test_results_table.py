"""The task results table: rows, markdown, JSON and figure from real experiment results
(the committed SmolLM2 IOI report), without running an experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from abstraction.results import ExperimentResult
from abstraction.statistics import Estimate
from abstraction.tasks.behaviour import Behaviour
from abstraction.tasks.table import ResultsTable, TableBudget, _cells, _rows

REPORT = Path(__file__).parents[2] / "reports" / "ioi_smollm2" / "results.json"


@pytest.fixture(scope="module")
def result() -> ExperimentResult:
    return ExperimentResult.from_json(REPORT.read_text())


def test_a_row_carries_the_chosen_site_statistics_null_and_best_rival(
    result: ExperimentResult,
) -> None:
    (row,) = _rows("ioi", result, 61.0)
    variable = result.variables["s_position"]
    assert row.variable == "s_position" and row.task == "ioi"
    assert row.site == "layer 18 residual @ s.last"  # as the report says
    assert (row.iia, row.low, row.high) == (variable.iia, *variable.ci)
    assert row.changed_iia == variable.changed_iia
    null = variable.best_null()
    assert null is not None and row.best_null == f"{null[0]} {null[1]:.3f}"
    assert row.verdict == result.verdict and row.passed == variable.passed
    best = max(result.rivals, key=lambda r: r.overall_iia)
    assert row.rival is not None and row.rival.startswith(f"{best.name} ({best.overall_iia:.3f}")


def test_cells_keep_the_residual_sweep_by_layer_and_position(result: ExperimentResult) -> None:
    cells = _cells(result)
    assert result.sweep is not None
    residual = [c for c in result.sweep.cells if c.component == "residual"]
    assert len(cells) == len(residual) < len(result.sweep.cells)  # the head cells are left out
    assert {c["position"] for c in cells} == {"last", "s.last"}
    assert {c["layer"] for c in cells} == set(range(0, 30, 3))


def test_markdown_json_and_figure(result: ExperimentResult, tmp_path: Path) -> None:
    solved = Behaviour("ioi", Estimate(0.995, 0.975, 1.0, 200, 200, 0.95), 200)
    unsolved = Behaviour("mcqa", Estimate(0.505, 0.44, 0.58, 200, 200, 0.95), 200)
    unwritable = Behaviour("agreement", None, 0, "answers start with the same token")
    table = ResultsTable(
        "smollm2-135m",
        _rows("ioi", result, 61.0),
        [solved, unsolved, unwritable],
        {"ioi": _cells(result)},
        120.0,
    )
    text = table.markdown()
    assert "| ioi | s_position | layer 18 residual @ s.last | 0.860 (0.820-0.891) |" in text
    assert "| mcqa | 0.505 (0.440-0.580) | no |" in text
    assert "| agreement | not scored: answers start with the same token | no |" in text
    loaded = json.loads(table.to_json())
    assert loaded["rows"][0]["iia"] == pytest.approx(0.86)
    assert [b["solved"] for b in loaded["behaviour"]] == [True, False, False]
    figure = table.figure(tmp_path / "iia.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_budget_sweeps_every_third_layer_unless_told() -> None:
    assert TableBudget().chosen_layers(30) == list(range(0, 30, 3))
    assert TableBudget(layers=[4, 8]).chosen_layers(30) == [4, 8]
