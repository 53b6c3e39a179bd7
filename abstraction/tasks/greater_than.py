"""Greater-than (Hanna et al. 2023), at the digit a digit-level tokenizer writes next.

"The war lasted from the year 1732 to the year 17" must go on with a year after 1732.
Hanna et al. read GPT-2 small's two-digit year tokens; tokenizers that split numbers
into digits (Llama, SmolLM2, Qwen) write the end year one digit at a time, so the next
token is the end year's decade digit. A causal model here gives one answer per prompt,
so the task's story is the one a later year in the same decade needs: the network reads
the start year's decade digit (``decade``) and continues in that decade. Start years
whose units digit is 9 are not drawn (no later year shares their decade). Rival: the
network moves on to the next decade. Positions: the last token, where Hanna et al. find
the MLPs that compute the comparison, and the start year's last token (``yy.last``),
which their attention heads read. Each template writes its own century (17, 16, 18).

Answers are the ten digits written without a space, as they follow the century. A
network that answers a later decade (as SmolLM2 does for about a fifth of the prompts)
still does greater-than but fails this single-answer story: the accuracy that
``abstraction tasks check`` prints is against the story, not against "any later year".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from abstraction.causal_model import CausalModel, causal_model
from abstraction.tasks.library import StandardTask, register, vocabulary

__all__ = ["TEMPLATES", "greater_than"]

TEMPLATES = (
    "The {event} lasted from the year 17{yy} to the year 17",
    "The {event} began in the year 16{yy} and ended in the year 16",
    "The {event} went on from the year 18{yy} until the year 18",
)
ANSWERS = {str(d): str(d) for d in range(10)}
STARTS = tuple(f"{tens}{units}" for tens in range(10) for units in range(9))
"""Two-digit start years with a later year in their decade (units digit 0-8)."""


def _models() -> tuple[CausalModel, CausalModel]:
    inputs = {"event": tuple(vocabulary("greater_than")["events"]), "yy": STARTS}

    @causal_model(inputs=inputs)
    def greater_than(event, yy):  # type: ignore[no-untyped-def]
        decade = yy[0]
        end_decade = decade
        return end_decade

    @causal_model(inputs=inputs)
    def next_decade(event, yy):  # type: ignore[no-untyped-def]
        decade = yy[0]
        end_decade = str(min(int(decade) + 1, 9))
        return end_decade

    return greater_than, next_decade


def _sampler(events: list[str]) -> Any:
    def draw(rng: np.random.Generator, n: int) -> dict[str, list[str]]:
        """An event and a start year with a later year in its decade."""
        return {
            "event": [events[i] for i in rng.integers(0, len(events), n)],
            "yy": [STARTS[i] for i in rng.integers(0, len(STARTS), n)],
        }

    return draw


@register("greater_than")
def greater_than() -> StandardTask:
    """Greater-than (see the module docstring)."""
    model, rival = _models()
    return StandardTask(
        name="greater_than",
        description="continue 'from the year 1732 to the year 17' with a later year's decade",
        reference="Hanna et al. 2023, How does GPT-2 compute greater-than?",
        model=model,
        variables=("decade",),
        templates=TEMPLATES,
        sampler=_sampler(vocabulary("greater_than")["events"]),
        positions=("last", "yy.last"),
        rivals=(rival,),
        answers=ANSWERS,
        # Hanna et al.'s heads reading YY (5.1, 5.5, 6.1, 6.9, 7.10, 8.8, 8.11, 9.1 of
        # GPT-2 small's 12 layers)
        head_depths=(5 / 12, 6 / 12, 7 / 12, 8 / 12, 9 / 12),
    )
