"""Networks: a torch module plus what the library needs to know about it.

:class:`Network` wraps any ``torch.nn.Module`` or a Hugging Face model loaded with
``from_pretrained`` from a local directory or built from a config. It records a hash
of the weights and architecture (stored with every alignment and checked on load),
knows the model family (GPT-2, GPT-NeoX, Llama, BERT, pyvene's MLP) so that
conventional locations such as ``Location(layer=3, component="mlp_output")`` resolve to
submodules, and runs batched forward passes returning the readout logits.

:class:`Batch` is what a task turns causal-model inputs into: keyword arguments for
the module, plus named token positions for sequence models.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from abstraction.errors import AbstractionError, UnknownNameError, nearest

__all__ = ["FAMILIES", "Batch", "Family", "Network", "NetworkError"]


class NetworkError(AbstractionError, ValueError):
    """A network cannot be loaded or used as asked."""


@dataclass(frozen=True)
class Family:
    """How conventional location names map to submodules for one model family.

    Attributes:
        name: the family (``"gpt2"``, ``"gpt_neox"``, ``"llama"``, ``"bert"``, ``"mlp"``).
        blocks: candidate paths of the ``ModuleList`` of blocks, tried in order.
        components: component name -> (path inside a block, ``"input"`` or ``"output"``).
        width_attrs: config attributes giving the residual width, tried in order.
        heads_attrs: config attributes giving the number of attention heads.
        head_component: the component whose last dimension is split into heads.
        sequence: whether activations have a position dimension.
    """

    name: str
    blocks: tuple[str, ...]
    components: Mapping[str, tuple[str, str]]
    width_attrs: tuple[str, ...]
    heads_attrs: tuple[str, ...] = ()
    head_component: str | None = None
    sequence: bool = True


FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        "gpt2",
        ("transformer.h", "h"),
        {
            "residual": ("", "output"),
            "residual_input": ("", "input"),
            "attention_output": ("attn", "output"),
            "mlp_output": ("mlp", "output"),
            "head": ("attn.c_proj", "input"),
        },
        ("n_embd", "hidden_size"),
        ("n_head",),
        "head",
    ),
    "gpt_neox": Family(
        "gpt_neox",
        ("gpt_neox.layers", "layers"),
        {
            "residual": ("", "output"),
            "residual_input": ("", "input"),
            "attention_output": ("attention", "output"),
            "mlp_output": ("mlp", "output"),
            "head": ("attention.dense", "input"),
        },
        ("hidden_size",),
        ("num_attention_heads",),
        "head",
    ),
    "llama": Family(
        "llama",
        ("model.layers", "layers"),
        {
            "residual": ("", "output"),
            "residual_input": ("", "input"),
            "attention_output": ("self_attn", "output"),
            "mlp_output": ("mlp", "output"),
            "head": ("self_attn.o_proj", "input"),
        },
        ("hidden_size",),
        ("num_attention_heads",),
        "head",
    ),
    "bert": Family(
        "bert",
        ("bert.encoder.layer", "encoder.layer"),
        {
            "residual": ("", "output"),
            "residual_input": ("", "input"),
            "attention_output": ("attention", "output"),
            "mlp_output": ("output", "output"),
            "head": ("attention.self", "output"),
        },
        ("hidden_size",),
        ("num_attention_heads",),
        "head",
    ),
    "mlp": Family(
        "mlp",
        ("mlp.h", "h"),
        {
            "residual": ("", "output"),
            "residual_input": ("", "input"),
            "activation": ("act", "output"),
        },
        ("h_dim",),
        sequence=False,
    ),
}

_MODEL_TYPES = {
    "gpt2": "gpt2",
    "gpt_neox": "gpt_neox",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "gemma": "llama",
    "olmo": "llama",
    "bert": "bert",
    "roberta": "bert",
    "mlp": "mlp",
}


@dataclass(frozen=True)
class Batch:
    """Network inputs for a batch of examples.

    Attributes:
        inputs: keyword arguments for the module (``input_ids`` and
            ``attention_mask`` for transformers, ``inputs_embeds`` for pyvene's MLP).
        positions: named token positions, each a ``(batch,)`` long tensor of absolute
            indices into the (padded) sequence.
        readout: the position whose logits are the prediction, ``(batch,)``; ``None``
            for networks whose output has no position dimension.
    """

    inputs: dict[str, torch.Tensor]
    positions: dict[str, torch.Tensor] = field(default_factory=dict)
    readout: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    @property
    def attention_mask(self) -> torch.Tensor | None:
        """The padding mask ``(batch, seq)`` (1 = real token), when there is one."""
        return self.inputs.get("attention_mask")

    def select(self, index: torch.Tensor | slice) -> Batch:
        """The sub-batch at ``index`` (a slice or a tensor of row indices)."""
        return Batch(
            {k: v[index] for k, v in self.inputs.items()},
            {k: v[index] for k, v in self.positions.items()},
            None if self.readout is None else self.readout[index],
        )

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device``."""
        return Batch(
            {k: v.to(device) for k, v in self.inputs.items()},
            {k: v.to(device) for k, v in self.positions.items()},
            None if self.readout is None else self.readout.to(device),
        )


def _get_module(root: nn.Module, path: str) -> nn.Module | None:
    module: nn.Module = root
    if not path:
        return module
    for part in path.split("."):
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and part.isdigit():
            index = int(part)
            if index >= len(module):
                return None
            module = module[index]
        elif hasattr(module, part) and isinstance(getattr(module, part), nn.Module):
            module = getattr(module, part)
        else:
            return None
    return module


class Network:
    """A torch module prepared for interventions.

    Build one with :meth:`wrap` (any module), :meth:`from_pretrained` (a local Hugging
    Face checkpoint directory) or :meth:`from_config` (a ``transformers`` config).
    The module is put in eval mode; its parameters are frozen.
    """

    def __init__(self, module: nn.Module, *, family: str | None = None, name: str | None = None):
        if not isinstance(module, nn.Module):
            raise NetworkError(
                f"Network needs a torch.nn.Module, got {type(module).__name__}; load a model "
                "first, or use Network.from_pretrained(path)"
            )
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.name = name or type(module).__name__
        self.family = self._detect_family(family)
        self._blocks_path = self._find_blocks()
        self._hash: str | None = None

    # -- construction ----------------------------------------------------------------

    @classmethod
    def wrap(
        cls, module: nn.Module, *, family: str | None = None, name: str | None = None
    ) -> Network:
        """Wrap an existing module (``family`` is detected when not given)."""
        return cls(module, family=family, name=name)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, name: str | None = None) -> Network:
        """Load a Hugging Face checkpoint saved with ``save_pretrained`` in a local directory.

        The model class is read from ``config.json`` (``architectures``); pyvene's MLP
        classifier (``model_type: "mlp"``) is supported too.
        """
        directory = Path(path)
        config_file = directory / "config.json"
        if not config_file.is_file():
            raise NetworkError(
                f"{directory} is not a saved model: it has no config.json. Pass a directory "
                "written by model.save_pretrained(...)"
            )
        config = json.loads(config_file.read_text())
        model_class = _model_class(config)
        if config.get("model_type") == "mlp":
            from pyvene.models.mlp.modelings_mlp import MLPConfig

            module = model_class.from_pretrained(
                str(directory), config=MLPConfig.from_pretrained(str(directory))
            )
        else:
            module = model_class.from_pretrained(str(directory))
        return cls(module, name=name or directory.name)

    @classmethod
    def from_config(cls, config: Any, *, seed: int = 0, name: str | None = None) -> Network:
        """Build a randomly initialised Hugging Face model from a config object."""
        import transformers

        torch.manual_seed(seed)
        architectures = getattr(config, "architectures", None) or []
        if architectures and hasattr(transformers, architectures[0]):
            model_class = getattr(transformers, architectures[0])
            module = model_class(config)
        elif getattr(config, "model_type", None) == "mlp":
            from pyvene.models.mlp.modelings_mlp import MLPForClassification

            module = MLPForClassification(config)
            restore_default_linear_init(module)
        else:
            module = transformers.AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
        return cls(module, name=name)

    def save_pretrained(self, path: str | Path) -> None:
        """Save the module with ``save_pretrained`` (safetensors weights + config.json)."""
        save = getattr(self.module, "save_pretrained", None)
        if save is None:
            raise NetworkError(
                f"{type(self.module).__name__} has no save_pretrained; save its state_dict "
                "with safetensors instead"
            )
        _quiet_transformers()
        save(str(path))

    # -- identity ----------------------------------------------------------------------

    @property
    def hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the architecture and every weight."""
        if self._hash is None:
            digest = hashlib.sha256()
            digest.update(type(self.module).__name__.encode())
            config = getattr(self.module, "config", None)
            if config is not None and hasattr(config, "to_json_string"):
                settings = json.loads(config.to_json_string())
                for volatile in ("transformers_version", "_name_or_path", "architectures"):
                    settings.pop(volatile, None)
                digest.update(json.dumps(settings, sort_keys=True).encode())
            for key, tensor in sorted(self.module.state_dict().items()):
                digest.update(key.encode())
                digest.update(str(tuple(tensor.shape)).encode())
                digest.update(
                    tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()
                    if tensor.numel()
                    else b""
                )
            self._hash = digest.hexdigest()[:16]
        return self._hash

    @property
    def device(self) -> torch.device:
        """The device of the module's first parameter (CPU for parameterless modules)."""
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the module's parameters."""
        for p in self.module.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def to(self, device: torch.device | str) -> Network:
        """Move the module to ``device`` (CUDA when present; never required)."""
        self.module.to(device)
        return self

    # -- structure --------------------------------------------------------------------

    @property
    def blocks(self) -> nn.ModuleList | None:
        """The ``ModuleList`` of layers, for known families."""
        if self._blocks_path is None:
            return None
        found = _get_module(self.module, self._blocks_path)
        assert isinstance(found, nn.ModuleList)
        return found

    @property
    def blocks_path(self) -> str | None:
        """The submodule path of the layers (``"transformer.h"``), for known families."""
        return self._blocks_path

    @property
    def n_layers(self) -> int:
        """The number of layers (0 when the family is unknown)."""
        blocks = self.blocks
        return len(blocks) if blocks is not None else 0

    @property
    def width(self) -> int | None:
        """The residual-stream width, from the config."""
        return (
            self._config_int(FAMILIES[self.family].width_attrs) if self.family in FAMILIES else None
        )

    @property
    def n_heads(self) -> int | None:
        """The number of attention heads, from the config."""
        if self.family not in FAMILIES:
            return None
        return self._config_int(FAMILIES[self.family].heads_attrs)

    def submodule(self, path: str) -> nn.Module:
        """The submodule at a dotted ``path``; unknown paths list the nearest valid ones."""
        found = _get_module(self.module, path)
        if found is None:
            names = [n for n, _ in self.module.named_modules() if n]
            raise UnknownNameError(f"{self.name} has no submodule {path!r}; {nearest(path, names)}")
        return found

    def _config_int(self, attrs: tuple[str, ...]) -> int | None:
        config = getattr(self.module, "config", None)
        for attr in attrs:
            value = getattr(config, attr, None)
            if isinstance(value, int):
                return value
        return None

    def _detect_family(self, family: str | None) -> str:
        if family is not None:
            if family not in FAMILIES and family != "generic":
                raise UnknownNameError(
                    f"unknown model family {family!r}; {nearest(family, [*FAMILIES, 'generic'])}"
                )
            return family
        model_type = getattr(getattr(self.module, "config", None), "model_type", None)
        if isinstance(model_type, str) and model_type in _MODEL_TYPES:
            return _MODEL_TYPES[model_type]
        for name, fam in FAMILIES.items():
            for path in fam.blocks:
                if isinstance(_get_module(self.module, path), nn.ModuleList):
                    return name
        return "generic"

    def _find_blocks(self) -> str | None:
        if self.family not in FAMILIES:
            return None
        for path in FAMILIES[self.family].blocks:
            if isinstance(_get_module(self.module, path), nn.ModuleList):
                return path
        return None

    # -- running ----------------------------------------------------------------------

    def call(self, inputs: Mapping[str, torch.Tensor]) -> Any:
        """Call the module on keyword inputs (without a KV cache for causal transformers)."""
        extra = {"use_cache": False} if self.family in ("gpt2", "gpt_neox", "llama") else {}
        return self.module(**inputs, **extra)

    def logits(self, batch: Batch) -> torch.Tensor:
        """Run the module on ``batch`` and return the readout logits ``(batch, classes)``."""
        batch = batch.to(self.device)
        return readout_logits(self.call(batch.inputs), batch)

    @torch.no_grad()
    def predict(self, batch: Batch, batch_size: int = 4096) -> torch.Tensor:
        """Predicted class (argmax of the readout logits) for every example, batched."""
        preds = []
        for start in range(0, len(batch), batch_size):
            chunk = batch.select(slice(start, start + batch_size)).to(self.device)
            preds.append(self.logits(chunk).argmax(-1).cpu())
        return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)

    def __repr__(self) -> str:
        return (
            f"Network({self.name!r}, family={self.family!r}, layers={self.n_layers}, "
            f"width={self.width}, hash={self.hash})"
        )


