"""Indirect-object identification (Wang et al. 2022): answer the name not repeated.

"When Mary and John went to the store, John gave a drink to" -> " Mary". The causal
model (as in the IOI literature): the network finds which of the two names the subject
repeats (``s_position``: the first or the second) and answers the other one. Rivals: the
"first name mentioned" heuristic, and a model whose intermediate variable is the
repeated name itself rather than its position. Positions: the last token and the
subject's second mention (``s.last``), where Wang et al. find the S-inhibition and name
mover heads reading and writing this information in GPT-2 small.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from abstraction.causal_model import CausalModel, causal_model
from abstraction.tasks.library import StandardTask, distinct_pair, register, vocabulary

__all__ = ["TEMPLATES", "ioi"]

TEMPLATES = (
    "When {a} and {b} went to the {place}, {s} gave a {thing} to",
    "After {a} and {b} arrived at the {place}, {s} handed a {thing} to",
    "While {a} and {b} were working at the {place}, {s} threw a {thing} to",
)


def _models() -> tuple[CausalModel, CausalModel, CausalModel]:
    words = vocabulary("ioi")
    names, places, things = (tuple(words[k]) for k in ("names", "places", "things"))
    inputs = {"a": names, "b": names, "s": names, "place": places, "thing": things}

    @causal_model(inputs=inputs)
    def ioi(a, b, s, place, thing):  # type: ignore[no-untyped-def]
        s_position = 1 if s == a else 2
        io = b if s_position == 1 else a
        return io

    @causal_model(inputs=inputs)
    def first_name(a, b, s, place, thing):  # type: ignore[no-untyped-def]
        s_position = 1 if s == a else 2
        io = a if s_position > 0 else b
        return io

    @causal_model(inputs=inputs)
    def repeated_name(a, b, s, place, thing):  # type: ignore[no-untyped-def]
        s_position = s
        io = b if s_position == a else a
        return io

    return ioi, first_name, repeated_name


def _sampler(names: Sequence[str], places: Sequence[str], things: Sequence[str]) -> Any:
    def draw(rng: np.random.Generator, n: int) -> dict[str, list[str]]:
        """Two different names, the subject one of them (either, equally often)."""
        first, second = distinct_pair(rng, len(names), n)
        pick = rng.integers(0, 2, n)
        return {
            "a": [names[i] for i in first],
            "b": [names[i] for i in second],
            "s": [names[f] if p else names[t] for f, t, p in zip(first, second, pick, strict=True)],
            "place": [places[i] for i in rng.integers(0, len(places), n)],
            "thing": [things[i] for i in rng.integers(0, len(things), n)],
        }

    return draw


@register("ioi")
def ioi() -> StandardTask:
    """The IOI task (see the module docstring)."""
    model, first_name, repeated_name = _models()
    words = vocabulary("ioi")
    return StandardTask(
        name="ioi",
        description="answer the name that the subject does not repeat",
        reference="Wang et al. 2022, Interpretability in the Wild",
        model=model,
        variables=("s_position",),
        templates=TEMPLATES,
        sampler=_sampler(words["names"], words["places"], words["things"]),
        positions=("last", "s.last"),
        rivals=(first_name, repeated_name),
        candidates=("a", "b"),
        # Wang et al.'s S-inhibition (layers 7-8) and name-mover (9-10) heads of GPT-2
        # small's 12 layers
        head_depths=(7 / 12, 8 / 12, 9 / 12, 10 / 12),
    )
