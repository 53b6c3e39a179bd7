"""A standard task: the causal model, prompts and positions the field studies, ready to run.

A :class:`StandardTask` holds what a researcher would otherwise write by hand for a
task the literature studies: the causal model (with its intermediate variables), the
prompt templates and their vocabulary (package data, no download), how inputs are
drawn, the answers read at the last token, the positions the literature intervenes on,
and its standard rivals. It is tokenizer-free until :meth:`StandardTask.prompt_task`
binds it to a tokenizer, so the same task runs on any causal language model; slot
values that a tokenizer splits into several tokens are multi-token slots (positions
``slot.first`` and ``slot.last``), never dropped.

The registry (:func:`register`, :func:`get`, :func:`names`) lists the shipped tasks;
``abstraction tasks list`` prints it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any

import numpy as np

from abstraction.alignment.das import TrainingConfig
from abstraction.causal_model import CausalModel
from abstraction.errors import DeclarationError, UnknownNameError, nearest
from abstraction.experiment import Experiment, Search, load_network
from abstraction.network import Network
from abstraction.prompts import PromptTask

__all__ = ["StandardTask", "distinct_pair", "get", "names", "register", "vocabulary"]

Sampler = Callable[[np.random.Generator, int], Mapping[str, Sequence[Any]]]
"""Draws ``n`` rows of a task's inputs: ``{input: column}``."""


