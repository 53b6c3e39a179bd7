"""The ``abstraction`` command line.

``abstraction run FILE`` loads an experiment file from ``hypotheses/`` and runs it.
Exit codes: 0 done, 1 the run failed, 2 bad input (with a message naming the problem
and the fix; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import importlib.util
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from abstraction.causal_model import CausalModel
from abstraction.counterfactuals import counterfactual_dataset
from abstraction.errors import AbstractionError

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
    """Import an experiment file as a module, turning failures into :class:`BadInput`."""
    if not path.exists():
        raise BadInput(
            f"{path} does not exist. Pass the path of a hypothesis file, e.g. "
            "hypotheses/hierarchical_equality.py."
        )
    if path.suffix != ".py":
        raise BadInput(f"{path} is not a Python file. Hypothesis files are .py files.")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise BadInput(f"{path} cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise BadInput(
            f"{exc.filename}:{exc.lineno}: syntax error: {exc.msg}. Fix the Python syntax of "
            "the hypothesis file."
        ) from None
    except AbstractionError as exc:
        raise BadInput(str(exc)) from None
    return module


def find_models(module: ModuleType) -> list[CausalModel]:
    """The causal models a hypothesis file declares at top level."""
    return [v for v in vars(module).values() if isinstance(v, CausalModel)]


def _fail(exc: BaseException, code: int, debug: bool) -> None:
    if debug:
        errors.print(traceback.format_exc())
    errors.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(code)


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="a hypothesis file, e.g. hypotheses/x.py")],
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    pairs: Annotated[int, typer.Option(help="counterfactual pairs to generate")] = 100_000,
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
) -> None:
    """Run the experiment declared in FILE."""
    try:
        module = load_file(file)
        models = find_models(module)
        if not models:
            raise BadInput(
                f"{file} declares no causal model. Decorate a function with @causal_model "
                "at the top level of the file."
            )
        for model in models:
            _describe_model(model, pairs, seed)
    except (BadInput, AbstractionError) as exc:
        _fail(exc, 2, debug)
    except Exception as exc:
        _fail(exc, 1, debug)


def _describe_model(model: CausalModel, pairs: int, seed: int) -> None:
    console.rule(f"causal model [bold]{model.name}[/]")
    for v in model.inputs:
        domain = model.domain(v)
        size = f"{len(domain)} values" if domain is not None else "unbounded"
        console.print(f"  input  {v}: {size}")
    for eq in model.equations().values():
        console.print(f"  {eq}")
    sets = [[v] for v in model.intermediates]
    if len(model.intermediates) > 1:
        sets.append(list(model.intermediates))
    start = time.perf_counter()
    frame = counterfactual_dataset(model, pairs, sets, sampler="value", seed=seed)
    elapsed = time.perf_counter() - start
    table = Table(
        title=f"{len(frame):,} counterfactual pairs in {elapsed:.2f} s "
        f"({len(frame) / elapsed:,.0f} pairs/s), sources balanced by value"
    )
    table.add_column("intervened")
    table.add_column("pairs", justify="right")
    table.add_column("label changed", justify="right")
    table.add_column("label true", justify="right")
    label = "label" if len(model.outputs) == 1 else f"label.{model.outputs[0]}"
    for name, group in frame.groupby("intervened", observed=True):
        share_true = (
            group[label].astype(float).mean() if group[label].dtype == bool else float("nan")
        )
        table.add_row(
            str(name), f"{len(group):,}", f"{group['changed'].mean():.3f}", f"{share_true:.3f}"
        )
    console.print(table)


if __name__ == "__main__":
    app()
