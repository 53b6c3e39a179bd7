"""Indirect-object identification (IOI) in the zoo's language model.

``tiny_lm`` is a small GPT-2 with its own byte-level BPE tokenizer, trained here on
templated prompts and saved with ``save_pretrained`` like any checkpoint. It reads

    When Kiran and Mutol went to the park, Kiran gave a drink to

and answers `` Mutol``: the name that is not repeated. The hypothesis, as in the
IOI literature: the network first finds which of the two names the subject repeats
(``s_position``: the first or the second), then answers the other one. Names are
drawn from the held-out list (never seen in training, split into several tokens by
the tokenizer), the readout compares the two names' first tokens, and a sweep over
layers, positions and components (attention heads included) chooses where
``s_position`` lives on validation pairs. The rival is the "first name mentioned"
heuristic; the shift scores the chosen alignment on a template kept out of the
experiment.

    abstraction run hypotheses/ioi.py
    IOI_CHECKPOINT=/path/to/gpt2 abstraction run hypotheses/ioi.py   # a checkpoint on disk
"""

import os
from functools import partial

from transformers import AutoTokenizer

from abstraction import Experiment, PromptTask, Search, TrainingConfig, causal_model, zoo
from abstraction.corpus import IOI_TEMPLATES, NAMES, PLACES, ioi_inputs


@causal_model(inputs={"a": NAMES, "b": NAMES, "s": NAMES, "place": PLACES})
def ioi(a, b, s, place):
    s_position = 1 if s == a else 2
    io = b if s_position == 1 else a
    return io


@causal_model(inputs={"a": NAMES, "b": NAMES, "s": NAMES, "place": PLACES})
def first_name(a, b, s, place):  # a rival: answer the first name, whoever repeats
    s_position = 1 if s == a else 2
    io = a if s_position > 0 else b
    return io


# Any causal LM saved with save_pretrained (GPT-2, Pythia, Llama, Qwen, Gemma) beside
# its tokenizer; by default the zoo's tiny_lm (trained here on first use, then cached).
CHECKPOINT = os.environ.get("IOI_CHECKPOINT")
network = CHECKPOINT or "tiny_lm"
tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT) if CHECKPOINT else zoo.tokenizer("tiny_lm")
if tokenizer.pad_token is None:  # GPT-2's tokenizer has none; its end-of-text token serves
    tokenizer.pad_token = tokenizer.eos_token
heldout = partial(ioi_inputs, split="heldout")
task = PromptTask("ioi", ioi, tokenizer, IOI_TEMPLATES[:3], candidates=("a", "b"))

experiment = Experiment(
    name="ioi",
    description=(
        "Indirect-object identification in the zoo's tiny_lm (a GPT-2 with its own BPE "
        "tokenizer): where does the network keep which name the subject repeats? Held-out "
        "names only; readout over the prompt's two names."
    ),
    model=ioi,
    task=task,
    network=network,
    variables=["s_position"],
    search=Search(
        positions=["s.last", "last", "b.last"],
        components=["residual", "attention_output", "head"],
    ),
    pairs=4_000,
    sampler=heldout,
    source_sampler=heldout,
    rivals=[first_name],
    shifts={"unseen template": task.with_templates(IOI_TEMPLATES[3:])},
    training=TrainingConfig(epochs=6, batch_size=128, lr=1e-2),
    quick={
        "search": Search(positions=["s.last", "last"], components=["residual"]),
        "training": TrainingConfig(epochs=2, batch_size=256, lr=1e-2),
    },
)
