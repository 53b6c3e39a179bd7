"""Entity-attribute binding (as Feng and Steinhardt 2024).

"Alice lives in Paris and Bob lives in London. Where does Bob live? Bob lives in" ->
" London". The causal
model: the network finds which of the two bound pairs the query names
(``query_position``: the first or the second) and answers that pair's city. Rivals:
the variable is the queried name itself (not where it is bound), and the recency
heuristic (answer the last city mentioned). Positions: the last token and the query's
first mention (``query.last``, in the question).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from abstraction.causal_model import CausalModel, causal_model
from abstraction.tasks.library import StandardTask, distinct_pair, register, vocabulary

__all__ = ["TEMPLATES", "entity_binding"]

TEMPLATES = (
    "{e1} lives in {c1} and {e2} lives in {c2}. Where does {query} live? {query} lives in",
    "{e1} lives in {c1} and {e2} lives in {c2}.\nQ: Where does {query} live?\nA: {query} lives in",
)


def _models() -> tuple[CausalModel, CausalModel, CausalModel]:
    words = vocabulary("entity_binding")
    names, cities = tuple(words["names"]), tuple(words["cities"])
    inputs = {"e1": names, "c1": cities, "e2": names, "c2": cities, "query": names}

    @causal_model(inputs=inputs)
    def entity_binding(e1, c1, e2, c2, query):  # type: ignore[no-untyped-def]
        query_position = 1 if query == e1 else 2
        city = c1 if query_position == 1 else c2
        return city

    @causal_model(inputs=inputs)
    def queried_name(e1, c1, e2, c2, query):  # type: ignore[no-untyped-def]
        query_position = query
        city = c1 if query_position == e1 else c2
        return city

    @causal_model(inputs=inputs)
    def last_city(e1, c1, e2, c2, query):  # type: ignore[no-untyped-def]
        query_position = 1 if query == e1 else 2
        city = c2 if query_position > 0 else c1
        return city

    return entity_binding, queried_name, last_city


def _sampler(names: list[str], cities: list[str]) -> Any:
    def draw(rng: np.random.Generator, n: int) -> dict[str, list[str]]:
        """Two different names bound to two different cities; the query names either."""
        e1, e2 = distinct_pair(rng, len(names), n)
        c1, c2 = distinct_pair(rng, len(cities), n)
        pick = rng.integers(0, 2, n)
        return {
            "e1": [names[i] for i in e1],
            "c1": [cities[i] for i in c1],
            "e2": [names[i] for i in e2],
            "c2": [cities[i] for i in c2],
            "query": [names[a] if p else names[b] for a, b, p in zip(e1, e2, pick, strict=True)],
        }

    return draw


@register("entity_binding")
def entity_binding() -> StandardTask:
    """Entity-attribute binding (see the module docstring)."""
    model, queried_name, last_city = _models()
    words = vocabulary("entity_binding")
    return StandardTask(
        name="entity_binding",
        description="answer the city bound to the queried name",
        reference="Feng and Steinhardt 2024, How do language models bind entities in context?",
        model=model,
        variables=("query_position",),
        templates=TEMPLATES,
        sampler=_sampler(words["names"], words["cities"]),
        positions=("last", "query.last"),
        rivals=(queried_name, last_city),
        candidates=("c1", "c2"),
    )
