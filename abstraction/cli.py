"""The ``abstraction`` command line.

==================  ===============================================================
``run FILE``         train/load the network, generate counterfactuals, align, verify,
                     write ``reports/<experiment>/``
``sweep FILE``       the same, forcing the file's location search (``search=``)
``report DIR``       render a report again from its ``results.json``
``zoo``              list the reference networks (``--train NAME`` trains one)
``graph FILE``       draw the causal model(s) of a hypothesis file to PNG
``tasks list``       the library's tasks (``run --task NAME --network MODEL`` runs one)
``tasks check M``    model M's accuracy on each task's prompts
``tasks table M``    align every task M solves; one summary table and figure
==================  ===============================================================

Exit codes: 0 done; 2 bad input - a file that does not exist or cannot be read, a
hypothesis file that fails while it is imported (any exception: the message gives
its ``file:line``), or any :class:`~abstraction.errors.AbstractionError` (a declaration,
a name, a damaged file) - with a message naming the problem and the fix; 1 an
internal error (an exception the library did not raise on purpose: a bug), with a
hint to run again with ``--debug``, which shows the traceback.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from abstraction.causal_model import CausalModel
from abstraction.errors import AbstractionError, DeclarationError
from abstraction.experiment import Experiment
from abstraction.results import ExperimentResult

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Check whether a neural network implements the algorithm you believe it does.",
)
console = Console()
errors = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Check whether a neural network implements the algorithm you believe it does."""


class BadInput(Exception):
    """Input the user must fix: exit code 2."""


