"""Featurizers: invertible (or error-corrected) maps from an activation to features.

An interchange swaps *features*, not raw coordinates: ``f = encode(h)``, the selected
features are taken from the source, and ``decode(f') + error`` is written back, where
``error = h - decode(encode(h))`` is the base's reconstruction error, carried through
unchanged, so that swapping no feature gives back ``h`` exactly (up to float rounding).
:class:`~abstraction.interventions.FeaturePatch` is that intervention; every featurizer
here plugs into it:

======================== ==========================================================
:class:`Identity`          the neurons themselves (a learned mask over them is DBM)
:class:`Rotation`          an orthogonal matrix (DAS's featurizer)
:class:`PCA`               principal components fitted on activations at the site
:class:`SparseAutoencoder` an SAE: ReLU, TopK or JumpReLU; loaded from SAELens's or
                           sparsify's layout (:func:`load_sae`) or trained here
                           (:func:`train_sae`)
======================== ==========================================================

Featurizers are frozen dataclasses of tensors: printable, saved as safetensors with a
JSON description (:meth:`Featurizer.tensors`, :meth:`Featurizer.describe`,
:func:`featurizer_from`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

from abstraction.errors import AbstractionError

__all__ = [
    "PCA",
    "Featurizer",
    "FeaturizerError",
    "Identity",
    "Rotation",
    "SparseAutoencoder",
    "featurizer_from",
    "load_sae",
    "selected_span",
    "train_sae",
]


class FeaturizerError(AbstractionError, ValueError):
    """A featurizer cannot be built, loaded or applied as asked."""


def _like(tensor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return tensor.to(other.device, other.dtype)


@dataclass(frozen=True, repr=False, eq=False)
class Featurizer:
    """Base class: ``encode`` an activation's last dimension into features and back."""

    kind: str = field(default="", init=False)

    @property
    def width(self) -> int:
        """The activation width this featurizer reads."""
        raise NotImplementedError

    @property
    def features(self) -> int:
        """How many features ``encode`` returns."""
        raise NotImplementedError

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """``(..., width)`` activations to ``(..., features)`` features."""
        raise NotImplementedError

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """``(..., features)`` features to ``(..., width)`` activations."""
        raise NotImplementedError

    def directions(self) -> torch.Tensor:
        """``(width, features)``: the activation direction each feature writes (a feature's
        decoder column), used where a linear view is needed (diagnostics, nulls)."""
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors that define it (saved as safetensors)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Everything else that defines it, as JSON."""
        return {"kind": self.kind}

    def check(self, width: int | None) -> None:
        """Raise :class:`FeaturizerError` when it does not read activations of ``width``."""
        if width is not None and self.width != width:
            raise FeaturizerError(
                f"this {self.kind} featurizer reads activations of width {self.width}, but the "
                f"location's activation has width {width}; use one built for this site"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(width={self.width}, features={self.features})"


@dataclass(frozen=True, repr=False, eq=False)
class Identity(Featurizer):
    """The neurons themselves: a mask over them selects units (DBM over neurons)."""

    size: int = 0
    kind: str = field(default="identity", init=False)

    @property
    def width(self) -> int:
        return self.size

    @property
    def features(self) -> int:
        return self.size

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f

    def directions(self) -> torch.Tensor:
        return torch.eye(self.size)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size}


@dataclass(frozen=True, repr=False, eq=False)
class Rotation(Featurizer):
    """An orthogonal ``(width, width)`` matrix: features are ``h @ matrix`` (DAS)."""

    matrix: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    kind: str = field(default="rotation", init=False)

    def __post_init__(self) -> None:
        if self.matrix.dim() != 2 or self.matrix.shape[0] != self.matrix.shape[1]:
            raise FeaturizerError(
                f"a rotation must be a square matrix, got {tuple(self.matrix.shape)}"
            )

    @property
    def width(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def features(self) -> int:
        return int(self.matrix.shape[1])

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        return h @ _like(self.matrix, h)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ _like(self.matrix, f).T

    def directions(self) -> torch.Tensor:
        return self.matrix

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"matrix": self.matrix}


@dataclass(frozen=True, repr=False, eq=False)
class PCA(Featurizer):
    """Principal components: features are ``(h - mean) @ components``.

    Attributes:
        mean: ``(width,)`` the activations' mean.
        components: ``(width, k)`` orthonormal principal directions, by decreasing
            variance; with ``k < width`` the rest of ``h`` is carried in the error.
        variance: ``(k,)`` the variance along each component.
    """

    mean: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    components: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    variance: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    kind: str = field(default="pca", init=False)

    @classmethod
    def fit(cls, activations: torch.Tensor, components: int | None = None) -> PCA:
        """Fit on ``(n, width)`` activations (the training split's, never the test's)."""
        if activations.dim() != 2 or activations.shape[0] < 2:
            raise FeaturizerError(
                f"PCA needs (n >= 2, width) activations, got {tuple(activations.shape)}"
            )
        data = activations.detach().to(torch.float64)
        mean = data.mean(0)
        _, singular, vh = torch.linalg.svd(data - mean, full_matrices=False)
        k = vh.shape[0] if components is None else min(components, vh.shape[0])
        variance = singular[:k] ** 2 / (data.shape[0] - 1)
        basis = vh[:k].T
        # a deterministic sign: each component's largest entry is positive
        signs = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
        basis = basis * torch.where(signs == 0, 1.0, signs)
        dtype = activations.dtype if activations.is_floating_point() else torch.float32
        return cls(mean.to(dtype), basis.to(dtype).contiguous(), variance.to(dtype))

    @property
    def width(self) -> int:
        return int(self.components.shape[0])

    @property
    def features(self) -> int:
        return int(self.components.shape[1])

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        return (h - _like(self.mean, h)) @ _like(self.components, h)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ _like(self.components, f).T + _like(self.mean, f)

    def directions(self) -> torch.Tensor:
        return self.components

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "components": self.components, "variance": self.variance}


Activation = Literal["relu", "topk", "jumprelu"]


@dataclass(frozen=True, repr=False, eq=False)
class SparseAutoencoder(Featurizer):
    """A sparse autoencoder in SAELens's convention.

    ``encode(h) = act((h - b_dec) @ W_enc + b_enc)`` (without ``- b_dec`` when
    ``apply_b_dec_to_input`` is false), ``decode(f) = f @ W_dec + b_dec``; ``act`` is
    ReLU, TopK (ReLU then keep the ``k`` largest) or JumpReLU (zero below a per-feature
    ``threshold``).
    """

    W_enc: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    b_enc: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    W_dec: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    b_dec: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    activation: Activation = "relu"
    k: int | None = None
    threshold: torch.Tensor | None = None
    apply_b_dec_to_input: bool = True
    kind: str = field(default="sae", init=False)

    def __post_init__(self) -> None:
        if self.W_enc.dim() != 2:
            raise FeaturizerError(
                f"SAE tensor W_enc must be (d_in, d_sae), got {tuple(self.W_enc.shape)}"
            )
        d, m = (int(x) for x in self.W_enc.shape)
        expected = {"b_enc": (m,), "W_dec": (m, d), "b_dec": (d,)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise FeaturizerError(
                    f"SAE tensor {name} has shape {tuple(getattr(self, name).shape)}; with "
                    f"W_enc (d_in, d_sae) = {(d, m)} it must be {shape}"
                )
        if self.activation not in ("relu", "topk", "jumprelu"):
            raise FeaturizerError(
                f"SAE activation {self.activation!r} is not supported; use 'relu', 'topk' or "
                "'jumprelu'"
            )
        if self.activation == "topk" and (self.k is None or not 0 < self.k <= m):
            raise FeaturizerError(f"a TopK SAE needs 0 < k <= d_sae ({m}), got k={self.k}")
        if self.activation == "jumprelu" and (
            self.threshold is None or tuple(self.threshold.shape) != (m,)
        ):
            raise FeaturizerError(f"a JumpReLU SAE needs a threshold of shape ({m},)")

    @property
    def width(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def features(self) -> int:
        return int(self.W_enc.shape[1])

    def pre_activation(self, h: torch.Tensor) -> torch.Tensor:
        """The encoder's input to its activation function."""
        x = h - _like(self.b_dec, h) if self.apply_b_dec_to_input else h
        return x @ _like(self.W_enc, h) + _like(self.b_enc, h)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activation(h)
        if self.activation == "jumprelu":
            assert self.threshold is not None
            return pre * (pre > _like(self.threshold, pre))
        acts = torch.relu(pre)
        if self.activation == "topk":
            assert self.k is not None
            values, index = acts.topk(self.k, dim=-1)
            return torch.zeros_like(acts).scatter(-1, index, values)
        return acts

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ _like(self.W_dec, f) + _like(self.b_dec, f)

    def directions(self) -> torch.Tensor:
        return self.W_dec.T

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "activation": self.activation,
            "k": self.k,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
        }


