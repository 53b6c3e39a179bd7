"""Tasks: how a causal model's inputs become network inputs, and its output a label.

A :class:`Task` pairs a causal model with an encoder (input columns -> a
:class:`~abstraction.network.Batch`) and a label map (output values -> class ids of
the network's readout). Two ready-made kinds:

* :class:`EntityVectorTask`: each input is an entity id mapped to a fixed random
  vector; the vectors are concatenated (pyvene's hierarchical-equality MLP setup).
* :class:`TokenTask`: a template of tokens, some of which are the inputs' values;
  named positions (one per input, plus ``"last"``) are resolved per example, with
  left or right padding when templates differ in length.
"""

from __future__ import annotations

import copy
import inspect
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from abstraction.causal_model import CausalModel
from abstraction.errors import AbstractionError, DeclarationError, nearest
from abstraction.network import Batch, Network

__all__ = ["EntityVectorTask", "Task", "TaskError", "TokenTask"]


class TaskError(AbstractionError, ValueError):
    """A task cannot encode these inputs or labels."""


class Task:
    """Base class: encode causal inputs as a network batch and outputs as class ids."""

    name: str
    model: CausalModel

    @property
    def n_classes(self) -> int:
        """The number of readout classes."""
        raise NotImplementedError

    def encode(self, columns: Mapping[str, np.ndarray]) -> Batch:
        """A batch from one column per causal-model input."""
        raise NotImplementedError

    def label_ids(
        self, values: np.ndarray, inputs: Mapping[str, np.ndarray] | None = None
    ) -> torch.Tensor:
        """Class ids ``(n,)`` for output values of the causal model.

        ``inputs`` (one column per causal-model input) are the prompts the values are
        answers to; only tasks whose candidate answers differ per example read them.
        """
        raise NotImplementedError

    @property
    def positions(self) -> tuple[str, ...]:
        """Named positions the task defines (empty for non-sequence tasks)."""
        return ()

    def with_model(self, model: CausalModel) -> Task:
        """The same encoding for another causal model with the same inputs (a rival, a control)."""
        if model.inputs != self.model.inputs:
            raise TaskError(
                f"task {self.name!r} encodes inputs {self.model.inputs}, but {model.name!r} has "
                f"{model.inputs}; build a task for that model's inputs"
            )
        clone = copy.copy(self)
        clone.model = model
        return clone

    def batch(self, frame: pd.DataFrame, prefix: str = "") -> Batch:
        """Encode the inputs stored in ``frame`` under ``prefix`` (``"base."``, ``"source.v."``)."""
        missing = [f"{prefix}{v}" for v in self.model.inputs if f"{prefix}{v}" not in frame]
        if missing:
            raise TaskError(
                f"the dataset has no column(s) {missing}; columns with prefix {prefix!r} "
                f"must hold the inputs {list(self.model.inputs)}"
            )
        return self.encode({v: frame[f"{prefix}{v}"].to_numpy() for v in self.model.inputs})

    def labels(
        self, frame: pd.DataFrame, column: str = "label", prefix: str | None = None
    ) -> torch.Tensor:
        """Class ids of an output column of ``frame``.

        The inputs the labels answer are read under ``prefix`` (default ``"base."``
        when ``frame`` is a counterfactual dataset, else no prefix).
        """
        if prefix is None:
            first = self.model.inputs[0]
            prefix = "base." if f"base.{first}" in frame and first not in frame else ""
        inputs = {
            v: frame[f"{prefix}{v}"].to_numpy()
            for v in self.model.inputs
            if f"{prefix}{v}" in frame
        }
        return self.label_ids(frame[column].to_numpy(), inputs)

    def check_network(self, network: Network) -> None:
        """Fail now, with the fix, if ``network`` cannot serve this task.

        Checks, on two examples encoded by the task, that the module's ``forward``
        accepts every input the task feeds it (``inputs_embeds`` for entity vectors,
        ``input_ids`` for tokens), that it runs on them, and that its readout has one
        logit per class of the task. Called before any data is generated or trained.
        """
        inputs = list(self.model.inputs)
        domains = [self.model.domain(v) for v in inputs]
        if any(d is None or len(d) == 0 for d in domains):
            return  # unbounded inputs (whole prompts): nothing to encode without data
        columns = {v: np.array([next(iter(d))] * 2) for v, d in zip(inputs, domains, strict=True)}  # type: ignore[arg-type]
        batch = self.encode(columns)
        module = network.module
        try:
            parameters = inspect.signature(module.forward).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            parameters = None
        if parameters is not None and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
        ):
            missing = [k for k in batch.inputs if k not in parameters]
            if missing:
                raise TaskError(
                    f"task {self.name!r} ({type(self).__name__}) feeds the network "
                    f"{', '.join(f'`{k}`' for k in batch.inputs)}, but "
                    f"{type(module).__name__}.forward({', '.join(parameters)}) takes no "
                    f"{', '.join(f'`{k}`' for k in missing)}. Wrap the module so that its "
                    f"forward accepts {', '.join(f'{k}=...' for k in missing)}, or use a task "
                    "that encodes inputs the way this network reads them"
                )
        try:
            with torch.no_grad():
                logits = network.logits(batch)
        except AbstractionError:
            raise
        except Exception as exc:  # the user's module failed on the task's inputs
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.inputs.items())
            raise TaskError(
                f"the network fails on task {self.name!r}'s inputs ({shapes}): "
                f"{type(exc).__name__}: {exc}. Check that the task encodes inputs of the size "
                "and kind the network was built for"
            ) from None
        width = int(logits.shape[-1])
        if width != self.n_classes:
            raise TaskError(
                f"the network outputs {width} logit(s) per example, but task {self.name!r} "
                f"has {self.n_classes} classes: "
                + (
                    "labels would index past its outputs"
                    if width < self.n_classes
                    else "it could predict classes no label stands for"
                )
                + f". Give the network's readout {self.n_classes} outputs (e.g. num_classes="
                f"{self.n_classes}), or a task whose labels match its outputs"
            )


