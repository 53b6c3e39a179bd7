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


GREATER = tasks.vocabulary("greater_than")
FACTS = tasks.vocabulary("factual_recall")
MCQA = tasks.vocabulary("mcqa")
BINDING = tasks.vocabulary("entity_binding")


@given(
    event=st.sampled_from(GREATER["events"]),
    start=st.integers(0, 99).filter(lambda y: y % 10 != 9),
)
def test_greater_than_continues_in_the_start_decade_and_its_rival_in_the_next(
    event: str, start: int
) -> None:
    task = tasks.get("greater_than")
    inputs = {"event": event, "yy": f"{start:02d}"}
    values = task.model.run(inputs)
    assert values["decade"] == str(start // 10)
    # a later year in the story's decade exists: the end year tens-digit + any units
    # digit above the start's is after the start year
    assert int(values["end_decade"] + "9") > start
    assert task.answers is not None and values["end_decade"] in task.answers
    (rival,) = task.rivals
    assert rival.run(inputs)["end_decade"] == str(min(start // 10 + 1, 9))


@given(
    country=st.sampled_from(sorted(FACTS["facts"])),
    other=st.sampled_from(sorted(FACTS["facts"])),
    attribute=st.sampled_from(FACTS["attributes"]),
    asked=st.sampled_from(FACTS["attributes"]),
)
def test_factual_recall_looks_up_the_entity_and_attribute(
    country: str, other: str, attribute: str, asked: str
) -> None:
    task = tasks.get("factual_recall")
    values = task.model.run({"country": country, "attribute": attribute, "template": 0})
    assert values["answer"] == FACTS["facts"][country][attribute]
    assert values["entity"] == country and values["relation"] == attribute
    # interchanging the entity alone answers the other country's value of the asked
    # attribute; the rival's entity carries the other prompt's answer instead
    swapped = task.model.run(
        {"country": country, "attribute": asked, "template": 1}, {"entity": other}
    )
    assert swapped["answer"] == FACTS["facts"][other][asked]
    (rival,) = task.rivals
    carried = rival.run({"country": other, "attribute": attribute, "template": 2})["entity"]
    base = {"country": country, "attribute": asked, "template": 0}
    assert rival.run(base, {"entity": carried})["answer"] == FACTS["facts"][other][attribute]


@given(
    item=st.sampled_from(sorted(MCQA["objects"])),
    shift=st.integers(1, len(MCQA["colours"]) - 1),
    correct_first=st.sampled_from([0, 1]),
)
def test_mcqa_answers_the_letter_of_the_stated_colour(
    item: str, shift: int, correct_first: int
) -> None:
    colours = MCQA["colours"]
    colour = MCQA["objects"][item]
    distractor = colours[(colours.index(colour) + shift) % len(colours)]
    inputs = {"item": item, "colour": colour, "distractor": distractor}
    values = tasks.get("mcqa").model.run({**inputs, "correct_first": correct_first})
    options = (colour, distractor) if correct_first else (distractor, colour)
    assert (values["option_a"], values["option_b"]) == options
    assert values["answer"] == "AB"[options.index(colour)]
    assert values["answer_pointer"] == options.index(colour)


@given(
    names=st.lists(st.sampled_from(BINDING["names"]), min_size=2, max_size=2, unique=True),
    cities=st.lists(st.sampled_from(BINDING["cities"]), min_size=2, max_size=2, unique=True),
    ask_first=st.booleans(),
)
def test_entity_binding_answers_the_city_bound_to_the_query(
    names: list[str], cities: list[str], ask_first: bool
) -> None:
    task = tasks.get("entity_binding")
    inputs = dict(zip(("e1", "e2", "c1", "c2"), (*names, *cities), strict=True))
    inputs["query"] = names[0] if ask_first else names[1]
    values = task.model.run(inputs)
    assert values["city"] == (cities[0] if ask_first else cities[1])
    assert values["query_position"] == (1 if ask_first else 2)
    queried_name, last_city = task.rivals
    assert queried_name.run(inputs)["city"] == values["city"]  # same behaviour, other variable
    assert last_city.run(inputs)["city"] == cities[1]


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 50))
def test_new_samplers_draw_only_what_their_task_allows(seed: int, n: int) -> None:
    greater = tasks.get("greater_than").sampler(np.random.default_rng(seed), n)
    assert all(len(y) == 2 and y[1] != "9" for y in greater["yy"])
    recall = tasks.get("factual_recall").sampler(np.random.default_rng(seed), n)
    assert set(recall["country"]) <= set(FACTS["facts"])
    mcqa = tasks.get("mcqa").sampler(np.random.default_rng(seed), n)
    for item, colour, distractor in zip(
        mcqa["item"], mcqa["colour"], mcqa["distractor"], strict=True
    ):
        assert colour == MCQA["objects"][item] and distractor != colour
    binding = tasks.get("entity_binding").sampler(np.random.default_rng(seed), n)
    for e1, c1, e2, c2, q in zip(
        *(binding[k] for k in ("e1", "c1", "e2", "c2", "query")), strict=True
    ):
        assert e1 != e2 and c1 != c2 and q in (e1, e2)
