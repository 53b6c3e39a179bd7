"""Networks built by hand whose answer is known: planted variables, nulls and illusions.

Every network here computes hierarchical equality (``(w == x) == (y == z)``) over
one-hot entities, with all weights set by hand (nothing is trained), and exposes the
layer whose representation is in question as the module ``"represent"`` (16 wide): a
code in known directions (a random rotation, fixed by the seed) beside distractor
dimensions (random features of the input). The ``kind`` says what that layer holds:

* ``"planted"`` - ``wx`` and ``yz`` each along one known direction, and the readout
  computes the output from those two directions only: the hypothesis is true there.
* ``"output_only"`` - only the output ``wx == yz``: the variables exist upstream but are
  not separately represented at the layer.
* ``"lookup"`` - a one-hot code of the joint value ``(wx, yz)`` (a lookup table).
* ``"illusion"`` - Makelov et al.'s construction for ``wx``: the layer holds a copy of
  ``wx`` that nothing downstream reads (*disconnected*) and a direction that downstream
  reads with weight 2 but that is 0 on every input (*dormant*); the real ``wx`` reaches
  the readout around the layer. Patching the sum of the two directions reproduces every
  ``wx`` interchange, although the layer does not carry ``wx`` causally. ``yz`` is
  planted honestly (but DAS may tilt its direction into the dormant one as well). A
  sound verdict flags ``wx`` as an illusion and never calls the network ``faithful``.

Three more, for the featurizer methods (:func:`feature_network`), hold ``wx`` and ``yz``
in a form one method finds: ``"neurons"`` on a few neurons (two each, each carrying
half the value; DBM over neurons must keep both), ``"principal"`` along the two
directions of largest variance (``wx`` the top one; PCA finds them), ``"sparse"`` as two
features of a sparse code of 12 planted features in 16 dimensions (``wx``, ``yz`` and a
one-hot of ``w`` with a magnitude set by ``z``: 1 to 3 active per input; an SAE trained on
the layer should recover them).

They serve :mod:`benchmarks/calibration.py` (how often each verdict is reached when the
truth is known) and the tests of the verdict and its diagnostics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch
from torch import nn

from abstraction.causal_model import CausalModel, causal_model
from abstraction.network import Batch, Network
from abstraction.task import Task

__all__ = [
    "ENTITIES",
    "FEATURE_KINDS",
    "KINDS",
    "WIDTH",
    "FeatureGroundTruth",
    "FeatureKind",
    "HandBuilt",
    "Kind",
    "OneHotTask",
    "equality",
    "feature_network",
    "network",
]

N_ENTITIES = 10
ENTITIES = range(N_ENTITIES)
"""The entities ``w, x, y, z`` range over."""
WIDTH = 16
"""The width of the ``represent`` layer."""

Kind = Literal["planted", "output_only", "lookup", "illusion"]
KINDS: tuple[Kind, ...] = ("planted", "output_only", "lookup", "illusion")
FeatureKind = Literal["neurons", "principal", "sparse"]
FEATURE_KINDS: tuple[FeatureKind, ...] = ("neurons", "principal", "sparse")


@causal_model(inputs={"w": ENTITIES, "x": ENTITIES, "y": ENTITIES, "z": ENTITIES})
def equality(w, x, y, z):  # type: ignore[no-untyped-def]
    wx = w == x
    yz = y == z
    return wx == yz


class OneHotTask(Task):
    """Entities as one-hot vectors, concatenated; the output as class 0/1."""

    def __init__(self, model: CausalModel = equality) -> None:
        self.name = "one-hot equality"
        self.model = model

    @property
    def n_classes(self) -> int:
        return 2

    def encode(self, columns: Mapping[str, np.ndarray]) -> Batch:
        ids = torch.as_tensor(np.stack([columns[v] for v in "wxyz"], axis=1).astype(np.int64))
        onehot = nn.functional.one_hot(ids, N_ENTITIES).float().reshape(len(ids), -1)
        return Batch({"x": onehot})

    def label_ids(
        self, values: np.ndarray, inputs: Mapping[str, np.ndarray] | None = None
    ) -> torch.Tensor:
        return torch.as_tensor(values.astype(np.int64))


class HandBuilt(nn.Module):
    """detect -> represent (the layer in question, 16 wide) -> readout, weights set by hand."""

    def __init__(self, kind: Kind, seed: int) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}")
        gen = torch.Generator().manual_seed(seed)
        n, e = 4 * N_ENTITIES, N_ENTITIES
        self.detect = nn.Linear(n, 2 * e)  # h_k = ReLU(w_k + x_k - 1), then the same for y, z
        with torch.no_grad():
            self.detect.weight.zero_()
            for k in range(e):
                self.detect.weight[k, k] = self.detect.weight[k, e + k] = 1.0
                self.detect.weight[e + k, 2 * e + k] = self.detect.weight[e + k, 3 * e + k] = 1.0
            self.detect.bias.fill_(-1.0)
        self.rotation: torch.Tensor
        self.distractor: torch.Tensor
        rotation, _ = torch.linalg.qr(torch.randn(WIDTH, WIDTH, generator=gen))
        self.register_buffer("rotation", rotation)
        self.kind = kind
        self.register_buffer("distractor", torch.randn(WIDTH, n, generator=gen) * 0.5)
        self.represent = nn.Identity()  # the probed layer: a module whose output is hooked

    def _equalities(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.detect(x))
        return h[:, :N_ENTITIES].sum(-1), h[:, N_ENTITIES:].sum(-1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``represent`` layer's input: the code in rotated directions, then distractors."""
        wx, yz = self._equalities(x)
        noise = torch.tanh(x @ self.distractor.T)
        if self.kind == "planted":
            code = [wx, yz]
        elif self.kind == "output_only":
            code = [1.0 - (wx - yz).abs()]
        elif self.kind == "lookup":
            code = [(1 - wx) * (1 - yz), (1 - wx) * yz, wx * (1 - yz), wx * yz]
        else:  # illusion: a disconnected copy of wx, a dormant direction, honest yz
            code = [wx, torch.zeros_like(wx), yz]
        z = torch.cat([torch.stack(code, -1), noise[:, len(code) :]], dim=-1)
        return z @ self.rotation.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.represent(self.features(x))
        z = hidden @ self.rotation  # undo the rotation, then read only the code dimensions
        if self.kind == "planted":
            same = torch.relu(1 - z[:, 0] - z[:, 1]) + torch.relu(z[:, 0] + z[:, 1] - 1)
        elif self.kind == "output_only":
            same = z[:, 0]
        elif self.kind == "lookup":
            same = z[:, 0] + z[:, 3]
        else:  # wx around the layer, plus twice the dormant direction; yz from the layer
            wx = self._equalities(x)[0] + 2 * z[:, 1]
            same = torch.relu(1 - wx - z[:, 2]) + torch.relu(wx + z[:, 2] - 1)
        return torch.stack([-8 * (same - 0.5), 8 * (same - 0.5)], dim=-1)

    def planted_directions(self) -> torch.Tensor:
        """The ``(16, 2)`` directions along which ``planted`` holds ``wx`` and ``yz``."""
        return self.rotation[:, :2]


