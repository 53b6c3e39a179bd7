"""Networks and experiments are checked before any work starts, each error with its fix."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from abstraction import Experiment, Location, TrainingConfig, align, counterfactual_dataset, zoo
from abstraction.errors import DeclarationError, UnknownNameError
from abstraction.experiment import run
from abstraction.network import Network, import_pyvene
from abstraction.task import TaskError

TASK = zoo.task("hierarchical_equality_mlp")


def _mlp(classes: int) -> Network:
    import_pyvene()
    from pyvene.models.mlp.modelings_mlp import MLPConfig

    config = MLPConfig(h_dim=16, n_layer=2, num_classes=classes, activation_function="relu")
    return Network.from_config(config, seed=0)


class TakesX(nn.Module):
    """A plain classifier whose forward reads ``x``, not ``inputs_embeds``."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(16, 16), nn.Linear(16, 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](torch.relu(self.layers[0](x)))


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return counterfactual_dataset(TASK.model, 500, [["wx"]], seed=0)


@pytest.mark.parametrize(("classes", "expected"), [(1, "index past"), (3, "no label stands for")])
def test_output_width_must_match_the_task(classes: int, expected: str, train: pd.DataFrame) -> None:
    with pytest.raises(TaskError) as caught:
        align(_mlp(classes), TASK, train, Location(layer=0), ["wx"])
    message = str(caught.value)
    assert f"outputs {classes} logit(s)" in message and "has 2 classes" in message
    assert expected in message and "num_classes=2" in message


def test_forward_must_take_what_the_task_feeds(train: pd.DataFrame) -> None:
    network = Network.wrap(TakesX(), family="generic")
    with pytest.raises(TaskError) as caught:
        align(network, TASK, train, Location(path="layers.0"), ["wx"])
    message = str(caught.value)
    assert "`inputs_embeds`" in message and "TakesX.forward(x)" in message
    assert "Wrap the module" in message


def test_experiment_checks_the_network_before_making_data() -> None:
    phases: list[str] = []
    experiment = Experiment(
        name="narrow",
        model=TASK.model,
        task=TASK,
        network=lambda: _mlp(1),
        variables=["wx"],
        location=Location(layer=0),
        training=TrainingConfig(epochs=1),
    )
    with pytest.raises(TaskError, match="outputs 1 logit"):
        run(experiment, progress=phases.append)
    assert phases == ["loading the network"]  # no pairs generated, nothing trained


@pytest.mark.parametrize("option", ["subspaces", "rank"])
def test_every_key_names_an_aligned_variable(option: str) -> None:
    value = {"wx": (0, 8), "bgi": (8, 16)} if option == "subspaces" else {"wx": 2, "bgi": 2}
    with pytest.raises(DeclarationError) as caught:
        Experiment(
            name="typo",
            model=TASK.model,
            task=TASK,
            network="hierarchical_equality_mlp",
            variables=["wx", "yz"],
            location=Location(layer=0),
            **{option: value},  # type: ignore[arg-type]
        )
    message = str(caught.value)
    assert f"{option}= names 'bgi'" in message and "valid names are 'wx', 'yz'" in message


def test_align_names_the_unknown_subspace(train: pd.DataFrame) -> None:
    with pytest.raises(UnknownNameError, match=r"subspaces= names 'wy'.*did you mean 'wx'"):
        align(_mlp(2), TASK, train, Location(layer=0), ["wx"], subspaces={"wy": (0, 8)})


@pytest.mark.parametrize("available", [1024, 2**50])
def test_a_run_that_may_not_fit_in_memory_says_so_up_front(
    available: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    from abstraction.alignment import prefix_cache
    from abstraction.alignment.prefix_cache import MemoryWarning, memory_shortfall

    network = _mlp(2)
    weights = sum(p.numel() * 4 for p in network.module.parameters())
    assert memory_shortfall(network, 2**20, available=weights + 2 * 2**20) is None
    message = memory_shortfall(network, 2**20, available=weights + 2 * 2**20 - 1)
    assert message is not None and "--memory-budget" in message

    monkeypatch.setattr(prefix_cache, "available_memory", lambda: available)

    def stop(*args: object, **kwargs: object) -> None:
        raise RuntimeError("stopped after the checks")

    monkeypatch.setattr("abstraction.experiment.counterfactual_dataset", stop)
    experiment = Experiment(
        name="fits",
        model=TASK.model,
        task=TASK,
        network=lambda: network,
        variables=["wx"],
        location=Location(layer=0),
    )
    phases: list[str] = []
    with warnings.catch_warnings(record=True) as caught, pytest.raises(RuntimeError):
        warnings.simplefilter("always")
        run(experiment, progress=phases.append)
    warned = [w for w in caught if issubclass(w.category, MemoryWarning)]
    assert bool(warned) == (available == 1024)
    assert any(p.startswith("warning: this run may need") for p in phases) == bool(warned)