def load_file(path: Path) -> ModuleType:
    """Import a hypothesis file as a module, turning failures into :class:`BadInput`."""
    if not path.exists():
        raise BadInput(
            f"{path} does not exist. Pass the path of a hypothesis file, e.g. "
            "hypotheses/hierarchical_equality.py."
        )
    if path.is_dir() or path.suffix != ".py":
        raise BadInput(
            f"{path} is not a Python file. Hypothesis files are .py files that "
            "define a top-level `experiment = Experiment(...)`."
        )
    spec = importlib.util.spec_from_file_location(f"hypothesis_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise BadInput(f"{path} cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise BadInput(
            f"{exc.filename}:{exc.lineno}: syntax error: {exc.msg}. Fix the Python syntax of "
            "the hypothesis file."
        ) from None
    except DeclarationError as exc:
        where = f"{exc.file}:{exc.line}" if exc.line is not None else _where(exc, path)
        raise BadInput(f"{where}: {exc.problem}\n  fix: {exc.fix}") from None
    except Exception as exc:  # anything raised while running the user's file is theirs
        message = str(exc) if isinstance(exc, AbstractionError) else f"{type(exc).__name__}: {exc}"
        raise BadInput(
            f"{_where(exc, path)}: {message}\n  (raised while importing {path}; fix that line "
            "or what it calls, then run again)"
        ) from None
    finally:
        sys.path.pop(0)
    return module


def _where(exc: BaseException, path: Path) -> str:
    """``file:line`` of the innermost frame of ``exc``'s traceback inside ``path``."""
    target = path.resolve()
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == target:
            line = frame.lineno
    return f"{path}:{line}" if line is not None else str(path)


def find_experiment(module: ModuleType, path: Path) -> Experiment:
    """The file's top-level ``experiment``."""
    experiment = getattr(module, "experiment", None)
    if experiment is None:
        models = [n for n, v in vars(module).items() if isinstance(v, CausalModel)]
        found = f" It declares causal model(s) {', '.join(models)}, but" if models else ""
        raise BadInput(
            f"{path} has no top-level `experiment`.{found} `abstraction run` needs "
            "`experiment = Experiment(model=..., task=..., network=..., variables=[...], "
            "location=...)`; see hypotheses/hierarchical_equality.py for a complete example."
        )
    if not isinstance(experiment, Experiment):
        raise BadInput(
            f"{path}: `experiment` is a {type(experiment).__name__}, not an abstraction.Experiment."
        )
    return experiment


def _fail(exc: BaseException, code: int, debug: bool) -> None:
    """Print ``exc`` (and with ``debug`` its traceback) and exit with ``code``.

    Code 1 marks an internal error: the message says so and how to see the traceback.
    """
    if debug:
        # soft_wrap: a traceback's lines stay whole (``File ..., line N, in name``)
        errors.print(traceback.format_exc(), markup=False, highlight=False, soft_wrap=True)
    text = str(exc) if code == 2 else f"{type(exc).__name__}: {exc}"
    # soft_wrap: never break a line inside a path or a file:line
    errors.print("error: " + text, highlight=False, markup=False, soft_wrap=True)
    if code == 1 and not debug:
        errors.print(
            "this is an internal error, not a problem with your input: run the same command "
            "with --debug to see the traceback, and report it",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    raise typer.Exit(code)


HEARTBEAT = 5.0
"""Seconds between the lines that say a phase is still running, where output is not a
terminal (a pipe, a log file, CI): there rich draws no spinner until the run ends."""


class _Phases:
    """Shows which phase a run is in: called with each phase's message.

    On a terminal, a spinner with the elapsed time per phase. Elsewhere rich draws
    nothing until the end, so each phase is a plain line as it starts, and a line every
    :data:`HEARTBEAT` seconds says which phase is still running: a run is never silent.
    """

    def __init__(self, console: Console, *, transient: bool) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=transient,
        )
        self.task: TaskID | None = None
        self.message = ""
        self.began = self.since = time.perf_counter()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.beat = threading.Thread(target=self._heartbeat, daemon=True)

    def __enter__(self) -> _Phases:
        if self.live:
            self.progress.start()
        else:
            self.beat.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.finish()
        if self.live:
            self.progress.stop()
        else:
            self.done.set()
            self.beat.join()

    def __call__(self, message: str) -> None:
        self.finish()
        if self.live:
            self.task = self.progress.add_task(message, total=None)
            return
        with self.lock:
            self.message, self.since = message, time.perf_counter()
            self._line(message)

    def finish(self) -> None:
        """Mark the current phase done."""
        if self.live and self.task is not None:
            self.progress.update(self.task, completed=1, total=1)

    def _line(self, text: str) -> None:
        elapsed = time.perf_counter() - self.began
        self.console.print(
            f"[{elapsed:6.0f} s] {text}", highlight=False, markup=False, soft_wrap=True
        )

    def _heartbeat(self) -> None:
        while not self.done.wait(HEARTBEAT):
            with self.lock:
                if self.message:
                    since = time.perf_counter() - self.since
                    self._line(f"  still {self.message} ({since:.0f} s)")


def _run(
    file: Path | None,
    seed: int,
    quick: bool,
    out: Path,
    alignments: Path,
    as_json: bool,
    debug: bool,
    require_search: bool,
    device: str | None = None,
    memory_budget: float | None = None,
    dtype: str | None = None,
    task: str | None = None,
    network: str | None = None,
    unsolved: bool = False,
    heads: bool = False,
) -> None:
    from abstraction import experiment as runner
    from abstraction import report

    try:
        if (file is None) == (task is None):
            raise BadInput(
                "give a hypothesis FILE or --task NAME (with --network MODEL), not both and "
                "not neither; `abstraction tasks list` prints the tasks"
            )
        if (task is None) != (network is None):
            raise BadInput("--task and --network go together: --task NAME --network MODEL")
        if heads and task is None:
            raise BadInput("--heads goes with --task: a hypothesis file declares its own search")
        quiet = as_json
        start = time.perf_counter()
        with _Phases(errors if quiet else console, transient=quiet) as phase:
            if task is not None and network is not None:
                experiment = _task_experiment(task, network, unsolved, phase, heads=heads)
            else:
                assert file is not None
                # importing may take minutes: a zoo network trains on first use
                phase(f"importing {file}")
                module = load_file(file)
                experiment = find_experiment(module, file)
            if require_search and experiment.search is None:
                raise BadInput(
                    f"{file}: `abstraction sweep` needs the experiment to declare "
                    "search=Search(layers=..., positions=...)."
                )
            results = runner.run(
                experiment,
                seed=seed,
                quick=quick,
                progress=phase,
                # beside the report, not inside it: the report directory is replaced whole
                sweep_directory=out / f".{experiment.name}.sweep",
                alignment_path=alignments / experiment.name,
                device=device,
                memory_budget=None if memory_budget is None else int(memory_budget * 2**30),
                dtype=dtype,
            )
        index = report.write(results, out / experiment.name)
    except (BadInput, AbstractionError) as exc:
        _fail(exc, 2, debug)
        return
    except typer.Exit:
        raise
    except Exception as exc:
        _fail(exc, 1, debug)
        return
    if as_json:
        sys.stdout.write(results.to_json())
        return
    _summary(results, index, time.perf_counter() - start)


def _task_experiment(
    name: str, network: str, unsolved: bool, phase: Callable[[str], None], heads: bool = False
) -> Experiment:
    """A library task's standard experiment on ``network``, once the network is seen to
    solve the task (``unsolved``: align it even if it does not; ``heads``: also try the
    attention heads the literature names)."""
    from abstraction import tasks
    from abstraction.experiment import load_network

    standard = tasks.get(name)
    phase(f"loading {network}")
    loaded = load_network(network)
    phase(f"checking that {loaded.name} solves {name}")
    seen = tasks.behaviour(loaded, standard)
    if not seen.solved and not unsolved:
        accuracy = "unscored" if seen.accuracy is None else f"{seen.accuracy.value:.3f}"
        raise BadInput(
            f"{loaded.name} does not solve task {name!r} (accuracy {accuracy} over the "
            f"candidates on {seen.prompts} prompts; needs {tasks.SOLVED:.2f}"
            + (f"; {seen.problem}" if seen.problem else "")
            + "): an alignment could not make it faithful. Pass --unsolved to align anyway."
        )
    return standard.experiment(loaded, heads=heads)


def _summary(results: ExperimentResult, index: Path, seconds: float) -> None:
    colour = {"faithful": "green", "partial": "yellow", "unfaithful": "red"}.get(
        results.verdict, "white"
    )
    table = Table(title=f"{results.experiment}: [bold {colour}]{results.verdict}[/]")
    for column in ("variable", "IIA", "95% CI", "changed-only", "best null", "passed"):
        table.add_column(column, justify="left" if column == "variable" else "right")
    for name, v in results.variables.items():
        best = v.best_null()
        table.add_row(
            name,
            f"{v.iia:.3f}",
            f"{v.ci[0]:.3f}-{v.ci[1]:.3f}",
            "-" if v.changed_iia is None else f"{v.changed_iia:.3f}",
            f"{best[0]} {best[1]:.3f}" if best else "-",
            "yes" if v.passed else "no",
        )
    console.print(table)
    for reason in results.reasons:
        console.print(f"  - {reason}", highlight=False)
    for rival in results.rivals:
        diff = rival.comparison.difference
        console.print(
            f"  rival {rival.name}: {rival.verdict}, IIA "
            f"{rival.overall_iia:.3f}; difference {diff.value:+.3f} "
            f"(p = {rival.comparison.p_value:.3g})",
            highlight=False,
        )
    featurizer = results.alignment.featurizer
    if featurizer is not None:
        fitted = featurizer.get("seconds")
        console.print(
            f"  featurizer: {featurizer.get('kind')}, {featurizer.get('features')} features"
            + (f", fitted in {fitted:.1f} s" if isinstance(fitted, (int, float)) else "")
            + "; kept per variable: "
            + ", ".join(f"{v} {n}" for v, n in (results.alignment.units or {}).items()),
            highlight=False,
        )
    if results.methods is not None:
        for name, rows in results.methods.variables.items():
            cells = ", ".join(
                f"{row.method} {row.iia:.3f} ({row.units}/{row.of}; untrained "
                + ("-" if row.untrained_iia is None else f"{row.untrained_iia:.3f}")
                + ")"
                for row in rows
            )
            console.print(f"  methods, {name}: {cells}", highlight=False)
        console.print(
            f"  best method on validation: {results.methods.best}, verdict "
            f"{results.methods.verdict}",
            highlight=False,
        )
    console.print(f"report: {index} ({seconds:.0f} s)")


QuickOption = Annotated[bool, typer.Option("--quick", help="a small, fast run")]
SeedOption = Annotated[int, typer.Option(help="random seed")]
OutOption = Annotated[Path, typer.Option(help="directory that receives <experiment>/ reports")]
AlignmentsOption = Annotated[
    Path, typer.Option(help="directory that receives the learned alignment")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print results.json to stdout")]
DebugOption = Annotated[bool, typer.Option("--debug", help="show tracebacks")]
DeviceOption = Annotated[
    str | None,
    typer.Option(help="where the network runs: cpu (default), cuda, cuda:N or mps"),
]
BudgetOption = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        help="GiB of cached activations held in RAM before they move to memory-mapped "
        "files (default 2, or $ABSTRACTION_MEMORY_BUDGET)",
    ),
]
DtypeOption = Annotated[
    str | None,
    typer.Option(
        help="cast the network's weights (and caches): bfloat16, float16 or float32 "
        "(default: as loaded, float32)"
    ),
]
FileArgument = Annotated[Path, typer.Argument(help="a hypothesis file, e.g. hypotheses/x.py")]


