"""The corpus of the zoo language model: templated natural-language tasks over invented words.

Two tasks the interpretability literature studies on real language models, written as
prompt templates with named slots and as causal models whose inputs fill the slots:

* **indirect-object identification** (:data:`ioi`, :data:`IOI_TEMPLATES`):
  ``"When Kiran and Mutol went to the park, Kiran gave a drink to"`` -> ``" Mutol"``;
  the intermediate variables are the subject's position among the two names
  (``s_position``, 1 or 2) and the indirect object's identity (``io``);
* **binding lookup** (:data:`binding`, :data:`BINDING_TEMPLATES`):
  ``"budax sipim kubet tifen kubet"`` -> ``" tifen"`` (two container-object pairs, then
  a query container); the intermediate variable is which of the two pairs the query
  names (``index``). Sentences such as ``"The budax contains the sipim. ..."`` were
  tried first: a 3-layer model trained for minutes stays at chance on them (the object
  sits several tokens after its container and the prompt ends on a filler word, which
  plain induction does not resolve), while it learns this pair-list form.

Names and entities are invented from syllables (:data:`NAME_ONSETS` and
:data:`NAME_CODAS` make ``"Kiran"``; containers and objects are lower case, and their
first syllables differ in the vowel: ``"budax"``, ``"sipim"``), so a byte-level BPE
tokenizer splits them into several tokens (the zoo's splits them into their two
syllables), and every list is split into a ``"train"``
part and a ``"heldout"`` part: held-out words are unseen combinations of seen syllables,
and never appear in the text a tokenizer or a model is trained on
(:func:`training_text`). Two words of the same role in one prompt never share their
first syllable (each syllable has its own first letter), so the candidate answers'
first tokens differ.

Everything here is deterministic: the splits are fixed, and the generators take a seed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from abstraction.causal_model import CausalModel, causal_model

__all__ = [
    "BINDING_FOLLOW",
    "BINDING_TEMPLATES",
    "CONTAINERS",
    "HELDOUT_CONTAINERS",
    "HELDOUT_NAMES",
    "HELDOUT_OBJECTS",
    "IOI_TEMPLATES",
    "NAMES",
    "OBJECTS",
    "PLACES",
    "TRAIN_CONTAINERS",
    "TRAIN_NAMES",
    "TRAIN_OBJECTS",
    "Example",
    "Split",
    "binding",
    "binding_inputs",
    "examples",
    "fingerprint",
    "ioi",
    "ioi_inputs",
    "training_examples",
    "training_text",
]

Split = Literal["train", "heldout"]
"""Which part of the word lists to draw from: seen in training, or never seen."""

# -- words ------------------------------------------------------------------------------

NAME_ONSETS = (
    *("Ba", "Ce", "Di", "Fo", "Gu", "Ha", "Je", "Ki", "Lo", "Mu", "Na"),
    *("Pe", "Qua", "Ro", "Su", "Ta", "Ve", "Wi", "Xo", "Yu", "Za"),
)
"""First syllables of names (21), each with its own first letter."""

NAME_CODAS = (
    *("ran", "bel", "dor", "mek", "sel", "vin", "tas", "pel"),
    *("rik", "bon", "gar", "mus", "tol", "zen", "dal", "fir"),
)
"""Second syllables of names (16)."""

CONTAINER_ONSETS = tuple(c + "u" for c in "bcdfghjklmnprstvwz")
"""First syllables of containers (18), lower case, each with its own first letter."""

OBJECT_ONSETS = tuple(c + "i" for c in "bcdfghjklmnprstvwz")
"""First syllables of objects (18): a different vowel, so an object's first token is never
a container's."""

ENTITY_CODAS = (
    *("bet", "kin", "wep", "dax", "bun", "duv", "fen", "lek"),
    *("rax", "pim", "tel", "wom", "zak", "gat", "hig", "vus"),
)
"""Second syllables of containers and objects (16)."""

PLACES = (
    *("store", "park", "school", "garden", "station", "market"),
    *("beach", "library", "office", "river", "kitchen", "museum"),
)
"""Places for the IOI templates (all seen in training)."""

HELDOUT_FRACTION = 0.2
"""The fraction of each word list held out from every training text."""


def _words(onsets: Sequence[str], codas: Sequence[str]) -> tuple[str, ...]:
    return tuple(onset + coda for onset in onsets for coda in codas)


