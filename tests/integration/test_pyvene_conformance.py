"""Our interventions equal pyvene's IntervenableModel on the same network, site and parameters.

The last tests run the path that produces every reported number: prepared
interchanges (prefix cache included) with a trained alignment's interventions, and
the boundless intervention exactly as a training step builds it.
"""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import pyvene
import torch

from abstraction import counterfactual_dataset
from abstraction.alignment import PreparedInterchanges, TrainingConfig, align, fit
from abstraction.interventions import (
    BoundlessPatch,
    Intervention,
    LowRankPatch,
    MeanAblation,
    Patch,
    RotatedPatch,
    ZeroAblation,
)
from abstraction.locations import Location
from abstraction.network import Batch, Network
from abstraction.pyvene_interop import from_pyvene, to_pyvene
from abstraction.runtime import intervene
from abstraction.task import Task

TOLERANCE = 1e-6


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed)))
    return q


def _kinds(loc: Location, width: int) -> list[Intervention]:
    r = _orthogonal(width, 1)
    return [
        Patch(loc),
        RotatedPatch(loc, rotation=r, subspace=(0, width // 2)),
        LowRankPatch(loc, basis=r[:, :3]),
        BoundlessPatch(loc, rotation=r, boundary=0.3, temperature=2.0),
        ZeroAblation(loc),
        MeanAblation(loc, mean=torch.randn(width, generator=torch.Generator().manual_seed(2))),
    ]


def _pyvene_logits(
    network: Network,
    iv: Intervention,
    base: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    units: object,
) -> torch.Tensor:
    component, obj = to_pyvene(iv, network)
    config = pyvene.IntervenableConfig(
        representations=[
            pyvene.RepresentationConfig(**component, max_number_of_units=1, intervention=obj)
        ]
    )
    model = pyvene.IntervenableModel(config, network.module)
    if iv.needs_source:
        _, out = model(base, [source], unit_locations={"sources->base": (units, units)})
    else:
        _, out = model(base, unit_locations={"base": units})
    return out.logits if hasattr(out, "logits") else out[0]


@pytest.mark.parametrize("layer", [0, 2])
def test_mlp_matches_pyvene(small_mlp: Network, layer: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 16, generator=gen), torch.randn(8, 1, 16, generator=gen)
    base, source = Batch({"inputs_embeds": x}), Batch({"inputs_embeds": y})
    plain = small_mlp.logits(base)
    for iv in _kinds(Location(layer=layer), 16):
        ours = intervene(small_mlp, base, [iv], source)
        theirs = _pyvene_logits(small_mlp, iv, {"inputs_embeds": x}, {"inputs_embeds": y}, 0)
        assert (ours - theirs).abs().max().item() <= TOLERANCE, iv
        assert (ours - plain).abs().max().item() > 1e-4, f"{iv} changed nothing"


@pytest.mark.parametrize(
    ("component", "layer", "position", "head"),
    [
        ("residual", 1, 3, None),
        ("mlp_output", 0, -1, None),
        ("attention_output", 1, 5, None),
        ("head", 1, 4, 2),
    ],
)
def test_gpt2_matches_pyvene(
    small_gpt2: Network, component: str, layer: int, position: int, head: int | None
) -> None:
    gen = torch.Generator().manual_seed(0)
    n, length = 6, 7
    ids = torch.randint(0, 20, (n, length), generator=gen)
    src_ids = torch.randint(0, 20, (n, length), generator=gen)
    readout = torch.full((n,), length - 1)
    base = Batch({"input_ids": ids}, readout=readout)
    source = Batch({"input_ids": src_ids}, readout=readout)
    loc = Location(layer=layer, component=component, position=position, head=head)
    width = 8 if component == "head" else 32
    absolute = position if position >= 0 else length + position
    pos_units = [[[absolute]] * n]
    units = [[[[head]] * n, [[absolute]] * n]] if head is not None else pos_units
    for iv in _kinds(loc, width):
        if isinstance(iv, (BoundlessPatch, MeanAblation)) and head is not None:
            continue
        ours = intervene(small_gpt2, base, [iv], source)
        theirs = _pyvene_logits(small_gpt2, iv, {"input_ids": ids}, {"input_ids": src_ids}, units)
        assert (ours - theirs[:, -1]).abs().max().item() <= TOLERANCE, iv


def test_round_trip_through_pyvene(small_mlp: Network) -> None:
    loc = Location(layer=1)
    for iv in _kinds(loc, 16):
        _, obj = to_pyvene(iv, small_mlp)
        back = from_pyvene(obj, loc)
        assert type(back) is type(iv)
        for name in ("rotation", "basis", "mean"):
            if isinstance(getattr(iv, name, None), torch.Tensor):
                assert torch.allclose(getattr(back, name), getattr(iv, name), atol=1e-6)


def _float64(network: Network, task: Task) -> tuple[Network, Task]:
    """Copies of a network and its task that compute in float64.

    The training-path tests compare in float64: both implementations then agree to
    ~1e-12 whatever order they round in, so a gap above 1e-6 is a real difference in
    what is computed, not float32 rounding of the same arithmetic in another order.
    """
    module = copy.deepcopy(network.module).double()
    wide = Network(module, family=network.family, name=f"{network.name} (float64)")
    wide_task = copy.copy(task)

    def batch(data: pd.DataFrame, prefix: str) -> Batch:
        b = task.batch(data, prefix)
        inputs = {k: v.double() if v.is_floating_point() else v for k, v in b.inputs.items()}
        return Batch(inputs, b.positions, b.readout)

    wide_task.batch = batch  # type: ignore[method-assign]
    return wide, wide_task


def _orthonormal64(basis: torch.Tensor) -> torch.Tensor:
    """A trained float32 basis made orthonormal in float64 (it moves by ~1e-7).

    pyvene's rotation layers are orthogonally parametrised: assigning a basis that is
    orthonormal only to float32 precision re-orthonormalises it, so both sides would
    not hold the same parameters.
    """
    q, r = torch.linalg.qr(basis.double())
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def _prepared_vs_pyvene(
    prepared: PreparedInterchanges,
    task: Task,
    data: pd.DataFrame,
    variable: str,
    iv: Intervention,
    units: object,
) -> float:
    """Largest logit gap between prepared interchanges and pyvene on ``variable``'s rows."""
    rows = torch.tensor(data[f"do.{variable}"].to_numpy(dtype=bool)).nonzero().flatten()[:64]
    assert len(rows) > 0
    ours = prepared.logits(rows, {variable: iv}).detach()
    subset = data.iloc[rows.numpy()]
    base, source = task.batch(subset, "base."), task.batch(subset, f"source.{variable}.")
    theirs = _pyvene_logits(prepared.network, iv, base.inputs, source.inputs, units).detach()
    if theirs.dim() == 3:
        theirs = theirs[torch.arange(len(rows)), base.readout]
    assert ours.dtype == theirs.dtype == torch.float64
    return (ours - theirs).abs().max().item()


def test_trained_alignment_matches_pyvene(
    he_network: Network, he_task: Task, he_pairs: list[pd.DataFrame]
) -> None:
    """A DAS alignment trained by ``align`` gives pyvene's logits on the prepared test pairs."""
    train, _, test = he_pairs
    location = Location(layer=0)
    config = TrainingConfig(epochs=1, batch_size=512, lr=5e-3, seed=0)
    das = align(he_network, he_task, train[:4000], location, ["wx", "yz"], config=config)
    network, task = _float64(he_network, he_task)
    prepared = PreparedInterchanges(network, task, test, location, ["wx", "yz"])
    for variable, trained in das.interventions().items():
        assert isinstance(trained, LowRankPatch)
        iv = LowRankPatch(location, _orthonormal64(trained.basis))
        gap = _prepared_vs_pyvene(prepared, task, test, variable, iv, 0)
        assert gap <= TOLERANCE, (variable, gap)
        assert not torch.equal(  # the check is not vacuous: the intervention moves logits
            prepared.logits(torch.arange(64), {variable: iv}), prepared.logits(torch.arange(64))
        )


def test_boundless_training_step_matches_pyvene(
    he_network: Network, he_task: Task, he_pairs: list[pd.DataFrame]
) -> None:
    """The intervention a boundless training step builds (trainable boundary) is pyvene's."""
    _, _, test = he_pairs
    location = Location(layer=1)
    network, task = _float64(he_network, he_task)
    prepared = PreparedInterchanges(network, task, test, location, ["wx"])
    generator = torch.Generator().manual_seed(4)
    rotation = torch.linalg.qr(torch.randn(16, 16, generator=generator, dtype=torch.float64))[0]
    boundary = torch.nn.Parameter(torch.tensor(0.4, dtype=torch.float64))
    iv = BoundlessPatch(location, rotation, boundary, torch.tensor(3.0, dtype=torch.float64))
    assert _prepared_vs_pyvene(prepared, task, test, "wx", iv, 0) <= TOLERANCE
    prepared.logits(slice(0, 32), {"wx": iv}).sum().backward()
    assert boundary.grad is not None and boundary.grad.abs() > 0  # trainable through the path


@pytest.mark.parametrize(
    ("component", "layer", "position"),
    [("residual", 1, "b0"), ("mlp_output", 1, "a0"), ("attention_output", 1, "equals")],
)
def test_prefix_cached_training_path_matches_pyvene(
    addition_network: Network, addition_task: Task, component: str, layer: int, position: str
) -> None:
    """On a GPT-2, suffix runs from the prefix cache (as training does) give pyvene's logits."""
    data = counterfactual_dataset(addition_task.model, 300, [["carry"]], seed=3)
    location = Location(layer=layer, component=component, position=position)
    network, task = _float64(addition_network, addition_task)
    prepared = PreparedInterchanges(network, task, data, location, ["carry"])
    assert prepared.cache is not None  # the suffix path is the one under test
    trained = fit(
        prepared,
        None,
        task,
        ["carry"],
        method="low_rank",
        rank=2,
        config=TrainingConfig(epochs=1, batch_size=100, lr=1e-2),
    )
    absolute = int(addition_task.batch(data[:1], "base.").positions[position][0])
    units = [[[absolute]] * min(64, len(data))]
    found = trained.intervention("carry")
    assert isinstance(found, LowRankPatch)
    iv = LowRankPatch(location, _orthonormal64(found.basis))
    assert _prepared_vs_pyvene(prepared, task, data, "carry", iv, units) <= TOLERANCE
