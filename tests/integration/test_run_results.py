"""run() returns an ExperimentResult whose file, tables and display match its Verification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from abstraction import Experiment, Location, TrainingConfig, zoo
from abstraction.experiment import run
from abstraction.report import rerender, validate, write
from abstraction.results import SCHEMA_VERSION, ExperimentResult
from abstraction.zoo import hierarchical_equality


@pytest.fixture(scope="module")
def result() -> ExperimentResult:
    experiment = Experiment(
        name="tiny",
        model=hierarchical_equality,
        task=zoo.task("hierarchical_equality_mlp"),
        network="hierarchical_equality_mlp",
        variables=["wx", "yz"],
        location=Location(layer=0),
        pairs=6000,
        baselines=("random_subspace", "control"),
        training=TrainingConfig(epochs=2, batch_size=512, lr=5e-3),
    )
    return run(experiment, seed=0)


def test_run_returns_a_typed_result_carrying_its_verification(result: ExperimentResult) -> None:
    assert isinstance(result, ExperimentResult)
    verification = result.verification
    assert result.trained_alignment is verification.alignment
    assert result.verdict == verification.verdict
    assert result.reasons == verification.reasons
    assert result.overall.iia == verification.overall.value
    assert result.behavior.accuracy == verification.accuracy.value
    assert result.alignment.subspaces == {
        k: tuple(v) for k, v in verification.alignment.subspaces.items()
    }
    assert [b.name for b in result.baselines] == [b.name for b in verification.baselines]


def test_json_round_trip_validates(result: ExperimentResult) -> None:
    text = result.to_json()
    document = json.loads(text)
    validate(document)
    assert document["schema_version"] == SCHEMA_VERSION and document["verdict"] == result.verdict
    assert document["variables"]["wx"]["ci"] == list(result.variables["wx"].ci)
    back = ExperimentResult.from_json(text)
    assert back.to_dict() == result.to_dict() and back.to_json() == text


def test_variable_frame_matches_the_verification(result: ExperimentResult) -> None:
    frame = result.to_frame()
    verification = result.verification
    assert list(frame.index) == ["wx", "yz"]
    for name, evidence in verification.variables.items():
        row = frame.loc[name]
        assert row["iia"] == evidence.iia.value
        assert row["ci_low"] == evidence.iia.low and row["ci_high"] == evidence.iia.high
        assert evidence.changed_iia is not None
        assert row["changed_iia"] == evidence.changed_iia.value
        assert row["changed_pairs"] == evidence.changed_pairs
        assert row["passed"] == evidence.passed
        for baseline, value in evidence.baselines.items():
            assert row[f"baseline.{baseline}"] == value
        for null, p in evidence.p_values.items():
            assert row[f"p.{null}"] == p
        nulls = {k: evidence.baselines[k] for k in evidence.p_values}
        assert row["best_null_iia"] == max(nulls.values())


def test_pair_frame_is_the_test_pairs_with_correctness(result: ExperimentResult) -> None:
    pairs = result.to_frame("pairs")
    verification = result.verification
    assert len(pairs) == len(verification.test) == result.config.pairs.test
    assert pairs["correct"].dtype == bool
    assert np.array_equal(pairs["correct"].to_numpy(), verification.correct.numpy().astype(bool))
    assert pairs["correct"].mean() == pytest.approx(result.overall.iia)
    wx_only = pairs[pairs["intervened"].astype(str) == "wx"]
    assert wx_only["correct"].mean() == pytest.approx(result.variables["wx"].iia)
    assert "correct" not in verification.test  # a copy, not the verification's own frame


def test_repr_html_names_the_verdict_and_variables(result: ExperimentResult) -> None:
    html = result._repr_html_()
    assert result.verdict in html and "tiny" in html
    for name, variable in result.variables.items():
        assert f">{name}<" in html
        assert f"{variable.ci[0]:.3f}–{variable.ci[1]:.3f}" in html


def test_report_written_from_the_object_rerenders_unchanged(
    result: ExperimentResult, tmp_path: Path
) -> None:
    index = write(result, tmp_path / "tiny")
    written = (tmp_path / "tiny" / "results.json").read_text()
    assert written == result.to_json()
    assert result.verdict in index.read_text()
    rerender(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "results.json").read_text() == written


def test_a_run_in_bf16_records_its_dtype_and_refuses_unknown_ones() -> None:
    from abstraction.network import NetworkError

    experiment = Experiment(
        name="tiny_bf16",
        model=hierarchical_equality,
        task=zoo.task("hierarchical_equality_mlp"),
        network="hierarchical_equality_mlp",
        variables=["wx"],
        location=Location(layer=0),
        pairs=1000,
        baselines=("random_subspace",),
        training=TrainingConfig(epochs=1, batch_size=256, lr=5e-3),
    )
    with pytest.raises(NetworkError, match="bfloat16"):
        run(experiment, dtype="int4")
    half = run(experiment, dtype="bf16")
    assert half.config.dtype == "bfloat16"
    assert '"dtype": "bfloat16"' in half.to_json()
    assert run(experiment).config.dtype is None  # float32: not recorded, files unchanged
