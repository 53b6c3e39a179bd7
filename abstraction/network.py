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

import contextlib
import hashlib
import inspect
import io
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from abstraction.errors import AbstractionError, DamagedFileError, UnknownNameError, nearest
from abstraction.files import read_json

__all__ = [
    "DTYPES",
    "FAMILIES",
    "Batch",
    "Family",
    "Network",
    "NetworkError",
    "import_pyvene",
    "resolve_device",
    "resolve_dtype",
    "seeded",
]


class NetworkError(AbstractionError, ValueError):
    """A network cannot be loaded or used as asked."""


@dataclass(frozen=True)
class Family:
    """Where one model family keeps its blocks and sublayers: module paths, nothing else.

    Sizes (width, layers, heads) are not listed here: they come from the model's
    config, whose normalised attributes (``hidden_size``, ``num_hidden_layers``,
    ``num_attention_heads``) every ``transformers`` config maps onto its own names
    (GPT-2's ``n_embd``, ``n_layer``, ``n_head``).

    Attributes:
        name: the family (``"gpt2"``, ``"gpt_neox"``, ``"llama"``, ``"bert"``, ``"mlp"``).
        model_types: the ``config.model_type`` values laid out this way.
        blocks: candidate paths of the ``ModuleList`` of blocks, tried in order, each
            also under the model's ``base_model_prefix`` (``"transformer"``, ``"model"``).
        components: component name -> (path inside a block, ``"input"`` or ``"output"``).
        head_component: the component whose last dimension is split into heads.
        sequence: whether activations have a position dimension.
        auto_class: the ``transformers`` auto class that builds the family with the
            head that returns logits (``None``: built by its own library).
    """

    name: str
    model_types: tuple[str, ...]
    blocks: tuple[str, ...]
    components: Mapping[str, tuple[str, str]]
    head_component: str | None = "head"
    sequence: bool = True
    auto_class: str | None = "AutoModelForCausalLM"


def _transformer_components(
    attention: str, mlp: str, head: tuple[str, str]
) -> dict[str, tuple[str, str]]:
    return {
        "residual": ("", "output"),
        "residual_input": ("", "input"),
        "attention_output": (attention, "output"),
        "mlp_output": (mlp, "output"),
        "head": head,
    }


LLAMA_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2")
"""Model types laid out as Llama (``model.layers.N`` with ``self_attn.o_proj`` and
``mlp``); each is built tiny and checked in tests/integration/test_network_families.py
and the fast paths' equality tests (Gemma 2 softcaps its logits, so it gets no fast path;
its tests check that)."""

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "gpt2",
            ("gpt2",),
            ("h",),
            _transformer_components("attn", "mlp", ("attn.c_proj", "input")),
        ),
        Family(
            "gpt_neox",
            ("gpt_neox",),
            ("layers",),
            _transformer_components("attention", "mlp", ("attention.dense", "input")),
        ),
        Family(
            "llama",
            LLAMA_MODEL_TYPES,
            ("layers",),
            _transformer_components("self_attn", "mlp", ("self_attn.o_proj", "input")),
        ),
        Family(
            "bert",
            ("bert", "roberta"),
            ("encoder.layer",),
            _transformer_components("attention", "output", ("attention.self", "output")),
            auto_class="AutoModelForMaskedLM",
        ),
        Family(
            "mlp",
            ("mlp",),
            ("mlp.h", "h"),
            {
                "residual": ("", "output"),
                "residual_input": ("", "input"),
                "activation": ("act", "output"),
            },
            head_component=None,
            sequence=False,
            auto_class=None,
        ),
    )
}
"""Every known family, by name: the one table of module paths."""

GENERIC = Family(
    "generic",
    (),
    (),
    {"residual": ("", "output"), "residual_input": ("", "input")},
    head_component=None,
    auto_class=None,
)
"""The layout of a network no family lists: only its blocks are known (for a
``transformers`` model, the ``ModuleList`` of ``config.num_hidden_layers`` modules), so
only the residual stream around them has a name."""

GENERIC_LACKS = (
    "components 'attention_output', 'mlp_output' and 'head' (address them with "
    "Location.module(...)), and the fast paths (key/value reuse before the intervened "
    "position, the staircase, readout-only unembedding): every suffix runs the whole model"
)
"""What a network of the ``"generic"`` family cannot do, for messages."""

