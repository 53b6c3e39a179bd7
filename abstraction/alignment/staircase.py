"""A staircase: a sweep's cells at one position, trained and scored in one pass per step.

A layer sweep at one position prepares every cell from the same base rows
(:meth:`~abstraction.alignment.prepared.PreparedInterchanges.for_locations`): the cell
at layer ``l`` edits block ``l``'s cached output and runs blocks ``l+1..`` on it. Run
one cell at a time, each multiplies small matrices (at the last position, one row per
pair) through its own suffix, so a 12-layer sweep reads each block's weights up to 11
times per step and pays the model's per-call overhead 12 times. The staircase runs
block ``j`` once on the positions of every cell whose cut lies before ``j``, stacked
along the sequence: cells join as the blocks pass their cuts, and a block-diagonal
attention mask lets every cell read the one copy of the base run's keys and values
before the intervened position, and its own positions, but no other cell's.

It runs on the families in :data:`STAIRCASE_FAMILIES` (GPT-2, GPT-NeoX and the Llama
family's model types), calling their blocks directly as their base model does: every
stacked cell's positions carry their true positions (``start..start+length-1`` once per
cell), as GPT-2's position ids or as the rotary embeddings (``base.rotary_emb``) Llama
and GPT-NeoX blocks take; grouped-query attention needs nothing more, since the mask is
broadcast over heads; sliding-window layers get the sliding-window mask, stacked the
same way; the final norm is the family's (:data:`FINAL_NORMS`).

:func:`fit_cells` trains each cell's own rotation with its own early stopping; the
summed loss gives each rotation exactly its own gradient and Adam updates every
parameter on its own, so the result is the cells' :func:`~abstraction.alignment.das.fit`
run one at a time, up to rounding: attention sums over more (masked) keys, so logits and
gradients agree to about 1e-7 relative, which Adam can grow to ~1e-3 in a trained basis
where a gradient component is near zero (its step is about lr * sign). Where the staircase
does not apply (see :func:`staircase_unsupported`) it fits the cells one at a time.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from abstraction.alignment.das import evaluate, fit, reproducible
from abstraction.alignment.method import Method, method_named, method_names
from abstraction.alignment.prefix_cache import (
    PrefixCache,
    past_cache,
    tested_model_type,
    unembed,
    unembedding,
)
from abstraction.alignment.prepared import PASS_BYTES, Interventions, PreparedInterchanges
from abstraction.alignment.result import Alignment
from abstraction.alignment.rotation import LearnedRotation, LearnedRotationStack, subspace_spans
from abstraction.alignment.step import captured
from abstraction.alignment.training import EpochScore, StepLoss, TrainingConfig, train
from abstraction.errors import AlignmentError
from abstraction.interventions import LowRankPatch
from abstraction.network import Batch, Network
from abstraction.task import Task

__all__ = [
    "FINAL_NORMS",
    "STAIRCASE_FAMILIES",
    "evaluate_cells",
    "fit_cells",
    "fitted_apart",
    "staircase_logits",
    "staircase_unsupported",
]


FINAL_NORMS = {"gpt2": "ln_f", "gpt_neox": "final_layer_norm", "llama": "norm"}
"""The base model's final norm in each family the staircase runs on."""

STAIRCASE_FAMILIES = tuple(FINAL_NORMS)
"""Families whose blocks the staircase calls (tested equal to each cell's own suffix,
for every model type each lists, in tests/integration/test_staircase.py)."""

CACHE_KEYWORDS = ("cache", "past_key_values", "layer_past")
"""The names under which blocks take their key/value cache (GPT-NeoX: ``layer_past``)."""

MASKED_ATTENTION = ("sdpa", "eager")
"""Attention implementations that apply an arbitrary 4-D mask (flash attention does not)."""

