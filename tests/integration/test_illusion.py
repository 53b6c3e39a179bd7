"""Verdicts on hand-built networks whose answer is known: illusions flagged, honest
networks unflagged, nulls that cannot be informative set aside, and the verdict pooled
over alignment seeds."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from abstraction import (
    Experiment,
    Location,
    Network,
    Task,
    TrainingConfig,
    causal_model,
    counterfactual_dataset,
    planted,
    split_by_base,
    verify,
)
from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.diagnostics import diagnose, isolated_pairs, output_agreement
from abstraction.experiment import run
from abstraction.network import Batch

CONFIG = TrainingConfig(epochs=8, batch_size=512, lr=1e-2)


def experiment(kind: planted.Kind, seed: int, **changes: Any) -> Experiment:
    return Experiment(
        name=f"planted_{kind}",
        model=planted.equality,
        task=planted.OneHotTask(),
        network=lambda: planted.network(kind, seed),
        variables=["wx", "yz"],
        location=Location.module("represent"),
        rank=1,
        pairs=20_000,
        training=CONFIG,
        baselines=("random_subspace", "mean_ablation"),
        **changes,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_a_known_illusion_is_flagged_and_not_faithful(seed: int) -> None:
    result = run(experiment("illusion", seed), seed=seed)
    wx = result.variables["wx"]
    assert wx.iia > 0.95  # the patch reproduces the interchange...
    assert "illusion" in wx.flags and not wx.passed  # ...but the diagnostics see through it
    assert wx.diagnostics is not None and wx.diagnostics.dormant_effect is not None
    assert wx.diagnostics.dormant_effect > 0.5
    assert wx.diagnostics.patch_iia is not None and wx.diagnostics.patch_iia < 0.2
    assert result.verdict != "faithful"
    assert any("illusion" in reason for reason in result.reasons)


@pytest.mark.parametrize("seed", [0, 1])
def test_an_honest_planted_network_stays_faithful_and_unflagged(seed: int) -> None:
    result = run(experiment("planted", seed), seed=seed)
    assert result.verdict == "faithful"
    for variable in result.variables.values():
        assert variable.flags == []
        assert variable.diagnostics is not None
        assert variable.diagnostics.dormant_effect is not None
        assert variable.diagnostics.dormant_effect < 0.1
        assert variable.diagnostics.patch_gap is not None and variable.diagnostics.patch_gap < 0.05


def test_isolated_pairs_agree_on_everything_else_the_output_reads() -> None:
    data = counterfactual_dataset(planted.equality, 2000, [["wx"], ["yz"], ["wx", "yz"]], seed=0)
    rows = isolated_pairs(planted.equality, data, "wx")
    assert rows.any()
    chosen = data[rows]
    assert (chosen["intervened"].astype(str) == "wx").all() and chosen["changed"].all()
    base_yz = chosen["base.y"].to_numpy() == chosen["base.z"].to_numpy()
    source_yz = chosen["source.wx.y"].to_numpy() == chosen["source.wx.z"].to_numpy()
    assert (base_yz == source_yz).all()
    # and every single-variable changed pair left out disagrees on yz
    others = data[~rows & (data["intervened"].astype(str) == "wx") & data["changed"]]
    assert (
        (others["base.y"] == others["base.z"]) != (others["source.wx.y"] == others["source.wx.z"])
    ).all()


def test_output_agreement_is_one_for_the_output_and_lower_for_an_intermediate() -> None:
    data = counterfactual_dataset(planted.equality, 4000, [["wx"]], sampler="output", seed=0)
    shares = output_agreement(planted.equality, data, [planted.equality.output, "wx"])
    assert shares[planted.equality.output] == 1.0
    assert shares["wx"] < 0.8
    # sampled uniformly, w == x is rare: wx is False on ~90 % of inputs, whatever the output
    uniform = counterfactual_dataset(planted.equality, 4000, [["wx"]], sampler="uniform", seed=0)
    assert output_agreement(planted.equality, uniform, ["wx"])["wx"] > 0.85


def test_the_verdict_pools_alignment_seeds() -> None:
    result = run(experiment("illusion", 0, seeds=3), seed=0)
    verification = result.verification
    assert verification.seed_correct is not None and verification.seed_correct.shape[0] == 3
    assert result.seeds is not None and len(result.seeds.per_seed) == 3
    for variable in result.variables.values():
        assert len(variable.per_seed) == 3
        assert variable.iia == pytest.approx(np.mean(variable.per_seed))
    per_seed = result.variables["yz"].per_seed
    assert max(per_seed) > min(per_seed)  # the seeds differ, and the headline pools them


# -- a width-1 site: the random-subspace null is the site itself ------------------------

SUMS = range(20)


@causal_model(inputs={"a": SUMS, "b": SUMS, "c": (False, True)})
def threshold(a, b, c):  # type: ignore[no-untyped-def]
    big = a + b >= 20
    return big != c


class ScalarTask(Task):
    def __init__(self) -> None:
        self.name = "scalars"
        self.model = threshold

    @property
    def n_classes(self) -> int:
        return 2

    def encode(self, columns: Mapping[str, np.ndarray]) -> Batch:
        x = np.stack([columns["a"], columns["b"], columns["c"]], axis=1).astype(np.float32)
        return Batch({"x": torch.as_tensor(x)})

    def label_ids(
        self, values: np.ndarray, inputs: Mapping[str, np.ndarray] | None = None
    ) -> torch.Tensor:
        return torch.as_tensor(values.astype(np.int64))


class Bottleneck(nn.Module):
    """``a + b >= 20`` squeezed through a 1-wide layer, then XOR with ``c``."""

    def __init__(self) -> None:
        super().__init__()
        self.sum = nn.Linear(3, 1)
        with torch.no_grad():
            self.sum.weight.copy_(torch.tensor([[1.0, 1.0, 0.0]]))
            self.sum.bias.fill_(-19.0)
        self.squeeze = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        big = self.squeeze(torch.clamp(self.sum(x), 0.0, 1.0))
        c = x[:, 2:3]
        different = big + c - 2 * big * c
        return torch.cat([-8 * (different - 0.5), 8 * (different - 0.5)], dim=-1)


def test_a_random_subspace_of_a_one_wide_site_does_not_decide() -> None:
    network = Network(Bottleneck(), family="generic", name="bottleneck")
    data = counterfactual_dataset(threshold, 12_000, [["big"]], seed=0)
    train, validation, test = split_by_base(data, (0.5, 0.2, 0.3), seed=0)
    result = verify(
        network,
        ScalarTask(),
        train,
        validation,
        test,
        Location.module("squeeze"),
        ["big"],
        rank=1,
        config=CONFIG,
        baselines=("random_subspace",),
    )
    big = result.variables["big"]
    assert big.iia.value == 1.0
    assert big.baselines["random_subspace"] == 1.0
    assert "random_subspace" in big.not_informative and "random_subspace" not in big.p_values
    assert result.verdict == "faithful", result.reasons
    assert any("not informative" in reason for reason in big.reasons)


def test_a_small_input_space_is_tested_on_every_held_out_base_and_source() -> None:
    def bottleneck_experiment(test_pairs: str) -> Experiment:
        return Experiment(
            name="bottleneck",
            model=threshold,
            task=ScalarTask(),
            network=lambda: Network(Bottleneck(), family="generic", name="bottleneck"),
            variables=["big"],
            location=Location.module("squeeze"),
            rank=1,
            pairs=3000,
            training=CONFIG,
            baselines=(),
            test_pairs=test_pairs,  # type: ignore[arg-type]
        )

    result = run(bottleneck_experiment("auto"), seed=0)
    assert result.config.pairs.test_exhaustive
    test = result.verification.test
    # the same split run() made: every input not used as a train/validation base is a test base
    data = counterfactual_dataset(
        threshold, 3000, [["big"]], sampler="output", source_sampler="value", seed=0
    )
    train, validation, _ = split_by_base(data, (0.7, 0.15, 0.15), seed=0)
    used = set(train["base_id"]) | set(validation["base_id"])
    n_inputs = 20 * 20 * 2
    assert set(test["base_id"]) == set(range(n_inputs)) - used
    assert len(test) == len(set(test["base_id"])) * n_inputs  # each with every source
    assert result.variables["big"].iia == 1.0

    sampled = run(bottleneck_experiment("sampled"), seed=0)
    assert not sampled.config.pairs.test_exhaustive
    assert sampled.verification.test["base_id"].nunique() < test["base_id"].nunique()


# -- re-initialising a network whose computation sits in buffers ------------------------


class Buffered(nn.Module):
    """The planted network with its only parameters turned into buffers."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.inner = planted.HandBuilt("planted", seed)
        weight, bias = self.inner.detect.weight.detach(), self.inner.detect.bias.detach()
        self.inner.detect = _FixedLinear(weight, bias)  # type: ignore[assignment]
        self.represent = self.inner.represent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x)
        return out


