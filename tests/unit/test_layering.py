"""Dependencies point one way: each module imports only modules before it in the data flow."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "abstraction"

# The order of the package docstring's module map; errors and files serve every module.
ORDER = [
    "mechanism",
    "unroll",
    "program",
    "causal_model",
    "counterfactuals",
    "corpus",
    "gguf_checkpoint",
    "network",
    "locations",
    "task",
    "prompts",
    "zoo",
    "planted",
    "featurizers",
    "interventions",
    "runtime",
    "pyvene_interop",
    "statistics",
    "op_counts",
    "alignment.prefix_cache",
    "alignment.prepared",
    "alignment.result",
    "alignment.step",
    "alignment.masks",
    "alignment.das",
    "alignment.staircase",
    "alignment.sweep",
    "baselines",
    "diagnostics",
    "verdict",
    "results",
    "experiment",
    "tasks.library",
    "tasks.agreement",
    "tasks.entity_binding",
    "tasks.factual_recall",
    "tasks.greater_than",
    "tasks.ioi",
    "tasks.mcqa",
    "tasks.behaviour",
    "report",
    "tasks.table",
    "cli",
]
SHARED = {"errors", "files"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("abstraction."):
                found.add(node.module.removeprefix("abstraction."))
            elif node.module == "abstraction":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("abstraction.")
                for a in node.names
                if a.name.startswith("abstraction.")
            )
    return found


def test_every_module_is_in_the_map() -> None:
    modules = {
        str(p.relative_to(PACKAGE).with_suffix("")).replace("/", ".")
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py"
    }
    assert modules == set(ORDER) | SHARED


def test_imports_point_down_the_data_flow() -> None:
    wrong = []
    for module in ORDER:
        path = PACKAGE / (module.replace(".", "/") + ".py")
        for imported in _imports(path) - SHARED - {"__version__"}:
            if imported in ("alignment", "tasks"):  # a package re-exports its modules
                imported = max((m for m in ORDER if m.startswith(imported + ".")), key=ORDER.index)
            if ORDER.index(imported) >= ORDER.index(module):
                wrong.append(f"{module} imports {imported}")
    assert not wrong, wrong


def test_report_never_imports_alignment_and_nothing_imports_cli() -> None:
    assert not any(i.startswith("alignment") for i in _imports(PACKAGE / "report.py"))
    for path in PACKAGE.rglob("*.py"):
        assert "cli" not in _imports(path) or path.name == "__main__.py", path