def featurizer_from(
    description: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> Featurizer:
    """Rebuild a featurizer from :meth:`Featurizer.describe` and :meth:`Featurizer.tensors`."""
    kind = description.get("kind")
    if kind == "identity":
        return Identity(int(description["size"]))
    if kind == "rotation":
        return Rotation(tensors["matrix"])
    if kind == "pca":
        return PCA(tensors["mean"], tensors["components"], tensors["variance"])
    if kind == "sae":
        return SparseAutoencoder(
            tensors["W_enc"],
            tensors["b_enc"],
            tensors["W_dec"],
            tensors["b_dec"],
            activation=description["activation"],
            k=description.get("k"),
            threshold=tensors.get("threshold"),
            apply_b_dec_to_input=bool(description.get("apply_b_dec_to_input", True)),
        )
    raise FeaturizerError(f"unknown featurizer kind {kind!r}; the file may be from a newer version")


def selected_span(featurizer: Featurizer, mask: torch.Tensor) -> torch.Tensor:
    """``(width, r)`` orthonormal columns spanning the decoder directions of the features
    ``mask`` selects (``mask > 0.5``): the linear view of a feature swap.

    For neurons and principal components this is exactly the swapped subspace; for an
    SAE, whose encoder is not linear, it is the span the swap writes into. Directions
    that are linearly dependent count once (``r`` is their rank).
    """
    # on the CPU, like every alignment's basis, whatever device the featurizer is on
    directions = featurizer.directions().detach().cpu().double()[:, mask.detach().cpu() > 0.5]
    if directions.shape[1] == 0:
        raise FeaturizerError("the mask selects no feature; select at least one")
    if featurizer.kind in ("identity", "pca"):
        # orthonormal already: keep the features' own directions, in their order
        return directions.float().contiguous()
    u, singular, _ = torch.linalg.svd(directions, full_matrices=False)
    rank = max(1, int((singular > singular[0] * 1e-6).sum()))
    span: torch.Tensor = u[:, :rank].float().contiguous()
    return span


# -- loading SAEs from the layouts people share them in ----------------------------------


def load_sae(directory: str | Path) -> SparseAutoencoder:
    """An SAE from a local directory in SAELens's or sparsify's layout.

    * SAELens: ``cfg.json`` (``d_in``, ``d_sae``, ``architecture`` or
      ``activation_fn_str``, ``k`` or ``activation_fn_kwargs.k`` for TopK,
      ``apply_b_dec_to_input``) and ``sae_weights.safetensors`` (``W_enc``
      ``(d_in, d_sae)``, ``W_dec`` ``(d_sae, d_in)``, ``b_enc``, ``b_dec``, and
      ``threshold`` for JumpReLU).
    * sparsify (EleutherAI): ``cfg.json`` (``k``) and ``sae.safetensors``
      (``encoder.weight`` ``(num_latents, d_in)``, ``encoder.bias``, ``W_dec``
      ``(num_latents, d_in)``, ``b_dec``); a TopK SAE whose input has ``b_dec``
      subtracted.
    """
    path = Path(directory)
    if not path.is_dir():
        raise FeaturizerError(f"{path} is not a directory; give the SAE's directory")
    config_file = path / "cfg.json"
    if not config_file.is_file():
        raise FeaturizerError(
            f"{path} has no cfg.json; an SAE directory in SAELens's layout has cfg.json and "
            "sae_weights.safetensors, in sparsify's cfg.json and sae.safetensors"
        )
    cfg = json.loads(config_file.read_text())
    if (path / "sae_weights.safetensors").is_file():
        return _from_saelens(cfg, load_file(str(path / "sae_weights.safetensors")), path)
    if (path / "sae.safetensors").is_file():
        return _from_sparsify(cfg, load_file(str(path / "sae.safetensors")), path)
    raise FeaturizerError(
        f"{path} has cfg.json but neither sae_weights.safetensors (SAELens) nor "
        "sae.safetensors (sparsify)"
    )


def _require(weights: Mapping[str, torch.Tensor], names: tuple[str, ...], path: Path) -> None:
    missing = [n for n in names if n not in weights]
    if missing:
        raise FeaturizerError(f"the SAE weights in {path} lack {missing} (found {sorted(weights)})")


def _from_saelens(
    cfg: Mapping[str, Any], weights: Mapping[str, torch.Tensor], path: Path
) -> SparseAutoencoder:
    _require(weights, ("W_enc", "b_enc", "W_dec", "b_dec"), path)
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        raise FeaturizerError(
            f"the SAE in {path} normalizes its inputs ({norm!r}), which is not supported; "
            "fold the normalization into W_enc/W_dec or use an SAE trained without it"
        )
    architecture = str(cfg.get("architecture") or cfg.get("activation_fn_str") or "standard")
    activation: Activation
    if architecture in ("standard", "relu"):
        activation = "relu"
    elif architecture in ("topk", "batchtopk"):
        activation = "topk"
    elif architecture == "jumprelu":
        activation = "jumprelu"
    else:
        raise FeaturizerError(
            f"the SAE in {path} has architecture {architecture!r}; supported: standard (ReLU), "
            "topk, jumprelu"
        )
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k"))
    sae = SparseAutoencoder(
        weights["W_enc"].float(),
        weights["b_enc"].float(),
        weights["W_dec"].float(),
        weights["b_dec"].float(),
        activation=activation,
        k=int(k) if activation == "topk" and k is not None else None,
        threshold=weights["threshold"].float() if "threshold" in weights else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
    )
    for key in ("d_in", "d_sae"):
        declared = cfg.get(key)
        actual = sae.width if key == "d_in" else sae.features
        if declared is not None and int(declared) != actual:
            raise FeaturizerError(
                f"cfg.json in {path} says {key}={declared} but the weights have {actual}"
            )
    return sae


def _from_sparsify(
    cfg: Mapping[str, Any], weights: Mapping[str, torch.Tensor], path: Path
) -> SparseAutoencoder:
    _require(weights, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), path)
    k = cfg.get("k")
    if k is None:
        raise FeaturizerError(f"cfg.json in {path} has no k; sparsify SAEs are TopK")
    return SparseAutoencoder(
        weights["encoder.weight"].float().T.contiguous(),
        weights["encoder.bias"].float(),
        weights["W_dec"].float(),
        weights["b_dec"].float(),
        activation="topk",
        k=int(k),
        apply_b_dec_to_input=True,
    )


