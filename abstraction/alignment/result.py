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

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from abstraction.alignment.method import method_named, method_names
from abstraction.errors import (
    AbstractionError,
    AlignmentError,
    DamagedFileError,
    UnknownNameError,
    nearest,
)
from abstraction.featurizers import Featurizer, FeaturizerError, featurizer_from
from abstraction.files import atomic_write, atomic_write_json, read_json, sha256_file
from abstraction.interventions import FeaturePatch, Intervention, LowRankPatch, Patch
from abstraction.locations import Location
from abstraction.network import Network

__all__ = ["FORMAT_VERSION", "Alignment", "AlignmentError", "library_versions"]

FORMAT_VERSION = 2
"""2: the JSON records the tensor file's SHA-256 and shapes (version 1 files still load,
checked for structure only)."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape numerical results."""
    return dict(_installed_versions())


@functools.cache  # installed packages do not change within a process; reading them is slow
def _installed_versions() -> dict[str, str]:
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
        featurizer: for ``"dbm"``, ``"pca"`` and ``"sae"``: the featurizer whose
            features are swapped (neurons, principal components, an SAE).
        masks: for those methods, each variable's hard (0/1) mask over the
            featurizer's features. ``basis`` then holds, per variable, the orthonormalised
            decoder directions of its selected features (``subspaces`` gives the columns),
            the linear view that diagnostics, mean ablation and the random-subspace null
            use; the intervention itself is the :class:`FeaturePatch`.
    """

    method: str
    location: Location
    basis: torch.Tensor | None
    subspaces: dict[str, tuple[int, int]]
    network_hash: str
    model_hash: str
    boundary: dict[str, float] = field(default_factory=dict)
    temperature: float | None = None
    curve: list[dict[str, float | None]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=library_versions)
    featurizer: Featurizer | None = None
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def variables(self) -> tuple[str, ...]:
        """The aligned causal variables."""
        return tuple(self.subspaces)

    @property
    def units(self) -> dict[str, int]:
        """How many features (or neurons) each variable keeps: the mask's size for
        feature methods, the subspace's dimension otherwise."""
        if self.masks:
            return {v: int((m > 0.5).sum()) for v, m in self.masks.items()}
        return {v: b - a for v, (a, b) in self.subspaces.items()}

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
        if self.featurizer is not None and variable in self.masks:
            return FeaturePatch(self.location, self.featurizer, self.masks[variable])
        if self.basis is None:
            return Patch(self.location)
        return LowRankPatch(self.location, basis=self.variable_basis(variable))

    def interventions(self) -> dict[str, Intervention]:
        """Each aligned variable's intervention (what evaluation and baselines apply)."""
        return {v: self.intervention(v) for v in self.variables}

    # -- persistence ----------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json`` atomically; returns the JSON path.

        The tensor file is written first, then the JSON, which records the tensor
        file's SHA-256 and every tensor's shape: the JSON is what commits the pair, and
        :meth:`load` refuses a tensor file that is not the one its JSON describes (a
        save interrupted between the two files, a truncated or swapped file).
        """
        base = Path(path)
        if base.suffix in (".json", ".safetensors"):
            base = base.with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"basis": self.basis.contiguous()} if self.basis is not None else {}
        tensors.update({f"mask.{v}": m.float().contiguous() for v, m in self.masks.items()})
        if self.featurizer is not None:
            tensors.update(
                {f"featurizer.{k}": t.contiguous() for k, t in self.featurizer.tensors().items()}
            )
        tensor_file = base.with_suffix(".safetensors")
        json_file = base.with_suffix(".json")
        atomic_write(tensor_file, lambda tmp: save_file(tensors, str(tmp)))
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
            "featurizer": None if self.featurizer is None else self.featurizer.describe(),
            "tensors": {
                "file": tensor_file.name,
                "sha256": sha256_file(tensor_file),
                "shapes": {k: list(v.shape) for k, v in tensors.items()},
            },
        }
        atomic_write_json(json_file, meta)
        return json_file

    @classmethod
    def load(
        cls, path: str | Path, network: Network | None = None, *, allow_hash_mismatch: bool = False
    ) -> Alignment:
        """Read an alignment; with ``network``, refuse it if the weights' hash differs.

        Both files are checked before anything is built: the JSON's fields and types,
        the tensor file's SHA-256 and shapes against those the JSON records, and that
        every trained method has a basis wide enough for its subspaces. Anything wrong
        raises :class:`~abstraction.errors.DamagedFileError` naming the file and the fix;
        an alignment is never loaded as something other than what was saved.

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
        redo = "re-run the alignment (abstraction run / align + save) to write it again"
        meta = read_json(json_file, fix=redo, what="alignment metadata")
        version = meta.get("format_version")
        if version not in (1, FORMAT_VERSION):
            raise DamagedFileError(
                json_file,
                f"format version {version!r}; this library reads versions 1 and {FORMAT_VERSION}",
                "upgrade the library, or re-run the alignment with this version",
            )
        fields = _checked_fields(json_file, meta, redo)
        if (
            network is not None
            and fields["network_hash"] != network.hash
            and not allow_hash_mismatch
        ):
            raise AlignmentError(
                f"{json_file.name} was trained on a network with hash {fields['network_hash']}, "
                f"but this network's hash is {network.hash}: its weights or architecture differ. "
                "Use the original network, retrain the alignment, or pass "
                "allow_hash_mismatch=True to load it anyway"
            )
        tensors = _checked_tensors(tensor_file, meta, fields, redo)
        featurizer, masks = _checked_features(tensor_file, meta, fields, tensors, redo)
        return cls(basis=tensors.get("basis"), featurizer=featurizer, masks=masks, **fields)

    def to_pyvene(self, network: Network, variable: str) -> tuple[dict[str, Any], Any]:
        """pyvene representation fields and intervention object for one variable."""
        from abstraction.pyvene_interop import to_pyvene

        return to_pyvene(self.intervention(variable), network)

    def __repr__(self) -> str:
        spaces = ", ".join(f"{k}={v[0]}:{v[1]}" for k, v in self.subspaces.items())
        return f"Alignment({self.method}, {self.location}, {spaces}, network={self.network_hash})"