SMALL_STEP_ROWS = 128
"""A cell's step is small when it multiplies at most this many rows (pairs times
positions the suffix runs on): such products run far below the machine's matmul rate
one cell at a time, and stacking the cells pays. Larger steps already run near it, and
stacking them only makes the elementwise work spill out of the caches (measured on the
GPT-2-small benchmark's 64 pairs, one epoch, best of three: at the last position the
12-layer sweep trains in 1.3 s as a staircase against 2.9 s one cell at a time; with 12
positions in the suffix, 13.7 s against 12.6 s)."""


def _block_calling(network: Network) -> bool:
    """Whether the staircase can call ``network``'s blocks: a tested family and model type
    whose blocks take the hidden state, an attention mask, position ids and a cache by
    keyword (and the rotary embeddings where the base model computes them), and a
    ``transformers`` whose causal mask can be built for them."""
    if not tested_model_type(network, STAIRCASE_FAMILIES) or not network.blocks:
        return False
    base = network.base_model
    if base is None or not isinstance(getattr(base, FINAL_NORMS[network.family], None), nn.Module):
        return False
    names = set(inspect.signature(network.blocks[0].forward).parameters)
    needed = {"attention_mask"} | ({"position_embeddings"} if _rotary(network) else set())
    if not needed <= names or not names & set(CACHE_KEYWORDS):
        return False
    try:
        from transformers.masking_utils import create_causal_mask
    except ImportError:
        return False
    return "allow_is_causal_skip" in inspect.signature(create_causal_mask).parameters


def _rotary(network: Network) -> nn.Module | None:
    """The base model's rotary embedding (``None``: positions are embedded before the
    blocks, as GPT-2's)."""
    rotary = getattr(network.base_model, "rotary_emb", None)
    return rotary if isinstance(rotary, nn.Module) else None


def _layer_type(config: Any, layer: int) -> str:
    """Block ``layer``'s attention: ``"full_attention"`` or ``"sliding_attention"``, as its
    base model chooses the mask (``config.layer_types``; else Mistral's rule: every layer
    slides when ``config.sliding_window`` is set)."""
    types = getattr(config, "layer_types", None)
    if types:
        return str(types[layer])
    if getattr(config, "sliding_window", None) is not None:
        return "sliding_attention"
    return "full_attention"


def staircase_unsupported(cells: Sequence[PreparedInterchanges]) -> str | None:
    """Why ``cells`` cannot run as one staircase, or ``None`` when they can.

    They can when they were prepared together (one shared prefix cache, so the same
    base rows), on a network of :data:`STAIRCASE_FAMILIES` (a model type its family
    lists) with a known unembedding, and every variable of every cell lives at the
    cached block output (no hooks after the cut).
    """
    if len(cells) < 2:
        return "a staircase needs two or more cells"
    first = cells[0]
    if any(cell.cache is None for cell in cells):
        return "some cells have no prefix cache"
    if not PrefixCache.filled_together([cell.cache for cell in cells if cell.cache is not None]):
        return "the cells were not prepared together (PreparedInterchanges.for_locations)"
    if any(cell.network is not first.network for cell in cells):
        return "the cells belong to different networks"
    if any(cell.variables != first.variables for cell in cells):
        return "the cells align different variables"
    if first.base.readout is None or unembedding(first.network) is None:
        return "the network has no known unembedding at a readout position"
    if not _block_calling(first.network):
        model_type = getattr(first.network.config, "model_type", None)
        return (
            f"{first.network.family} blocks ({model_type}) are not supported (the model types "
            f"of {', '.join(STAIRCASE_FAMILIES)} in transformers 5 are)"
        )
    attention = getattr(first.network.config, "_attn_implementation", None)
    if attention not in MASKED_ATTENTION:
        return (
            f"{attention!r} attention does not take the block-diagonal mask the stacked cells "
            f"need (one of {MASKED_ATTENTION} does)"
        )
    for cell in cells:
        if cell.multi_site or not cell.at_cut(cell.site):
            return f"{cell.site.location} is not the cached block output"
    return None


