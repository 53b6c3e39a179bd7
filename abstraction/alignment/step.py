"""How a training step executes: its arithmetic precision and whether it is captured.

A DAS training step on a small batch costs the kernels it launches more than its
arithmetic (on a GPU each is a launch; on a CPU each pays the dispatcher). Two options
of :class:`~abstraction.alignment.das.TrainingConfig` act on the step's forward pass
(the cached suffix and the loss; Adam's update and validation scoring stay as they are):

- ``precision``: ``"fp32"`` (the default: exact float32), ``"tf32"`` (float32 tensors,
  matrix products in TensorFloat-32 on CUDA devices that have it; elsewhere the same as
  fp32) or ``"bf16"`` (the forward pass under bfloat16 autocast, on any device).
- ``capture``: compile the step's forward once with :func:`torch.compile` and replay it
  (on CUDA in ``"reduce-overhead"`` mode, which records CUDA graphs: one launch replays
  the whole captured pass). A fixed batch shape is compiled once (a last, shorter batch
  once more). Where compiling fails (no compiler toolchain, an unsupported operation)
  the step warns once and runs eagerly, with the same numbers.

Captured and eager steps compute the same function; compiled kernels may fuse and
reorder floating-point sums, so trained bases agree up to rounding
(``tests/integration/test_step_capture.py``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Literal, ParamSpec, TypeVar

import torch

from abstraction.errors import AlignmentError

__all__ = [
    "PRECISIONS",
    "Precision",
    "StepCaptureWarning",
    "batch_rows",
    "captured",
    "step_precision",
]

Precision = Literal["fp32", "tf32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "tf32", "bf16")
"""The arithmetic precisions a training step can run in."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


class StepCaptureWarning(UserWarning):
    """Compiling a training step failed; it runs eagerly instead."""


@contextlib.contextmanager
def step_precision(precision: Precision, device: torch.device) -> Iterator[None]:
    """Run the enclosed forward pass in ``precision`` on ``device`` (and restore the
    global matmul settings after it)."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    elif precision == "tf32" and device.type == "cuda":
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul
            torch.backends.cudnn.allow_tf32 = cudnn
    else:
        yield


def captured(
    function: Callable[_P, _R], *, enabled: bool, device: torch.device
) -> Callable[_P, _R]:
    """``function`` compiled once and replayed where ``enabled`` (else ``function``).

    On CUDA the compiled pass is recorded as CUDA graphs (``mode="reduce-overhead"``).
    If compiling raises, a :class:`StepCaptureWarning` says why and every later call
    runs ``function`` eagerly; an error the eager function raises too propagates.
    """
    if not enabled:
        return function
    mode = "reduce-overhead" if device.type == "cuda" else None
    compiled = torch.compile(function, mode=mode, dynamic=False)
    current: list[Callable[_P, _R]] = [compiled]

    def step(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        if current[0] is function:
            return function(*args, **kwargs)
        try:
            return current[0](*args, **kwargs)
        except AlignmentError:
            raise  # the step's own input error, which eager would raise too
        except Exception as error:  # any compiler failure falls back
            current[0] = function
            warnings.warn(
                f"capturing the training step failed ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}); it runs eagerly, with "
                "the same numbers. Set TrainingConfig(capture=False) to silence this.",
                StepCaptureWarning,
                stacklevel=2,
            )
            return function(*args, **kwargs)

    return step


def batch_rows(
    start: int, size: int, rows: int, capture: bool, device: torch.device
) -> torch.Tensor | slice:
    """A batch's rows: a slice (views of the shuffled copy), or for a captured step an
    index tensor on ``device`` (where the shuffled rows live), whose values a compiled
    step does not specialise on as it does on a slice's bounds."""
    if not capture:
        return slice(start, start + size)
    return torch.arange(start, min(start + size, rows), device=device)
