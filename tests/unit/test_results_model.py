"""The results model: results.json and its JSON schema both come from ExperimentResult."""

from __future__ import annotations

import ast
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
from typer.testing import CliRunner

from abstraction.cli import app
from abstraction.report import draw_heatmap, rerender, validate
from abstraction.results import (
    SCHEMA_VERSION,
    ExperimentResult,
    ResultsError,
    results_schema,
)

ROOT = Path(__file__).resolve().parents[2]
REPORTS = sorted((ROOT / "reports").glob("*/results.json"))


def _document(name: str = "hierarchical_equality") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "reports" / name / "results.json").read_text())
    return data


def test_there_are_committed_reports() -> None:
    assert len(REPORTS) >= 3


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.parent.name)
def test_committed_reports_validate_and_round_trip(path: Path) -> None:
    document = json.loads(path.read_text())
    validate(document)
    result = ExperimentResult.from_dict(document)
    assert result.to_dict() == document  # nothing lost or reshaped
    again = json.loads(result.to_json())
    validate(again)
    assert ExperimentResult.from_json(result.to_json()) == result


def test_schema_is_generated_from_the_model() -> None:
    schema = results_schema()
    assert set(schema["properties"]) == set(ExperimentResult.model_fields)
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert {"verdict", "variables", "behavior", "config", "versions"} <= set(schema["required"])
    variable = schema["$defs"]["VariableRecord"]
    assert {"iia", "ci", "changed_iia", "baselines", "p_values", "passed"} <= set(
        variable["required"]
    )
    # documented: field docstrings become descriptions
    assert "Holm" in variable["properties"]["p_values"]["description"]
    jsonschema.Draft202012Validator.check_schema(schema)


def _delete(*path: str) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        node = document
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


def _set(value: Any, *path: str | int) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        node: Any = document
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


CORRUPTIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no verdict": _delete("verdict"),
    "unknown verdict": _set("great", "verdict"),
    "iia is a string": _set("high", "variables", "wx", "iia"),
    "iia above 1": _set(1.5, "variables", "wx", "iia"),
    "iia is a numeric string": _set("0.9", "variables", "wx", "iia"),
    "ci of three numbers": _set([0.1, 0.2, 0.3], "variables", "wx", "ci"),
    "no behavior accuracy": _delete("behavior", "accuracy"),
    "passed is a string": _set("yes", "variables", "yz", "passed"),
    "baseline iia is a string": _set("high", "baselines", 0, "iia"),
    "unknown top-level field": _set(1, "surprise"),
    "no versions": _delete("versions"),
    "graph node of unknown kind": _set(
        {"name": "w", "kind": "hidden", "equation": "w"}, "causal_model", "graph", "nodes", 0
    ),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_bad_documents_are_rejected_by_schema_and_model(name: str) -> None:
    document = copy.deepcopy(_document())
    CORRUPTIONS[name](document)
    with pytest.raises(jsonschema.ValidationError):
        validate(document)
    with pytest.raises(pydantic.ValidationError):
        ExperimentResult.from_dict(document)


def test_another_schema_version_is_a_readable_error(tmp_path: Path) -> None:
    document = _document()
    document["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ResultsError, match="schema_version"):
        ExperimentResult.from_dict(document)
    directory = tmp_path / "old"
    directory.mkdir()
    (directory / "results.json").write_text(json.dumps(document))
    result = CliRunner().invoke(app, ["report", str(directory)])
    assert result.exit_code == 2, result.output
    assert "schema_version" in result.output and "Traceback" not in result.output


def test_rerender_of_a_corrupted_file_exits_2(tmp_path: Path) -> None:
    document = _document()
    del document["verdict"]
    (tmp_path / "results.json").write_text(json.dumps(document))
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2, result.output


def test_rerender_keeps_results_and_draws_the_sweep(tmp_path: Path) -> None:
    directory = tmp_path / "addition_carry"
    directory.mkdir()
    written = ExperimentResult.from_dict(_document("addition_carry")).to_json()
    (directory / "results.json").write_text(written)
    index = rerender(directory)
    assert (directory / "results.json").read_text() == written
    assert "addition_carry" in index.read_text()
    assert (directory / "figures" / "sweep_heatmap.png").stat().st_size > 1000
    assert (directory / "report.md").read_text().startswith("# addition_carry")


def test_frames_from_a_file() -> None:
    result = ExperimentResult.from_dict(_document())
    frame = result.to_frame()
    assert list(frame.index) == list(result.variables)
    for name, variable in result.variables.items():
        row = frame.loc[name]
        assert row["iia"] == variable.iia
        assert (row["ci_low"], row["ci_high"]) == variable.ci
        assert row["passed"] == variable.passed
        assert row["p.random_subspace"] == variable.p_values["random_subspace"]
        nulls = {b: variable.baselines[b] for b in variable.p_values}
        assert row["best_null_iia"] == max(nulls.values())
        assert nulls[row["best_null"]] == row["best_null_iia"]
    baselines = result.to_frame("baselines")
    assert list(baselines["name"]) == [b.name for b in result.baselines]
    with pytest.raises(ResultsError, match="without a sweep"):
        result.to_frame("sweep")


def test_a_result_read_from_json_has_numbers_only() -> None:
    result = ExperimentResult.from_dict(_document())
    assert result.rival_verifications == {} and result.sweep_result is None
    with pytest.raises(ResultsError, match=r"read from results\.json"):
        _ = result.verification
    with pytest.raises(ResultsError, match=r"Alignment\.load"):
        _ = result.trained_alignment
    with pytest.raises(ResultsError):
        result.to_frame("pairs")


def test_repr_html_shows_verdict_and_variables_escaped() -> None:
    result = ExperimentResult.from_dict(_document()).model_copy(
        update={"experiment": "<script>x</script>"}
    )
    html = result._repr_html_()
    assert result.verdict in html
    for name, variable in result.variables.items():
        assert f">{name}<" in html and f"{variable.iia:.3f}" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "random_subspace" in html or "control" in html  # the best null is named
    assert f"verdict={result.verdict!r}" in repr(result) and len(repr(result)) < 200


def test_heatmap_from_a_results_file(tmp_path: Path) -> None:
    result = ExperimentResult.from_dict(_document("addition_carry"))
    path = draw_heatmap(result.to_frame("sweep"), tmp_path / "heat.png")
    assert path.stat().st_size > 1000


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_report_reads_results_without_the_alignment_code_and_nothing_imports_cli() -> None:
    package = ROOT / "abstraction"
    report = _imports(package / "report.py")
    assert not {n for n in report if n.startswith("abstraction.alignment")}
    for path in package.rglob("*.py"):
        if path.name != "cli.py":
            assert not {n for n in _imports(path) if n.startswith("abstraction.cli")}, path
