"""PromptTask: templates, slot positions, padding, candidate readout and its errors."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from abstraction import causal_model
from abstraction.errors import DeclarationError
from abstraction.network import Batch, readout_logits
from abstraction.prompts import PromptTask
from abstraction.task import TaskError

NAMES = ("Mary", "John", "Anna", "Kasimir", "Bob", "Theodora")
TEMPLATES = (
    "When {a} and {b} went to the store, {s} gave a drink to",
    "Then {a} and {b} had fun. {s} handed it to",
)


def metaspace_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer (Llama, Gemma): spaces become '▁', a BOS is added."""
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.normalizer = normalizers.NFKC()
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "<pad>"], limit_alphabet=100
    )
    tk.train_from_iterator(corpus, trainer)
    tk.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", unk_token="<unk>"
    )


@causal_model(inputs={"a": NAMES, "b": NAMES, "s_first": (True, False)})
def ioi(a, b, s_first):  # type: ignore[no-untyped-def]
    s = a if s_first else b  # noqa: F841 - a variable of the model, filled into {s}
    io = b if s_first else a
    return io


@pytest.fixture()
def tokenizer(bpe_tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    return copy.deepcopy(bpe_tokenizer)  # a test may change it (e.g. remove the pad token)


def _columns(n: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    pairs = np.array(list(itertools.permutations(NAMES, 2)))[rng.integers(30, size=n)]
    return {"a": pairs[:, 0], "b": pairs[:, 1], "s_first": rng.random(n) < 0.5}


def _token_text(tok: PreTrainedTokenizerFast, batch: Batch, row: int, lo: int, hi: int) -> str:
    ids = batch.inputs["input_ids"][row, lo : hi + 1].tolist()
    return str(tok.decode(ids)).replace("▁", " ").strip()


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("kind", ["byte_level", "metaspace"])
def test_slot_positions_point_at_the_slot_values(
    kind: str, padding: str, tokenizer: PreTrainedTokenizerFast, tokenizer_corpus: list[str]
) -> None:
    tok = tokenizer if kind == "byte_level" else metaspace_tokenizer(tokenizer_corpus)
    task = PromptTask("ioi", ioi, tok, TEMPLATES, candidates=("a", "b"), padding=padding)
    cols = _columns()
    batch = task.encode(cols)
    values = ioi.run_batch(cols)
    prompts = task.prompts(pd.DataFrame(cols))
    assert set(prompts["template"]) == {0, 1}  # both templates are used
    for row in range(len(cols["a"])):
        for slot in ("a", "b", "s"):
            first = int(batch.positions[f"{slot}.first"][row])
            last = int(batch.positions[f"{slot}.last"][row])
            assert _token_text(tok, batch, row, first, last) == values[slot][row]
        mask = batch.inputs["attention_mask"][row]
        real = mask.nonzero()[:, 0]
        assert int(batch.positions["last"][row]) == int(real.max())
        assert int(batch.readout[row]) == int(real.max())  # type: ignore[index]
        if padding == "left":
            assert int(real.max()) == mask.shape[0] - 1
        else:
            assert int(real.min()) == 0
        # the unpadded ids are exactly the tokenizer's own encoding of the prompt
        ids = batch.inputs["input_ids"][row][mask.bool()].tolist()
        assert ids == tok(prompts["prompt"].iloc[row])["input_ids"]


def test_candidates_per_prompt_and_labels(tokenizer: PreTrainedTokenizerFast) -> None:
    task = PromptTask("ioi", ioi, tokenizer, TEMPLATES, candidates=("a", "b"))
    cols = _columns()
    batch = task.encode(cols)
    assert batch.candidates is not None and batch.candidates.shape == (len(cols["a"]), 2)
    for row in range(len(cols["a"])):
        for k, slot in enumerate(("a", "b")):
            token = tokenizer.convert_ids_to_tokens(int(batch.candidates[row, k]))
            assert token == "Ġ" + cols[slot][row]
    out = ioi.run_batch(cols)["io"]
    labels = task.label_ids(out, cols)
    expected = np.where(out == cols["a"], 0, 1)
    assert labels.tolist() == expected.tolist()
    assert task.n_classes == 2


def test_readout_reads_only_the_candidates(tokenizer: PreTrainedTokenizerFast) -> None:
    task = PromptTask("ioi", ioi, tokenizer, TEMPLATES[0], candidates=("a", "b"))
    batch = task.encode(_columns(4))
    vocab = len(tokenizer)
    logits = torch.randn(4, batch.inputs["input_ids"].shape[1], vocab)
    read = readout_logits(logits, batch)
    assert read.shape == (4, 2)
    rows = torch.arange(4)
    assert batch.readout is not None and batch.candidates is not None
    expected = logits[rows, batch.readout][rows[:, None], batch.candidates]
    assert torch.equal(read, expected)


@causal_model(inputs={"c": ("box", "bag", "jar"), "o": ("apple", "key", "coin")})
def holds(c, o):  # type: ignore[no-untyped-def]
    answer = o
    return answer


def test_one_candidate_set_for_every_prompt(tokenizer: PreTrainedTokenizerFast) -> None:
    tok = tokenizer
    task = PromptTask("holds", holds, tok, "The {c} contains the {o}. The {c} contains the")
    assert task.n_classes == 3
    batch = task.encode({"c": np.array(["box", "jar"]), "o": np.array(["key", "coin"])})
    assert batch.candidates is not None and batch.candidates.dim() == 1
    order = list(task.answer_texts)
    assert task.answer_texts["coin"] == " coin"
    assert task.label_ids(np.array(["coin", "apple"])).tolist() == [
        order.index("coin"),
        order.index("apple"),
    ]
    for k, value in enumerate(order):
        assert tok.convert_ids_to_tokens(int(batch.candidates[k])) == "Ġ" + value
    with pytest.raises(TaskError, match="no answer"):
        task.label_ids(np.array(["pear"]))


def test_positions_with_offsets_resolve(tokenizer: PreTrainedTokenizerFast) -> None:
    from abstraction.locations import resolve_positions

    task = PromptTask("ioi", ioi, tokenizer, TEMPLATES, candidates=("a", "b"), padding="left")
    batch = task.encode(_columns())
    length = batch.inputs["input_ids"].shape[1]
    after = resolve_positions("s.last+1", batch, length)
    assert after is not None and torch.equal(after, batch.positions["s.last"] + 1)
    before = resolve_positions("last-1", batch, length)
    assert before is not None and torch.equal(before, batch.positions["last"] - 1)


# -- bad input -----------------------------------------------------------------------


def test_tokenizer_without_pad_token_says_how_to_set_one(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    tok = tokenizer
    tok.pad_token = None
    with pytest.raises(DeclarationError, match=r"tokenizer.pad_token = tokenizer.eos_token"):
        PromptTask("ioi", ioi, tok, TEMPLATES[0], candidates=("a", "b"))


def test_slow_or_missing_tokenizer_is_rejected() -> None:
    with pytest.raises(DeclarationError, match="fast Hugging Face tokenizer"):
        PromptTask("ioi", ioi, object(), TEMPLATES[0], candidates=("a", "b"))


def test_unknown_slot_names_the_nearest_variable(tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(DeclarationError, match=r"\{sub\}.*'s'"):
        PromptTask("ioi", ioi, tokenizer, "When {a} and {b} left, {sub} gave it to")


def test_candidates_sharing_a_first_token_are_rejected(tokenizer: PreTrainedTokenizerFast) -> None:
    @causal_model(inputs={"o": ("key", "keyring")})
    def pick(o):  # type: ignore[no-untyped-def]
        answer = o
        return answer

    with pytest.raises(DeclarationError, match="same token"):
        PromptTask("pick", pick, tokenizer, "It is the {o}. It is", answer=" {}")


def test_readout_at_a_missing_slot_is_rejected(tokenizer: PreTrainedTokenizerFast) -> None:
    templates = ["When {a} and {b} left, {s} gave it to", "{a} and {b} left. It went to"]
    with pytest.raises(DeclarationError, match=r"readout position 's\.last'"):
        PromptTask("ioi", ioi, tokenizer, templates, candidates=("a", "b"), readout="s.last")
    task = PromptTask("ioi", ioi, tokenizer, templates, candidates=("a", "b"))
    assert "s.last" not in task.positions  # only slots every template fills are positions


def test_empty_slot_value_is_a_clear_error(tokenizer: PreTrainedTokenizerFast) -> None:
    @causal_model(inputs={"x": ("", "Mary")})
    def echo(x):  # type: ignore[no-untyped-def]
        named = x == "Mary"
        return named

    task = PromptTask(
        "echo", echo, tokenizer, "Then {x} had fun.", answers={True: " yes", False: " no"}
    )
    with pytest.raises(TaskError, match=r"\{x\}.*covers no token"):
        task.encode({"x": np.array(["Mary", ""])})


def test_output_outside_the_candidates_is_a_clear_error(tokenizer: PreTrainedTokenizerFast) -> None:
    task = PromptTask("ioi", ioi, tokenizer, TEMPLATES[0], candidates=("a", "b"))
    cols = {"a": np.array(["Mary"]), "b": np.array(["John"]), "s_first": np.array([True])}
    with pytest.raises(TaskError, match="none of the prompt's candidates"):
        task.label_ids(np.array(["Bob"]), cols)


def test_template_input_picks_the_template(tokenizer: PreTrainedTokenizerFast) -> None:
    @causal_model(inputs={"a": NAMES, "b": NAMES, "s_first": (True, False), "t": (0, 1)})
    def ioi_t(a, b, s_first, t):  # type: ignore[no-untyped-def]
        s = a if s_first else b  # noqa: F841 - a variable of the model, filled into {s}
        io = b if s_first else a
        return io

    task = PromptTask("ioi", ioi_t, tokenizer, TEMPLATES, candidates=("a", "b"), template_input="t")
    frame = pd.DataFrame({**_columns(6), "t": [0, 1, 0, 1, 1, 0]})
    assert task.prompts(frame)["template"].tolist() == [0, 1, 0, 1, 1, 0]
    shifted = task.with_templates(["Later {a} met {b}; {s} wrote to"], name="unseen")
    assert shifted.prompts(frame)["prompt"].str.startswith("Later").all()


# -- property: random templates and names ---------------------------------------------

WORDS = st.sampled_from(["the", "went", "to", "and", "store", "had", "fun", ",", ".", "it"])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    before=st.lists(WORDS, min_size=0, max_size=4),
    middle=st.lists(WORDS, min_size=1, max_size=4),
    after=st.lists(WORDS, min_size=1, max_size=4),
    names=st.lists(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGH", min_size=1, max_size=9),
        min_size=2,
        max_size=6,
        unique=True,
    ),
    padding=st.sampled_from(["left", "right"]),
)
def test_any_template_and_names_round_trip(
    tokenizer: PreTrainedTokenizerFast,
    before: list[str],
    middle: list[str],
    after: list[str],
    names: list[str],
    padding: str,
) -> None:
    domain = tuple(names)

    @causal_model(inputs={"x": domain, "y": domain})
    def pair(x, y):  # type: ignore[no-untyped-def]
        same = x == y
        return same

    template = " ".join([*before, "{x}", *middle, "{y}", *after])
    task = PromptTask(
        "pair", pair, tokenizer, template, answers={True: " yes", False: " no"}, padding=padding
    )
    xs = np.array([names[i % len(names)] for i in range(7)])
    ys = np.array([names[(3 * i + 1) % len(names)] for i in range(7)])
    batch = task.encode({"x": xs, "y": ys})
    for row in range(7):
        for slot, values in (("x", xs), ("y", ys)):
            lo = int(batch.positions[f"{slot}.first"][row])
            hi = int(batch.positions[f"{slot}.last"][row])
            assert lo <= hi
            # the slot's tokens spell its value (possibly with the space before it)
            assert _token_text(tokenizer, batch, row, lo, hi).endswith(values[row])
        assert int(batch.positions["y.first"][row]) > int(batch.positions["x.last"][row])


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    from transformers import GPT2Config

    from abstraction import Network

    task = PromptTask("ioi", ioi, tokenizer, TEMPLATES, candidates=("a", "b"))
    small = Network.from_config(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50))
    with pytest.raises(TaskError, match="output logits"):
        task.check_network(small)
    task.check_network(
        Network.from_config(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=len(tokenizer)))
    )


def test_an_experiment_at_a_position_the_task_lacks_fails_at_declaration(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    from abstraction import Experiment, Location, Search

    task = PromptTask("ioi", ioi, tokenizer, TEMPLATES, candidates=("a", "b"))
    with pytest.raises(DeclarationError, match=r"'io\.last'"):
        Experiment(
            name="ioi",
            model=ioi,
            task=task,
            network="not loaded at declaration",
            variables=["s"],
            location=Location(layer=0, position="io.last"),
        )
    with pytest.raises(DeclarationError, match=r"'b\.lst'"):
        Experiment(
            name="ioi",
            model=ioi,
            task=task,
            network="not loaded at declaration",
            variables=["s"],
            search=Search(positions=["s.last+1", "b.lst"]),
        )
    Experiment(  # offsets of known positions are fine
        name="ioi",
        model=ioi,
        task=task,
        network="not loaded at declaration",
        variables=["s"],
        search=Search(positions=["s.last+1", "last-2", "a.first"]),
    )