class _FixedLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.clone())
        self.register_buffer("bias", bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


def test_an_untrained_null_equal_to_the_network_is_reported_not_applicable() -> None:
    network = Network(Buffered(0), family="generic", name="buffered")
    data = counterfactual_dataset(
        planted.equality, 12_000, [["wx"], ["yz"], ["wx", "yz"]], sampler="output", seed=0
    )
    train, validation, test = split_by_base(data, (0.7, 0.15, 0.15), seed=0)
    result = verify(
        network,
        planted.OneHotTask(),
        train,
        validation,
        test,
        Location.module("represent"),
        ["wx", "yz"],
        rank=1,
        config=CONFIG,
        baselines=("random_subspace", "untrained"),
    )
    untrained = next(b for b in result.baselines if b.name == "untrained")
    assert "outputs unchanged" in untrained.note
    for variable in result.variables.values():
        assert "untrained" in variable.not_informative
        assert "untrained" not in variable.p_values
    assert result.verdict == "faithful", result.reasons


def test_diagnostics_need_a_subspace() -> None:
    network = planted.network("planted", 0)
    data = counterfactual_dataset(planted.equality, 3000, [["wx"]], seed=0)
    result = verify(
        network,
        planted.OneHotTask(),
        data,
        data,
        data,
        Location.module("represent"),
        ["wx"],
        method="patch",
        baselines=(),
    )
    prepared = PreparedInterchanges(network, planted.OneHotTask(), data, result.locations, ["wx"])
    try:
        found = diagnose(
            prepared, result.alignment, "wx", planted.equality, data, result.correct.numpy()
        )
    finally:
        prepared.close()
    assert found.dormant_effect is None and "no subspace" in found.note
    assert found.patch_iia == pytest.approx(found.subspace_iia)