def _checked_fields(file: Path, meta: dict[str, Any], fix: str) -> dict[str, Any]:
    """The alignment's fields from its JSON, each checked for presence and type."""

    def bad(problem: str) -> DamagedFileError:
        return DamagedFileError(file, problem, fix)

    for key, kind in (
        ("method", str),
        ("location", dict),
        ("subspaces", dict),
        ("network_hash", str),
        ("model_hash", str),
    ):
        if key not in meta:
            raise bad(f"the field {key!r} is missing")
        if not isinstance(meta[key], kind):
            raise bad(f"{key!r} is a {type(meta[key]).__name__}, not a {kind.__name__}")
    if meta["method"] not in method_names():
        raise bad(f"unknown method {meta['method']!r}; {nearest(meta['method'], method_names())}")
    subspaces: dict[str, tuple[int, int]] = {}
    for name, span in meta["subspaces"].items():
        if not (
            isinstance(span, list)
            and len(span) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in span)
            and 0 <= span[0] < span[1]
        ):
            raise bad(f"the subspace of {name!r} is {span!r}, not [start, stop] with start < stop")
        subspaces[name] = (span[0], span[1])
    if not subspaces:
        raise bad("no variable is aligned (subspaces is empty)")
    try:
        location = Location.from_dict(meta["location"])
    except (AbstractionError, TypeError, ValueError, KeyError, IndexError) as exc:
        raise bad(f"the location {meta['location']!r} is not valid: {exc}") from None
    optional: dict[str, type] = {"boundary": dict, "curve": list, "config": dict, "versions": dict}
    for key, expected in optional.items():
        if key in meta and not isinstance(meta[key], expected):
            raise bad(f"{key!r} is a {type(meta[key]).__name__}, not a {expected.__name__}")
    temperature = meta.get("temperature")
    if temperature is not None and not isinstance(temperature, (int, float)):
        raise bad(f"'temperature' is {temperature!r}, not a number")
    try:
        boundary = {k: float(v) for k, v in meta.get("boundary", {}).items()}
    except (TypeError, ValueError):
        raise bad(f"'boundary' is {meta.get('boundary')!r}, not variable -> number") from None
    return {
        "method": meta["method"],
        "location": location,
        "subspaces": subspaces,
        "network_hash": meta["network_hash"],
        "model_hash": meta["model_hash"],
        "boundary": boundary,
        "temperature": None if temperature is None else float(temperature),
        "curve": meta.get("curve", []),
        "config": meta.get("config", {}),
        "versions": meta.get("versions", {}),
    }