@app.command()
def run(
    file: Annotated[
        Path | None,
        typer.Argument(help="a hypothesis file, e.g. hypotheses/x.py (or give --task)"),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(help="a library task's standard experiment (`abstraction tasks list`)"),
    ] = None,
    network: Annotated[
        str | None,
        typer.Option(help="with --task: a zoo name, checkpoint directory or GGUF file"),
    ] = None,
    unsolved: Annotated[
        bool,
        typer.Option("--unsolved", help="with --task: align even if the network fails the task"),
    ] = False,
    heads: Annotated[
        bool,
        typer.Option("--heads", help="with --task: also try the heads the literature names"),
    ] = False,
    seed: SeedOption = 0,
    quick: QuickOption = False,
    out: OutOption = Path("reports"),
    alignments: AlignmentsOption = Path("alignments"),
    as_json: JsonOption = False,
    debug: DebugOption = False,
    device: DeviceOption = None,
    memory_budget: BudgetOption = None,
    dtype: DtypeOption = None,
) -> None:
    """Run the experiment declared in FILE (or a library task's, --task NAME --network
    MODEL) and write its report."""
    _run(
        file,
        seed,
        quick,
        out,
        alignments,
        as_json,
        debug,
        require_search=False,
        device=device,
        memory_budget=memory_budget,
        dtype=dtype,
        task=task,
        network=network,
        unsolved=unsolved,
        heads=heads,
    )


