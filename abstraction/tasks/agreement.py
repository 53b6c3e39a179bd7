"""Subject-verb number agreement across an attractor (as CausalGym's agreement tasks).

"The author near the tables" -> " is" (not " are"): the verb agrees with the subject,
not with the nearer noun (the attractor). The causal model: the subject's number
(``number``) decides the verb. Rival: the verb agrees with the attractor (the nearest
noun, a heuristic that fails exactly on the mismatched prompts). Positions: the
subject (``subject.last``) and the last token, where Arora et al. (2024) find the
number variable moving from the subject to the prediction site over the layers of
Pythia models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from abstraction.causal_model import CausalModel, causal_model
from abstraction.tasks.library import StandardTask, register, vocabulary

__all__ = ["TEMPLATES", "agreement"]

TEMPLATES = (
    "The {subject} near the {attractor}",
    "The {subject} behind the {attractor}",
    "The {subject} next to the {attractor}",
)
ANSWERS = {"singular": " is", "plural": " are"}


def _models() -> tuple[CausalModel, CausalModel]:
    words = vocabulary("agreement")
    singular = frozenset(s for s, _ in (*words["nouns"], *words["attractors"]))
    subjects = tuple(w for pair in words["nouns"] for w in pair)
    attractors = tuple(w for pair in words["attractors"] for w in pair)
    inputs = {"subject": subjects, "attractor": attractors}

    @causal_model(inputs=inputs)
    def agreement(subject, attractor):  # type: ignore[no-untyped-def]
        number = "singular" if subject in singular else "plural"
        verb = number
        return verb

    @causal_model(inputs=inputs)
    def attractor_agreement(subject, attractor):  # type: ignore[no-untyped-def]
        number = "singular" if attractor in singular else "plural"
        verb = number
        return verb

    return agreement, attractor_agreement


def _sampler(nouns: list[list[str]], attractors: list[list[str]]) -> Any:
    def draw(rng: np.random.Generator, n: int) -> dict[str, list[str]]:
        """A subject and an attractor, each singular or plural independently."""
        subject = rng.integers(0, len(nouns), n)
        attractor = rng.integers(0, len(attractors), n)
        s_number, a_number = rng.integers(0, 2, n), rng.integers(0, 2, n)
        return {
            "subject": [nouns[i][k] for i, k in zip(subject, s_number, strict=True)],
            "attractor": [attractors[i][k] for i, k in zip(attractor, a_number, strict=True)],
        }

    return draw


@register("agreement")
def agreement() -> StandardTask:
    """Subject-verb agreement (see the module docstring)."""
    model, rival = _models()
    words = vocabulary("agreement")
    return StandardTask(
        name="agreement",
        description="choose ' is' or ' are' by the subject's number, past an attractor noun",
        reference="Arora et al. 2024, CausalGym (agreement tasks)",
        model=model,
        variables=("number",),
        templates=TEMPLATES,
        sampler=_sampler(words["nouns"], words["attractors"]),
        positions=("last", "subject.last"),
        rivals=(rival,),
        answers=ANSWERS,
    )
