"""What a training step costs a GPU, counted on any machine.

On a GPU a small step's time is not its arithmetic: it is the number of kernels the host
launches and the times the host waits for the device to finish (a synchronisation). Both
can be counted without a GPU, which makes launch- and sync-bound code measurable here:

* **operations**: ATen operations dispatched (forward and backward), counted with
  torch's dispatch mode. Each is at most one kernel launch on a GPU (views launch
  none, so this is an upper bound on launches).
* **host reads**: calls that need a value on the host, so on a GPU they wait for every
  queued kernel: ``.item()``, ``bool()``/``float()``/``int()`` of a tensor, ``.tolist()``,
  ``.cpu()`` and ``.to("cpu")`` (the string: ``.to(device)`` with a device object is
  taken for a move to the network's device, which on a CPU-only machine it cannot be
  told from), and operations whose output size depends on the data
  (``nonzero``, ``masked_select``, ``unique``). A ``.cpu()`` of a tensor already on the
  host is counted too: the count is what the code asks for, whatever the device. Reads
  inside ``torch.optim`` optimizers' ``step`` are not (their step count is a host tensor).

:func:`per_step` turns two counted runs into the cost of one step: run the same loop for
``n`` and ``n + k`` steps and divide the difference by ``k``, so set-up work outside the
loop cancels.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounts", "counting", "per_step"]

_HOST_READ_METHODS = frozenset(
    {"item", "tolist", "cpu", "__bool__", "__float__", "__int__", "__index__"}
)
_DATA_DEPENDENT_OPS = frozenset(
    {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive"}
)


@dataclass(frozen=True)
class OpCounts:
    """Operations dispatched and host reads of some code (see the module docstring).

    Attributes:
        operations: ATen operations dispatched.
        host_reads: calls that make the host wait for the device.
        by_operation: operations by name (``"mm"``, ``"add"``, ...).
        by_host_read: host reads by kind (``"item"``, ``"cpu"``, ``"nonzero"``, ...).
    """

    operations: float
    host_reads: float
    by_operation: Mapping[str, float] = field(default_factory=dict)
    by_host_read: Mapping[str, float] = field(default_factory=dict)

    def __sub__(self, other: OpCounts) -> OpCounts:
        return OpCounts(
            self.operations - other.operations,
            self.host_reads - other.host_reads,
            _difference(self.by_operation, other.by_operation),
            _difference(self.by_host_read, other.by_host_read),
        )

    def __truediv__(self, steps: float) -> OpCounts:
        return OpCounts(
            self.operations / steps,
            self.host_reads / steps,
            {k: v / steps for k, v in self.by_operation.items()},
            {k: v / steps for k, v in self.by_host_read.items()},
        )


def _difference(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0) - b.get(k, 0) for k in {*a, *b} if a.get(k, 0) != b.get(k, 0)}


_MARKERS = frozenset({"_record_function_enter_new", "_record_function_exit"})
"""Profiler markers, dispatched like operations but launching nothing."""


class _Operations(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's class is untyped
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.counts: Counter[str] = Counter()
        self._regions: list[bool] = []  # profiler regions open now: an optimizer's step?

    @property
    def in_optimizer(self) -> bool:
        """Inside ``torch.optim.Optimizer.step``: torch's optimizers keep their step count
        in a host tensor (unless ``capturable``), so their ``.item()`` waits for nothing."""
        return any(self._regions)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        out = func(*args, **(kwargs or {}))
        if name == "_record_function_enter_new":
            self._regions.append(str(args[0]).startswith("Optimizer.step"))
        elif name == "_record_function_exit" and self._regions:
            self._regions.pop()  # regions close in the order they opened
        if name not in _MARKERS:
            self.counts[name] += 1
        return out


class _HostReads(TorchFunctionMode):
    def __init__(self, operations: _Operations) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self._operations = operations

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self._operations.in_optimizer:
            pass
        elif name in _HOST_READ_METHODS or name in _DATA_DEPENDENT_OPS:
            self.counts[name] += 1
        elif name == "to" and _to_host(args[1:], kwargs):
            self.counts["cpu"] += 1
        return func(*args, **kwargs)


def _to_host(args: Any, kwargs: Mapping[str, Any]) -> bool:
    # only the literal "cpu": a torch.device("cpu") is usually a network's device, and on
    # a CPU-only machine a move there cannot be told from a read back to the host
    return any(isinstance(t, str) and t == "cpu" for t in (*args, kwargs.get("device")))


class _Counter:
    """The live counts inside :func:`counting`; :meth:`result` reads them."""

    def __init__(self, operations: _Operations, host_reads: _HostReads) -> None:
        self._operations = operations
        self._host_reads = host_reads

    def result(self) -> OpCounts:
        ops = self._operations.counts
        # data-dependent operations are seen by both modes: count them once, as host reads
        reads = Counter(self._host_reads.counts)
        for name in _DATA_DEPENDENT_OPS:
            if ops.get(name):
                reads[name] = max(reads.get(name, 0), ops[name])
        return OpCounts(
            float(sum(ops.values())),
            float(sum(reads.values())),
            {k: float(v) for k, v in ops.items()},
            {k: float(v) for k, v in reads.items()},
        )


@contextlib.contextmanager
def counting() -> Iterator[_Counter]:
    """Count the operations and host reads of the code in the block.

    >>> with counting() as counter:
    ...     x = torch.ones(3) * 2
    ...     _ = x.sum().item()
    >>> counts = counter.result()
    >>> counts.host_reads
    1.0

    The modes add Python work to every operation: time nothing inside the block.
    """
    operations = _Operations()
    host_reads = _HostReads(operations)
    with host_reads, operations:
        yield _Counter(operations, host_reads)


def per_step(
    run: Callable[[int], object], steps: int, more: int, *, warm_up: bool = True
) -> OpCounts:
    """The counts of one step of a loop: ``run(n)`` runs the loop for ``n`` steps (e.g.
    epochs of known length); it is counted at ``steps`` and ``steps + more`` and the
    difference divided by ``more``, so work outside the loop cancels. ``warm_up`` first
    runs ``run(steps)`` uncounted, so what is computed once and cached (a network's hash,
    a lazily built table) falls in neither count."""
    if steps < 0 or more < 1:
        raise ValueError(f"per_step needs steps >= 0 and more >= 1, got {steps} and {more}")
    if warm_up:
        run(steps)
    with counting() as short:
        run(steps)
    with counting() as long:
        run(steps + more)
    return (long.result() - short.result()) / more
