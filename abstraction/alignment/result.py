"""Alignments: what interchange-intervention training found, and how it is stored.

An :class:`Alignment` maps causal variables to subspaces of one activation site: an
orthonormal basis (a full rotation for DAS, fewer columns for low-rank DAS), the
column range of each variable, and for boundless DAS the learned mask. It records
the network's weight hash and the causal model's source hash, the training curve,
the configuration and library versions.

Alignments are saved as safetensors (tensors) plus JSON (everything else), written
atomically, never pickled; :meth:`Alignment.load` refuses a network whose hash
differs unless told otherwise. :meth:`Alignment.to_pyvene` exports to pyvene.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from abstraction.errors import AbstractionError, UnknownNameError, nearest
from abstraction.files import atomic_write, atomic_write_json
from abstraction.interventions import Intervention, LowRankPatch, Patch
from abstraction.locations import Location
from abstraction.network import Network

__all__ = ["FORMAT_VERSION", "Alignment", "AlignmentError", "library_versions"]

FORMAT_VERSION = 1


class AlignmentError(AbstractionError, ValueError):
    """An alignment cannot be saved, loaded or used as asked."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape numerical results."""
    from importlib.metadata import PackageNotFoundError, version

    from abstraction import __version__

    found = {"abstraction": __version__, "torch": torch.__version__}
    for package in ("transformers", "pyvene", "numpy"):
        try:  # read from the installed metadata: importing pyvene just to ask is slow
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


@dataclass(frozen=True, eq=False)
class Alignment:
    """Causal variables aligned with subspaces of one location.

    Attributes:
        method: ``"das"``, ``"low_rank"``, ``"boundless"`` or ``"patch"``.
        location: where the subspaces live.
        basis: ``(width, k)`` orthonormal columns (``None`` for plain patching).
        subspaces: variable -> ``(start, stop)`` columns of ``basis``.
        network_hash: :attr:`Network.hash` of the network it was trained on.
        model_hash: :attr:`CausalModel.source_hash` of the hypothesis.
        boundary: boundless DAS's learned boundary per variable (fraction of width).
        temperature: boundless DAS's final temperature.
        curve: the training curve, one dict per evaluation (step, loss, val IIA).
        config: the training configuration.
        versions: library versions.
    """

    method: str
    location: Location
    basis: torch.Tensor | None
    subspaces: dict[str, tuple[int, int]]
    network_hash: str
    model_hash: str
    boundary: dict[str, float] = field(default_factory=dict)
    temperature: float | None = None
    curve: list[dict[str, float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=library_versions)

    @property
    def variables(self) -> tuple[str, ...]:
        """The aligned causal variables."""
        return tuple(self.subspaces)

    def variable_basis(self, variable: str) -> torch.Tensor:
        """The ``(width, k)`` orthonormal columns spanning ``variable``'s subspace."""
        if variable not in self.subspaces:
            raise UnknownNameError(
                f"variable {variable!r} is not aligned here; {nearest(variable, self.subspaces)}"
            )
        if self.basis is None:
            raise AlignmentError("a plain patching alignment has no basis")
        start, stop = self.subspaces[variable]
        return self.basis[:, start:stop]

    def intervention(self, variable: str) -> Intervention:
        """The intervention that interchanges ``variable``'s subspace.

        Boundless DAS alignments store, per variable, the rotated coordinates its
        learned mask keeps (mask above one half), so every trained method is applied
        as a low-rank subspace interchange.
        """
        if self.method == "patch" or self.basis is None:
            return Patch(self.location)
        return LowRankPatch(self.location, basis=self.variable_basis(variable))

    def interventions(self) -> dict[str, Intervention]:
        """Each aligned variable's intervention (what evaluation and baselines apply)."""
        return {v: self.intervention(v) for v in self.variables}

    # -- persistence ----------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json`` atomically; returns the JSON path."""
        base = Path(path)
        if base.suffix in (".json", ".safetensors"):
            base = base.with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"basis": self.basis.contiguous()} if self.basis is not None else {}
        meta = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "location": self.location.to_dict(),
            "subspaces": {k: list(v) for k, v in self.subspaces.items()},
            "network_hash": self.network_hash,
            "model_hash": self.model_hash,
            "boundary": self.boundary,
            "temperature": self.temperature,
            "curve": self.curve,
            "config": self.config,
            "versions": self.versions,
        }
        tensor_file = base.with_suffix(".safetensors")
        json_file = base.with_suffix(".json")
        atomic_write(tensor_file, lambda tmp: save_file(tensors, str(tmp)))
        atomic_write_json(json_file, meta)
        return json_file

    @classmethod
    def load(
        cls, path: str | Path, network: Network | None = None, *, allow_hash_mismatch: bool = False
    ) -> Alignment:
        """Read an alignment; with ``network``, refuse it if the weights' hash differs.

        Args:
            path: ``<name>.json``, ``<name>.safetensors`` or ``<name>``.
            network: the network it will be used with.
            allow_hash_mismatch: load anyway when the hashes differ (results then
                describe another network than the one the alignment was trained on).
        """
        base = Path(path)
        if base.suffix in (".json", ".safetensors"):
            base = base.with_suffix("")
        json_file, tensor_file = base.with_suffix(".json"), base.with_suffix(".safetensors")
        if not json_file.is_file() or not tensor_file.is_file():
            raise AlignmentError(
                f"no alignment at {base}: expected {json_file.name} and {tensor_file.name}"
            )
        meta = json.loads(json_file.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise AlignmentError(
                f"{json_file} has format version {meta.get('format_version')}, this library "
                f"reads version {FORMAT_VERSION}"
            )
        if network is not None and meta["network_hash"] != network.hash and not allow_hash_mismatch:
            raise AlignmentError(
                f"{json_file.name} was trained on a network with hash {meta['network_hash']}, but "
                f"this network's hash is {network.hash}: its weights or architecture differ. "
                "Use the original network, retrain the alignment, or pass "
                "allow_hash_mismatch=True to load it anyway"
            )
        tensors = load_file(str(tensor_file))
        return cls(
            method=meta["method"],
            location=Location.from_dict(meta["location"]),
            basis=tensors.get("basis"),
            subspaces={k: (int(v[0]), int(v[1])) for k, v in meta["subspaces"].items()},
            network_hash=meta["network_hash"],
            model_hash=meta["model_hash"],
            boundary={k: float(v) for k, v in meta.get("boundary", {}).items()},
            temperature=meta.get("temperature"),
            curve=meta.get("curve", []),
            config=meta.get("config", {}),
            versions=meta.get("versions", {}),
        )

    def to_pyvene(self, network: Network, variable: str) -> tuple[dict[str, Any], Any]:
        """pyvene representation fields and intervention object for one variable."""
        from abstraction.pyvene_interop import to_pyvene

        return to_pyvene(self.intervention(variable), network)

    def __repr__(self) -> str:
        spaces = ", ".join(f"{k}={v[0]}:{v[1]}" for k, v in self.subspaces.items())
        return f"Alignment({self.method}, {self.location}, {spaces}, network={self.network_hash})"
