"""Each library task's causal model labels its prompts as the task says, for any draw
from its vocabulary (and its sampler draws only what the task allows)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from abstraction import tasks

IOI = tasks.vocabulary("ioi")
AGREEMENT = tasks.vocabulary("agreement")


@given(
    names=st.lists(st.sampled_from(IOI["names"]), min_size=2, max_size=2, unique=True),
    repeats_first=st.booleans(),
    place=st.sampled_from(IOI["places"]),
    thing=st.sampled_from(IOI["things"]),
)
def test_ioi_answers_the_name_the_subject_does_not_repeat(
    names: list[str], repeats_first: bool, place: str, thing: str
) -> None:
    a, b = names
    s = a if repeats_first else b
    values = tasks.get("ioi").model.run({"a": a, "b": b, "s": s, "place": place, "thing": thing})
    assert values["io"] == (b if repeats_first else a)
    assert values["s_position"] == (1 if repeats_first else 2)


@given(
    subject=st.sampled_from(AGREEMENT["nouns"]),
    attractor=st.sampled_from(AGREEMENT["attractors"]),
    subject_plural=st.booleans(),
    attractor_plural=st.booleans(),
)
def test_agreement_follows_the_subject_and_its_rival_the_attractor(
    subject: list[str], attractor: list[str], subject_plural: bool, attractor_plural: bool
) -> None:
    task = tasks.get("agreement")
    inputs = {"subject": subject[subject_plural], "attractor": attractor[attractor_plural]}
    values = task.model.run(inputs)
    assert values["verb"] == ("plural" if subject_plural else "singular")
    assert values["number"] == values["verb"]
    (rival,) = task.rivals
    assert rival.run(inputs)["verb"] == ("plural" if attractor_plural else "singular")


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 50))
def test_samplers_draw_only_what_their_task_allows(seed: int, n: int) -> None:
    ioi = tasks.get("ioi").sampler(np.random.default_rng(seed), n)
    for a, b, s in zip(ioi["a"], ioi["b"], ioi["s"], strict=True):
        assert a != b and s in (a, b)
    agreement = tasks.get("agreement").sampler(np.random.default_rng(seed), n)
    nouns = {w for pair in AGREEMENT["nouns"] for w in pair}
    assert set(agreement["subject"]) <= nouns and len(agreement["attractor"]) == n