def network(kind: Kind, seed: int = 0) -> Network:
    """A hand-built network of ``kind`` (see the module docstring); ``seed`` sets its
    rotation and distractors."""
    return Network(HandBuilt(kind, seed), family="generic", name=f"hand-built {kind} #{seed}")


class FeatureGroundTruth(nn.Module):
    """``wx`` and ``yz`` planted where one featurizer finds them (see the module docstring).

    ``represent`` is the probed 16-wide layer; the readout computes
    ``(a == b)`` from ``a``, ``b``, the two variables read back from the layer
    (``same = relu(1 - a - b) + relu(a + b - 1)``), and reads nothing else there.

    Attributes (buffers, fixed by the seed):
        neurons: ``"neurons"``: ``(2, 2)`` the neuron indices of ``wx`` (row 0) and ``yz``.
        directions: ``"principal"``: ``(16, 2)`` the planted directions of ``wx`` and
            ``yz`` (orthonormal); ``"sparse"``: ``(12, 16)`` the planted features' unit
            directions (rows ``wx``, ``yz``, then ``w``'s one-hot, orthogonal to the first two).
    """

    def __init__(self, kind: FeatureKind, seed: int) -> None:
        super().__init__()
        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown kind {kind!r}; use one of {FEATURE_KINDS}")
        self.kind = kind
        gen = torch.Generator().manual_seed(seed)
        self.helper = HandBuilt("planted", seed)  # its detectors and distractors
        self.neurons: torch.Tensor
        self.directions: torch.Tensor
        self.reader: torch.Tensor
        self.register_buffer("neurons", torch.randperm(WIDTH, generator=gen)[:4].reshape(2, 2))
        if kind == "sparse":
            # wx and yz along two random unit directions; w's ten one-hot features along
            # random unit directions of the complement of those two
            pair = torch.randn(2, WIDTH, generator=gen)
            pair = pair / pair.norm(dim=1, keepdim=True)
            q, _ = torch.linalg.qr(
                torch.cat([pair.T, torch.randn(WIDTH, WIDTH - 2, generator=gen)], 1)
            )
            entities = torch.randn(N_ENTITIES, WIDTH - 2, generator=gen) @ q[:, 2:].T
            entities = entities / entities.norm(dim=1, keepdim=True)
            self.register_buffer("directions", torch.cat([pair, entities]))
            self.register_buffer("reader", torch.linalg.pinv(pair))  # (16, 2): h -> (wx, yz)
        else:
            self.register_buffer("directions", self.helper.rotation[:, :2].clone())
            self.register_buffer("reader", torch.empty(0))
        self.represent = nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``represent`` layer's input."""
        wx, yz = self.helper._equalities(x)
        noise = torch.tanh(x @ self.helper.distractor.T)
        if self.kind == "neurons":
            h = noise * 0.5
            h[:, self.neurons[0]] = wx.unsqueeze(-1) * 0.5
            h[:, self.neurons[1]] = yz.unsqueeze(-1) * 0.5
            return h
        if self.kind == "principal":
            z = torch.cat([torch.stack([4 * wx, yz], -1), 0.25 * noise[:, 2:]], dim=-1)
            return z @ self.helper.rotation.T
        w = x[:, :N_ENTITIES]
        magnitude = 1.0 + x[:, 3 * N_ENTITIES :].argmax(-1, keepdim=True) / 10  # z sets it
        code = torch.cat([torch.stack([wx, yz], -1), w * magnitude], dim=-1)
        return code @ self.directions

    def read(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``wx`` and ``yz`` as the readout reads them from the layer."""
        if self.kind == "neurons":
            return hidden[:, self.neurons[0]].sum(-1), hidden[:, self.neurons[1]].sum(-1)
        if self.kind == "principal":
            z = hidden @ self.helper.rotation
            return z[:, 0] / 4, z[:, 1]
        code = hidden @ self.reader
        return code[:, 0], code[:, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.read(self.represent(self.features(x)))
        same = torch.relu(1 - a - b) + torch.relu(a + b - 1)
        return torch.stack([-8 * (same - 0.5), 8 * (same - 0.5)], dim=-1)


def feature_network(kind: FeatureKind, seed: int = 0) -> Network:
    """A hand-built network whose variables one featurizer finds (:class:`FeatureGroundTruth`)."""
    return Network(
        FeatureGroundTruth(kind, seed), family="generic", name=f"hand-built {kind} #{seed}"
    )
