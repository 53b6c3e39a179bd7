"""The zoo language model's corpus: word splits, templates, causal models, generators."""

from __future__ import annotations

import re

import numpy as np
import pytest

from abstraction import corpus


def test_splits_are_disjoint_and_cover_each_list() -> None:
    for every, train, heldout in [
        (corpus.NAMES, corpus.TRAIN_NAMES, corpus.HELDOUT_NAMES),
        (corpus.CONTAINERS, corpus.TRAIN_CONTAINERS, corpus.HELDOUT_CONTAINERS),
        (corpus.OBJECTS, corpus.TRAIN_OBJECTS, corpus.HELDOUT_OBJECTS),
    ]:
        assert not set(train) & set(heldout)
        assert set(train) | set(heldout) == set(every)
        assert len(heldout) == round(len(every) * corpus.HELDOUT_FRACTION)
    assert not set(corpus.CONTAINERS) & set(corpus.OBJECTS)


def test_causal_models_compute_the_answer_and_the_studied_variables() -> None:
    run = corpus.ioi.run({"a": "Kiran", "b": "Mutol", "s": "Kiran", "place": "park"})
    assert run["s_position"] == 1 and run["io"] == "Mutol"
    run = corpus.ioi.run({"a": "Kiran", "b": "Mutol", "s": "Mutol", "place": "park"})
    assert run["s_position"] == 2 and run["io"] == "Kiran"
    inputs = {"c1": "budax", "o1": "sipim", "c2": "kubet", "o2": "tifen", "q": "kubet"}
    run = corpus.binding.run(inputs)
    assert run["index"] == 2 and run["answer"] == "tifen"
    assert corpus.ioi.intermediates == ("s_position",)
    assert corpus.binding.intermediates == ("index",)


@pytest.mark.parametrize("task", ["ioi", "binding"])
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_examples_fill_the_templates_with_words_of_their_split(task: str, split: str) -> None:
    found = corpus.examples(task, 300, split=split, seed=4)  # type: ignore[arg-type]
    lists = (
        {"train": corpus.TRAIN_NAMES, "heldout": corpus.HELDOUT_NAMES}
        if task == "ioi"
        else {"train": corpus.TRAIN_CONTAINERS + corpus.TRAIN_OBJECTS}
        | {"heldout": corpus.HELDOUT_CONTAINERS + corpus.HELDOUT_OBJECTS}
    )[split]
    templates = corpus.IOI_TEMPLATES if task == "ioi" else corpus.BINDING_TEMPLATES
    assert {e.template for e in found} == set(range(len(templates)))
    for e in found:
        assert e.prompt == templates[e.template].format(**e.inputs)
        assert e.answer in e.candidates and len(set(e.candidates)) == 2
        # two candidates never share their first syllable (nor their first letter)
        assert e.candidates[0][1] != e.candidates[1][1]
        words = {v for k, v in e.inputs.items() if k != "place"}
        assert words <= set(lists)
        assert not e.prompt.startswith(" ") and e.answer.startswith(" ")
    assert {e.candidates.index(e.answer) for e in found} == {0, 1}
    if task == "ioi":
        assert all(e.inputs["s"] in (e.inputs["a"], e.inputs["b"]) for e in found)
    else:
        assert all(e.inputs["q"] in (e.inputs["c1"], e.inputs["c2"]) for e in found)


def test_generators_are_deterministic() -> None:
    assert corpus.examples("ioi", 50, seed=1) == corpus.examples("ioi", 50, seed=1)
    assert corpus.examples("ioi", 50, seed=1) != corpus.examples("ioi", 50, seed=2)
    assert corpus.training_text(40, seed=3, queries=3) == corpus.training_text(
        40, seed=3, queries=3
    )
    assert corpus.fingerprint() == corpus.fingerprint()


def test_heldout_words_never_occur_in_training_text() -> None:
    text = corpus.training_text(4000, seed=0, queries=3)
    words = set(re.findall(r"[A-Za-z]+", " ".join(text)))
    heldout = set(corpus.HELDOUT_NAMES + corpus.HELDOUT_CONTAINERS + corpus.HELDOUT_OBJECTS)
    assert not words & heldout
    assert set(corpus.TRAIN_NAMES) <= words


def test_training_documents_ask_more_binding_questions() -> None:
    documents = corpus.training_examples(200, seed=0, queries=3)
    binding = [d for d in documents if d.task == "binding"]
    assert len(binding) == 100
    for d in binding:
        pairs = re.findall(r" (\w+) (\w+)", d.follow)
        assert len(pairs) == 2 and d.follow == "".join(f" {c} {o}" for c, o in pairs)
        for container, item in pairs:
            index = [d.inputs["c1"], d.inputs["c2"]].index(container)
            assert item == d.inputs[f"o{index + 1}"]
    assert all(d.follow == "" for d in documents if d.task == "ioi")


def test_samplers_draw_valid_inputs_for_the_causal_models() -> None:
    from functools import partial

    from abstraction import factual_dataset

    data = factual_dataset(corpus.ioi, 200, sampler=partial(corpus.ioi_inputs, split="heldout"))
    assert set(data["a"]) | set(data["b"]) <= set(corpus.HELDOUT_NAMES)
    assert set(np.unique(data["s_position"])) == {1, 2}
    data = factual_dataset(corpus.binding, 200, sampler=corpus.binding_inputs)
    assert (data["answer"] == np.where(data["q"] == data["c1"], data["o1"], data["o2"])).all()
    with pytest.raises(ValueError, match="unknown split"):
        corpus.ioi_inputs(np.random.default_rng(0), 3, split="test")  # type: ignore[arg-type]