def _split(words: Sequence[str], seed: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    order = np.random.default_rng(seed).permutation(len(words))
    n_heldout = round(len(words) * HELDOUT_FRACTION)
    heldout = sorted(words[i] for i in order[:n_heldout])
    train = sorted(words[i] for i in order[n_heldout:])
    return tuple(train), tuple(heldout)


NAMES = _words(NAME_ONSETS, NAME_CODAS)
"""Every name (336): the domain of the IOI model's name inputs."""
TRAIN_NAMES, HELDOUT_NAMES = _split(NAMES, seed=0)

CONTAINERS = _words(CONTAINER_ONSETS, ENTITY_CODAS)
"""Every container (288): the domain of the binding model's container inputs."""
OBJECTS = _words(OBJECT_ONSETS, ENTITY_CODAS)
"""Every object (288): the domain of the binding model's object inputs."""
TRAIN_CONTAINERS, HELDOUT_CONTAINERS = _split(CONTAINERS, seed=2)
TRAIN_OBJECTS, HELDOUT_OBJECTS = _split(OBJECTS, seed=3)

# -- templates and causal models ------------------------------------------------------------

IOI_TEMPLATES = (
    "When {a} and {b} went to the {place}, {s} gave a drink to",
    "After {a} and {b} arrived at the {place}, {s} handed a book to",
    "While {a} and {b} were working at the {place}, {s} threw a ball to",
    "Then, {a} and {b} had a long day at the {place}. {s} sent a letter to",
)
"""IOI prompts: the subject ``s`` is one of ``a``, ``b``; the answer is the other, with a space."""

BINDING_TEMPLATES = ("{c1} {o1} {c2} {o2} {q}",)
"""Binding prompts: each container followed by its object, then the query ``q`` (one of
the containers); the answer is the query's object."""

BINDING_FOLLOW = " {c} {o}"
"""One more question in a training document (:func:`training_examples`): a container of
the prompt and its object."""


@causal_model(inputs={"a": NAMES, "b": NAMES, "s": NAMES, "place": PLACES})
def ioi(a, b, s, place):  # type: ignore[no-untyped-def]
    s_position = 1 if s == a else 2
    io = b if s_position == 1 else a
    return io


@causal_model(
    inputs={"c1": CONTAINERS, "o1": OBJECTS, "c2": CONTAINERS, "o2": OBJECTS, "q": CONTAINERS}
)
def binding(c1, o1, c2, o2, q):  # type: ignore[no-untyped-def]
    index = 1 if q == c1 else 2
    answer = o1 if index == 1 else o2
    return answer


# -- sampling -------------------------------------------------------------------------------


def _lists(split: Split) -> dict[str, tuple[str, ...]]:
    if split == "train":
        return {"names": TRAIN_NAMES, "containers": TRAIN_CONTAINERS, "objects": TRAIN_OBJECTS}
    if split == "heldout":
        return {
            "names": HELDOUT_NAMES,
            "containers": HELDOUT_CONTAINERS,
            "objects": HELDOUT_OBJECTS,
        }
    raise ValueError(f"unknown split {split!r}; use 'train' or 'heldout'")


def _pairs(rng: np.random.Generator, words: tuple[str, ...], n: int) -> tuple[np.ndarray, ...]:
    """Two words per row whose first syllables (so first letters) differ."""
    pool = np.array(words, dtype=object)
    onsets = np.array([w[0] for w in words])
    first = rng.integers(len(pool), size=n)
    second = rng.integers(len(pool), size=n)
    clash = onsets[first] == onsets[second]
    while clash.any():  # redraw the clashing rows until every pair differs
        second[clash] = rng.integers(len(pool), size=int(clash.sum()))
        clash = onsets[first] == onsets[second]
    return pool[first], pool[second]


def ioi_inputs(rng: np.random.Generator, n: int, *, split: Split = "train") -> dict[str, Any]:
    """IOI inputs: two names with different first syllables, the subject one of them.

    Use it as a sampler, e.g. ``factual_dataset(ioi, 1000, sampler=partial(ioi_inputs,
    split="heldout"))``.
    """
    a, b = _pairs(rng, _lists(split)["names"], n)
    s = np.where(rng.random(n) < 0.5, a, b)
    places = np.array(PLACES, dtype=object)[rng.integers(len(PLACES), size=n)]
    return {"a": a, "b": b, "s": s, "place": places}


def binding_inputs(rng: np.random.Generator, n: int, *, split: Split = "train") -> dict[str, Any]:
    """Binding inputs: two containers and two objects (each pair with different first
    syllables) and a query among the containers. Use it as a sampler like
    :func:`ioi_inputs`."""
    lists = _lists(split)
    c1, c2 = _pairs(rng, lists["containers"], n)
    o1, o2 = _pairs(rng, lists["objects"], n)
    q = np.where(rng.random(n) < 0.5, c1, c2)
    return {"c1": c1, "o1": o1, "c2": c2, "o2": o2, "q": q}


# -- examples ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One prompt with its answer and the candidates a readout compares it against.

    ``answer`` and ``candidates`` carry the leading space the prompt's next word has
    (``" Mutol"``); the answer is one of the candidates. ``follow`` is the text a
    training document continues with after the answer (more questions about the same
    prompt); it is empty in evaluation examples.
    """

    task: str
    template: int
    inputs: Mapping[str, str]
    prompt: str
    answer: str
    candidates: tuple[str, ...]
    follow: str = ""

    @property
    def text(self) -> str:
        """The whole document: the prompt, its answer and what follows."""
        return self.prompt + self.answer + self.follow


_TASKS: dict[str, tuple[CausalModel, tuple[str, ...], tuple[str, ...]]] = {
    "ioi": (ioi, IOI_TEMPLATES, ("a", "b")),
    "binding": (binding, BINDING_TEMPLATES, ("o1", "o2")),
}


def examples(
    task: Literal["ioi", "binding"], n: int, *, split: Split = "train", seed: int = 0
) -> list[Example]:
    """``n`` prompts of one task, templates drawn uniformly, words from ``split``.

    The candidates are the two names (IOI) or the two objects (binding) of the prompt.
    """
    if task not in _TASKS:
        raise ValueError(f"unknown task {task!r}; use 'ioi' or 'binding'")
    model, templates, candidates = _TASKS[task]
    rng = np.random.default_rng(seed)
    sample = ioi_inputs if task == "ioi" else binding_inputs
    columns = sample(rng, n, split=split)
    which = rng.integers(len(templates), size=n)
    # in chunks of at most 4096 rows, which mechanisms of string inputs evaluate once
    # per distinct row without a per-row fallback
    outputs = np.concatenate(
        [
            model.run_batch({k: v[start : start + 4096] for k, v in columns.items()})[model.output]
            for start in range(0, n, 4096)
        ]
        or [np.array([], dtype=object)]
    )
    found = []
    for i in range(n):
        row = {name: str(column[i]) for name, column in columns.items()}
        found.append(
            Example(
                task=task,
                template=int(which[i]),
                inputs=row,
                prompt=templates[which[i]].format(**row),
                answer=" " + str(outputs[i]),
                candidates=tuple(" " + row[c] for c in candidates),
            )
        )
    return found


def training_examples(n: int, *, seed: int = 0, queries: int = 1) -> list[Example]:
    """``n`` training documents, half IOI and half binding, shuffled; only ``"train"`` words.

    A binding document asks ``queries`` questions about its containers: the prompt's,
    then ``queries - 1`` more in ``follow`` (:data:`BINDING_FOLLOW`: a container, drawn
    again, and its object), which gives a model more lookups to learn from per
    document. This is what the zoo language model learns from (:func:`training_text` is
    its text).
    """
    rng = np.random.default_rng(seed)
    n_ioi = n // 2
    binding_docs = examples("binding", n - n_ioi, split="train", seed=int(rng.integers(2**31)))
    more = rng.integers(2, size=(len(binding_docs), max(queries - 1, 0)))
    followed = []
    for doc, picks in zip(binding_docs, more, strict=True):
        sentences = [
            BINDING_FOLLOW.format(c=doc.inputs[f"c{k + 1}"], o=doc.inputs[f"o{k + 1}"])
            for k in picks.tolist()
        ]
        followed.append(replace(doc, follow="".join(sentences)))
    mixed = [
        *examples("ioi", n_ioi, split="train", seed=int(rng.integers(2**31))),
        *followed,
    ]
    return [mixed[i] for i in rng.permutation(n)]


def training_text(n: int, *, seed: int = 0, queries: int = 1) -> list[str]:
    """The text of :func:`training_examples` (same arguments): one string per document.

    The zoo tokenizer is trained on this text; held-out words never occur in it.
    """
    return [e.text for e in training_examples(n, seed=seed, queries=queries)]


def fingerprint() -> str:
    """A hash of every word list and template: changes whenever the corpus does."""
    content = {
        "names": NAMES,
        "heldout_names": HELDOUT_NAMES,
        "containers": CONTAINERS,
        "objects": OBJECTS,
        "heldout_containers": HELDOUT_CONTAINERS,
        "heldout_objects": HELDOUT_OBJECTS,
        "places": PLACES,
        "ioi": IOI_TEMPLATES,
        "binding": BINDING_TEMPLATES,
        "binding_follow": BINDING_FOLLOW,
        "ioi_model": ioi.source_hash,
        "binding_model": binding.source_hash,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]