# -- training an SAE here ------------------------------------------------------------------


def train_sae(
    activations: torch.Tensor,
    features: int,
    *,
    activation: Literal["topk", "relu"] = "topk",
    k: int | None = None,
    l1: float = 1e-3,
    steps: int = 2000,
    batch_size: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> SparseAutoencoder:
    """Train an SAE on ``(n, width)`` activations (collected once, e.g. the training split's).

    TopK (default; ``k`` defaults to ``max(1, features // 8)``) or ReLU with an L1
    penalty on feature activations weighted by decoder norms. The decoder's rows are
    kept at unit norm, the decoder bias starts at the activations' mean, and the
    encoder starts as the decoder's transpose (as in Gao et al. 2024).
    Deterministic for a seed on one thread count.
    """
    if activations.dim() != 2 or activations.shape[0] < 2:
        raise FeaturizerError(
            f"train_sae needs (n >= 2, width) activations, got {tuple(activations.shape)}"
        )
    if features < 1:
        raise FeaturizerError(f"an SAE needs at least one feature, not {features}")
    data = activations.detach().float()
    n, d = data.shape
    if activation == "topk":
        k = max(1, features // 8) if k is None else k
        if not 0 < k <= features:
            raise FeaturizerError(f"k must be in 1..{features}, not {k}")
    # drawn on the CPU (the same start and batches on every device), trained on the
    # activations' device
    generator = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(features, d, generator=generator).to(data.device)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    W_dec = torch.nn.Parameter(w_dec)
    W_enc = torch.nn.Parameter(w_dec.T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(features, device=data.device))
    b_dec = torch.nn.Parameter(data.mean(0).clone())
    optimizer = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=lr)
    scale = data.var(0).sum().clamp_min(1e-12)
    for step in range(steps):
        rows = torch.randint(n, (min(batch_size, n),), generator=generator)
        x = data[rows.to(data.device)]
        pre = (x - b_dec) @ W_enc + b_enc
        acts = torch.relu(pre)
        if activation == "topk":
            assert k is not None
            values, index = acts.topk(k, dim=-1)
            acts = torch.zeros_like(acts).scatter(-1, index, values)
        recon = acts @ W_dec + b_dec
        loss = ((recon - x) ** 2).sum(-1).mean() / scale
        if activation == "relu":
            loss = loss + l1 * (acts * W_dec.norm(dim=1)).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
        if progress is not None and (step % 100 == 0 or step == steps - 1):
            progress(step, float(loss.detach()))
    if not math.isfinite(float(loss.detach())):
        raise FeaturizerError("SAE training diverged; lower lr")
    return SparseAutoencoder(
        W_enc.detach().clone(),
        b_enc.detach().clone(),
        W_dec.detach().clone(),
        b_dec.detach().clone(),
        activation=activation,
        k=k if activation == "topk" else None,
    )
