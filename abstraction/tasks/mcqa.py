"""Two-choice multiple-choice questions (as MIB's MCQA colour task, Mueller et al. 2025).

"Question: The banana is yellow. What color is it?\\nA. red\\nB. yellow\\nAnswer:" ->
" B". The causal model has MIB's two variables: which option holds the colour the
context states (``answer_pointer``: 0 for A, 1 for B), and the letter written
(``answer``). Rival: the variable is the colour itself, not where it stands among the
options (swapping it carries a colour, which points at whichever base option shows it).
Positions: the last token, where MIB aligns both variables, and the correct option's
colour in the context (``colour.last``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from abstraction.causal_model import CausalModel, causal_model
from abstraction.tasks.library import StandardTask, register, vocabulary

__all__ = ["TEMPLATES", "mcqa"]

TEMPLATES = (
    "Question: The {item} is {colour}. What color is the {item}?\nA. {option_a}\nB. {option_b}\n"
    "Answer:",
    "Question: Here the {item} is {colour}. Which color is it?\nA. {option_a}\nB. {option_b}\n"
    "Answer:",
)
ANSWERS = {"A": " A", "B": " B"}


def _models() -> tuple[CausalModel, CausalModel]:
    words = vocabulary("mcqa")
    colours = tuple(words["colours"])
    inputs = {
        "item": tuple(words["objects"]),
        "colour": colours,
        "distractor": colours,
        "correct_first": (0, 1),
    }

    @causal_model(inputs=inputs)
    def mcqa(item, colour, distractor, correct_first):  # type: ignore[no-untyped-def]
        option_a = colour if correct_first == 1 else distractor
        option_b = distractor if correct_first == 1 else colour  # noqa: F841 - a slot
        answer_pointer = 0 if option_a == colour else 1
        answer = "A" if answer_pointer == 0 else "B"
        return answer

    @causal_model(inputs=inputs)
    def colour_carried(item, colour, distractor, correct_first):  # type: ignore[no-untyped-def]
        option_a = colour if correct_first == 1 else distractor
        option_b = distractor if correct_first == 1 else colour  # noqa: F841 - a slot
        answer_pointer = colour
        answer = "A" if answer_pointer == option_a else "B"
        return answer

    return mcqa, colour_carried


def _sampler(objects: dict[str, str], colours: list[str]) -> Any:
    items = list(objects)

    def draw(rng: np.random.Generator, n: int) -> dict[str, list[Any]]:
        """An object in its usual colour, another colour as the distractor, and which
        option (A or B) shows the right one, each equally often."""
        item = [items[i] for i in rng.integers(0, len(items), n)]
        colour = [objects[i] for i in item]
        shift = rng.integers(1, len(colours), n)
        distractor = [
            colours[(colours.index(c) + s) % len(colours)]
            for c, s in zip(colour, shift, strict=True)
        ]
        return {
            "item": item,
            "colour": colour,
            "distractor": distractor,
            "correct_first": rng.integers(0, 2, n).tolist(),
        }

    return draw


@register("mcqa")
def mcqa() -> StandardTask:
    """Two-choice colour questions (see the module docstring)."""
    model, rival = _models()
    words = vocabulary("mcqa")
    return StandardTask(
        name="mcqa",
        description="answer a two-choice colour question with the letter of the right option",
        reference="Mueller et al. 2025, MIB (MCQA)",
        model=model,
        variables=("answer_pointer",),
        templates=TEMPLATES,
        sampler=_sampler(words["objects"], words["colours"]),
        positions=("last", "colour.last"),
        rivals=(rival,),
        answers=ANSWERS,
    )