def readout_logits(output: Any, batch: Batch) -> torch.Tensor:
    """The prediction logits from a module output (``logits`` field or tensor)."""
    logits = getattr(output, "logits", None)
    if logits is None:
        logits = output[0] if isinstance(output, tuple) else output
    if not isinstance(logits, torch.Tensor):
        raise NetworkError(
            f"the network returned {type(output).__name__}; it must return logits (a tensor, "
            "a tuple starting with one, or an object with .logits)"
        )
    if batch.readout is not None and logits.dim() == 3:
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, batch.readout.to(logits.device)]
    if logits.dim() == 3 and logits.shape[1] == 1:
        return logits[:, 0]
    return logits


def restore_default_linear_init(module: nn.Module) -> None:
    """Re-initialise every ``nn.Linear`` with torch's default (Kaiming-uniform) init.

    transformers 5's ``post_init`` re-initialises linear layers of custom models with
    N(0, 0.02), under which pyvene's MLP classifier learns hierarchical equality far
    worse; the tutorial's results assume torch's defaults.
    """
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            sub.reset_parameters()


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _model_class(config: Mapping[str, Any]) -> Any:
    import transformers

    if config.get("model_type") == "mlp":
        from pyvene.models.mlp.modelings_mlp import MLPForClassification

        return MLPForClassification
    for arch in config.get("architectures") or []:
        if hasattr(transformers, arch):
            return getattr(transformers, arch)
    return transformers.AutoModel
