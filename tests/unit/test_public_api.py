"""The public API: every name in ``abstraction.__all__`` resolves (lazily, on first use),
and names that moved keep working one release with a deprecation warning."""

from __future__ import annotations

import importlib

import pytest

import abstraction
from abstraction import verdict, verification


def test_every_public_name_resolves_to_the_module_that_defines_it() -> None:
    exported = abstraction._EXPORTS
    assert set(abstraction.__all__) == set(exported) | {"__version__"}
    for name, module in exported.items():
        value = getattr(abstraction, name)
        if module == "abstraction":
            assert value is importlib.import_module(f"abstraction.{name}")
        else:
            assert value is getattr(importlib.import_module(module), name)
    assert set(exported) <= set(dir(abstraction))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'verfiy'"):
        abstraction.verfiy  # noqa: B018


@pytest.mark.parametrize("name", ["verify", "compare", "Verification", "VariableResult"])
def test_names_moved_out_of_verdict_still_import_with_a_warning(name: str) -> None:
    with pytest.warns(DeprecationWarning, match=f"abstraction.verification.{name}"):
        moved = getattr(verdict, name)
    assert moved is getattr(verification, name)
    with pytest.raises(AttributeError):
        verdict.nothing_here  # noqa: B018


def test_a_name_shared_with_its_module_stays_the_public_object() -> None:
    # importing abstraction.causal_model (the module) must not replace
    # abstraction.causal_model (the decorator users write as @causal_model)
    importlib.import_module("abstraction.causal_model")
    assert callable(abstraction.causal_model)
    from abstraction import causal_model

    assert causal_model is importlib.import_module("abstraction.causal_model").causal_model