_warned_model_types: set[str] = set()


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
        candidates: the output ids the prediction is read from, ``(classes,)`` for one
            candidate set or ``(batch, classes)`` for one per example (a language
            model's answer tokens); ``None`` reads every output.
    """

    inputs: dict[str, torch.Tensor]
    positions: dict[str, torch.Tensor] = field(default_factory=dict)
    readout: torch.Tensor | None = None
    candidates: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    @property
    def attention_mask(self) -> torch.Tensor | None:
        """The padding mask ``(batch, seq)`` (1 = real token), when there is one."""
        return self.inputs.get("attention_mask")

    def select(self, index: torch.Tensor | slice) -> Batch:
        """The sub-batch at ``index`` (a slice or a tensor of row indices)."""
        candidates = self.candidates
        if candidates is not None and candidates.dim() == 2:
            candidates = candidates[index]
        return Batch(
            {k: v[index] for k, v in self.inputs.items()},
            {k: v[index] for k, v in self.positions.items()},
            None if self.readout is None else self.readout[index],
            candidates,
        )

    def to(self, device: torch.device | str) -> Batch:
        """The same batch on ``device``."""
        return Batch(
            {k: v.to(device) for k, v in self.inputs.items()},
            {k: v.to(device) for k, v in self.positions.items()},
            None if self.readout is None else self.readout.to(device),
            None if self.candidates is None else self.candidates.to(device),
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
        self._call_options = _call_options(module)
        self._hash: str | None = None
        self.source: Path | None = None
        """The checkpoint directory the network was loaded from (``None``: built here)."""
        self._tokenizer: Any = None

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

        The model class is the one ``config.json`` names (``architectures``) when it
        returns logits; otherwise the family's ``AutoModelFor...`` class (causal LM for
        decoders, masked LM for BERT). pyvene's MLP classifier (``model_type: "mlp"``)
        is supported too.
        """
        directory = Path(path)
        config_file = directory / "config.json"
        if not config_file.is_file():
            raise NetworkError(
                f"{directory} is not a saved model: it has no config.json. Pass a directory "
                "written by model.save_pretrained(...)"
            )
        _quiet_transformers()
        fix = "save the model again with save_pretrained, or pass an intact checkpoint"
        raw = read_json(config_file, fix=fix, what="model config")
        if not isinstance(raw.get("model_type"), str):
            raise DamagedFileError(
                config_file, 'it names no model_type (e.g. "gpt2"), so no model class fits', fix
            )
        config = _load_config(directory, raw)
        try:
            module, info = _model_class(config).from_pretrained(
                str(directory), config=config, output_loading_info=True
            )
        except Exception as exc:  # safetensors, torch and transformers raise their own kinds
            raise DamagedFileError(
                directory, f"the weights cannot be loaded ({type(exc).__name__}: {exc})", fix
            ) from None
        # transformers fills weights missing from the file with random ones and only warns
        absent = list(info.get("missing_keys", [])) + [
            str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", [])
        ]
        if absent:
            shown = ", ".join(absent[:5]) + (
                f" (and {len(absent) - 5} more)" if len(absent) > 5 else ""
            )
            raise DamagedFileError(
                directory,
                f"the weights file lacks or mis-shapes {len(absent)} weight(s) the config needs "
                f"({shown}); they would be random",
                fix,
            )
        network = cls(module, name=name or directory.name)
        network.source = directory
        return network

    @classmethod
    def from_gguf(
        cls,
        path: str | Path,
        *,
        name: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> Network:
        """Load a causal language model from a GGUF file, with its tokenizer.

        The first load dequantizes the weights to float32 through ``transformers``
        (tens of seconds for a 135M model, reported on stderr or through ``progress``)
        and caches them as safetensors beside the tokenizer, keyed by the file's
        SHA-256; later loads read the cache in seconds. Every load checks the cached
        weights against the hash recorded at conversion. Needs the ``gguf`` and
        ``accelerate`` packages (the ``gguf`` extra). ``network.tokenizer`` is the
        file's tokenizer.
        """
        from abstraction.gguf_checkpoint import check_network_hash, converted

        directory, _ = converted(path, progress=progress)
        fix = f"delete {directory} and load the GGUF file again (it is converted anew)"
        try:
            network = cls.from_pretrained(directory, name=name or Path(path).stem)
        except DamagedFileError as exc:
            raise DamagedFileError(exc.file, exc.problem, fix) from None
        check_network_hash(directory, network.hash)
        return network

    @classmethod
    def from_config(cls, config: Any, *, seed: int = 0, name: str | None = None) -> Network:
        """Build a randomly initialised Hugging Face model, with its logits head, from a config.

        The class is chosen as in :meth:`from_pretrained`; ``seed`` seeds the weights
        (through a forked RNG: the caller's global RNG state is unchanged).
        """
        model_class = _model_class(config)
        with seeded(seed):  # the caller's global RNG is left as it was
            if isinstance(model_class, type) and issubclass(model_class, nn.Module):
                module = model_class(config)
            else:
                module = model_class.from_config(config)
            if getattr(config, "model_type", None) == "mlp":
                restore_default_linear_init(module)
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

    @property
    def tokenizer(self) -> Any:
        """The tokenizer saved beside the checkpoint (loaded once, on first use).

        A tokenizer without a padding token gets its end-of-sequence token as one (as
        GPT-2's needs); prompts are padded and the padding masked either way.

        Raises:
            NetworkError: the network was not loaded from a directory holding a tokenizer.
        """
        if self._tokenizer is None:
            files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
            if self.source is None or not any((self.source / f).is_file() for f in files):
                where = f"{self.source} holds none" if self.source else "it was not loaded"
                raise NetworkError(
                    f"{self.name} has no tokenizer here ({where}); load one with "
                    "transformers.AutoTokenizer.from_pretrained(...) and pass it to the task"
                )
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(self.source))
            if tokenizer.pad_token is None and tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token
            self._tokenizer = tokenizer
        return self._tokenizer

    # -- identity ----------------------------------------------------------------------

    @property
    def hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the architecture and every weight."""
        if self._hash is None:
            digest = hashlib.sha256()
            digest.update(type(self.module).__name__.encode())
            config = self.config
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

    def to(
        self, device: torch.device | str | None = None, *, dtype: torch.dtype | str | None = None
    ) -> Network:
        """Move the module to ``device`` (CUDA when present; never required) and/or cast its
        floating weights to ``dtype`` (``"bfloat16"``/``"bf16"``, ``"float16"``/``"fp16"``,
        ``"float32"``).

        Caches and intervention weights follow the network: prefix caches are filled in
        host memory (or on disk) and each batch of rows is moved to the network's device,
        except a training set's shuffled copy, which lives on the device when it fits
        ``$ABSTRACTION_DEVICE_BUDGET`` (default: half the free device memory);
        cached activations and keys/values take the network's dtype (half the memory in
        bf16 or fp16), while rotations train in float32. The hash is recomputed for the
        cast weights.
        """
        if dtype is not None:
            resolved = resolve_dtype(dtype)
            if resolved != self.dtype:
                self.module.to(dtype=resolved)
                self._hash = None
        if device is not None:
            self.module.to(resolve_device(device))
        return self

    # -- structure --------------------------------------------------------------------

    @property
    def config(self) -> Any:
        """The module's ``transformers`` config, or ``None`` for a plain torch module."""
        return getattr(self.module, "config", None)

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
        """The number of layers: the blocks found, else ``config.num_hidden_layers``, else 0."""
        blocks = self.blocks
        if blocks is not None:
            return len(blocks)
        return _config_int(self.config, "num_hidden_layers") or 0

    @property
    def width(self) -> int | None:
        """The residual-stream width.

        ``config.hidden_size`` (which ``transformers`` maps onto each family's own name,
        e.g. GPT-2's ``n_embd``); for configs without it (pyvene's MLP), the output
        width of the first block's last linear layer; ``None`` when neither is known.
        """
        value = _config_int(self.config, "hidden_size")
        if value is None and self.blocks is not None and len(self.blocks):
            value = _output_width(self.blocks[0])
        return value

    @property
    def n_heads(self) -> int | None:
        """The number of attention heads, ``config.num_attention_heads`` (``None`` if unknown)."""
        return _config_int(self.config, "num_attention_heads")

    @property
    def head_width(self) -> int | None:
        """The width of one attention head: ``config.head_dim``, else width / heads."""
        value = _config_int(self.config, "head_dim")
        if value is None and self.width is not None and self.n_heads:
            value = self.width // self.n_heads
        return value

    def submodule(self, path: str) -> nn.Module:
        """The submodule at a dotted ``path``; unknown paths list the nearest valid ones."""
        found = _get_module(self.module, path)
        if found is None:
            names = [n for n, _ in self.module.named_modules() if n]
            raise UnknownNameError(f"{self.name} has no submodule {path!r}; {nearest(path, names)}")
        return found

    def _detect_family(self, family: str | None) -> str:
        """The family ``family`` names, else the one listing ``config.model_type``.

        A ``transformers`` model (one with a config) is recognised by its model type
        only, never by its module layout: an unlisted type (``phi``, ``opt``, ...) is
        ``"generic"`` even where its paths look like a known family's, since the fast
        paths and component names are only right for the layouts tested. A plain torch
        module without a config is matched by its block paths.
        """
        if family is not None:
            if family not in FAMILIES and family != "generic":
                raise UnknownNameError(
                    f"unknown model family {family!r}; {nearest(family, [*FAMILIES, 'generic'])}"
                )
            return family
        model_type = getattr(self.config, "model_type", None)
        for fam in FAMILIES.values():
            if model_type in fam.model_types:
                return fam.name
        if isinstance(model_type, str):
            self._warn_generic(model_type)
            return "generic"
        for fam in FAMILIES.values():
            if _blocks_path(self.module, fam) is not None:
                return fam.name
        return "generic"

    def _warn_generic(self, model_type: str) -> None:
        """Say once per model type what an unlisted ``transformers`` model lacks."""
        if model_type in _warned_model_types:
            return
        _warned_model_types.add(model_type)
        import warnings

        warnings.warn(
            f"{self.name}: model_type {model_type!r} is in no known family, so the network "
            f"is family 'generic': it has 'residual' and 'residual_input' locations but no "
            f"{GENERIC_LACKS}. If its layout is a known family's, wrap it as one: "
            f"Network.wrap(module, family=...) with one of {', '.join(FAMILIES)}",
            stacklevel=5,  # the caller of from_config, from_pretrained or wrap
        )

    def _find_blocks(self) -> str | None:
        if self.family in FAMILIES:
            return _blocks_path(self.module, FAMILIES[self.family])
        return _counted_blocks(self.module, _config_int(self.config, "num_hidden_layers"))

    @property
    def kv_heads(self) -> int | None:
        """The number of key/value heads: ``config.num_key_value_heads`` (fewer than
        :attr:`n_heads` under grouped-query attention, where query head ``h`` reads
        key/value head ``h // (n_heads // kv_heads)``), else :attr:`n_heads`."""
        return _config_int(self.config, "num_key_value_heads") or self.n_heads

    @property
    def layout(self) -> Family | None:
        """Where this network keeps its blocks and components: its family's entry in
        :data:`FAMILIES`, :data:`GENERIC` for other networks whose blocks were found,
        else ``None``."""
        if self.family in FAMILIES:
            return FAMILIES[self.family]
        return GENERIC if self._blocks_path is not None else None

    # -- running ----------------------------------------------------------------------

    def call(self, inputs: Mapping[str, torch.Tensor]) -> Any:
        """Call the module on keyword inputs (without a KV cache, for modules that keep one);
        floating inputs (embeddings) take the network's dtype."""
        return self.module(**self._typed(inputs), **self._call_options)

    def _typed(self, inputs: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        dtype = self.dtype
        if all(not v.is_floating_point() or v.dtype == dtype for v in inputs.values()):
            return inputs
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}

    def call_reaching(self, inputs: Mapping[str, torch.Tensor], paths: Sequence[str]) -> Any:
        """Call the module far enough to reach the submodules at ``paths``.

        When every path lies inside a Hugging Face model's base model (the blocks, not
        the language-model head), only the base model runs: collecting activations of
        a GPT-2 then skips the unembedding, whose logits over the whole vocabulary at
        every position are the largest tensor of the forward pass.
        """
        base = self.base_model
        prefix = getattr(self.module, "base_model_prefix", "")
        if base is not None and paths and all(p.startswith(f"{prefix}.") for p in paths):
            return base(**self._typed(inputs), **_call_options(base))
        return self.call(inputs)

    @property
    def base_model(self) -> nn.Module | None:
        """A Hugging Face model's base model (the blocks without the head), or ``None``."""
        prefix = getattr(self.module, "base_model_prefix", "")
        base = getattr(self.module, prefix, None) if isinstance(prefix, str) and prefix else None
        return base if isinstance(base, nn.Module) and base is not self.module else None

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


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
"""The weight dtypes a network runs in, by name."""


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``dtype`` (a name in :data:`DTYPES` or a floating ``torch.dtype`` among them).

    Raises:
        NetworkError: anything else, listing the names.
    """
    found = DTYPES.get(dtype.lower()) if isinstance(dtype, str) else dtype
    if found not in DTYPES.values():
        raise NetworkError(
            f"dtype {dtype!r} is not a weight dtype networks run in; use one of {', '.join(DTYPES)}"
        )
    assert isinstance(found, torch.dtype)
    return found


def resolve_device(device: torch.device | str) -> torch.device:
    """``device`` as a ``torch.device``, checked to exist on this machine.

    Raises:
        NetworkError: the name is not a device (``"gpu"``), or names one this machine
            lacks (``"cuda"`` without a CUDA GPU, ``"cuda:3"`` with two GPUs).
    """
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise NetworkError(
            f"device {device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise NetworkError(
                f"device {device!r} needs a CUDA GPU, and torch sees none here "
                f"(torch {torch.__version__}); use device='cpu'"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise NetworkError(
                f"device {device!r} does not exist: this machine has {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1})"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise NetworkError(f"device {device!r} (Apple MPS) is not available here; use 'cpu'")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise NetworkError(f"device {device!r} is not supported; use 'cpu', 'cuda' or 'mps'")
    return resolved


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Within the context torch's global random streams start from ``seed``; afterwards
    the caller's are put back.

    ``torch.manual_seed`` seeds the CPU stream and every CUDA device's, so once CUDA is
    in use (a network moved to a GPU) the CUDA streams are saved and restored too, not
    only the CPU's; CUDA is never initialised here (a CPU run stays free of it, and a
    process may still fork afterwards).
    """
    initialised = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    devices = list(range(torch.cuda.device_count())) if initialised else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _config_int(config: Any, name: str) -> int | None:
    """An integer attribute of a config (``transformers`` resolves its ``attribute_map``)."""
    value = getattr(config, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _output_width(block: nn.Module) -> int | None:
    """The ``out_features`` of a block's last layer that has them."""
    width = None
    for sub in block.modules():
        value = getattr(sub, "out_features", None)
        if isinstance(value, int):
            width = value
    return width


def _blocks_path(module: nn.Module, family: Family) -> str | None:
    """The first of ``family``'s block paths that is a ``ModuleList`` in ``module``."""
    prefix = getattr(module, "base_model_prefix", "")
    under_base = (
        isinstance(prefix, str) and prefix and isinstance(getattr(module, prefix, None), nn.Module)
    )
    for path in family.blocks:
        for candidate in ((f"{prefix}.{path}",) if under_base else ()) + (path,):
            if isinstance(_get_module(module, candidate), nn.ModuleList):
                return candidate
    return None


def _counted_blocks(module: nn.Module, count: int | None) -> str | None:
    """The path of the ``ModuleList`` of ``count`` modules (a generic model's blocks:
    ``config.num_hidden_layers`` of them); ``None`` when ``count`` is unknown or no
    outermost list, or more than one, has that length."""
    if not count:
        return None
    found = [
        name
        for name, sub in module.named_modules()
        if name and isinstance(sub, nn.ModuleList) and len(sub) == count
    ]
    # nested lists of the same length (per-layer experts) are inside the blocks: keep the
    # outermost
    outer = [n for n in found if not any(n.startswith(f"{o}.") for o in found if o != n)]
    return outer[0] if len(outer) == 1 else None


def _call_options(module: nn.Module) -> dict[str, Any]:
    """``use_cache=False`` for modules whose ``forward`` takes it (causal transformers)."""
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return {}
    return {"use_cache": False} if "use_cache" in parameters else {}


def readout_logits(output: Any, batch: Batch) -> torch.Tensor:
    """The prediction logits ``(batch, classes)`` from a module output (``logits`` or a tensor).

    Sequence outputs are read at ``batch.readout``; when the batch names
    ``candidates``, only those output ids are kept (in their order), so a language
    model is scored over its candidate answers, never over the whole vocabulary.
    """
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
        logits = logits[rows, batch.readout.to(logits.device)]
    elif logits.dim() == 3 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if batch.candidates is None:
        return logits
    candidates = batch.candidates.to(logits.device)
    if candidates.dim() == 1:
        return logits[:, candidates]
    return logits.gather(1, candidates)


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


def import_pyvene() -> ModuleType:
    """Import pyvene without the line it prints when the optional ``nnsight`` is missing.

    pyvene prints (to stdout, not as a warning) "nnsight is not detected ..." on its
    first import when nnsight is not installed; nnsight is an optional backend this
    library never uses. Everything else pyvene prints is passed through. Import pyvene
    through this function (or after it) wherever the library needs it.
    """
    loaded = sys.modules.get("pyvene")
    if loaded is not None:
        return loaded
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        import pyvene
    for line in captured.getvalue().splitlines():
        if not line.startswith("nnsight is not detected"):
            print(line)
    module: ModuleType = pyvene
    return module


def _pyvene_mlp() -> tuple[Any, Any]:
    """pyvene's ``(MLPConfig, MLPForClassification)``."""
    import_pyvene()
    from pyvene.models.mlp.modelings_mlp import MLPConfig, MLPForClassification

    return MLPConfig, MLPForClassification


def _load_config(directory: Path, raw: Mapping[str, Any]) -> Any:
    """The config saved in ``directory`` (``raw`` is its parsed ``config.json``)."""
    if raw.get("model_type") == "mlp":
        mlp_config, _ = _pyvene_mlp()
        return mlp_config.from_pretrained(str(directory))
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(str(directory))
    except (ValueError, KeyError) as exc:
        raise NetworkError(
            f"transformers {transformers.__version__} cannot read {directory / 'config.json'} "
            f"(model_type {raw.get('model_type')!r}): {exc}. Upgrade transformers, or load the "
            "model yourself and use Network.wrap(model)"
        ) from None


def _model_class(config: Any) -> Any:
    """The class that builds ``config``'s model with the head that returns logits.

    The class ``config.architectures`` names, unless that is the bare base model
    (hidden states, no logits); then the family's ``AutoModelFor...`` class; for
    unknown families the first auto class with a logits head that accepts the config.
    """
    model_type = getattr(config, "model_type", None)
    if model_type == "mlp":
        return _pyvene_mlp()[1]
    import transformers

    base: Mapping[Any, Any] = transformers.MODEL_MAPPING
    bare = base[type(config)].__name__ if type(config) in base else None
    for arch in getattr(config, "architectures", None) or []:
        if arch != bare and hasattr(transformers, arch):
            return getattr(transformers, arch)
    preferred = [f.auto_class for f in FAMILIES.values() if model_type in f.model_types]
    candidates = [name for name in preferred if name] or list(_HEAD_CLASSES)
    for name in candidates:
        if type(config) in getattr(transformers, _HEAD_CLASSES[name]):
            return getattr(transformers, name)
    raise NetworkError(
        f"transformers has no model with a logits head for config {type(config).__name__} "
        f"(tried {', '.join(candidates)}); set config.architectures to the class to build, or "
        "build the model yourself and use Network.wrap(model)"
    )


_HEAD_CLASSES = {
    "AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING",
    "AutoModelForMaskedLM": "MODEL_FOR_MASKED_LM_MAPPING",
    "AutoModelForSequenceClassification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING",
}
"""Auto classes that return logits, tried in order for unknown families, with the
mapping of the config classes each accepts."""
