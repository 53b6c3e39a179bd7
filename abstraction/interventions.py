"""Intervention types: values that say how to change one activation.

Each intervention is a frozen dataclass (printable, serialisable) with a pure
``apply(base, source)`` on the selected activation's last dimension:

================== =================================================================
:class:`Patch`      replace the activation (or its ``Location.dims`` slice) by the
                    source's: full patch and dimension-slice patch
:class:`RotatedPatch`  rotate with an orthogonal matrix, swap the rotated
                    coordinates ``subspace``, rotate back (DAS)
:class:`LowRankPatch`  swap the component in the span of orthonormal columns
                    (low-rank DAS)
:class:`BoundlessPatch` swap rotated coordinates weighted by a learned sigmoid mask
                    (boundless DAS)
:class:`FeaturePatch`   swap selected features of a featurizer (PCA, SAE, neurons),
                    the base's reconstruction error carried through (DBM, PCA, SAE)
:class:`MeanAblation`  replace (a subspace of) the activation by a mean activation
:class:`ZeroAblation`  replace (a subspace of) the activation by zeros
================== =================================================================

Every subspace interchange is one formula, :func:`interchange`; parameters may be
tensors that require gradients, so alignment training builds these same objects
from its trainable weights at every step. :mod:`abstraction.runtime` applies them to
a network, :mod:`abstraction.pyvene_interop` converts them to and from pyvene, whose
``IntervenableModel`` they match (integration tests, to 1e-6).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from abstraction.errors import AbstractionError
from abstraction.featurizers import Featurizer, FeaturizerError
from abstraction.locations import Location

__all__ = [
    "BoundlessPatch",
    "FeaturePatch",
    "Intervention",
    "InterventionError",
    "LowRankPatch",
    "MeanAblation",
    "Patch",
    "RotatedPatch",
    "ZeroAblation",
    "boundary_mask",
    "interchange",
    "random_subspace_patches",
]


class InterventionError(AbstractionError, ValueError):
    """An intervention does not fit its location, its source, or the network."""


def interchange(
    base: torch.Tensor,
    source: torch.Tensor,
    basis: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Move ``base``'s coordinates along ``basis`` columns to ``source``'s.

    ``basis`` is ``(width, k)`` with orthonormal columns; the result is
    ``base + ((source - base) @ basis * weights) @ basis.T``: with no ``weights`` the
    component of ``base`` in the span of ``basis`` is replaced by ``source``'s (DAS,
    low-rank DAS, subspace ablations); with ``weights`` in [0, 1] per column each
    coordinate is interpolated (boundless DAS). This is the only copy of the
    subspace-interchange arithmetic in the library.
    """
    coordinates = torch.matmul(source - base, basis)
    if weights is not None:
        coordinates = coordinates * weights
    return base + torch.matmul(coordinates, basis.T)


def boundary_mask(
    width: int, boundary: torch.Tensor | float, temperature: torch.Tensor | float
) -> torch.Tensor:
    """Boundless DAS's soft mask over rotated coordinates (pyvene's ``sigmoid_boundary``)."""
    boundary = torch.as_tensor(boundary)
    temperature = torch.as_tensor(temperature, device=boundary.device, dtype=boundary.dtype)
    population = torch.arange(width, device=boundary.device, dtype=boundary.dtype)
    edge = torch.clamp(boundary, 1e-3, 1.0) * width
    return torch.sigmoid(population / temperature) * torch.sigmoid(
        (edge - population) / temperature
    )


def _tensor_repr(t: torch.Tensor | None) -> str:
    return "None" if t is None else f"tensor{tuple(t.shape)}"


def _check_width(name: str, tensor: torch.Tensor, width: int | None, dim: int = 0) -> None:
    if not tensor.is_floating_point():
        raise InterventionError(
            f"{name} has dtype {tensor.dtype}; it must be a floating-point tensor (it is cast "
            "to the network's dtype and device when applied)"
        )
    if width is not None and tensor.shape[dim] != width:
        raise InterventionError(
            f"{name} has {tensor.shape[dim]} rows but the location's activation has width "
            f"{width}; build it for this location's width"
        )


