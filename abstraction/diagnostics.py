"""Illusion diagnostics: does an aligned subspace carry the variable the way the network does?

Makelov et al. ("Is This the Subspace You Are Looking For?", ICLR 2024) show that a
patched subspace can reproduce an interchange although the network never routes the
variable through it: the aligned direction combines a *disconnected* part (which
correlates with the variable, but nothing downstream reads) and a *dormant* part (which
downstream reads, but which real inputs never move). Patching the combination moves the
dormant part by an amount the disconnected part supplies, and the output follows.

:func:`diagnose` measures, for one aligned variable, on the test pairs:

* ``dormant_effect`` - of the patch's first-order effect on the output margin
  (counterfactual label against base label), the share that comes through directions in
  which real activations at the site (almost) never vary. An honest subspace moves the
  output through directions the data moves; an illusion through dormant ones.
* ``disconnection`` - the share of the aligned subspace outside the span of the output
  margin's gradients with respect to the activation over the data: what downstream does
  not read.
* ``subspace_iia`` against ``patch_iia`` on *isolated* pairs - single-variable
  interchanges whose source agrees with the base on every other variable the output
  depends on (the parents of the variable's descendants). There, the full patch of the
  site moves only what the variable moves; a site that truly carries the variable
  gives the full patch at least the subspace's IIA, while an illusion scores far above
  the full patch of its own site.

:func:`output_agreement` measures how far a variable is the output in disguise: the
share of inputs on which it is a function of the output alone. What the numbers mean
for the verdict is decided in :mod:`abstraction.verdict` from thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from abstraction.alignment.prepared import PreparedInterchanges
from abstraction.alignment.result import Alignment
from abstraction.causal_model import CausalModel
from abstraction.evidence import Diagnostics
from abstraction.interventions import Intervention, Patch

__all__ = ["DORMANT_VARIANCE", "Diagnostics", "diagnose", "isolated_pairs", "output_agreement"]

DORMANT_VARIANCE = 1e-3
"""A direction is dormant when real activations vary along it less than this fraction of
their average variance per direction."""

CONNECTED_ENERGY = 0.99
"""The span of output gradients is the smallest one holding this share of their energy."""


@dataclass(frozen=True, repr=False, eq=False)
class _Probe(Intervention):
    """Adds ``delta`` (a tensor that requires gradients) and records the activation it saw."""

    delta: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    seen: list[torch.Tensor] = field(default_factory=list)
    needs_source: bool = field(default=False, init=False)

    def apply(self, base: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        self.seen.append(base.detach().reshape(len(base), -1))
        return base + self.delta.to(base.device, base.dtype).view_as(base)


def isolated_pairs(model: CausalModel, test: pd.DataFrame, variable: str) -> np.ndarray:
    """Rows of ``test`` that interchange ``variable`` alone, change the label, and whose
    source agrees with the base on every other parent of the variable's descendants."""
    rows = (test["intervened"].astype(str) == variable).to_numpy() & test["changed"].to_numpy(
        dtype=bool
    )
    if not rows.any() or any(c.startswith(("origin.", "fixed.")) for c in test.columns):
        return np.zeros(len(test), dtype=bool)
    below = model.descendants(variable)
    parents = model.parents
    frontier = {p for d in below for p in parents[d]} - below - {variable}
    base = {name: test[f"base.{name}"].to_numpy()[rows] for name in model.inputs}
    source = {name: test[f"source.{variable}.{name}"].to_numpy()[rows] for name in model.inputs}
    base_values = model.run_batch(base, validate=False)
    source_values = model.run_batch(source, validate=False)
    same = np.ones(int(rows.sum()), dtype=bool)
    for name in frontier:
        same &= _equal(base_values[name], source_values[name])
    out = np.zeros(len(test), dtype=bool)
    out[np.flatnonzero(rows)[same]] = True
    return out


def _equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype == object or b.dtype == object:
        return np.array([x == y for x, y in zip(a, b, strict=True)], dtype=bool)
    return np.asarray(a == b, dtype=bool)


def output_agreement(
    model: CausalModel, inputs: pd.DataFrame, variables: Sequence[str]
) -> dict[str, float]:
    """For each of ``variables``, the share of ``inputs`` (columns named like the model's
    inputs, optionally with a ``base.`` prefix) on which it is a function of the output
    alone: for each output value, the variable's most common value, counted over all rows.
    The model runs once for all of them."""
    if len(inputs) == 0:
        return dict.fromkeys(variables, 0.0)
    columns = {
        name: inputs[f"base.{name}" if f"base.{name}" in inputs else name].to_numpy()
        for name in model.inputs
    }
    values = model.run_batch(columns, validate=False)
    output = pd.Series(values[model.output]).astype(str)
    shares = {}
    for variable in variables:
        frame = pd.DataFrame({"v": pd.Series(values[variable]).astype(str), "o": output})
        counts = frame.groupby(["o", "v"], observed=True).size()
        shares[variable] = float(counts.groupby(level=0).max().sum() / len(frame))
    return shares


