"""Featurizers: exact identity on an empty swap, the right swap otherwise, SAEs loaded from
SAELens's and sparsify's layouts (with clear errors), and an SAE trained here that
recovers planted sparse features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from abstraction import Location
from abstraction.featurizers import (
    PCA,
    Featurizer,
    FeaturizerError,
    Identity,
    Rotation,
    SparseAutoencoder,
    featurizer_from,
    load_sae,
    train_sae,
)
from abstraction.interventions import FeaturePatch, InterventionError, LowRankPatch, Patch

WIDTH = 12
SITE = Location.module("layer")


def _activations(n: int = 400, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.linspace(3.0, 0.1, WIDTH)
    return torch.randn(n, WIDTH, generator=generator) * scales + 0.5


def _sae(activation: str = "relu", seed: int = 0) -> SparseAutoencoder:
    generator = torch.Generator().manual_seed(seed)
    m = 3 * WIDTH
    return SparseAutoencoder(
        torch.randn(WIDTH, m, generator=generator),
        torch.randn(m, generator=generator),
        torch.randn(m, WIDTH, generator=generator),
        torch.randn(WIDTH, generator=generator),
        activation=activation,  # type: ignore[arg-type]
        k=5 if activation == "topk" else None,
        threshold=torch.rand(m, generator=generator) if activation == "jumprelu" else None,
    )


def _featurizers() -> list[Featurizer]:
    rotation, _ = torch.linalg.qr(
        torch.randn(WIDTH, WIDTH, generator=torch.Generator().manual_seed(1))
    )
    return [
        Identity(WIDTH),
        Rotation(rotation),
        PCA.fit(_activations()),
        PCA.fit(_activations(), components=4),
        _sae("relu"),
        _sae("topk"),
        _sae("jumprelu"),
    ]


@pytest.mark.parametrize("featurizer", _featurizers(), ids=lambda f: f"{f.kind}{f.features}")
def test_swapping_no_feature_is_the_identity(featurizer: Featurizer) -> None:
    base, source = _activations(64, seed=2), _activations(64, seed=3)
    empty = FeaturePatch(SITE, featurizer, torch.zeros(featurizer.features))
    empty.check(WIDTH)
    assert (empty.apply(base, source) - base).abs().max() <= 1e-6
    everything = FeaturePatch(SITE, featurizer, torch.ones(featurizer.features))
    assert (everything.apply(base, base.clone()) - base).abs().max() <= 1e-6


def test_a_full_pca_swap_is_a_full_patch_and_a_partial_one_a_low_rank_patch() -> None:
    pca = PCA.fit(_activations())
    base, source = _activations(64, seed=2), _activations(64, seed=3)
    full = FeaturePatch(SITE, pca, torch.ones(WIDTH)).apply(base, source)
    assert torch.allclose(full, Patch(SITE).apply(base, source), atol=1e-5)
    mask = torch.zeros(WIDTH)
    mask[[0, 3]] = 1.0
    some = FeaturePatch(SITE, pca, mask).apply(base, source)
    low_rank = LowRankPatch(SITE, pca.components[:, [0, 3]]).apply(base, source)
    assert torch.allclose(some, low_rank, atol=1e-5)


def test_identity_features_swap_exactly_the_selected_neurons() -> None:
    base, source = _activations(8, seed=2), _activations(8, seed=3)
    mask = torch.zeros(WIDTH)
    mask[[1, 5]] = 1.0
    patch = FeaturePatch(SITE, Identity(WIDTH), mask)
    out = patch.apply(base, source)
    assert torch.equal(patch.selected, torch.tensor([1, 5]))
    assert torch.allclose(out[:, [1, 5]], source[:, [1, 5]])
    keep = [i for i in range(WIDTH) if i not in (1, 5)]
    assert torch.allclose(out[:, keep], base[:, keep])


def test_pca_is_fitted_by_variance_with_orthonormal_components() -> None:
    data = _activations(2000)
    pca = PCA.fit(data)
    assert torch.allclose(pca.components.T @ pca.components, torch.eye(WIDTH), atol=1e-5)
    assert (pca.variance[:-1] >= pca.variance[1:]).all()
    # the data's scales fall with the axis index, so the top component is axis 0
    assert abs(float(pca.components[0, 0])) > 0.99
    assert torch.allclose(pca.mean, data.mean(0), atol=1e-5)


def test_feature_patch_checks_its_width_and_mask() -> None:
    patch = FeaturePatch(SITE, Identity(WIDTH), torch.zeros(WIDTH))
    with pytest.raises(InterventionError, match="width 12"):
        patch.check(16)
    with pytest.raises(InterventionError, match="one weight per feature"):
        FeaturePatch(SITE, Identity(WIDTH), torch.zeros(3)).check(WIDTH)


@pytest.mark.parametrize("featurizer", _featurizers(), ids=lambda f: f"{f.kind}{f.features}")
def test_featurizers_round_trip_through_their_description(featurizer: Featurizer) -> None:
    again = featurizer_from(json.loads(json.dumps(featurizer.describe())), featurizer.tensors())
    h = _activations(16)
    assert torch.equal(again.encode(h), featurizer.encode(h))
    assert torch.equal(again.decode(featurizer.encode(h)), featurizer.decode(featurizer.encode(h)))


# -- loading SAEs --------------------------------------------------------------------------


def _write_saelens(directory: Path, sae: SparseAutoencoder, **cfg: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in sae.tensors().items()},
        str(directory / "sae_weights.safetensors"),
    )
    config = {"d_in": sae.width, "d_sae": sae.features, "apply_b_dec_to_input": True, **cfg}
    (directory / "cfg.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize(
    ("activation", "cfg"),
    [
        ("relu", {"architecture": "standard"}),
        ("relu", {"activation_fn_str": "relu"}),
        ("topk", {"architecture": "topk", "k": 5}),
        ("topk", {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5}}),
        ("jumprelu", {"architecture": "jumprelu"}),
    ],
)
def test_an_sae_loads_from_saelens_layout(
    tmp_path: Path, activation: str, cfg: dict[str, object]
) -> None:
    sae = _sae(activation)
    loaded = load_sae(_write_saelens(tmp_path / "sae", sae, **cfg))
    h = _activations(32)
    assert loaded.activation == activation
    assert torch.allclose(loaded.encode(h), sae.encode(h))
    assert torch.allclose(loaded.decode(loaded.encode(h)), sae.decode(sae.encode(h)))


def test_an_sae_loads_from_sparsify_layout(tmp_path: Path) -> None:
    sae = _sae("topk")
    directory = tmp_path / "layers.0"
    directory.mkdir()
    save_file(
        {
            "encoder.weight": sae.W_enc.T.contiguous(),
            "encoder.bias": sae.b_enc,
            "W_dec": sae.W_dec,
            "b_dec": sae.b_dec,
        },
        str(directory / "sae.safetensors"),
    )
    (directory / "cfg.json").write_text(json.dumps({"k": 5, "num_latents": sae.features}))
    loaded = load_sae(directory)
    h = _activations(32)
    assert torch.allclose(loaded.encode(h), sae.encode(h))


def test_loading_a_bad_sae_says_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(FeaturizerError, match="not a directory"):
        load_sae(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeaturizerError, match=r"no cfg\.json"):
        load_sae(tmp_path / "empty")
    sae = _sae("relu")
    with pytest.raises(FeaturizerError, match="d_in=99"):
        load_sae(_write_saelens(tmp_path / "wrong_width", sae, d_in=99))
    with pytest.raises(FeaturizerError, match="architecture 'gated'"):
        load_sae(_write_saelens(tmp_path / "gated", sae, architecture="gated"))
    with pytest.raises(FeaturizerError, match="normalizes"):
        load_sae(
            _write_saelens(tmp_path / "norm", sae, normalize_activations="expected_average_only_in")
        )
    patch = FeaturePatch(SITE, sae, torch.zeros(sae.features))
    with pytest.raises(InterventionError, match="width 12"):
        patch.check(WIDTH + 1)


# -- training an SAE here -------------------------------------------------------------------


def test_a_trained_sae_recovers_planted_sparse_features() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small matmuls: more threads only contend with other workers
    try:
        _recovers_planted_features()
    finally:
        torch.set_num_threads(before)


def _recovers_planted_features() -> None:
    generator = torch.Generator().manual_seed(0)
    true_features, width, n = 16, WIDTH * 2, 8000
    directions = torch.randn(true_features, width, generator=generator)
    directions = directions / directions.norm(dim=1, keepdim=True)
    # each example is a sparse code: 2 active features with positive magnitudes
    codes = torch.zeros(n, true_features)
    active = torch.rand(n, true_features, generator=generator).argsort(dim=1)[:, :2]
    codes.scatter_(1, active, 1.0 + torch.rand(n, 2, generator=generator))
    data = codes @ directions
    sae = train_sae(data, 32, k=2, steps=3000, lr=3e-3, seed=0)
    learned = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    best = (directions @ learned.T).max(dim=1).values
    assert float(best.min()) >= 0.9, best
    # and it reconstructs what it was trained on
    error = (sae.decode(sae.encode(data)) - data).pow(2).sum(1).mean() / data.pow(2).sum(1).mean()
    assert float(error) < 0.1
    again = train_sae(data, 32, k=2, steps=3000, lr=3e-3, seed=0)
    assert torch.equal(again.W_dec, sae.W_dec)  # deterministic


def test_random_subspaces_keep_each_rank_when_feature_masks_overlap() -> None:
    from abstraction.interventions import random_subspace_patches

    generator = torch.Generator().manual_seed(0)
    # two variables whose selected features span 9 and 10 of 16 dimensions (19 > 16)
    patches = random_subspace_patches(SITE, {"a": (0, 9), "b": (9, 19)}, 16, generator)
    for name, rank in (("a", 9), ("b", 10)):
        basis = patches[name].basis
        assert basis.shape == (16, rank)
        assert torch.allclose(basis.T @ basis, torch.eye(rank), atol=1e-5)
    # disjoint ranks that fit stay mutually orthogonal, as before
    fits = random_subspace_patches(SITE, {"a": (0, 3), "b": (3, 7)}, 16, generator)
    assert torch.allclose(fits["a"].basis.T @ fits["b"].basis, torch.zeros(3, 4), atol=1e-5)
