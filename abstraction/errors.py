"""Errors raised at the boundary of the library.

Every error says what was wrong and how to fix it. Declaration errors also name the
file and line of the offending code, so an editor can jump there.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "AbstractionError",
    "AlignmentError",
    "DamagedFileError",
    "DeclarationError",
    "DomainError",
    "UnknownNameError",
    "nearest",
]


class AbstractionError(Exception):
    """Base class for every error this library raises on purpose."""


class DeclarationError(AbstractionError, ValueError):
    """A causal model (or another declaration) is malformed.

    Attributes:
        problem: what is wrong, in one sentence.
        fix: how to fix it, in one sentence.
        file: the source file of the declaration, when known.
        line: the 1-based line in ``file``, when known.
    """

    def __init__(
        self, problem: str, fix: str, *, file: str | None = None, line: int | None = None
    ) -> None:
        self.problem = problem
        self.fix = fix
        self.file = file
        self.line = line
        where = f"{file or '<unknown file>'}:{line}: " if line is not None else ""
        super().__init__(f"{where}{problem}\n  fix: {fix}")


class UnknownNameError(AbstractionError, KeyError):
    """A name (variable, input, location, network) that does not exist was used."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


class DamagedFileError(AbstractionError, ValueError):
    """A file the library reads is missing, truncated, not in its format, or inconsistent.

    Attributes:
        file: the file at fault.
        problem: what is wrong with it, in one sentence.
        fix: what to do (re-run, delete it, retrain), in one sentence.
    """

    def __init__(self, file: object, problem: str, fix: str) -> None:
        self.file = str(file)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.file}: {problem}\n  fix: {fix}")


class DomainError(AbstractionError, ValueError):
    """A value lies outside the finite domain declared for its variable."""


class AlignmentError(AbstractionError, ValueError):
    """An alignment cannot be trained, saved, loaded or used as asked."""


def nearest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return a human-readable hint listing the candidates closest to ``name``."""
    pool = list(candidates)
    close = difflib.get_close_matches(name, pool, n=n, cutoff=0.4)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    shown = ", ".join(repr(c) for c in pool[:12])
    more = f" (and {len(pool) - 12} more)" if len(pool) > 12 else ""
    return f"valid names are {shown}{more}" if pool else "there are none"