def diagnose(
    prepared: PreparedInterchanges,
    alignment: Alignment,
    variable: str,
    model: CausalModel,
    test: pd.DataFrame,
    correct: np.ndarray,
    *,
    limit: int = 4096,
) -> Diagnostics:
    """The illusion diagnostics of ``variable``'s subspace in ``alignment``.

    Args:
        prepared: the test pairs prepared at the alignment's location(s).
        alignment: the alignment holding ``variable``.
        variable: the aligned variable.
        model: the causal model that labelled ``test``.
        test: the test pairs.
        correct: the alignment's per-pair correctness on ``test``.
        limit: at most this many changed pairs are differentiated (gradients).
    """
    isolated = isolated_pairs(model, test, variable)
    n_isolated = int(isolated.sum())
    subspace_iia = patch_iia = None
    if n_isolated:
        rows = torch.from_numpy(np.flatnonzero(isolated))
        subspace_iia = float(correct[isolated].mean())
        patched = prepared.correct({variable: Patch(alignment.location)}, rows=rows)
        patch_iia = float(patched.float().mean())
    measured = Diagnostics(
        subspace_iia=subspace_iia, patch_iia=patch_iia, isolated_pairs=n_isolated
    )
    if alignment.basis is None:
        return replace(measured, note="a full patch has no subspace to diagnose")
    natural = prepared.sources[variable]
    if natural.dim() > 2 and all(n == 1 for n in natural.shape[1:-1]):
        natural = natural.reshape(len(natural), -1)  # a sequence of one (pyvene's MLPs)
    if natural.dim() != 2:
        return replace(
            measured,
            note="the site is a whole sequence (position=None): no per-example activation",
        )
    changed = (prepared.do[variable] & prepared.changed).numpy()
    rows_np = np.flatnonzero(changed)[:limit]
    if len(rows_np) == 0:
        return replace(
            measured, note="no test pair that intervenes on the variable changes the label"
        )
    rows = torch.from_numpy(rows_np)
    basis = alignment.variable_basis(variable).detach().cpu().double()
    gradient, base = _margin_gradient(prepared, alignment, rows)
    delta = (natural[rows].double() - base) @ basis @ basis.T

    spread = natural.double() - natural.double().mean(dim=0)
    variance, directions = torch.linalg.eigh(spread.T @ spread / max(len(spread) - 1, 1))
    dormant = directions[:, variance < DORMANT_VARIANCE * float(variance.clamp(min=0).mean())]
    through_dormant = ((gradient * (delta @ dormant @ dormant.T)).sum(-1)).abs()
    through_live = ((gradient * (delta - delta @ dormant @ dormant.T)).sum(-1)).abs()
    total = float((through_dormant + through_live).sum())
    dormant_effect = float(through_dormant.sum()) / total if total > 0 else 0.0

    _, singular, right = torch.linalg.svd(gradient, full_matrices=False)
    energy = torch.cumsum(singular**2, 0) / max(float((singular**2).sum()), 1e-300)
    keep = int(torch.searchsorted(energy, torch.tensor(CONNECTED_ENERGY, dtype=energy.dtype))) + 1
    connected = right[:keep].T
    inside = float(((connected.T @ basis) ** 2).sum())
    disconnection = max(0.0, 1.0 - inside / basis.shape[1])
    return replace(measured, dormant_effect=dormant_effect, disconnection=disconnection)


def _margin_gradient(
    prepared: PreparedInterchanges, alignment: Alignment, rows: torch.Tensor, batch: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row gradient of (counterfactual-label logit - base-label logit) with respect to
    the activation at the alignment's site, and that activation."""
    grads: list[torch.Tensor] = []
    seen: list[torch.Tensor] = []
    width = prepared.width_of(alignment.variables[0])
    device = prepared.network.device
    with torch.enable_grad():
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            delta = torch.zeros(
                len(chunk), width, dtype=torch.float32, device=device, requires_grad=True
            )
            probe = _Probe(alignment.location, delta=delta)
            logits = prepared.logits(chunk, [probe])
            index = torch.arange(len(chunk), device=logits.device)
            labels = prepared.labels[chunk].to(logits.device)
            base_labels = prepared.base_labels[chunk].to(logits.device)
            margin = logits[index, labels] - logits[index, base_labels]
            (gradient,) = torch.autograd.grad(margin.sum(), delta)
            grads.append(gradient.detach().double().cpu())
            seen.append(probe.seen[-1].double().cpu())
    return torch.cat(grads), torch.cat(seen)
