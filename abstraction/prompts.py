"""Prompt tasks: a language model, a tokenizer and templates with named slots.

:class:`PromptTask` is how a causal model meets a Hugging Face language model (GPT-2,
Pythia, Llama, Qwen, Gemma, or the zoo's ``tiny_lm``)::

    task = PromptTask(
        "ioi",
        ioi_model,
        tokenizer,                      # AutoTokenizer.from_pretrained(directory)
        "When {a} and {b} went to the {place}, {s} gave a drink to",
        candidates=("a", "b"),          # the answer is one of the prompt's names
    )

* **Slots** name variables of the causal model (inputs or intermediate variables,
  computed from the inputs); a value is written as ``str(value)`` and may span several
  tokens. Tokens are assigned to slots from the fast tokenizer's character offsets, so
  a space before a slot is handled exactly as the tokenizer handles it in the prompt.
* **Templates**: several templates may be given; each prompt's template is chosen by
  the input named ``template_input`` (an index or the template's text) or, without
  one, by a hash of the prompt's inputs (the same inputs always give the same prompt).
  :meth:`PromptTask.prompts` records which template each example used, and
  :meth:`PromptTask.with_templates` builds the shifted task for a distribution shift.
* **Positions**, resolved per example after tokenization, with left or right
  padding: ``"last"``, ``"<slot>.first"``, ``"<slot>.last"``, each optionally with an
  offset (``"s.last+1"``, ``"last-2"``; see :mod:`abstraction.locations`).
* **Answers**: the readout compares the logits of the candidate answers' first tokens,
  never an argmax over the whole vocabulary. Either one candidate set for every
  prompt (``answers={value: text}``, default: every value of the output written with
  ``answer``, ``" {}"``) or, with ``candidates=(slot, ...)``, the values of those slots
  in each prompt (IOI's two names); the label is the index of the correct candidate.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from abstraction.causal_model import CausalModel
from abstraction.errors import DeclarationError, nearest
from abstraction.locations import split_position
from abstraction.network import Batch, Network
from abstraction.task import Task, TaskError

__all__ = ["PromptTask"]


@dataclass(frozen=True)
class _Template:
    """A parsed template: literal text and slot names, alternating."""

    text: str
    parts: tuple[tuple[str, str | None], ...]  # (literal before, slot or None at the end)

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(slot for _, slot in self.parts if slot is not None)

    @property
    def tail(self) -> str:
        """The literal text after the last slot (the answer's context)."""
        return self.parts[-1][0] if self.parts[-1][1] is None else ""

    def fill(self, values: Mapping[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
        """The prompt text and each slot's character span in it."""
        pieces: list[str] = []
        spans: dict[str, tuple[int, int]] = {}
        at = 0
        for literal, slot in self.parts:
            pieces.append(literal)
            at += len(literal)
            if slot is not None:
                value = values[slot]
                # a slot that occurs twice keeps its first span: positions name the first
                spans.setdefault(slot, (at, at + len(value)))
                pieces.append(value)
                at += len(value)
        return "".join(pieces), spans


def _parse(template: str, variables: Sequence[str]) -> _Template:
    parts: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise DeclarationError(
            f"template {template!r} is not a valid format string: {exc}",
            "write slots as {name}; double a literal brace ({{ or }})",
        ) from None
    for literal, slot, spec, conversion in parsed:
        if slot is None:
            parts.append((literal, None))
            continue
        if slot == "" or slot.isdigit():
            raise DeclarationError(
                f"template {template!r} has a positional slot {{{slot}}}",
                "name every slot after a variable of the causal model, e.g. {name}",
            )
        if spec or conversion:
            raise DeclarationError(
                f"slot {{{slot}}} in template {template!r} has a format spec or conversion",
                "write the slot as {" + slot + "}; values are written with str(value)",
            )
        if slot not in variables:
            raise DeclarationError(
                f"template {template!r} has slot {{{slot}}}, which is not a variable of the "
                f"causal model; {nearest(slot, variables)}",
                "name slots after the model's inputs or intermediate variables",
            )
        parts.append((literal, slot))
    if not parts or parts[-1][1] is not None:
        parts.append(("", None))
    return _Template(template, tuple(parts))


@dataclass
class PromptTask(Task):
    """A language-model task: prompts from templates, answers read over candidates.

    Args:
        name: the task's name.
        model: the causal model; template slots name its variables.
        tokenizer: a fast Hugging Face tokenizer (``AutoTokenizer.from_pretrained``)
            with a pad token.
        templates: one template or several, with ``{slot}`` fields.
        answer: how an output value is written as an answer (``" {}"``: a space, then
            ``str(value)``).
        answers: output value -> answer text, one candidate set for every prompt
            (default: every value of the output, written with ``answer``).
        candidates: slots whose values in each prompt are that prompt's candidates
            (written with ``answer``); the output must equal one of them.
        padding: ``"left"`` or ``"right"`` (default: the tokenizer's padding side).
        readout: the position whose logits give the answer.
        template_input: the input that chooses each prompt's template (an index into
            ``templates`` or a template's text); without it, a hash of the inputs does.
        add_special_tokens: add the tokenizer's special tokens (BOS) as the model saw
            them in training.
    """

    name: str
    model: CausalModel
    tokenizer: Any = field(repr=False)
    templates: str | Sequence[str]
    answer: str = " {}"
    answers: Mapping[Any, str] | None = None
    candidates: Sequence[str] | None = None
    padding: str | None = None
    readout: str = "last"
    template_input: str | None = None
    add_special_tokens: bool = True

    def __post_init__(self) -> None:
        tok = self.tokenizer
        if not callable(tok) or not getattr(tok, "is_fast", False):
            raise DeclarationError(
                f"task {self.name!r} needs a fast Hugging Face tokenizer (got "
                f"{type(tok).__name__}); token positions come from its character offsets",
                "load it with AutoTokenizer.from_pretrained(directory) (fast by default)",
            )
        if tok.pad_token_id is None:
            raise DeclarationError(
                f"the tokenizer of task {self.name!r} has no pad token, so prompts of "
                "different lengths cannot share a batch",
                "set one before building the task: tokenizer.pad_token = tokenizer.eos_token",
            )
        self.padding = self.padding or getattr(tok, "padding_side", "right")
        if self.padding not in ("left", "right"):
            raise DeclarationError(
                f"padding must be 'left' or 'right', not {self.padding!r}", "use 'left' or 'right'"
            )
        texts = (self.templates,) if isinstance(self.templates, str) else tuple(self.templates)
        if not texts:
            raise DeclarationError(f"task {self.name!r} has no template", "give one or more")
        variables = self.model.variables
        self._templates = tuple(_parse(t, variables) for t in texts)
        if self.template_input is not None and self.template_input not in self.model.inputs:
            raise DeclarationError(
                f"template_input {self.template_input!r} is not an input of "
                f"{self.model.name!r}; {nearest(self.template_input, self.model.inputs)}",
                "name the input whose value picks the template",
            )
        self._slots = tuple(dict.fromkeys(s for t in self._templates for s in t.slots))
        common = set.intersection(*(set(t.slots) for t in self._templates))
        self._positioned = tuple(s for s in self._slots if s in common)
        if split_position(self.readout)[0] not in self.positions:
            raise DeclarationError(
                f"readout position {self.readout!r} is not a position of task {self.name!r}; "
                + nearest(self.readout, self.positions),
                "read out at 'last' or at a slot's position present in every template",
            )
        self._first_tokens: dict[tuple[str, str], int] = {}
        if self.candidates is not None:
            if self.answers is not None:
                raise DeclarationError(
                    "give answers= (one candidate set) or candidates= (slots), not both",
                    "keep the one that matches how the answer is chosen",
                )
            missing = [s for s in self.candidates if s not in common]
            if missing:
                raise DeclarationError(
                    f"candidate slot(s) {missing} are not in every template of {self.name!r}",
                    "name slots that every template fills",
                )
            self._answers: dict[Any, str] = {}
            self._classes = len(self.candidates)
            if self._classes < 2:
                raise DeclarationError("give at least two candidate slots", "e.g. ('a', 'b')")
        else:
            values = self.model.values(self.model.output)
            self._answers = (
                dict(self.answers)
                if self.answers is not None
                else {v: self.answer.format(v) for v in values}
            )
            ids = {v: self._first_token(text) for v, text in self._answers.items()}
            clashes = _shared_first_tokens(ids, self._answers)
            if clashes:
                raise DeclarationError(
                    f"answers {clashes[0]} of task {self.name!r} start with the same token, so "
                    "the readout cannot tell them apart",
                    "write answers whose first tokens differ (e.g. with a leading space), or "
                    "use candidates=(slot, ...) so each prompt compares only its own answers",
                )
            self._label_of = {v: i for i, v in enumerate(self._answers)}
            self._answer_ids = torch.tensor(list(ids.values()), dtype=torch.long)
            self._classes = len(self._answers)

    # -- declared shape ------------------------------------------------------------------

    @property
    def n_classes(self) -> int:
        return self._classes

    @property
    def positions(self) -> tuple[str, ...]:
        return ("last", *(f"{s}.{end}" for s in self._positioned for end in ("first", "last")))

    @property
    def answer_texts(self) -> dict[Any, str]:
        """Output value -> answer text, in class order (empty with ``candidates=``)."""
        return dict(self._answers)

    @property
    def slots(self) -> tuple[str, ...]:
        """Every slot of every template, in order of appearance."""
        return self._slots

    def with_model(self, model: CausalModel) -> Task:
        clone = super().with_model(model)
        assert isinstance(clone, PromptTask)
        clone.__post_init__()  # slots and answers are checked against the new model
        return clone

    def with_templates(self, templates: str | Sequence[str], name: str | None = None) -> PromptTask:
        """The same task on other templates (e.g. unseen ones, as a distribution shift)."""
        clone = copy.copy(self)
        clone.templates = templates
        clone.name = name or self.name
        clone.__post_init__()
        return clone

    def check_network(self, network: Network) -> None:
        """Fail now if the tokenizer's ids do not fit the network's vocabulary.

        A prompt task's readout is over token ids, so the model's output must have a
        logit for every id the tokenizer produces (it may have more: padded vocabularies).
        """
        module = network.module
        embeddings = getattr(module, "get_output_embeddings", lambda: None)()
        weight = getattr(embeddings, "weight", None)
        config = getattr(module, "config", None)
        vocab = (
            int(weight.shape[0])
            if isinstance(weight, torch.Tensor)
            else getattr(config, "vocab_size", None)
        )
        if vocab is None:
            return
        if len(self.tokenizer) > vocab:
            raise TaskError(
                f"task {self.name!r}'s tokenizer has {len(self.tokenizer)} tokens but "
                f"{network.name} has {vocab} output logits, so some tokens have no logit; use "
                "the tokenizer saved with this model (AutoTokenizer.from_pretrained(its "
                "directory))"
            )

    # -- tokenization --------------------------------------------------------------------

    def _first_token(self, text: str, context: str | None = None) -> int:
        """The id of the first token ``text`` adds after ``context`` (the prompt's end)."""
        if not text:
            raise DeclarationError(
                f"an answer of task {self.name!r} is empty", "give every answer some text"
            )
        context = self._templates[0].tail if context is None else context
        if (context, text) in self._first_tokens:
            return self._first_tokens[(context, text)]
        tok = self.tokenizer
        before = tok(context, add_special_tokens=False)["input_ids"]
        after = tok(context + text, add_special_tokens=False)["input_ids"]
        if after[: len(before)] == before and len(after) > len(before):
            token = int(after[len(before)])
        else:  # the tokenizer merged across the boundary: read the answer on its own
            alone = tok(text, add_special_tokens=False)["input_ids"]
            if not alone:
                raise DeclarationError(
                    f"answer {text!r} of task {self.name!r} tokenizes to nothing",
                    "give answers with at least one visible character",
                )
            token = int(alone[0])
        self._first_tokens[(context, text)] = token
        return token

    def _variables(
        self, columns: Mapping[str, np.ndarray], needed: Sequence[str]
    ) -> dict[str, Any]:
        values: dict[str, Any] = {v: columns[v] for v in needed if v in columns}
        derived = [v for v in needed if v not in values]
        if derived:
            inputs = {v: columns[v] for v in self.model.inputs}
            computed = self.model.run_batch(inputs, validate=False)
            values.update({v: computed[v] for v in derived})
        return values

    def _template_ids(self, columns: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        if len(self._templates) == 1:
            return np.zeros(n, dtype=np.int64)
        if self.template_input is not None:
            chosen = columns[self.template_input]
            texts = {t.text: i for i, t in enumerate(self._templates)}
            out = np.empty(n, dtype=np.int64)
            for i, value in enumerate(np.asarray(chosen).tolist()):
                if isinstance(value, str) and value in texts:
                    out[i] = texts[value]
                elif isinstance(value, (int, np.integer)) and 0 <= value < len(self._templates):
                    out[i] = int(value)
                else:
                    raise TaskError(
                        f"input {self.template_input!r} = {value!r} picks no template of "
                        f"{self.name!r}; use an index below {len(self._templates)} or a "
                        "template's text"
                    )
            return out
        frame = pd.DataFrame({v: np.asarray(columns[v]) for v in self.model.inputs})
        hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        return (hashes % np.uint64(len(self._templates))).astype(np.int64)

    def _prompt_table(
        self, columns: Mapping[str, np.ndarray]
    ) -> tuple[pd.DataFrame, np.ndarray, list[str], list[dict[str, tuple[int, int]]]]:
        """Distinct prompts (slot texts + template), each row's code, texts and spans."""
        n = len(np.asarray(columns[self.model.inputs[0]]))
        needed = list(dict.fromkeys([*self._slots, *(self.candidates or ())]))
        values = self._variables(columns, needed)
        table = pd.DataFrame(
            {
                **{f"slot.{s}": pd.Series(np.asarray(values[s])).astype(str) for s in self._slots},
                "template": self._template_ids(columns, n),
            }
        )
        codes = table.groupby(list(table.columns), sort=False).ngroup().to_numpy()
        unique = table.drop_duplicates(ignore_index=True)
        texts: list[str] = []
        spans: list[dict[str, tuple[int, int]]] = []
        for row in unique.itertuples(index=False):
            record = dict(zip(unique.columns, row, strict=True))
            template = self._templates[int(record["template"])]
            text, where = template.fill({s: str(record[f"slot.{s}"]) for s in template.slots})
            texts.append(text)
            spans.append(where)
        return unique, codes, texts, spans

    def prompts(self, frame: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
        """The prompt text and template index of every example stored under ``prefix``."""
        columns = {v: frame[f"{prefix}{v}"].to_numpy() for v in self.model.inputs}
        unique, codes, texts, _ = self._prompt_table(columns)
        return pd.DataFrame(
            {
                "prompt": np.asarray(texts, dtype=object)[codes],
                "template": unique["template"].to_numpy()[codes],
            },
            index=frame.index,
        )

    def encode(self, columns: Mapping[str, np.ndarray]) -> Batch:
        unique, codes, texts, spans = self._prompt_table(columns)
        encoded = self.tokenizer(
            texts,
            add_special_tokens=self.add_special_tokens,
            return_offsets_mapping=True,
            padding=True,
            padding_side=self.padding,
            return_tensors="np",
        )
        ids = np.asarray(encoded["input_ids"], dtype=np.int64)
        mask = np.asarray(encoded["attention_mask"], dtype=np.int64)
        offsets = np.asarray(encoded["offset_mapping"], dtype=np.int64)  # (u, L, 2)
        column = np.arange(ids.shape[1])
        named = {"last": np.where(mask.astype(bool), column, -1).max(axis=1)}
        # special and padding tokens have empty offsets and belong to no slot
        real = (offsets[..., 1] > offsets[..., 0]) & mask.astype(bool)
        for slot in self._positioned:
            lo = np.array([where[slot][0] for where in spans])[:, None]
            hi = np.array([where[slot][1] for where in spans])[:, None]
            hit = real & (offsets[..., 0] < hi) & (offsets[..., 1] > lo)
            empty = ~hit.any(axis=1)
            if empty.any():
                i = int(empty.nonzero()[0][0])
                raise TaskError(
                    f"slot {{{slot}}} of prompt {texts[i]!r} covers no token (its value is "
                    f"{texts[i][int(lo[i, 0]) : int(hi[i, 0])]!r}); give the slot a value with "
                    "visible characters"
                )
            named[f"{slot}.first"] = hit.argmax(axis=1)
            named[f"{slot}.last"] = hit.shape[1] - 1 - hit[:, ::-1].argmax(axis=1)
        index = torch.from_numpy(np.array(codes, dtype=np.int64))
        positions = {p: torch.from_numpy(v.astype(np.int64))[index] for p, v in named.items()}
        readout_name, offset = split_position(self.readout)
        if self.candidates is not None:
            candidates = torch.from_numpy(self._candidate_ids(unique))[index]
        else:
            candidates = self._answer_ids
        return Batch(
            {
                "input_ids": torch.from_numpy(ids)[index],
                "attention_mask": torch.from_numpy(mask)[index],
            },
            positions,
            readout=positions[readout_name] + offset,
            candidates=candidates,
        )

    def _candidate_ids(self, unique: pd.DataFrame) -> np.ndarray:
        assert self.candidates is not None
        out = np.empty((len(unique), len(self.candidates)), dtype=np.int64)
        tails = [self._templates[t].tail for t in unique["template"].tolist()]
        for k, slot in enumerate(self.candidates):
            for i, value in enumerate(unique[f"slot.{slot}"].tolist()):
                out[i, k] = self._first_token(self.answer.format(value), tails[i])
        clash = [i for i in range(len(out)) if len(set(out[i].tolist())) < out.shape[1]]
        if clash:
            row = unique.iloc[clash[0]]
            shown = {s: row[f"slot.{s}"] for s in self.candidates}
            raise TaskError(
                f"the candidates {shown} of a prompt of task {self.name!r} start with the same "
                "token, so the readout cannot tell them apart; sample slot values whose first "
                "tokens differ (e.g. distinct names)"
            )
        return out

    # -- labels --------------------------------------------------------------------------

    def label_ids(
        self, values: np.ndarray, inputs: Mapping[str, np.ndarray] | None = None
    ) -> torch.Tensor:
        if self.candidates is None:
            try:
                return torch.tensor([self._label_of[v] for v in values.tolist()], dtype=torch.long)
            except KeyError as exc:
                raise TaskError(
                    f"output value {exc.args[0]!r} has no answer in task {self.name!r}; add it "
                    "to answers="
                ) from None
        if inputs is None or any(v not in inputs for v in self.model.inputs):
            raise TaskError(
                f"task {self.name!r} reads its candidates from each prompt, so its labels need "
                "the prompts' inputs; call task.labels(frame) on a frame that holds them"
            )
        slots = self._variables(inputs, list(self.candidates))
        table = np.stack([np.asarray(slots[s], dtype=object) for s in self.candidates], axis=1)
        hits = table == np.asarray(values, dtype=object)[:, None]
        missing = ~hits.any(axis=1)
        if missing.any():
            row = int(missing.nonzero()[0][0])
            raise TaskError(
                f"output value {values[row]!r} is none of the prompt's candidates "
                f"{dict(zip(self.candidates, table[row].tolist(), strict=True))} in task "
                f"{self.name!r}; with candidates= the answer must be one of those slots' values "
                "(use answers= for a fixed candidate set)"
            )
        return torch.from_numpy(hits.argmax(axis=1).astype(np.int64))

    def logit_difference(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per example: the correct candidate's logit minus the best other candidate's."""
        correct = logits.gather(1, labels[:, None])[:, 0]
        others = logits.scatter(1, labels[:, None], float("-inf"))
        return correct - others.max(dim=1).values


def _shared_first_tokens(ids: Mapping[Any, int], texts: Mapping[Any, str]) -> list[str]:
    seen: dict[int, Any] = {}
    for value, token in ids.items():
        if token in seen:
            return [f"{texts[seen[token]]!r} and {texts[value]!r}"]
        seen[token] = value
    return []