@app.command()
def sweep(
    file: FileArgument,
    seed: SeedOption = 0,
    quick: QuickOption = False,
    out: OutOption = Path("reports"),
    alignments: AlignmentsOption = Path("alignments"),
    as_json: JsonOption = False,
    debug: DebugOption = False,
    device: DeviceOption = None,
    memory_budget: BudgetOption = None,
    dtype: DtypeOption = None,
) -> None:
    """Run FILE's location sweep (resumable), choose on validation, verify on test."""
    _run(
        file,
        seed,
        quick,
        out,
        alignments,
        as_json,
        debug,
        require_search=True,
        device=device,
        memory_budget=memory_budget,
        dtype=dtype,
    )


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="a report directory with results.json")],
    debug: DebugOption = False,
) -> None:
    """Render a report again from its results.json."""
    from abstraction.report import rerender

    try:
        index = rerender(directory)
    except (FileNotFoundError, AbstractionError) as exc:
        # a missing, damaged or foreign results.json is a DamagedFileError naming it
        _fail(exc, 2, debug)
        return
    except Exception as exc:
        _fail(exc, 1, debug)
        return
    console.print(f"report: {index}")


@app.command()
def zoo(
    train: Annotated[str | None, typer.Option(help="train (or load) this network")] = None,
    seed: SeedOption = 0,
    debug: DebugOption = False,
) -> None:
    """List the reference networks, or train one."""
    from abstraction import zoo as zoo_module

    if train is not None:
        try:
            with Progress(
                TextColumn("{task.description}"), TimeElapsedColumn(), console=console
            ) as progress:
                task = progress.add_task(f"training {train}", total=1.0)
                network = zoo_module.load(
                    train,
                    seed=seed,
                    progress=lambda msg, frac: progress.update(
                        task, completed=frac, description=f"{train}: {msg}"
                    ),
                )
            metrics = zoo_module.metrics(train, seed)
        except AbstractionError as exc:
            _fail(exc, 2, debug)
            return
        except Exception as exc:
            _fail(exc, 1, debug)
            return
        if "convert_seconds" in metrics:
            done = f"converted from {metrics['gguf_file']} in {metrics['convert_seconds']} s"
        else:
            done = (
                f"test accuracy {metrics['test_accuracy']:.4f}, trained in "
                f"{metrics['train_seconds']} s"
            )
        console.print(f"{network!r}\n{done}, cached at {zoo_module.path(train, seed)}")
        return
    table = Table(title=f"reference networks (cache: {zoo_module.cache_dir()})")
    table.add_column("name")
    table.add_column("description")
    table.add_column("cached")
    for entry in zoo_module.entries():
        cached = zoo_module.cached(entry.name, seed)
        table.add_row(entry.name, entry.description, "yes" if cached else "no")
    console.print(table)


tasks_app = typer.Typer(no_args_is_help=True, help="The field's tasks, ready to run.")
app.add_typer(tasks_app, name="tasks")