def _like(tensor: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    return tensor.to(base.device, base.dtype)


@dataclass(frozen=True, repr=False, eq=False)
class Intervention:
    """Base class: an intervention at one location."""

    location: Location

    needs_source: bool = field(default=True, init=False)

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        """The new activation, from the base activation and the source activation.

        An intervention that takes a source must return ``base`` itself when
        ``source`` is ``base`` (interchanging a base with itself changes nothing):
        the runtime relies on it to leave the rows that do not intervene untouched.
        """
        raise NotImplementedError

    def check(self, width: int | None) -> None:
        """Raise :class:`InterventionError` when the parameters do not fit ``width``."""

    def _source(self, source: torch.Tensor | None) -> torch.Tensor:
        if source is None:
            raise InterventionError(f"{self!r} needs a source activation")
        return source

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if k != "needs_source"}
        shown = ", ".join(
            f"{k}={_tensor_repr(v) if isinstance(v, torch.Tensor) else v!s}"
            for k, v in fields.items()
        )
        return f"{type(self).__name__}({shown})"


@dataclass(frozen=True, repr=False, eq=False)
class Patch(Intervention):
    """Replace the activation (or its ``location.dims`` slice) by the source's."""

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        return _like(self._source(source), base).expand_as(base)


@dataclass(frozen=True, repr=False, eq=False)
class RotatedPatch(Intervention):
    """DAS: rotate by an orthogonal ``(w, w)`` matrix, swap rotated coordinates, rotate back.

    Attributes:
        rotation: the orthogonal matrix; rotated coordinates are ``h @ rotation``.
        subspace: the ``(start, stop)`` rotated coordinates taken from the source.
    """

    rotation: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    subspace: tuple[int, int] = (0, 0)

    def check(self, width: int | None) -> None:
        _check_width("rotation", self.rotation, width)
        w = self.rotation.shape[0]
        if self.rotation.shape != (w, w):
            raise InterventionError(f"rotation must be square, got {tuple(self.rotation.shape)}")
        start, stop = self.subspace
        if not 0 <= start < stop <= w:
            raise InterventionError(
                f"subspace {self.subspace} must satisfy 0 <= start < stop <= {w}"
            )

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        start, stop = self.subspace
        basis = _like(self.rotation, base)[:, start:stop]
        return interchange(base, _like(self._source(source), base), basis)


@dataclass(frozen=True, repr=False, eq=False)
class LowRankPatch(Intervention):
    """Low-rank DAS: swap the component in the span of ``basis`` (``(w, k)``, orthonormal)."""

    basis: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def check(self, width: int | None) -> None:
        _check_width("basis", self.basis, width)
        if self.basis.dim() != 2 or self.basis.shape[1] > self.basis.shape[0]:
            raise InterventionError(
                f"basis must be (width, rank) with rank <= width, got {tuple(self.basis.shape)}"
            )

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        return interchange(base, _like(self._source(source), base), _like(self.basis, base))


@dataclass(frozen=True, repr=False, eq=False)
class BoundlessPatch(Intervention):
    """Boundless DAS: interpolate rotated coordinates with a sigmoid mask of learned size.

    ``boundary`` and ``temperature`` may be tensors (trainable during alignment).
    """

    rotation: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    boundary: float | torch.Tensor = 0.5
    temperature: float | torch.Tensor = 50.0

    def check(self, width: int | None) -> None:
        _check_width("rotation", self.rotation, width)

    def mask(self) -> torch.Tensor:
        """The mask over rotated coordinates (1 = taken from the source)."""
        return boundary_mask(self.rotation.shape[0], self.boundary, self.temperature)

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        rotation = _like(self.rotation, base)
        weights = _like(self.mask(), base)
        return interchange(base, _like(self._source(source), base), rotation, weights)


