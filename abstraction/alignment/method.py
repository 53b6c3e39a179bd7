"""Alignment methods as objects: what a method trains, the interventions it makes, how
it saves, and the registry that finds one by name.

A method is a subclass of :class:`Method` with a ``name``; defining the class registers
it, so :func:`method_named` (what :func:`~abstraction.alignment.das.align`, ``verify``,
``sweep``, :class:`~abstraction.experiment.Experiment` and the CLI resolve a
``method="..."`` string with) finds it, and ``align(..., method=MyMethod())`` works too.
The rest of the library asks a method what it is (its traits below) instead of
comparing its name: adding a method is one new class.

The built-in methods are :class:`~abstraction.alignment.rotation.DAS`,
:class:`~abstraction.alignment.rotation.LowRankDAS`,
:class:`~abstraction.alignment.rotation.BoundlessDAS`,
:class:`~abstraction.alignment.rotation.FullPatch` (``"das"``, ``"low_rank"``,
``"boundless"``, ``"patch"``) and the learned binary masks
:class:`~abstraction.alignment.masks.DBM`, :class:`~abstraction.alignment.masks.PCAMask`
and :class:`~abstraction.alignment.masks.SAEMask` (``"dbm"``, ``"pca"``, ``"sae"``).
Every trained method trains through the one loop, :func:`abstraction.alignment.training.train`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from abstraction.alignment.training import TrainingConfig
from abstraction.errors import AlignmentError, nearest
from abstraction.featurizers import Featurizer
from abstraction.locations import Location

if TYPE_CHECKING:  # types only: the registry sits below the alignments it describes
    from abstraction.alignment.prepared import PreparedInterchanges
    from abstraction.alignment.result import Alignment
    from abstraction.task import Task

__all__ = ["Featurizers", "FitRequest", "Method", "method_named", "method_names"]

Featurizers = Featurizer | Mapping[Location, Featurizer] | None
"""A featurizer for every site, one per site, or none (the method's own choice)."""

_REGISTRY: dict[str, type[Method]] = {}


@dataclass(frozen=True)
class FitRequest:
    """What a method trains on, and how (what :meth:`Method.fit` receives).

    Attributes:
        prepared: the training pairs, prepared at the variables' sites.
        validation: pairs scored after every epoch for early stopping (never the test
            pairs); ``None``: the training pairs.
        task: the task the pairs were prepared for.
        variables: the causal variables aligned together.
        rank: dimensions per variable (an int for all, or per variable); ``None``: the
            method's default.
        subspaces: explicit column ranges per variable, e.g. ``{"wx": (0, 8)}``.
        config: the training configuration.
        progress: called after every epoch with the training curve's newest entry.
        featurizer: for methods that take one: the featurizer (or one per site).
    """

    prepared: PreparedInterchanges
    validation: PreparedInterchanges | None
    task: Task
    variables: Sequence[str]
    rank: int | Mapping[str, int] | None = None
    subspaces: Mapping[str, tuple[int, int]] | None = None
    config: TrainingConfig = field(default_factory=TrainingConfig)
    progress: Callable[[dict[str, float | None]], None] | None = None
    featurizer: Featurizers = None

    @property
    def unit_progress(self) -> Callable[[int, dict[str, float | None]], None] | None:
        """:attr:`progress` as the training loop calls it (with a unit's index)."""
        progress = self.progress
        return None if progress is None else lambda _, entry: progress(entry)


class Method(ABC):
    """An alignment method.

    Subclasses set ``name`` (registering the class) and the traits that differ from
    the defaults, and implement :meth:`fit`. Methods are stateless values: two
    instances of one class are equal.

    Traits:
        rotation: aligns each variable with a block of columns of a learned orthonormal
            basis (``rank`` sets the block sizes; reports print them).
        featurized: selects features of a featurizer with a learned binary mask; the
            mask decides how many features a variable keeps, so ``rank`` does not apply,
            and the alignment saves its featurizer and masks.
        takes_featurizer: accepts a user's featurizer (``featurizer=``).
        takes_subspaces: accepts explicit column ranges per variable (``subspaces=``).
        trained: learns anything (a full patch does not; baselines that retrain skip it).
        staircase: a sweep's cells at one position can train as one staircase
            (:mod:`~abstraction.alignment.staircase`).
        one_variable: aligns one variable at a time, at one site.
        experiment_rank: the rank an :class:`~abstraction.experiment.Experiment` at a
            fixed location aligns with when it gives none (``None``: the method's own
            default, :meth:`default_rank`).
    """

    name: ClassVar[str]
    rotation: ClassVar[bool] = False
    featurized: ClassVar[bool] = False
    takes_featurizer: ClassVar[bool] = False
    takes_subspaces: ClassVar[bool] = False
    trained: ClassVar[bool] = True
    staircase: ClassVar[bool] = False
    one_variable: ClassVar[bool] = False
    experiment_rank: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _REGISTRY[cls.name] = cls

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __str__(self) -> str:
        return self.name

    def default_rank(self, width: int, variables: int) -> int:
        """Dimensions per variable when no rank is given: an equal share of the width."""
        return max(1, width // variables)

    def rotation_width(self, width: int, stop: int) -> int:
        """Columns of the learned rotation at a site of ``width`` whose variables' blocks
        end at column ``stop``: the whole width (the full rotation DAS learns)."""
        return width

    def null(self) -> Method:
        """The method a baseline that retrains (the untrained network, the control
        task) trains: this one."""
        return self

    def check(self, request: FitRequest) -> None:
        """Refuse options of ``request`` that do not apply to this method, saying what to
        do instead."""
        if request.featurizer is not None and not self.takes_featurizer:
            raise AlignmentError(
                f"featurizer= is for methods {', '.join(_names_with('takes_featurizer'))}; "
                f"method {self.name!r} does not use it"
            )
        if self.one_variable and len(request.variables) != 1:
            raise AlignmentError(
                f"method {self.name!r} aligns one variable at a time; call align once per "
                "variable, or use method='das'"
            )

    @abstractmethod
    def fit(self, request: FitRequest) -> list[Alignment]:
        """Train as ``request`` asks (its options were checked by :meth:`check`): one
        alignment per site, sites in the order the variables name them."""

    def null_featurizers(
        self, alignments: Sequence[Alignment], config: TrainingConfig
    ) -> tuple[Featurizers, TrainingConfig]:
        """The featurizer and configuration the untrained-network null retrains with
        (default: none, the same configuration)."""
        return None, config

    def same_featurizers(self, alignments: Sequence[Alignment]) -> Featurizers:
        """The featurizers a null on the same network (the control task) reuses."""
        return None


def method_named(method: str | Method) -> Method:
    """The registered method called ``method`` (a :class:`Method` is returned as is)."""
    if isinstance(method, Method):
        return method
    if not isinstance(method, str) or method not in _REGISTRY:
        raise AlignmentError(f"unknown method {method!r}; {nearest(str(method), _REGISTRY)}")
    return _REGISTRY[method]()


def method_names() -> tuple[str, ...]:
    """Every registered method's name, in the order the classes were defined."""
    return tuple(_REGISTRY)


def _names_with(trait: str) -> list[str]:
    return [repr(name) for name, cls in _REGISTRY.items() if getattr(cls, trait)]