@tasks_app.command("list")
def tasks_list() -> None:
    """List the library's tasks."""
    from abstraction import tasks

    table = Table(title="tasks (abstraction run --task NAME --network MODEL)")
    # names are what a user types next: never wrapped
    table.add_column("name", no_wrap=True)
    for column in ("what the model must do", "variables", "positions", "rivals"):
        table.add_column(column)
    for name in tasks.names():
        task = tasks.get(name)
        table.add_row(
            name,
            f"{task.description} ({task.reference})",
            ", ".join(task.variables),
            ", ".join(task.positions),
            ", ".join(r.name for r in task.rivals) or "-",
        )
    console.print(table)


@tasks_app.command("check")
def tasks_check(
    model: Annotated[str, typer.Argument(help="a zoo name, checkpoint directory or GGUF file")],
    task: Annotated[
        list[str] | None, typer.Option(help="a task to check (repeatable; default: all)")
    ] = None,
    prompts: Annotated[int, typer.Option(min=1, help="prompts scored per task")] = 200,
    seed: SeedOption = 0,
    debug: DebugOption = False,
) -> None:
    """Print MODEL's accuracy on each task's own prompts (over the candidates)."""
    from abstraction import tasks
    from abstraction.experiment import load_network

    try:
        chosen = [tasks.get(name) for name in (task or tasks.names())]
        network = load_network(model)
        table = Table(title=f"{network.name}: accuracy over the candidates ({prompts} prompts)")
        for column in ("task", "accuracy", "95% CI", "solved"):
            table.add_column(column, no_wrap=column != "solved")
        for standard in chosen:
            seen = tasks.behaviour(network, standard, prompts=prompts, seed=seed)
            if seen.accuracy is None:
                table.add_row(standard.name, "-", "-", f"cannot be scored: {seen.problem}")
                continue
            a = seen.accuracy
            verdict = "yes" if seen.solved else f"no (below {tasks.SOLVED:.2f}): not aligned"
            table.add_row(standard.name, f"{a.value:.3f}", f"{a.low:.3f}-{a.high:.3f}", verdict)
    except AbstractionError as exc:
        _fail(exc, 2, debug)
        return
    except Exception as exc:
        _fail(exc, 1, debug)
        return
    console.print(table)


@tasks_app.command("table")
def tasks_table(
    model: Annotated[str, typer.Argument(help="a zoo name, checkpoint directory or GGUF file")],
    task: Annotated[
        list[str] | None, typer.Option(help="a task to include (repeatable; default: all)")
    ] = None,
    out: Annotated[
        Path, typer.Option(help="directory for the reports, table.md and the figure")
    ] = Path("reports/tasks"),
    layers: Annotated[
        list[int] | None,
        typer.Option(help="a residual layer to sweep (repeatable; default: every third)"),
    ] = None,
    pairs: Annotated[int, typer.Option(min=50, help="counterfactual pairs per task")] = 800,
    heads: Annotated[
        bool,
        typer.Option("--heads", help="also try the heads the literature names (slower)"),
    ] = False,
    seed: SeedOption = 0,
    debug: DebugOption = False,
) -> None:
    """Align every task MODEL solves, layer by layer, and write one summary table
    (OUT/table.md, OUT/table.json), a figure of IIA by layer (OUT/iia_by_layer.png) and
    each task's report; tasks MODEL does not solve are listed with their accuracy."""
    from abstraction import tasks

    try:
        budget = tasks.TableBudget(layers=layers or None, pairs=pairs, heads=heads)
        with _Phases(console, transient=False) as phase:
            table = tasks.results_table(
                model, task, out=out, budget=budget, seed=seed, progress=phase
            )
    except AbstractionError as exc:
        _fail(exc, 2, debug)
        return
    except Exception as exc:
        _fail(exc, 1, debug)
        return
    console.print(table.markdown())
    console.print(f"written: {out / 'table.md'}, {out / 'table.json'}")


@app.command()
def graph(
    file: FileArgument,
    out: Annotated[Path, typer.Option(help="directory for the PNG files")] = Path("."),
    debug: DebugOption = False,
) -> None:
    """Draw the causal model(s) declared in FILE."""
    from abstraction.report import draw_causal_graph

    try:
        module = load_file(file)
        models = [v for v in vars(module).values() if isinstance(v, CausalModel)]
        if not models:
            raise BadInput(
                f"{file} declares no causal model. Decorate a function with "
                "@causal_model at the top level of the file."
            )
    except (BadInput, AbstractionError) as exc:
        _fail(exc, 2, debug)
        return
    try:
        for model in models:
            target = draw_causal_graph(
                model.graph(),
                out / f"{model.name}.png",
                title="\n".join(model.equations().values()),
            )
            console.print(f"{model.name}: {target}")
    except Exception as exc:
        _fail(exc, 1, debug)


if __name__ == "__main__":
    app()
