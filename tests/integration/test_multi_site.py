"""Variables at different sites: joint multi-source interchanges through the prefix cache."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from transformers import GPT2Config

from abstraction import (
    Location,
    LowRankPatch,
    Network,
    PreparedInterchanges,
    PromptTask,
    causal_model,
    counterfactual_dataset,
    intervene,
)

NAMES = ("Mary", "John", "Anna", "Kasimir", "Bob", "Theodora")


@causal_model(inputs={"a": NAMES, "b": NAMES, "s_first": (True, False)})
def ioi(a, b, s_first):  # type: ignore[no-untyped-def]
    s = a if s_first else b
    other = s != a  # is the indirect object the first name?
    io = a if other else b
    return io


def distinct_names(rng: np.random.Generator, n: int) -> dict[str, Any]:
    pairs = np.array([(x, y) for x in NAMES for y in NAMES if x != y])
    chosen = pairs[rng.integers(len(pairs), size=n)]
    return {"a": chosen[:, 0], "b": chosen[:, 1], "s_first": rng.random(n) < 0.5}


TEMPLATES = (
    "When {a} and {b} went to the store, {s} gave a drink to",
    "Then {a} and {b} had fun. {s} handed it to",
)


def _gpt2(tokenizer: Any, layers: int) -> Network:
    """A small GPT-2 with random weights over ``tokenizer``'s vocabulary."""
    config = GPT2Config(
        n_layer=layers,
        n_embd=32,
        n_head=4,
        n_positions=64,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    return Network.from_config(config, seed=0)


def _task(tokenizer: Any, templates: Any, padding: str = "right") -> PromptTask:
    return PromptTask("ioi", ioi, tokenizer, templates, candidates=("a", "b"), padding=padding)


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
    sites: dict[str, Location], padding: str, bpe_tokenizer: Any
) -> None:
    network = _gpt2(bpe_tokenizer, layers=3)
    task = _task(bpe_tokenizer, TEMPLATES, padding=padding)
    data = counterfactual_dataset(
        ioi,
        120,
        [["s"], ["other"], ["s", "other"]],
        sampler=distinct_names,
        source_sampler=distinct_names,
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


def test_a_mapping_must_cover_every_variable(bpe_tokenizer: Any) -> None:
    from abstraction.errors import AbstractionError

    network = _gpt2(bpe_tokenizer, layers=1)
    task = _task(bpe_tokenizer, TEMPLATES[1:])
    data = counterfactual_dataset(ioi, 10, [["s"]], sampler=distinct_names, seed=0)
    with pytest.raises(AbstractionError, match=r"no location is given for variable\(s\) \['s'\]"):
        PreparedInterchanges(network, task, data, {"other": Location(layer=0)}, ["s"])


def test_experiment_with_one_location_per_variable(bpe_tokenizer: Any, tmp_path: Any) -> None:
    from abstraction import Experiment, TrainingConfig, report, results_schema, run

    network = _gpt2(bpe_tokenizer, layers=2)
    task = _task(bpe_tokenizer, TEMPLATES[1:])
    sites = {
        "s": Location(layer=1, position="s.last"),
        "other": Location(layer=0, component="head", head=1, position="last"),
    }
    experiment = Experiment(
        name="ioi_two_sites",
        model=ioi,
        task=task,
        network=network,
        variables=["s", "other"],
        location=sites,
        pairs=600,
        sampler=distinct_names,
        source_sampler=distinct_names,
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


def test_location_mapping_must_match_the_variables() -> None:
    from abstraction import Experiment
    from abstraction.errors import DeclarationError

    with pytest.raises(DeclarationError, match="one entry per aligned variable"):
        Experiment(
            name="x",
            model=ioi,
            task=None,  # type: ignore[arg-type]
            network="nowhere",
            variables=["s", "other"],
            location={"s": Location(layer=0)},
        )


def test_each_variable_searched_on_its_own_then_verified_together(
    bpe_tokenizer: Any, tmp_path: Any
) -> None:
    from abstraction import Experiment, Search, TrainingConfig, report, run

    task = _task(bpe_tokenizer, TEMPLATES[1:])
    experiment = Experiment(
        name="ioi_searched_sites",
        model=ioi,
        task=task,
        network=_gpt2(bpe_tokenizer, layers=2),
        variables=["s", "other"],
        search={
            "s": Search(layers=[0, 1], positions=["s.last", "last"]),
            "other": Search(layers=[1], components=["head"], heads=[0, 2], positions=["last"]),
        },
        pairs=900,
        sampler=distinct_names,
        source_sampler=distinct_names,
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