@dataclass(frozen=True, repr=False, eq=False)
class FeaturePatch(Intervention):
    """Swap the features ``mask`` selects, in a featurizer's feature space.

    ``apply(base, source) = decode(fb + mask * (fs - fb)) + (base - decode(fb))`` with
    ``fb = encode(base)``, ``fs = encode(source)``: the base's reconstruction error is
    carried through, so a zero mask (or ``source`` equal to ``base``) gives ``base``
    back up to float rounding. ``mask`` is ``(features,)`` in [0, 1]: hard (0/1) once
    trained, soft while a differentiable binary mask (DBM) learns it.
    """

    featurizer: Featurizer | None = None
    mask: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def check(self, width: int | None) -> None:
        if self.featurizer is None:
            raise InterventionError("a FeaturePatch needs a featurizer")
        try:
            self.featurizer.check(width)
        except FeaturizerError as exc:
            raise InterventionError(str(exc)) from None
        if tuple(self.mask.shape) != (self.featurizer.features,):
            raise InterventionError(
                f"mask has shape {tuple(self.mask.shape)} but the featurizer has "
                f"{self.featurizer.features} features; give one weight per feature"
            )

    @property
    def selected(self) -> torch.Tensor:
        """The indices of the features the (hardened) mask takes from the source."""
        return (self.mask > 0.5).nonzero().flatten()

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        assert self.featurizer is not None
        source = _like(self._source(source), base)
        if source is base:
            return base
        encoded = self.featurizer.encode(base)
        decoded = self.featurizer.decode(encoded)
        mask = _like(self.mask, encoded)
        swapped = encoded + mask * (self.featurizer.encode(source) - encoded)
        # base + (decode(swapped) - decode(encoded)) equals decode(swapped) + the base's
        # reconstruction error, and is exactly the base when nothing is swapped
        return base + (self.featurizer.decode(swapped) - decoded)


@dataclass(frozen=True, repr=False, eq=False)
class MeanAblation(Intervention):
    """Replace the activation, or its component in the span of ``basis``, by ``mean``."""

    mean: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    basis: torch.Tensor | None = None
    needs_source: bool = field(default=False, init=False)

    def check(self, width: int | None) -> None:
        _check_width("mean", self.mean, width, dim=-1)
        if self.basis is not None:
            _check_width("basis", self.basis, width)

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        mean = _like(self.mean, base).expand_as(base)
        if self.basis is None:
            return mean
        return interchange(base, mean, _like(self.basis, base))


@dataclass(frozen=True, repr=False, eq=False)
class ZeroAblation(Intervention):
    """Replace the activation, or its component in the span of ``basis``, by zeros."""

    basis: torch.Tensor | None = None
    needs_source: bool = field(default=False, init=False)

    def check(self, width: int | None) -> None:
        if self.basis is not None:
            _check_width("basis", self.basis, width)

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        if self.basis is None:
            return torch.zeros_like(base)
        return interchange(base, torch.zeros_like(base), _like(self.basis, base))


def random_subspace_patches(
    location: Location,
    subspaces: Mapping[str, tuple[int, int]],
    width: int,
    generator: torch.Generator,
) -> dict[str, LowRankPatch]:
    """Interchanges of random orthonormal subspaces, one per variable of ``subspaces``.

    Same ranks as ``subspaces``, mutually orthogonal: the null against which a trained
    alignment is compared (same location, same dimensions, no training). When the ranks
    add up to more than ``width`` (feature masks of several variables may overlap), each
    variable's subspace is drawn on its own, still of its own rank.
    """
    total = sum(stop - start for start, stop in subspaces.values())
    if total > width:
        return {
            v: LowRankPatch(
                location,
                torch.linalg.qr(torch.randn(width, stop - start, generator=generator))[0],
            )
            for v, (start, stop) in subspaces.items()
        }
    q, _ = torch.linalg.qr(torch.randn(width, max(total, 1), generator=generator))
    patches, offset = {}, 0
    for v, (start, stop) in subspaces.items():
        patches[v] = LowRankPatch(location, q[:, offset : offset + (stop - start)])
        offset += stop - start
    return patches