def distinct_pair(rng: np.random.Generator, size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two columns of ``n`` indices into a vocabulary of ``size``, different in every
    row (two names of one prompt, two cities), each pair equally likely."""
    first = rng.integers(0, size, n)
    return first, (first + rng.integers(1, size, n)) % size


@cache
def vocabulary(name: str) -> dict[str, Any]:
    """The vocabulary file ``name`` shipped with the package (``tasks/vocabulary/``)."""
    path = resources.files("abstraction.tasks").joinpath("vocabulary", f"{name}.json")
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


@dataclass(frozen=True)
class StandardTask:
    """A task the field studies, as a causal model with its prompts.

    Attributes:
        name: the registry name (``abstraction tasks list``).
        description: one line on what the model must do.
        reference: where the task and its published layer profile come from.
        model: the causal model under test; template slots name its inputs.
        variables: the intermediate variables an experiment aligns.
        templates: prompt templates with ``{slot}`` fields.
        sampler: draws the inputs (``fn(rng, n) -> {input: column}``).
        positions: the positions the literature intervenes on (``"last"``, a slot's
            ``"slot.last"``...).
        rivals: standard competing causal models over the same inputs.
        candidates: slots whose values are each prompt's answer candidates, or
        answers: output value -> answer text (one candidate set for every prompt).
        padding: the prompts' padding side.
        template_input: the input whose value (an index) picks each prompt's template;
            without it, a hash of the inputs does.
        ranks: the subspace dimension aligned per variable (default 1): a variable with
            many values (an entity among sixteen) needs more than one direction.
        head_depths: where the literature names attention heads for this task, as
            fractions of the network's depth (IOI's name movers sit at layers 9-10 of
            GPT-2 small's 12: about 0.75-0.83); :meth:`experiment` with ``heads=True``
            tries every head at the last token of the layers these fall on.
    """

    name: str
    description: str
    reference: str
    model: CausalModel
    variables: tuple[str, ...]
    templates: tuple[str, ...]
    sampler: Sampler = field(repr=False)
    positions: tuple[str, ...] = ("last",)
    rivals: tuple[CausalModel, ...] = ()
    candidates: tuple[str, ...] | None = None
    answers: Mapping[Any, str] | None = None
    padding: str = "left"
    template_input: str | None = None
    ranks: Mapping[str, int] = field(default_factory=dict)
    head_depths: tuple[float, ...] = ()

    def head_layers(self, depth: int) -> list[int]:
        """The layers of a ``depth``-layer network where :attr:`head_depths` fall."""
        return sorted({min(depth - 1, round(f * depth)) for f in self.head_depths})

    def prompt_task(self, tokenizer: Any, model: CausalModel | None = None) -> PromptTask:
        """The task's prompts under ``tokenizer`` (and ``model``, default the task's)."""
        return PromptTask(
            self.name,
            model or self.model,
            tokenizer,
            self.templates,
            answers=self.answers,
            candidates=self.candidates,
            padding=self.padding,
            template_input=self.template_input,
        )

    def with_model(self, model: CausalModel, rivals: Sequence[CausalModel] = ()) -> StandardTask:
        """The same prompts, inputs and positions under another causal model: how a
        researcher tests a rival story on the standard prompt set."""
        return replace(self, model=model, rivals=tuple(rivals))

    def experiment(
        self,
        network: str | Network,
        *,
        layers: Sequence[int] | None = None,
        pairs: int = 1_000,
        training: TrainingConfig | None = None,
        heads: bool = False,
    ) -> Experiment:
        """The task's standard experiment on ``network`` (a zoo name, a checkpoint
        directory, a GGUF file or a :class:`~abstraction.network.Network`): a residual
        sweep over ``layers`` (default: about ten, evenly spaced) at :attr:`positions`
        for each of :attr:`variables` (one sweep per variable, each on the pairs that
        intervene on it alone, when there are several), with the rivals searched at the
        last token. ``heads=True`` also tries every attention head at the last token of
        the layers the literature names (:attr:`head_depths`)."""
        loaded = load_network(network)
        if loaded.tokenizer is None:
            raise DeclarationError(
                f"network {loaded.name!r} has no tokenizer, so task {self.name!r} cannot "
                "write its prompts",
                "load a causal language model with its tokenizer (a checkpoint directory, a "
                "GGUF file or a zoo language model)",
            )
        depth = loaded.n_layers or 1
        chosen = list(layers) if layers is not None else list(range(0, depth, max(1, depth // 10)))
        task = self.prompt_task(loaded.tokenizer)
        if heads and not self.head_depths:
            raise DeclarationError(
                f"task {self.name!r} names no attention heads (head_depths is empty)",
                "run it without heads=True, or give the task head_depths=(...)",
            )
        heads_at: dict[str, Any] = {}
        if heads:
            heads_at = {
                "components": ["residual", "head"],
                "head_positions": ["last"],
                "head_layers": self.head_layers(depth),
            }

        def searched(layers: list[int], positions: list[str], **extra: Any) -> Any:
            return _one_or_each(
                {
                    v: Search(layers, positions, ranks=[self.ranks.get(v, 1)], **extra)
                    for v in self.variables
                }
            )

        return Experiment(
            # a rival story told on the task's prompts gets its own report directory
            name=(
                f"{self.name}_{loaded.name}"
                if self.model.name == self.name
                else f"{self.name}-{self.model.name}_{loaded.name}"
            )
            .replace("/", "_")
            .replace(" ", "_"),
            description=f"{self.description} ({self.reference})",
            model=self.model,
            task=task,
            network=loaded,
            variables=list(self.variables),
            search=searched(chosen, list(self.positions), **heads_at),
            pairs=pairs,
            split=(0.5, 0.15, 0.35),
            sampler=self.sampler,
            source_sampler=self.sampler,
            rivals=list(self.rivals),
            rival_search=searched(chosen, ["last"]) if self.rivals else None,
            training=training or TrainingConfig(epochs=5, batch_size=32, lr=1e-2, patience=2),
            quick={
                "pairs": 400,
                "search": searched(chosen[len(chosen) // 2 :], ["last"]),
                "training": TrainingConfig(epochs=2, batch_size=32, lr=1e-2, patience=1),
                "rivals": [],
            },
        )


def _one_or_each(searches: dict[str, Search]) -> Search | dict[str, Search]:
    """One variable's search, or one search per variable (each on the pairs that
    intervene on it alone)."""
    return next(iter(searches.values())) if len(searches) == 1 else searches


_REGISTRY: dict[str, Callable[[], StandardTask]] = {}


def register(name: str) -> Callable[[Callable[[], StandardTask]], Callable[[], StandardTask]]:
    """Register a factory of :class:`StandardTask` under ``name`` (built on first use)."""

    def decorate(factory: Callable[[], StandardTask]) -> Callable[[], StandardTask]:
        _REGISTRY[name] = cache(factory)
        return factory

    return decorate


def names() -> list[str]:
    """The registered tasks' names."""
    return list(_REGISTRY)


def get(name: str) -> StandardTask:
    """The registered task ``name``."""
    if name not in _REGISTRY:
        raise UnknownNameError(
            f"no task named {name!r}; {nearest(name, list(_REGISTRY))} (`abstraction tasks "
            "list` prints the shipped tasks)"
        )
    return _REGISTRY[name]()
