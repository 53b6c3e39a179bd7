"""Entity binding in the zoo's language model.

``tiny_lm`` (a small GPT-2 with its own BPE tokenizer, trained here and saved with
``save_pretrained``) reads two container-object pairs and a query container,

    budax sipim kubet tifen kubet

and answers `` tifen``: the object bound to the queried container. The hypothesis, as
in the binding literature: the network works out *which pair* the query names
(``index``: the first or the second), then fetches that pair's object. Words are drawn
from the held-out lists (never seen in training), the readout compares the two objects'
first tokens, and a sweep over layers, positions and components (attention heads
included) chooses where ``index`` lives on validation pairs. The rival says the network
answers the most recent object whatever the query; the shift scores the chosen
alignment on prompts that list the pairs in the other order.

    abstraction run hypotheses/binding.py
"""

from functools import partial

from abstraction import Experiment, PromptTask, Search, TrainingConfig, causal_model, zoo
from abstraction.corpus import CONTAINERS, OBJECTS, binding_inputs


@causal_model(
    inputs={"c1": CONTAINERS, "o1": OBJECTS, "c2": CONTAINERS, "o2": OBJECTS, "q": CONTAINERS}
)
def binding(c1, o1, c2, o2, q):
    index = 1 if q == c1 else 2
    answer = o1 if index == 1 else o2
    return answer


@causal_model(
    inputs={"c1": CONTAINERS, "o1": OBJECTS, "c2": CONTAINERS, "o2": OBJECTS, "q": CONTAINERS}
)
def most_recent(c1, o1, c2, o2, q):  # a rival: answer the last object, whatever the query
    index = 1 if q == c1 else 2
    answer = o2 if index > 0 else o1
    return answer


heldout = partial(binding_inputs, split="heldout")
task = PromptTask(
    "binding",
    binding,
    zoo.tokenizer("tiny_lm"),
    ("{c1} {o1} {c2} {o2} {q}",),
    candidates=("o1", "o2"),
)

experiment = Experiment(
    name="binding",
    description=(
        "Entity binding in the zoo's tiny_lm (a GPT-2 with its own BPE tokenizer): where "
        "does the network keep which of the two container-object pairs the query names? "
        "Held-out words only; readout over the prompt's two objects."
    ),
    model=binding,
    task=task,
    network="tiny_lm",
    variables=["index"],
    search=Search(
        positions=["q.last", "o2.last", "c2.last"],
        components=["residual", "attention_output", "head"],
    ),
    pairs=4_000,
    sampler=heldout,
    source_sampler=heldout,
    rivals=[most_recent],
    # the same pairs with the pairs listed in the other order: a representation of
    # "which position the queried pair holds" moves with them
    shifts={"pairs swapped": task.with_templates(("{c2} {o2} {c1} {o1} {q}",))},
    training=TrainingConfig(epochs=6, batch_size=128, lr=1e-2),
    quick={
        "search": Search(positions=["q.last"], components=["residual"]),
        "training": TrainingConfig(epochs=2, batch_size=256, lr=1e-2),
    },
)
