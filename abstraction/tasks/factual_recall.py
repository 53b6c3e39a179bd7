"""Factual attribute recall, RAVEL-style: an entity and the attribute asked of it.

"The capital of France is" -> " Paris"; "The official language of France is" ->
" French". The causal model has the two variables RAVEL (Huang et al. 2024) aligns: the
entity (``entity``: which country) and the attribute asked (``relation``); the answer
is looked up from both. Interchanging ``entity`` alone gives the source country's value
of the base's attribute. Rival: the variable is the retrieved fact itself (the answer
is looked up before the position the intervention reads, so swapping ``entity`` carries
the source's answer whatever the base asks). Positions: the entity's last token
(``country.last``) and the last token, where RAVEL intervenes.

Every prompt is read over the same candidates: all the capitals and languages.
Several countries share a language, so the entity is not a function of the answer (a
variable that is, on 95% of inputs, would tell nothing about the mechanism; the
attribute asked is one, since capitals and languages differ, and the report says so).
The template is an input too (``template``), so the test set holds many distinct bases.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from abstraction.causal_model import CausalModel, causal_model
from abstraction.tasks.library import StandardTask, register, vocabulary

__all__ = ["TEMPLATES", "factual_recall"]

TEMPLATES = (
    "The {attribute} of {country} is",
    "As everyone knows, the {attribute} of {country} is",
    "Fact: the {attribute} of {country} is",
)


def _models() -> tuple[CausalModel, CausalModel]:
    words = vocabulary("factual_recall")
    facts: dict[str, dict[str, str]] = words["facts"]
    inputs = {
        "country": tuple(facts),
        "attribute": tuple(words["attributes"]),
        "template": tuple(range(len(TEMPLATES))),
    }

    @causal_model(inputs=inputs)
    def factual_recall(country, attribute, template):  # type: ignore[no-untyped-def]
        entity = country
        relation = attribute
        answer = facts[entity][relation]
        return answer

    @causal_model(inputs=inputs)
    def retrieved_fact(country, attribute, template):  # type: ignore[no-untyped-def]
        relation = attribute  # noqa: F841 - a rival names the hypothesis's variables
        entity = facts[country][attribute]
        answer = entity
        return answer

    return factual_recall, retrieved_fact


def _answers() -> dict[str, str]:
    facts: dict[str, dict[str, str]] = vocabulary("factual_recall")["facts"]
    values = dict.fromkeys(v for fact in facts.values() for v in fact.values())
    return {v: f" {v}" for v in values}


def _sampler(countries: list[str], attributes: list[str]) -> Any:
    def draw(rng: np.random.Generator, n: int) -> dict[str, list[str]]:
        """A country, an attribute and a template, independently and uniformly."""
        return {
            "country": [countries[i] for i in rng.integers(0, len(countries), n)],
            "attribute": [attributes[i] for i in rng.integers(0, len(attributes), n)],
            "template": rng.integers(0, len(TEMPLATES), n).tolist(),
        }

    return draw


@register("factual_recall")
def factual_recall() -> StandardTask:
    """Factual attribute recall (see the module docstring)."""
    model, rival = _models()
    words = vocabulary("factual_recall")
    return StandardTask(
        name="factual_recall",
        description="recall a country's capital or official language",
        reference="Huang et al. 2024, RAVEL",
        model=model,
        variables=("entity", "relation"),
        templates=TEMPLATES,
        sampler=_sampler(list(words["facts"]), words["attributes"]),
        positions=("last", "country.last"),
        rivals=(rival,),
        answers=_answers(),
        template_input="template",
        # one entity among 27 needs more than a direction; the attribute is binary
        ranks={"entity": 8},
    )
