"""The prefix-cache memory budget: explicit bytes, ``$ABSTRACTION_MEMORY_BUDGET``, a scope."""

from __future__ import annotations

import pytest

from abstraction.alignment.prefix_cache import (
    DEFAULT_MEMORY_BUDGET,
    MEMORY_BUDGET_VARIABLE,
    budgeted,
    memory_budget,
    memory_budget_scope,
)
from abstraction.errors import AbstractionError


def test_explicit_bytes_win_then_the_variable_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MEMORY_BUDGET_VARIABLE, raising=False)
    assert memory_budget() == DEFAULT_MEMORY_BUDGET
    for text, expected in [
        ("1000", 1000),
        ("512MiB", 512 * 2**20),
        ("4GiB", 4 * 2**30),
        ("2.5 gib", int(2.5 * 2**30)),
        ("0", 0),
    ]:
        monkeypatch.setenv(MEMORY_BUDGET_VARIABLE, text)
        assert memory_budget() == expected, text
    assert memory_budget(123) == 123


@pytest.mark.parametrize("text", ["lots", "4 GB", "-1", "1e9"])
def test_a_bad_variable_says_how_to_write_a_size(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MEMORY_BUDGET_VARIABLE, text)
    with pytest.raises(AbstractionError, match=r"is not a size; give bytes or .*4GiB"):
        memory_budget()


@pytest.mark.parametrize("value", [-1, 2.5, True])
def test_a_bad_explicit_budget_is_refused(value: object) -> None:
    with pytest.raises(AbstractionError, match="memory_budget must be a number of bytes"):
        memory_budget(value)  # type: ignore[arg-type]
    with (
        pytest.raises(AbstractionError, match="memory_budget must be a number of bytes"),
        memory_budget_scope(value),  # type: ignore[arg-type]
    ):
        pass


def test_the_scope_sets_the_budget_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MEMORY_BUDGET_VARIABLE, "1GiB")
    with memory_budget_scope(77):
        assert memory_budget() == 77
    assert memory_budget() == 2**30
    with pytest.raises(RuntimeError), memory_budget_scope(5):
        raise RuntimeError
    assert memory_budget() == 2**30
    monkeypatch.delenv(MEMORY_BUDGET_VARIABLE)
    with memory_budget_scope(9):
        assert memory_budget() == 9
    assert memory_budget() == DEFAULT_MEMORY_BUDGET
    with memory_budget_scope(None):
        assert memory_budget() == DEFAULT_MEMORY_BUDGET


def test_an_entry_point_runs_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MEMORY_BUDGET_VARIABLE, raising=False)

    @budgeted
    def entry(*, memory_budget: int | None = None) -> int:
        return memory_budget_now()

    def memory_budget_now() -> int:
        return memory_budget()

    assert entry(memory_budget=4096) == 4096
    assert entry() == DEFAULT_MEMORY_BUDGET
