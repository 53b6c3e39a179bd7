"""Behaviour first: does a network solve a task before anything is aligned to it?

:func:`behaviour` scores a network on a task's own prompts: the share of prompts whose
highest readout logit, among the task's candidate answers, is the causal model's
answer. A task a network does not solve (below :data:`SOLVED`) is reported and not
aligned by default: an interchange intervention cannot make a network do a task it
does not do.
"""

from __future__ import annotations

from dataclasses import dataclass

from abstraction.counterfactuals import factual_dataset
from abstraction.errors import AbstractionError
from abstraction.network import Network
from abstraction.statistics import Estimate, iia
from abstraction.tasks.library import StandardTask

__all__ = ["SOLVED", "Behaviour", "behaviour"]

SOLVED = 0.90
"""The accuracy over the candidates from which a network counts as solving a task."""


@dataclass(frozen=True)
class Behaviour:
    """A network's accuracy on a task's prompts.

    Attributes:
        task: the task's name.
        accuracy: accuracy over the candidates, with a 95% bootstrap interval (``None``
            where the task could not be built for the network's tokenizer).
        prompts: prompts scored.
        problem: why the task could not be scored on this network, or ``None``.
    """

    task: str
    accuracy: Estimate | None
    prompts: int
    problem: str | None = None

    @property
    def solved(self) -> bool:
        """Whether the accuracy reaches :data:`SOLVED`."""
        return self.accuracy is not None and self.accuracy.value >= SOLVED


def behaviour(network: Network, task: StandardTask, prompts: int = 200, seed: int = 0) -> Behaviour:
    """``network``'s accuracy on ``prompts`` of ``task``'s prompts (drawn with ``seed``).

    A task that cannot be written for the network's tokenizer (e.g. answers whose first
    tokens coincide) is returned with its ``problem``, not raised, so one check covers
    every task.
    """
    if prompts < 1:
        raise ValueError(f"prompts must be at least 1, got {prompts}")
    if network.tokenizer is None:
        return Behaviour(task.name, None, 0, "the network has no tokenizer")
    try:
        prompt_task = task.prompt_task(network.tokenizer)
    except AbstractionError as error:
        return Behaviour(task.name, None, 0, str(error).splitlines()[0])
    frame = factual_dataset(task.model, prompts, sampler=task.sampler, seed=seed)
    inputs = {v: frame[v].to_numpy() for v in task.model.inputs}
    labels = prompt_task.label_ids(frame[task.model.output].to_numpy(), inputs)
    predicted = network.predict(prompt_task.encode(inputs), batch_size=32)
    correct = (predicted == labels).numpy()
    return Behaviour(task.name, iia(correct, None), len(correct))
