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
    "evidence",
    "verdict",
    "op_counts",
    "alignment.prefix_cache",
    "alignment.prepared",
    "alignment.step",
    "alignment.training",
    "alignment.method",
    "alignment.result",
    "alignment.rotation",
    "alignment.masks",
    "alignment.das",
    "alignment.staircase",
    "alignment.sweep",
    "baselines",
    "diagnostics",
    "verification",
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


def _type_only(tree: ast.AST) -> set[int]:
    """The ids of nodes under ``if TYPE_CHECKING:``: imports for annotations alone, which
    run nothing (the method registry names the alignments its methods return)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            found.update(id(n) for child in node.body for n in ast.walk(child))
    return found


def _imports(path: Path) -> set[str]:
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
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


def test_a_report_renders_without_torch_or_training_code(tmp_path: Path) -> None:
    # results.json is read and its report rendered with torch unimportable: neither the
    # records nor the renderer need the training stack
    import subprocess
    import sys

    report = PACKAGE.parent / "reports" / "hierarchical_equality"
    script = f"""
import sys
class Blocked:  # any import of torch now fails
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Blocked())
from abstraction import report
from abstraction.results import ExperimentResult
result = ExperimentResult.from_json(open({str(report / "results.json")!r}).read())
report.write(result, {str(tmp_path / "out")!r})
heavy = sorted(m for m in sys.modules if m.startswith(("abstraction.alignment",
    "abstraction.verification", "abstraction.network", "abstraction.baselines")))
print("loaded:", heavy)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded: []" in done.stdout
    # the same report as one rendered with everything importable
    from abstraction import report as renderer
    from abstraction.results import ExperimentResult

    result = ExperimentResult.from_json((report / "results.json").read_text())
    renderer.write(result, tmp_path / "with_torch")
    written = (tmp_path / "out" / "report.md").read_text()
    assert written == (tmp_path / "with_torch" / "report.md").read_text()
    assert (tmp_path / "out" / "index.html").stat().st_size > 0


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_crosses_a_module() -> None:
    # a module reads only its own private names: what another module needs is public
    # there (imports of `_name`, and `obj._name` where this module defines no `_name`)
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                own.add(node.target.id)
        where = path.relative_to(PACKAGE.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("abstraction"):
                wrong += [f"{where}: imports {a.name}" for a in node.names if _private(a.name)]
            elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
                wrong.append(f"{where}:{node.lineno}: reads .{node.attr}")
    assert not wrong, wrong
