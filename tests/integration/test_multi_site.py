"""Variables at different sites: joint multi-source interchanges through the prefix cache."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from abstraction import (
    Location,
    LowRankPatch,
    PreparedInterchanges,
    counterfactual_dataset,
    intervene,
)

SITES = {
    "hooked after the cut": {
        "s": Location(layer=2, position="s.last"),
        "other": Location(layer=1, component="mlp_output", position="b.last"),
    },
    "one site at the cut": {
        "s": Location(layer=0, position="s.last"),
        "other": Location(layer=1, component="head", head=2, position="last"),
    },
}


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("sites", list(SITES.values()), ids=list(SITES))
def test_joint_interchange_at_two_sites_equals_a_full_forward(
    sites: dict[str, Location], padding: str, bpe_tokenizer: Any, ioi_prompts: Any
) -> None:
    network = ioi_prompts.gpt2(bpe_tokenizer, 3)
    task = ioi_prompts.task(bpe_tokenizer, padding)
    data = counterfactual_dataset(
        ioi_prompts.model,
        120,
        [["s"], ["other"], ["s", "other"]],
        sampler=ioi_prompts.sample,
        source_sampler=ioi_prompts.sample,
        seed=0,
    )
    prepared = PreparedInterchanges(network, task, data, sites, ["s", "other"])
    assert prepared.multi_site and prepared.cache is not None
    generator = torch.Generator().manual_seed(0)
    patches = {
        v: LowRankPatch(
            loc, torch.linalg.qr(torch.randn(prepared.width_of(v), 2, generator=generator))[0]
        )
        for v, loc in sites.items()
    }
    cached = prepared.logits(slice(None), patches)

    base = task.batch(data, "base.")
    for group in (["s"], ["other"], ["s", "other"]):
        rows = np.ones(len(data), dtype=bool)
        for v in ("s", "other"):
            rows &= data[f"do.{v}"].to_numpy(dtype=bool) == (v in group)
        index = torch.from_numpy(np.nonzero(rows)[0])
        assert len(index) > 0
        subset = data.iloc[index.numpy()]
        reference = intervene(
            network,
            base.select(index),
            [patches[v] for v in group],
            [task.batch(subset, f"source.{v}.") for v in group],
        )
        torch.testing.assert_close(cached[index], reference, rtol=1e-5, atol=1e-5)
    prepared.close()


def test_a_mapping_must_cover_every_variable(bpe_tokenizer: Any, ioi_prompts: Any) -> None:
    from abstraction.errors import AbstractionError

    network = ioi_prompts.gpt2(bpe_tokenizer, 1)
    task = ioi_prompts.task(bpe_tokenizer, "right", ioi_prompts.templates[1:])
    data = counterfactual_dataset(
        ioi_prompts.model, 10, [["s"]], sampler=ioi_prompts.sample, seed=0
    )
    with pytest.raises(AbstractionError, match=r"no location is given for variable\(s\) \['s'\]"):
        PreparedInterchanges(network, task, data, {"other": Location(layer=0)}, ["s"])


def test_experiment_with_one_location_per_variable(
    bpe_tokenizer: Any, ioi_prompts: Any, tmp_path: Any
) -> None:
    from abstraction import Experiment, TrainingConfig, report, results_schema, run

    network = ioi_prompts.gpt2(bpe_tokenizer, 2)
    task = ioi_prompts.task(bpe_tokenizer, "right", ioi_prompts.templates[1:])
    sites = {
        "s": Location(layer=1, position="s.last"),
        "other": Location(layer=0, component="head", head=1, position="last"),
    }
    experiment = Experiment(
        name="ioi_two_sites",
        model=ioi_prompts.model,
        task=task,
        network=network,
        variables=["s", "other"],
        location=sites,
        pairs=600,
        sampler=ioi_prompts.sample,
        source_sampler=ioi_prompts.sample,
        training=TrainingConfig(epochs=1),
        baselines=("random_subspace", "patch", "mean_ablation"),
        seeds=2,
    )
    result = run(experiment, alignment_path=tmp_path / "alignments" / "ioi")
    data = result.to_dict()
    import jsonschema

    jsonschema.validate(data, results_schema())
    assert data["config"]["locations"]["s"]["position"] == "s.last"
    assert data["config"]["locations"]["other"]["head"] == 1
    verification = result.verification
    assert verification.multi_site and len(verification.alignments) == 2
    assert {a.location for a in verification.alignments} == set(sites.values())
    for i in range(2):
        assert (tmp_path / "alignments" / f"ioi-site{i}.json").is_file()
    directory = report.write(result, tmp_path / "report")
    markdown = (directory.parent / "report.md").read_text()
    assert "s at layer 1 residual @ s.last" in markdown
    assert "other at layer 0 head 1 @ last" in markdown


def test_location_mapping_must_match_the_variables(ioi_prompts: Any) -> None:
    from abstraction import Experiment
    from abstraction.errors import DeclarationError

    with pytest.raises(DeclarationError, match="one entry per aligned variable"):
        Experiment(
            name="x",
            model=ioi_prompts.model,
            task=None,  # type: ignore[arg-type]
            network="nowhere",
            variables=["s", "other"],
            location={"s": Location(layer=0)},
        )


def test_each_variable_searched_on_its_own_then_verified_together(
    bpe_tokenizer: Any, ioi_prompts: Any, tmp_path: Any
) -> None:
    from abstraction import Experiment, Search, TrainingConfig, report, run

    task = ioi_prompts.task(bpe_tokenizer, "right", ioi_prompts.templates[1:])
    experiment = Experiment(
        name="ioi_searched_sites",
        model=ioi_prompts.model,
        task=task,
        network=ioi_prompts.gpt2(bpe_tokenizer, 2),
        variables=["s", "other"],
        search={
            "s": Search(layers=[0, 1], positions=["s.last", "last"]),
            "other": Search(layers=[1], components=["head"], heads=[0, 2], positions=["last"]),
        },
        pairs=900,
        sampler=ioi_prompts.sample,
        source_sampler=ioi_prompts.sample,
        training=TrainingConfig(epochs=1),
        baselines=("random_subspace",),
    )
    result = run(experiment)
    assert result.sweep is None and result.sweeps is not None
    assert set(result.sweeps) == {"s", "other"}
    assert len(result.sweeps["s"].cells) == 4 and len(result.sweeps["other"].cells) == 2
    locations = result.config.locations
    assert locations is not None
    for v, each in result.sweeps.items():
        chosen = each.chosen
        assert (locations[v].layer, locations[v].position, locations[v].head) == (
            chosen.layer,
            chosen.position,
            chosen.head,
        )
    directory = report.write(result, tmp_path / "report")
    figures = {p.name for p in (directory.parent / "figures").iterdir()}
    assert {"sweep_heatmap_s.png", "sweep_heatmap_other.png"} <= figures
