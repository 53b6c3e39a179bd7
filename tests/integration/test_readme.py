"""README's (and the docs site's) marked code runs as written: the tour's hypothesis
declares a valid experiment, the notebook path runs, and so do the examples of
``docs/concepts/causal-models.md`` and ``docs/howto/own-network.md``."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from abstraction import CausalModel, Experiment

README = Path(__file__).resolve().parents[2] / "README.md"
DOCS = README.parent / "docs"


def readme_block(marker: str) -> str:
    """The fenced code block that follows the line ``<!-- marker -->`` in README.md or in
    a page of the docs site (``docs/**/*.md``); the marker must occur once in all."""
    pages = [README, *sorted(DOCS.rglob("*.md"))]
    found = [p for p in pages if f"<!-- {marker} -->" in p.read_text(encoding="utf-8")]
    assert len(found) == 1, f"<!-- {marker} --> is in {found}, not in exactly one page"
    lines = found[0].read_text(encoding="utf-8").splitlines()
    start = lines.index(f"<!-- {marker} -->") + 1
    assert lines[start].startswith("```"), f"no code block after <!-- {marker} -->"
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    return "\n".join(lines[start + 1 : end])


def test_tour_hypothesis_runs_as_written(tmp_path: Path) -> None:
    # as a user would: the block saved as a hypothesis file and run
    namespace = runpy.run_path(str(_saved(tmp_path, "tour-hypothesis")))
    experiment = namespace["experiment"]
    assert isinstance(experiment, Experiment)
    assert [r.name for r in experiment.rivals] == ["crossed_equality"]
    rival = namespace["crossed_equality"]
    assert isinstance(rival, CausalModel)
    # the rival pairs the entities the other way: it disagrees with the hypothesis on wx
    inputs = {"w": 1, "x": 1, "y": 2, "z": 3}
    assert experiment.model.run(inputs)["wx"] != rival.run(inputs)["wx"]


def test_python_api_snippet_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's notebook path: run() -> typed result, tables, saved alignment, report."""
    root = README.parent
    (tmp_path / "hypotheses").symlink_to(root / "hypotheses")
    monkeypatch.chdir(tmp_path)  # the snippet writes alignments/ and reports/ here
    namespace = runpy.run_path(str(_saved(tmp_path, "python-api")))
    result = namespace["result"]
    assert list(namespace["per_variable"].index) == ["wx", "yz"]
    assert namespace["per_pair"]["correct"].mean() == pytest.approx(result.overall.iia)
    assert (tmp_path / "alignments" / "he_quick.safetensors").is_file()
    assert (tmp_path / "reports" / "he_quick" / "results.json").is_file()


def _saved(directory: Path, marker: str) -> Path:
    file = directory / f"{marker}.py"
    file.write_text(readme_block(marker), encoding="utf-8")
    return file


def test_loops_and_branches_snippet_runs_as_written(tmp_path: Path) -> None:
    namespace = runpy.run_path(str(_saved(tmp_path, "loops-and-branches")))
    binding = namespace["binding"]
    assert binding.variables[3:] == (
        "entity_0", "match_0", "entity_1", "match_1", "answer", "found", "best",
    )  # fmt: skip
    assert binding.domain("found") == (True, False)
    assert binding.run({"e0": 2, "e1": 1, "q": 1})["best"] == 1
    assert binding.run({"e0": 2, "e1": 1, "q": 0})["best"] is None


def test_own_network_example_runs_as_written(tmp_path: Path) -> None:
    namespace = runpy.run_path(str(_saved(tmp_path, "own-network")))
    result = namespace["result"]
    assert result.config.location.path == "hidden"
    assert result.behavior.accuracy > 0.95  # the network learned the task
