"""SAEs written by SAELens and by EleutherAI's sparsify themselves load with `load_sae`
and compute the same features and reconstructions as in those libraries.

Both install beside our pins (the `interop` extra). Outside CI a missing library skips its
test; under CI=true it fails, so the check cannot silently stop running.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

from abstraction.featurizers import load_sae


def _library(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; install the 'interop' extra")
        pytest.skip(f"{name} is not installed (pip install -e '.[interop]')")


def _randomise(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator).abs() * 0.3)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_an_sae_saved_by_sae_lens_loads_and_encodes_the_same(
    architecture: str, tmp_path: Path
) -> None:
    sae_lens = _library("sae_lens")
    width, features = 16, 48
    made = {
        "standard": lambda: sae_lens.StandardSAE(sae_lens.StandardSAEConfig(width, features)),
        "topk": lambda: sae_lens.TopKSAE(sae_lens.TopKSAEConfig(width, features, k=5)),
        "jumprelu": lambda: sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(width, features)),
    }[architecture]()
    _randomise(made, seed=1)
    with torch.no_grad():  # signed weights, small positive thresholds
        for name, parameter in made.named_parameters():
            if name != "threshold":
                parameter.sub_(0.15)
    made.save_model(tmp_path)
    ours = load_sae(tmp_path)
    assert ours.features == features
    x = torch.randn(64, width, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = made.encode(x)
        assert int((theirs > 0).sum()) > 0  # the comparison is not all zeros
        torch.testing.assert_close(ours.encode(x), theirs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(theirs), made.decode(theirs), atol=1e-5, rtol=1e-5)


def test_an_sae_saved_by_sparsify_loads_and_encodes_the_same(tmp_path: Path) -> None:
    sparsify = _library("sparsify")
    width, features, k = 16, 48, 5
    made = sparsify.SparseCoder(width, sparsify.SparseCoderConfig(num_latents=features, k=k))
    _randomise(made, seed=3)
    with torch.no_grad():
        for parameter in made.parameters():
            parameter.sub_(0.15)
    made.save_to_disk(tmp_path)
    ours = load_sae(tmp_path)
    assert ours.features == features
    x = torch.randn(64, width, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = made.encode(x)
        dense = torch.zeros(64, features).scatter(1, out.top_indices, out.top_acts)
        assert int((dense > 0).sum()) > 0
        torch.testing.assert_close(ours.encode(x), dense, atol=1e-5, rtol=1e-5)
        theirs = made.decode(out.top_acts, out.top_indices)
        torch.testing.assert_close(ours.decode(dense), theirs, atol=1e-5, rtol=1e-5)
