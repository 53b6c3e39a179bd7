"""Two-digit addition: where does a small GPT-2 keep the carry?

The network reads ``a1 a0 + b1 b0 =`` and predicts the tens digit of the sum. The
hypothesis: it first computes the carry ``a0 + b0 >= 10``, then the tens digit from
``a1 + b1 + carry``. A sweep over layers and token positions (chosen on validation,
reported on test) finds where the carry lives. The chosen alignment is also scored,
separately, on the test pairs left-padded to 8 tokens (positions resolve per example).

    abstraction run hypotheses/addition_carry.py
"""

from abstraction import Experiment, Search, TokenTask, TrainingConfig, causal_model, zoo

DIGITS = range(10)


@causal_model(inputs={"a1": DIGITS, "a0": DIGITS, "b1": DIGITS, "b0": DIGITS})
def addition_tens(a1, a0, b1, b0):
    carry = a0 + b0 >= 10
    tens = (a1 + b1 + carry) % 10
    return tens


experiment = Experiment(
    name="addition_carry",
    description=(
        "A 2-layer GPT-2 trained on two-digit addition (tens digit of the sum): a sweep over "
        "layers x positions for the carry bit, rank 1 and 2."
    ),
    model=addition_tens,
    task=zoo.task("addition_gpt2"),
    network="addition_gpt2",
    variables=["carry"],
    interventions=[["carry"]],
    search=Search(positions=["a1", "a0", "plus", "b1", "b0", "equals"], ranks=[1, 2]),
    shifts={
        "left-padded to 8 tokens": TokenTask(
            "addition_tens",
            addition_tens,
            template=["a1", "a0", "+", "b1", "b0", "="],
            vocab=zoo.ADDITION_VOCAB,
            named={"plus": 2, "equals": 5},
            pad_to=8,
            padding="left",
        )
    },
    pairs=40_000,
    sampler="value",
    training=TrainingConfig(epochs=6, batch_size=256, lr=1e-2),
    quick={
        "pairs": 10_000,
        "search": Search(positions=["b0", "equals"], ranks=[1]),
        "training": TrainingConfig(epochs=4, batch_size=256, lr=1e-2),
    },
)