def _label_table(values: Sequence[Any], labels: Mapping[Any, int] | None) -> dict[Any, int]:
    if labels is not None:
        return dict(labels)
    return {v: i for i, v in enumerate(values)}


def _map_labels(table: Mapping[Any, int], values: np.ndarray, task: str) -> torch.Tensor:
    if values.dtype != object and all(
        isinstance(k, (bool, int, np.integer, np.bool_)) for k in table
    ):
        keys = np.array(list(table.keys()), dtype=np.int64)
        ids = np.array(list(table.values()), dtype=np.int64)
        order = np.argsort(keys)
        pos = np.searchsorted(keys[order], values.astype(np.int64))
        pos = np.clip(pos, 0, len(keys) - 1)
        ok = keys[order][pos] == values.astype(np.int64)
        if not ok.all():
            bad = values[~ok][0]
            raise TaskError(f"task {task!r} has no label for output value {bad!r}")
        return torch.from_numpy(ids[order][pos])  # fancy indexing: a new, writable array
    try:
        return torch.tensor([table[v] for v in values.tolist()], dtype=torch.long)
    except KeyError as exc:
        raise TaskError(f"task {task!r} has no label for output value {exc.args[0]!r}") from None


@dataclass
class EntityVectorTask(Task):
    """Inputs are entity ids, each mapped to a fixed random vector; vectors are concatenated.

    Args:
        name: the task's name.
        model: the causal model (its inputs share one entity domain).
        dim: the dimension of each entity vector.
        seed: seed of the random vectors (uniform in [-1, 1], rounded to 2 decimals as in
            pyvene's tutorial).
        labels_map: output value -> class id (default: the output's values in order).
        sequence_dim: add a length-1 position dimension (pyvene's MLP expects
            ``inputs_embeds`` of shape ``(batch, 1, width)``).
    """

    name: str
    model: CausalModel
    dim: int = 4
    seed: int = 0
    labels_map: Mapping[Any, int] | None = None
    sequence_dim: bool = True
    vectors: dict[Any, torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        entities: list[Any] = []
        for v in self.model.inputs:
            domain = self.model.domain(v)
            if domain is None:
                raise DeclarationError(
                    f"input {v!r} has no finite domain of entities",
                    "give every input a finite domain of entity ids",
                )
            entities.extend(e for e in domain if e not in entities)
        rng = np.random.default_rng(self.seed)
        table = np.round(rng.uniform(-1, 1, (len(entities), self.dim)), 2)
        self._ids = {e: i for i, e in enumerate(entities)}
        self._table = torch.tensor(table, dtype=torch.float32)
        self.vectors = {e: self._table[i] for e, i in self._ids.items()}
        self._labels = _label_table(self.model.values(self.model.output), self.labels_map)

    @property
    def n_classes(self) -> int:
        return max(self._labels.values()) + 1

    @property
    def width(self) -> int:
        """The network's input width: inputs x entity dimension."""
        return len(self.model.inputs) * self.dim

    def encode(self, columns: Mapping[str, np.ndarray]) -> Batch:
        # np.stack builds a new, writable array: columns read from a DataFrame are
        # read-only views (pandas copy-on-write), which torch.from_numpy warns about.
        ids = np.stack([self._entity_ids(columns[v]) for v in self.model.inputs], axis=1)
        x = self._table[torch.from_numpy(ids)].reshape(len(ids), self.width)
        return Batch({"inputs_embeds": x.unsqueeze(1) if self.sequence_dim else x})

    def _entity_ids(self, column: np.ndarray) -> np.ndarray:
        if column.dtype.kind in "iu" and all(isinstance(e, int) for e in self._ids):
            keys = np.fromiter(self._ids.keys(), np.int64)
            if np.array_equal(keys, np.arange(len(keys))):
                return np.array(column, dtype=np.int64, copy=True)
        try:
            return np.fromiter((self._ids[v] for v in column.tolist()), np.int64, len(column))
        except KeyError as exc:
            raise TaskError(f"entity {exc.args[0]!r} has no vector in task {self.name!r}") from None

    def label_ids(
        self, values: np.ndarray, inputs: Mapping[str, np.ndarray] | None = None
    ) -> torch.Tensor:
        return _map_labels(self._labels, values, self.name)


@dataclass
class TokenTask(Task):
    """Inputs written into a template of tokens; the output is read at a position.

    Args:
        name: the task's name.
        model: the causal model.
        template: tokens; an item equal to an input's name is replaced by that input's
            value (as ``str(value)``), other items are literal tokens.
        vocab: all tokens, in id order (the first is the padding token).
        readout: the position whose logits give the answer (``"last"`` by default).
        padding: ``"left"`` or ``"right"``, when ``pad_to`` is longer than the template.
        pad_to: pad every sequence to this length (default: the template's length).
        labels_map: output value -> token (default ``str(value)``).
        named: extra named positions: name -> index in the template.

    The prediction is read over the output values' tokens only (class ``k`` is the
    ``k``-th output value), never over the whole vocabulary: a network that puts its
    mass elsewhere (an untrained null) is still scored on which answer it prefers.
    """

    name: str
    model: CausalModel
    template: Sequence[str]
    vocab: Sequence[str]
    readout: str = "last"
    padding: str = "left"
    pad_to: int | None = None
    labels_map: Mapping[Any, str] | None = None
    named: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._token_id = {t: i for i, t in enumerate(self.vocab)}
        if len(self._token_id) != len(self.vocab):
            raise DeclarationError("vocab lists a token twice", "list each token once")
        for item in self.template:
            if item not in self.model.inputs and item not in self._token_id:
                raise DeclarationError(
                    f"template token {item!r} is neither an input of {self.model.name!r} nor in "
                    f"the vocabulary; {nearest(item, [*self.model.inputs, *self.vocab])}",
                    "add it to vocab or fix the template",
                )
        if self.padding not in ("left", "right"):
            raise DeclarationError(
                f"padding must be 'left' or 'right', not {self.padding!r}", "use 'left' or 'right'"
            )
        self.length = self.pad_to or len(self.template)
        if self.length < len(self.template):
            raise DeclarationError(
                f"pad_to={self.pad_to} is shorter than the template ({len(self.template)} tokens)",
                "raise pad_to or shorten the template",
            )
        self._offset = self.length - len(self.template) if self.padding == "left" else 0
        output_values = self.model.values(self.model.output)
        table = self.labels_map or {v: str(v) for v in output_values}
        for value, token in table.items():
            if token not in self._token_id:
                raise DeclarationError(
                    f"output value {value!r} maps to token {token!r}, which is not in the vocab",
                    "add the token to vocab or pass labels_map",
                )
        tokens = {value: self._token_id[token] for value, token in table.items()}
        shared = sorted(t for t, n in Counter(table.values()).items() if n > 1)
        if shared:
            raise DeclarationError(
                f"several output values map to token(s) {shared}, so the readout cannot tell "
                "them apart",
                "give each output value its own token in labels_map",
            )
        self._labels = {value: k for k, value in enumerate(tokens)}
        self._answer_ids = torch.tensor(list(tokens.values()), dtype=torch.long)
        self._value_tokens: dict[str, dict[Any, int]] = {}
        for v in self.model.inputs:
            domain = self.model.domain(v) or ()
            missing = [x for x in domain if str(x) not in self._token_id]
            if missing:
                raise DeclarationError(
                    f"value(s) {missing[:3]} of input {v!r} have no token in the vocab",
                    "add str(value) of every input value to vocab",
                )
            self._value_tokens[v] = {x: self._token_id[str(x)] for x in domain}

    @property
    def n_classes(self) -> int:
        return len(self._labels)

    @property
    def answer_ids(self) -> torch.Tensor:
        """The token id of each class (each output value), in class order."""
        return self._answer_ids

    @property
    def positions(self) -> tuple[str, ...]:
        names = [item for item in self.template if item in self.model.inputs]
        return ("last", *names, *self.named)

    def _position_index(self) -> dict[str, int]:
        index = {
            item: i + self._offset
            for i, item in enumerate(self.template)
            if item in self.model.inputs
        }
        index.update({k: v + self._offset for k, v in self.named.items()})
        index["last"] = self._offset + len(self.template) - 1
        return index

    def encode(self, columns: Mapping[str, np.ndarray]) -> Batch:
        n = len(next(iter(columns.values())))
        ids = torch.zeros((n, self.length), dtype=torch.long)
        mask = torch.zeros((n, self.length), dtype=torch.long)
        mask[:, self._offset : self._offset + len(self.template)] = 1
        for i, item in enumerate(self.template):
            col = self._offset + i
            if item in self.model.inputs:
                table = self._value_tokens[item]
                values = columns[item].tolist()
                try:
                    ids[:, col] = torch.tensor([table[x] for x in values], dtype=torch.long)
                except KeyError as exc:
                    raise TaskError(
                        f"value {exc.args[0]!r} of input {item!r} has no token"
                    ) from None
            else:
                ids[:, col] = self._token_id[item]
        positions = {
            name: torch.full((n,), index, dtype=torch.long)
            for name, index in self._position_index().items()
        }
        if self.readout not in positions:
            raise TaskError(f"readout position {self.readout!r} is not a named position")
        return Batch(
            {"input_ids": ids, "attention_mask": mask},
            positions,
            readout=positions[self.readout].clone(),
            candidates=self._answer_ids,
        )

    def label_ids(
        self, values: np.ndarray, inputs: Mapping[str, np.ndarray] | None = None
    ) -> torch.Tensor:
        return _map_labels(self._labels, values, self.name)