class _SharedPast:
    """The base run's keys and values before the suffix, shared by every stacked cell.

    Passed to the blocks as their cache: attention appends the suffix's keys and values
    (every cell's, stacked along positions) to the past ones, as ``DynamicCache`` does.
    """

    def __init__(self, past: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.past = past

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        past_keys, past_values = self.past[layer_idx]
        return torch.cat([past_keys, keys], dim=2), torch.cat([past_values, values], dim=2)


def _causal_mask(
    network: Network,
    batch: Batch,
    hidden: torch.Tensor,
    start: int,
    cut: int,
    past: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    layer_type: str = "full_attention",
) -> torch.Tensor:
    """The attention mask the model itself builds for one cell's positions ``start..``
    (for ``"sliding_attention"`` layers, the sliding-window mask)."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    base, blocks = network.base_model, network.blocks
    assert base is not None and blocks is not None
    cache = None
    if start:
        later = [past[j] for j in range(cut + 1, len(blocks))]
        cache = past_cache(later, cut, len(blocks), start, hidden)
    length = start + hidden.shape[1]
    positions = torch.arange(start, length, device=hidden.device).unsqueeze(0)
    # transformers renamed create_causal_mask's `past_key_values` to `cache` (5.2x) and
    # `input_embeds` to `inputs_embeds`; older releases also take `cache_position`
    parameters = inspect.signature(create_causal_mask).parameters
    kwargs: dict[str, Any] = {
        "config": base.config,
        "attention_mask": batch.inputs.get("attention_mask"),
        "position_ids": positions,
        "allow_is_causal_skip": False,
        ("inputs_embeds" if "inputs_embeds" in parameters else "input_embeds"): hidden,
        ("cache" if "cache" in parameters else "past_key_values"): cache,
    }
    if "cache_position" in parameters:
        kwargs["cache_position"] = positions[0]
    build = (
        create_sliding_window_causal_mask
        if layer_type == "sliding_attention"
        else create_causal_mask
    )
    mask = build(**kwargs)
    if not isinstance(mask, torch.Tensor):
        raise AlignmentError(f"a {type(mask).__name__} attention mask cannot be stacked")
    return mask


def _stacked_mask(mask: torch.Tensor, cells: int, start: int) -> torch.Tensor:
    """``mask`` (one cell's queries over the past and its own positions) for ``cells``
    cells stacked along positions: each cell's queries see the past as ``mask`` says,
    their own cell's positions as ``mask`` says, and no other cell."""
    rows, heads, length = mask.shape[0], mask.shape[1], mask.shape[2]
    hidden = torch.finfo(mask.dtype).min if mask.dtype.is_floating_point else False
    out = mask.new_full((rows, heads, cells * length, start + cells * length), hidden)
    queries = out.view(rows, heads, cells, length, -1)
    queries[..., :start] = mask[..., :start].unsqueeze(2)
    for cell in range(cells):
        at = start + cell * length
        queries[:, :, cell, :, at : at + length] = mask[..., start:]
    return out


def run_staircase(
    network: Network,
    batch: Batch,
    stages: Sequence[tuple[int, torch.Tensor]],
    *,
    start: int,
    past: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    check_readout: bool = True,
) -> list[torch.Tensor]:
    """Readout logits of each stage ``(cut, hidden)``: block ``cut`` outputs ``hidden``.

    The cells' positions are stacked along the sequence (not the batch): every cell's
    queries read the one copy of the base run's past keys and values, and a
    block-diagonal mask keeps each cell's own positions apart from the others'.

    Args:
        network: a network :func:`staircase_unsupported` accepts.
        batch: the base rows (shared by every stage).
        stages: per cell, its cut and that block's (edited) output at positions
            ``start..``.
        start: the first position the suffix runs on.
        past: for ``start > 0``, block -> the base run's keys and values at positions
            ``..start-1``, for every block after the lowest cut.
        check_readout: check that every readout position lies in the suffix (a host
            read; ``False`` where the caller checked every row once).
    """
    logits, joined = _run_stacked(
        network, batch, stages, start=start, past=past, check_readout=check_readout
    )
    return _split(logits, joined, len(batch))


def _split(logits: torch.Tensor, joined: Sequence[int], rows: int) -> list[torch.Tensor]:
    """Stacked logits (cells in ``joined`` order, ``rows`` each) back in stage order."""
    out: list[torch.Tensor] = [logits] * len(joined)
    for slot, i in enumerate(joined):
        out[i] = logits[slot * rows : (slot + 1) * rows]
    return out


def _run_stacked(
    network: Network,
    batch: Batch,
    stages: Sequence[tuple[int, torch.Tensor]],
    *,
    start: int,
    past: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    check_readout: bool = True,
) -> tuple[torch.Tensor, list[int]]:
    """:func:`run_staircase`'s logits as one tensor, ``len(batch)`` rows per cell in the
    order the cells joined (by cut), and that order (stage indices)."""
    blocks, base, head = network.blocks, network.base_model, unembedding(network)
    assert blocks is not None and base is not None and head is not None
    assert batch.readout is not None
    device = network.device
    batch = batch.to(device)
    rows = len(batch)
    lowest = min(cut for cut, _ in stages)
    first_hidden = stages[0][1]
    length = first_hidden.shape[1]
    config = network.config
    layer_types = {j: _layer_type(config, j) for j in range(lowest + 1, len(blocks))}
    masks = {
        kind: _stacked_mask(
            _causal_mask(network, batch, first_hidden, start, lowest, past, kind),
            len(stages),
            start,
        )
        for kind in sorted(set(layer_types.values()))
    }
    cache = _SharedPast({j: (k.to(device), v.to(device)) for j, (k, v) in past.items()})
    # every cell's positions are start..start+length-1: the stacked sequence repeats them
    positions = torch.arange(start, start + length, device=device).repeat(len(stages))
    positions = positions.unsqueeze(0)
    rotary = _rotary(network)
    embeddings: dict[str, Any] = {}
    if rotary is not None:
        takes_type = "layer_type" in inspect.signature(rotary.forward).parameters
        for kind in masks:
            extra = (kind,) if takes_type else ()
            embeddings[kind] = rotary(first_hidden, positions, *extra)
    parameters = inspect.signature(blocks[0].forward).parameters
    cache_keyword = next(name for name in CACHE_KEYWORDS if name in parameters)
    order = sorted(range(len(stages)), key=lambda i: stages[i][0])
    joined: list[int] = []
    state: torch.Tensor | None = None

    def join(below: int) -> None:
        nonlocal state
        new = [stages[i][1] for i in order[len(joined) :] if stages[i][0] < below]
        joined.extend(order[len(joined) : len(joined) + len(new)])
        if new:
            state = torch.cat([state, *new] if state is not None else new, dim=1)

    for j in range(lowest + 1, len(blocks)):
        join(j)
        assert state is not None
        width = len(joined) * length
        kind = layer_types[j]
        kwargs: dict[str, Any] = {
            "attention_mask": masks[kind][:, :, :width, : start + width],
            "position_ids": positions[:, :width],
            cache_keyword: cache if start else None,
            "use_cache": False,
        }
        if kind in embeddings:
            cos, sin = embeddings[kind]
            kwargs["position_embeddings"] = (cos[:, :width], sin[:, :width])
        out = blocks[j](state, **kwargs)
        state = out[0] if isinstance(out, tuple) else out
    join(len(blocks))
    assert state is not None
    final = base.get_submodule(FINAL_NORMS[network.family])(state)
    slots = torch.arange(len(joined), device=device) * length
    assert batch.readout is not None
    readout = batch.readout.to(device)
    if check_readout:
        _check_readout(readout, start, length)
    at = (readout - start).unsqueeze(1) + slots  # (rows, cells)
    picked = final[torch.arange(rows, device=device).unsqueeze(1), at]  # (rows, cells, width)
    candidates = batch.candidates
    if candidates is not None and candidates.dim() == 2:
        candidates = candidates.repeat(len(joined), 1)
    logits = unembed(picked.transpose(0, 1).reshape(-1, picked.shape[-1]), head, candidates)
    return logits, joined


def _staircase_loss(
    cells: Sequence[PreparedInterchanges],
    rotations: Sequence[LearnedRotation],
    patches: Sequence[Callable[[torch.Tensor], Interventions]],
    keeper: PreparedInterchanges,
    labels: torch.Tensor,
) -> Callable[[torch.Tensor | slice], tuple[torch.Tensor, list[int]]]:
    """A staircase training step's forward: each cell's mean cross-entropy on base rows
    ``rows``, in the order the cells join the staircase (by cut), and that order
    (indices into ``cells``)."""
    stack = LearnedRotationStack(rotations)

    def losses(rows: torch.Tensor | slice) -> tuple[torch.Tensor, list[int]]:
        weights = stack.weights().unbind(0)  # one view op (and one stack backward)
        logits, joined = _stacked_logits(
            cells,
            rows,
            [patch(weight) for patch, weight in zip(patches, weights, strict=True)],
            past_from=keeper,
            check_readout=False,
        )
        target = labels[rows].to(logits.device)
        # one cross-entropy over every cell's rows, averaged per cell: each cell's loss is
        # its own fit's, and their sum gives each rotation its own gradient
        per_row = nn.functional.cross_entropy(logits, target.repeat(len(joined)), reduction="none")
        return per_row.view(len(joined), -1).mean(dim=1), joined

    return losses


def _check_readout(readout: torch.Tensor, start: int, length: int) -> None:
    """Refuse readout positions outside the suffix ``start..start+length-1`` (a host read)."""
    if bool(((readout < start) | (readout >= start + length)).any()):
        # one cell's suffix would wrap to its own positions; stacked, it reads a neighbour's
        raise AlignmentError(
            f"a readout position lies outside the suffix {start}..{start + length - 1}"
        )


def staircase_logits(
    cells: Sequence[PreparedInterchanges],
    rows: torch.Tensor | slice,
    interventions: Sequence[Interventions],
    *,
    past_from: PreparedInterchanges | None = None,
    check_readout: bool = True,
) -> list[torch.Tensor]:
    """Each cell's readout logits of base rows ``rows`` under its interventions, from one
    staircase (equal to ``cell.logits(rows, interventions)`` for each cell).

    ``past_from``: the cell whose cache holds the keys and values (default: the one
    with the lowest cut). ``check_readout=False`` skips the check that every readout
    lies in the suffix (a host read: a caller that checked every row once passes it).
    """
    logits, joined = _stacked_logits(
        cells, rows, interventions, past_from=past_from, check_readout=check_readout
    )
    return _split(logits, joined, logits.shape[0] // len(joined))


def _stacked_logits(
    cells: Sequence[PreparedInterchanges],
    rows: torch.Tensor | slice,
    interventions: Sequence[Interventions],
    *,
    past_from: PreparedInterchanges | None = None,
    check_readout: bool = True,
) -> tuple[torch.Tensor, list[int]]:
    """:func:`staircase_logits` as one tensor in the order the cells joined (by cut),
    and that order (indices into ``cells``)."""
    first = cells[0]
    base = first.base.select(rows)
    stages = []
    for cell, chosen in zip(cells, interventions, strict=True):
        hidden, hooks = cell.suffix_input(rows, chosen, base)
        if hooks:
            raise AlignmentError("a staircase applies edits at the cached block output only")
        assert cell.cache is not None
        stages.append((cell.cache.cut, hidden))
    keeper = past_from or min(cells, key=lambda c: c.cache.cut if c.cache else 0)
    assert keeper.cache is not None
    start, cut = keeper.cache.start, keeper.cache.cut
    if cut > min(c for c, _ in stages):
        raise AlignmentError("past_from must hold the keys and values of the lowest cut's suffix")
    past = dict(enumerate(keeper.cache.past(rows), start=cut + 1)) if start else {}
    return _run_stacked(
        first.network, base, stages, start=start, past=past, check_readout=check_readout
    )


def _suffix_positions(cell: PreparedInterchanges) -> int:
    ids = next(iter(cell.base.inputs.values()))
    length = int(ids.shape[1]) if ids.dim() >= 2 else 1
    return length - (cell.cache.start if cell.cache is not None else 0)


def _rows_per_pass(cells: Sequence[PreparedInterchanges]) -> int:
    """Base rows per scoring pass: every cell's stacked rows within :data:`PASS_BYTES`."""
    first = cells[0]
    assert first.cache is not None
    width, cells_n = int(first.network.width or 1), len(cells)
    positions, start = _suffix_positions(first), first.cache.start
    heads = first.network.n_heads or 1
    # every cell's suffix working set (as PreparedInterchanges), one copy of the past and
    # its concatenation with the stacked keys and values, the stacked mask, and (eager
    # attention) each head's scores and weights over it, which grow with the square of
    # the cells
    stacked = cells_n * positions
    per_row = stacked * width * 4 * 24 + 4 * (start + stacked) * width * 4
    per_row += (1 + 2 * heads) * stacked * (start + stacked) * 4
    return max(1, PASS_BYTES // per_row)


def _correct(
    cells: Sequence[PreparedInterchanges],
    interventions: Sequence[Interventions],
    past_from: PreparedInterchanges | None = None,
) -> list[torch.Tensor]:
    first = cells[0]
    chunk = _rows_per_pass(cells)
    found: list[list[torch.Tensor]] = [[] for _ in cells]
    with torch.no_grad():
        for s in range(0, first.rows, chunk):
            rows = slice(s, s + chunk)
            logits = staircase_logits(cells, rows, interventions, past_from=past_from)
            for part, cell_logits in zip(found, logits, strict=True):
                part.append(cell_logits.argmax(-1).cpu())
    return [torch.cat(part) == first.labels for part in found]


def evaluate_cells(
    alignments: Sequence[Alignment], cells: Sequence[PreparedInterchanges]
) -> list[torch.Tensor]:
    """Per-pair correctness of each alignment on its cell (:func:`evaluate` for each),
    scored as one staircase where the cells allow it."""
    first = cells[0]
    cached = first.cache.nbytes // max(1, first.rows) if first.cache is not None else 0
    small = first.rows_per_pass(cached) * _suffix_positions(first) <= SMALL_STEP_ROWS
    if not small or staircase_unsupported(cells) is not None:
        return [evaluate(a, c) for a, c in zip(alignments, cells, strict=True)]
    return _correct(cells, [a.interventions() for a in alignments])


def fitted_apart(
    cells: Sequence[PreparedInterchanges],
    validation: Sequence[PreparedInterchanges] | None,
    method: str | Method,
    config: TrainingConfig,
) -> str | None:
    """Why :func:`fit_cells` would fit ``cells`` one at a time, or ``None`` when it trains
    them as one staircase (same arguments as :func:`fit_cells`)."""
    chosen = method_named(method)
    if not chosen.staircase:
        return (
            f"method {chosen.name!r} is fitted cell by cell (a staircase trains "
            f"{', '.join(n for n in method_names() if method_named(n).staircase)})"
        )
    reason = staircase_unsupported(cells)
    if reason is None and validation is not None:
        reason = staircase_unsupported(validation)
    if reason is not None:
        return reason
    rows = config.batch_size * _suffix_positions(cells[0])
    if rows > SMALL_STEP_ROWS:
        return (
            f"a step multiplies {rows} rows (batch x suffix positions), more than "
            f"SMALL_STEP_ROWS = {SMALL_STEP_ROWS}: it already runs near the matmul rate"
        )
    return None


def fit_cells(
    cells: Sequence[PreparedInterchanges],
    validation: Sequence[PreparedInterchanges] | None,
    task: Task,
    variables: Sequence[str],
    *,
    method: str | Method = "das",
    rank: int | None = None,
    config: TrainingConfig | None = None,
    progress: Callable[[int, dict[str, float | None]], None] | None = None,
) -> list[Alignment]:
    """:func:`~abstraction.alignment.das.fit` on each cell, trained as one staircase.

    Args:
        cells: interchanges prepared together at several locations (a sweep's cells).
        validation: the validation pairs prepared the same way (one per cell), scored
            after every epoch for early stopping; ``None``: the training pairs.
        variables: the aligned variables (one rotation per cell holds them all).
        method: ``"das"`` or ``"low_rank"`` run as a staircase; other methods, cells
            :func:`staircase_unsupported` refuses and steps larger than
            :data:`SMALL_STEP_ROWS` are fitted one at a time (:func:`fitted_apart`
            says which and why).
        rank: dimensions per variable (as :func:`~abstraction.alignment.das.fit`).
        task: the task the cells were prepared for.
        config: training settings, the same for every cell.
        progress: called with a cell's index and its training curve's newest entry.

    Returns:
        one alignment per cell, in order.
    """
    config = config or TrainingConfig()
    if validation is not None and len(validation) != len(cells):
        raise AlignmentError(
            f"{len(validation)} validation cells for {len(cells)} cells; prepare both the same way"
        )
    if fitted_apart(cells, validation, method, config) is not None:

        def report(i: int) -> Callable[[dict[str, float | None]], None] | None:
            if progress is None:
                return None
            return lambda entry: progress(i, entry)

        return [
            reproducible(fit)(  # each cell as if fitted on its own
                cell,
                validation[i] if validation is not None else None,
                task,
                variables,
                method=method,
                rank=rank,
                config=config,
                progress=report(i),
            )
            for i, cell in enumerate(cells)
        ]
    return _fit_staircase(
        cells, validation, task, variables, method_named(method), rank, config, progress
    )


class StaircaseObjective:
    """What a staircase trains (an :class:`~abstraction.alignment.training.Objective`):
    one rotation per cell, each cell a unit with its own early stopping, every step one
    pass through the cells' shared staircase."""

    def __init__(
        self,
        cells: Sequence[PreparedInterchanges],
        validation: Sequence[PreparedInterchanges] | None,
        variables: Sequence[str],
        method: Method,
        rank: int | None,
        config: TrainingConfig,
    ) -> None:
        self.cells, self.config = list(cells), config
        self.scored = list(validation) if validation is not None else list(cells)
        self.units, self.rows = len(cells), cells[0].rows
        self.device = cells[0].network.device
        self.nan_hint = "lower the learning rate or check the network's outputs for NaN"
        self.spans, self.rotations = [], []
        drawn: dict[tuple[int, int], tuple[LearnedRotation, torch.Tensor]] = {}
        for cell in cells:
            width = cell.width_of(variables[0])
            self.spans.append(subspace_spans(method, variables, width, rank, None))
            k = method.rotation_width(width, max(stop for _, stop in self.spans[-1].values()))
            if (width, k) not in drawn:
                # as each cell's own fit under `reproducible`: its generator and the global
                # RNG state; every cell of this shape draws the same start, so it is copied
                # (the draw is a QR of a width x width matrix)
                generator = torch.Generator().manual_seed(config.seed)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    drawn[width, k] = (
                        LearnedRotation(width, k, generator),
                        generator.get_state(),
                    )
            self.rotations.append(copy.deepcopy(drawn[width, k][0]).to(self.device))
        states = [state for _, state in drawn.values()]
        if any(not torch.equal(s, states[0]) for s in states):
            raise AlignmentError("the cells' widths differ, so their shuffles would differ")
        self.generator = torch.Generator()
        self.generator.set_state(states[0])  # where each cell's own fit would shuffle from
        cuts = [cell.cache.cut if cell.cache is not None else 0 for cell in cells]
        self.keeper = cuts.index(min(cuts))
        self.shuffled = self.cells

    def optimizer(self) -> torch.optim.Optimizer:
        # one multi-tensor update for every cell's parameter (the default on a GPU; on a
        # CPU torch would loop over them, a dozen operations per cell and step)
        params = [p for r in self.rotations for p in r.parameters()]
        return torch.optim.Adam(params, lr=self.config.lr, fused=True)

    def reorder(self, order: torch.Tensor) -> torch.device:
        self.shuffled = [
            cell.reordered(order, keys_values=(i == self.keeper))
            for i, cell in enumerate(self.cells)
        ]
        # every row's readout is checked once here, not read back at every step
        for scored in (self.shuffled, self.scored):
            keeps = scored[self.keeper].cache
            assert keeps is not None and scored[0].base.readout is not None
            _check_readout(scored[0].base.readout, keeps.start, _suffix_positions(scored[0]))
        return self.shuffled[0].labels.device

    def patches(self, i: int, weight: torch.Tensor) -> dict[str, LowRankPatch]:
        """Cell ``i``'s interventions with its rotation's ``weight``."""
        location = self.cells[i].site.location
        return {v: LowRankPatch(location, weight[:, a:b]) for v, (a, b) in self.spans[i].items()}

    def step(self, members: tuple[int, ...]) -> StepLoss:
        forward = captured(
            _staircase_loss(
                [self.shuffled[i] for i in members],
                [self.rotations[i] for i in members],
                [functools.partial(self.patches, i) for i in members],
                self.shuffled[self.keeper],
                self.shuffled[0].labels,
            ),
            enabled=self.config.capture,
            device=self.device,
        )

        def run(
            rows: torch.Tensor | slice, step: int
        ) -> tuple[torch.Tensor, torch.Tensor, Sequence[int]]:
            # the cells' losses, in the order they join the staircase (by cut)
            cell_losses, joined = forward(rows)
            return cell_losses.sum(), cell_losses, joined

        return run

    def snapshot(self, unit: int) -> torch.Tensor:
        return self.rotations[unit].weight.detach().clone()

    def score(
        self, members: Sequence[int], snapshots: Mapping[int, torch.Tensor], select: bool
    ) -> dict[int, EpochScore]:
        if not select:
            return {i: EpochScore(None) for i in members}
        correct = _correct(
            [self.scored[i] for i in members],
            [self.patches(i, snapshots[i]) for i in members],
            past_from=self.scored[self.keeper] if self.keeper in members else None,
        )
        return {
            i: EpochScore(float(hits.float().mean()))
            for i, hits in zip(members, correct, strict=True)
        }

    def unit_name(self, unit: int) -> str:
        return f"cell {self.cells[unit].site.location}"


def _fit_staircase(
    cells: Sequence[PreparedInterchanges],
    validation: Sequence[PreparedInterchanges] | None,
    task: Task,
    variables: Sequence[str],
    method: Method,
    rank: int | None,
    config: TrainingConfig,
    progress: Callable[[int, dict[str, float | None]], None] | None,
) -> list[Alignment]:
    objective = StaircaseObjective(cells, validation, variables, method, rank, config)
    trained = train(objective, config, objective.generator, progress=progress)
    network_hash, model_hash = cells[0].network.hash, task.model.source_hash
    return [
        Alignment(
            method=method.name,
            location=cell.site.location,
            network_hash=network_hash,
            model_hash=model_hash,
            basis=best.cpu(),
            subspaces=dict(spans),
            boundary={},
            temperature=None,
            curve=list(curve),
            config={"method": method.name, "rank": rank, **config.to_dict()},
        )
        for cell, best, spans, curve in zip(
            cells, trained.best, objective.spans, trained.curves, strict=True
        )
    ]
