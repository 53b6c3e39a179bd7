"""A results table: every task a network solves, swept layer by layer, in one command.

:func:`results_table` checks the network's behaviour on each task first, then runs the
standard experiment (:meth:`~abstraction.tasks.StandardTask.experiment`) of every task
it solves under one budget (:class:`TableBudget`), writes each task's report, and
gathers one row per task variable: the site chosen on validation, the test IIA with its
CI, the changed-only IIA, the strongest null, the verdict and the best rival. The
tasks it does not solve are listed with their accuracy. ``abstraction tasks table
MODEL`` runs it and writes ``table.md``, ``table.json`` and ``iia_by_layer.png`` (the
validation IIA of every sweep cell, by layer, one panel per task) beside the reports.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from abstraction import report
from abstraction.alignment.das import TrainingConfig
from abstraction.experiment import load_network
from abstraction.experiment import run as run_experiment
from abstraction.network import Network
from abstraction.results import ExperimentResult, SweepRecord
from abstraction.tasks.behaviour import Behaviour, behaviour
from abstraction.tasks.library import StandardTask, get, names

__all__ = ["ResultsTable", "TableBudget", "TableRow", "results_table"]


@dataclass(frozen=True)
class TableBudget:
    """How much each task's experiment may spend (sized so that the shipped tasks a
    135M-parameter model solves run in under an hour on 2 CPU cores).

    Attributes:
        layers: the residual-stream layers swept (default: every third).
        pairs: counterfactual pairs per experiment (split 50/15/35 into
            train/validation/test).
        training: the training schedule of every sweep cell and the final alignment.
        prompts: prompts scored by the behaviour check.
        heads: also try every attention head at the last token of the layers the
            literature names for a task (:attr:`StandardTask.head_depths`; tasks that
            name none sweep the residual stream alone).
    """

    layers: Sequence[int] | None = None
    pairs: int = 800
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(epochs=3, batch_size=32, lr=1e-2, patience=1)
    )
    prompts: int = 200
    heads: bool = False

    def chosen_layers(self, depth: int) -> list[int]:
        """The layers swept in a network of ``depth`` layers."""
        return list(self.layers) if self.layers is not None else list(range(0, depth, 3))


@dataclass(frozen=True)
class TableRow:
    """One task variable's result.

    Attributes:
        task: the task's name.
        variable: the causal variable.
        site: where it was found (chosen on validation), e.g. ``"layer 18 residual @ last"``.
        iia: test IIA, with ``low`` and ``high`` its 95% interval.
        changed_iia: IIA on the test pairs whose label the intervention changes.
        best_null: the strongest null baseline and its IIA (``"untrained 0.49"``).
        passed: whether the variable passed every check.
        verdict: the experiment's verdict.
        rival: the rival with the highest IIA, its IIA, and this hypothesis minus the
            rival with its interval (``None`` without rivals).
        seconds: the experiment's wall time.
    """

    task: str
    variable: str
    site: str
    iia: float
    low: float
    high: float
    changed_iia: float | None
    best_null: str
    passed: bool
    verdict: str
    rival: str | None
    seconds: float


@dataclass(frozen=True)
class ResultsTable:
    """The rows, the tasks not aligned, and each task's IIA by layer."""

    network: str
    rows: list[TableRow]
    behaviour: list[Behaviour]
    by_layer: dict[str, list[dict[str, Any]]]
    """Task -> sweep cells (``variable``, ``layer``, ``position``, ``val_iia``)."""
    seconds: float

    def markdown(self) -> str:
        """The summary table and the unsolved tasks, as markdown."""
        lines = [
            f"Results on `{self.network}` ({self.seconds / 60:.0f} minutes in all).",
            "",
            "| task | variable | best site | IIA (95% CI) | changed-only IIA | best null "
            "| passed | verdict | best rival (IIA; this minus rival) | time |",
            "| --- | --- | --- | --- | ---: | --- | --- | --- | --- | ---: |",
        ]
        for r in self.rows:
            changed = "-" if r.changed_iia is None else f"{r.changed_iia:.3f}"
            lines.append(
                f"| {r.task} | {r.variable} | {r.site} | {r.iia:.3f} ({r.low:.3f}-{r.high:.3f}) "
                f"| {changed} | {r.best_null} | {'yes' if r.passed else 'no'} | {r.verdict} "
                f"| {r.rival or '-'} | {r.seconds / 60:.1f} min |"
            )
        lines += [
            "",
            "| task | accuracy over the candidates (95% CI) | aligned |",
            "| --- | --- | --- |",
        ]
        for b in self.behaviour:
            accuracy = (
                f"{b.accuracy.value:.3f} ({b.accuracy.low:.3f}-{b.accuracy.high:.3f})"
                if b.accuracy is not None
                else f"not scored: {b.problem}"
            )
            lines.append(f"| {b.task} | {accuracy} | {'yes' if b.solved else 'no'} |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        """The table as JSON (``table.json``)."""
        return json.dumps(
            {
                "network": self.network,
                "seconds": self.seconds,
                "rows": [asdict(r) for r in self.rows],
                "behaviour": [
                    {
                        "task": b.task,
                        "accuracy": None if b.accuracy is None else b.accuracy.value,
                        "low": None if b.accuracy is None else b.accuracy.low,
                        "high": None if b.accuracy is None else b.accuracy.high,
                        "prompts": b.prompts,
                        "solved": b.solved,
                        "problem": b.problem,
                    }
                    for b in self.behaviour
                ],
                "by_layer": self.by_layer,
            },
            indent=1,
        )

    def figure(self, path: str | Path) -> Path:
        """Validation IIA by layer, one panel per aligned task, one line per variable
        and position; written to ``path`` (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tasks = list(self.by_layer)
        fig, axes = plt.subplots(
            1, max(1, len(tasks)), figsize=(4.2 * max(1, len(tasks)), 3.4), squeeze=False
        )
        for ax, task in zip(axes[0], tasks, strict=False):
            lines: dict[tuple[str, str], list[tuple[int, float]]] = {}
            for cell in self.by_layer[task]:
                key = (cell["variable"], str(cell["position"]))
                lines.setdefault(key, []).append((cell["layer"], cell["val_iia"]))
            for (variable, position), points in sorted(lines.items()):
                points.sort()
                ax.plot(*zip(*points, strict=True), marker="o", label=f"{variable} @ {position}")
            ax.set_title(task)
            ax.set_xlabel("layer (residual stream)")
            ax.set_ylim(0.0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("validation IIA")
        fig.suptitle(f"IIA by layer on {self.network}")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out


def _site(record: SweepRecord | None) -> str:
    return "-" if record is None else report.describe_location(record.chosen.model_dump())


def _rows(task: str, result: ExperimentResult, seconds: float) -> list[TableRow]:
    rival = None
    if result.rivals:
        best = max(result.rivals, key=lambda r: r.overall_iia)
        d = best.comparison.difference
        rival = (
            f"{best.name} ({best.overall_iia:.3f}; {d.value:+.3f}, {d.low:+.3f} to {d.high:+.3f})"
        )
    rows = []
    for name, v in result.variables.items():
        null = v.best_null()
        sweep = result.sweeps.get(name) if result.sweeps else result.sweep
        rows.append(
            TableRow(
                task=task,
                variable=name,
                site=_site(sweep),
                iia=v.iia,
                low=v.ci[0],
                high=v.ci[1],
                changed_iia=v.changed_iia,
                best_null="-" if null is None else f"{null[0]} {null[1]:.3f}",
                passed=v.passed,
                verdict=result.verdict,
                rival=rival,
                seconds=seconds,
            )
        )
    return rows


def _cells(result: ExperimentResult) -> list[dict[str, Any]]:
    sweeps = result.sweeps or ({"+".join(result.variables): result.sweep} if result.sweep else {})
    return [
        {"variable": v, "layer": c.layer, "position": c.position, "val_iia": c.val_iia}
        for v, record in sweeps.items()
        for c in record.cells
        if c.component == "residual"
    ]


def results_table(
    network: str | Network,
    tasks: Sequence[str | StandardTask] | None = None,
    *,
    out: str | Path,
    budget: TableBudget | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> ResultsTable:
    """Check ``network`` on ``tasks`` (default: every shipped task), align every task
    it solves under ``budget``, and write each report plus ``table.md``,
    ``table.json`` and ``iia_by_layer.png`` under ``out``."""
    budget = budget or TableBudget()
    say = progress or (lambda message: None)
    start = time.perf_counter()
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    # an unknown task name fails before the network loads
    chosen = [get(t) if isinstance(t, str) else t for t in (tasks or names())]
    loaded = load_network(network)
    seen: list[Behaviour] = []
    rows: list[TableRow] = []
    by_layer: dict[str, list[dict[str, Any]]] = {}
    for standard in chosen:
        say(f"checking that {loaded.name} solves {standard.name}")
        checked = behaviour(loaded, standard, prompts=budget.prompts, seed=seed)
        seen.append(checked)
        if not checked.solved:
            continue
        began = time.perf_counter()
        experiment = standard.experiment(
            loaded,
            layers=budget.chosen_layers(loaded.n_layers or 1),
            pairs=budget.pairs,
            training=budget.training,
            heads=budget.heads and bool(standard.head_depths),
        )
        result = run_experiment(
            experiment,
            seed=seed,
            progress=progress,
            sweep_directory=directory / f".{experiment.name}.sweep",
        )
        report.write(result, directory / experiment.name)
        rows += _rows(standard.name, result, time.perf_counter() - began)
        by_layer[standard.name] = _cells(result)
    table = ResultsTable(loaded.name, rows, seen, by_layer, time.perf_counter() - start)
    (directory / "table.md").write_text(table.markdown(), encoding="utf-8")
    (directory / "table.json").write_text(table.to_json() + "\n", encoding="utf-8")
    if by_layer:
        table.figure(directory / "iia_by_layer.png")
    return table