def _checked_tensors(
    file: Path, meta: dict[str, Any], fields: dict[str, Any], fix: str
) -> dict[str, torch.Tensor]:
    """The tensor file's tensors, checked against the JSON (hash, names, shapes, basis)."""
    recorded = meta.get("tensors")
    if meta["format_version"] >= 2:
        if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
            raise DamagedFileError(
                file.with_suffix(".json"), "the tensor file's sha256 is not recorded", fix
            )
        actual = sha256_file(file)
        if actual != recorded["sha256"]:
            raise DamagedFileError(
                file,
                f"its SHA-256 is {actual[:16]}..., but {file.with_suffix('.json').name} "
                f"records {recorded['sha256'][:16]}...: the tensor file is damaged, truncated, "
                "or from another save than its JSON (a save interrupted between the two files)",
                fix,
            )
    try:
        tensors = load_file(str(file))
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
        raise DamagedFileError(
            file, f"not a readable safetensors file ({type(exc).__name__}: {exc})", fix
        ) from None
    featurized = method_named(fields["method"]).featurized
    unexpected = sorted(
        k
        for k in tensors
        if k != "basis" and not (featurized and k.startswith(("mask.", "featurizer.")))
    )
    if unexpected:
        belongs = "'basis', 'mask.<variable>' and 'featurizer.<name>'" if featurized else "'basis'"
        raise DamagedFileError(file, f"unexpected tensors {unexpected}; only {belongs} belong", fix)
    if isinstance(recorded, dict) and "shapes" in recorded:
        shapes = {k: list(v.shape) for k, v in tensors.items()}
        if shapes != recorded["shapes"]:
            raise DamagedFileError(
                file, f"tensor shapes {shapes} differ from those recorded {recorded['shapes']}", fix
            )
    basis = tensors.get("basis")
    if method_named(fields["method"]).trained:
        if basis is None:
            raise DamagedFileError(
                file,
                f"a {fields['method']!r} alignment needs its basis, but the file has no "
                "'basis' tensor (it would be applied as a full patch)",
                fix,
            )
        stop = max(b for _, b in fields["subspaces"].values())
        if basis.dim() != 2 or not basis.is_floating_point() or basis.shape[1] < stop:
            raise DamagedFileError(
                file,
                f"the basis has shape {tuple(basis.shape)} ({basis.dtype}), but the subspaces "
                f"need a floating (width, >= {stop}) matrix",
                fix,
            )
        if not bool(torch.isfinite(basis).all()):
            raise DamagedFileError(file, "the basis holds NaN or infinite values", fix)
    return tensors


def _checked_features(
    file: Path,
    meta: dict[str, Any],
    fields: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    fix: str,
) -> tuple[Featurizer | None, dict[str, torch.Tensor]]:
    """A feature method's featurizer and masks, checked against each other and the basis."""
    if not method_named(fields["method"]).featurized:
        return None, {}
    description = meta.get("featurizer")
    if not isinstance(description, dict):
        raise DamagedFileError(
            file.with_suffix(".json"),
            f"a {fields['method']!r} alignment needs its featurizer's description, but "
            f"'featurizer' is {description!r}",
            fix,
        )
    own = {
        k.removeprefix("featurizer."): t for k, t in tensors.items() if k.startswith("featurizer.")
    }
    try:
        featurizer = featurizer_from(description, own)
    except (FeaturizerError, KeyError, TypeError, ValueError) as exc:
        raise DamagedFileError(
            file, f"its featurizer cannot be rebuilt ({type(exc).__name__}: {exc})", fix
        ) from None
    masks: dict[str, torch.Tensor] = {}
    for v in fields["subspaces"]:
        mask = tensors.get(f"mask.{v}")
        if mask is None:
            raise DamagedFileError(file, f"the mask of {v!r} is missing", fix)
        if tuple(mask.shape) != (featurizer.features,) or not bool(
            ((mask == 0) | (mask == 1)).all()
        ):
            raise DamagedFileError(
                file,
                f"the mask of {v!r} has shape {tuple(mask.shape)} or values other than 0/1; it "
                f"must be a 0/1 vector over the featurizer's {featurizer.features} features",
                fix,
            )
        if not bool(mask.any()):
            raise DamagedFileError(file, f"the mask of {v!r} selects no feature", fix)
        masks[v] = mask
    basis = tensors["basis"]
    if basis.shape[0] != featurizer.width:
        raise DamagedFileError(
            file,
            f"the basis has {basis.shape[0]} rows but the featurizer reads width "
            f"{featurizer.width}",
            fix,
        )
    return featurizer, masks
