"""Reports: an experiment's results rendered as HTML, Markdown and PNG figures.

A report directory holds:

* ``results.json`` - the results, an :class:`~abstraction.results.ExperimentResult`
  in the versioned format whose JSON schema :func:`abstraction.results.results_schema`
  generates from that class (``schema_version``, ``verdict``, ``reasons``,
  ``variables.<name>.iia``, ``.ci``, ``.changed_iia``, ``.baselines``, ``.p_values``,
  ``.selectivity``, ``behavior.accuracy``, ``baselines``, ``counterexamples``,
  ``alignment``, ``sweep``, ``rivals``, ``causal_model``, ``network``,
  ``network_hash``, ``config``, ``versions``, ``timings``, ``shifts``, and ``methods``
  when methods were compared);
* ``index.html`` - self-contained (figures inlined), readable without a server;
* ``report.md`` - the same in Markdown;
* ``figures/*.png`` - causal graph coloured by verdict, IIA per variable against
  each baseline, sweep heatmap and IIA against rank (when there is a sweep),
  training curve, IIA by method beside the untrained network (when methods were
  compared).

Rendering only reads results; it never recomputes them (and never imports the
alignment code). Writes are atomic: the new report replaces the old one in one rename.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from abstraction.files import atomic_directory, atomic_write_text
from abstraction.results import (
    VERDICT_COLOURS,
    ExperimentResult,
    check_schema_version,
    results_schema,
)

__all__ = [
    "describe_location",
    "draw_causal_graph",
    "draw_head_heatmap",
    "draw_heatmap",
    "render",
    "rerender",
    "validate",
    "write",
]


def validate(results: ExperimentResult | Mapping[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``results`` does not follow the schema.

    The schema is :func:`abstraction.results.results_schema`, generated from
    :class:`~abstraction.results.ExperimentResult`.
    """
    import jsonschema

    document = results.to_dict() if isinstance(results, ExperimentResult) else dict(results)
    jsonschema.validate(document, results_schema())


def draw_causal_graph(
    graph: Any, path: Path, *, title: str, passed: dict[str, bool] | None = None
) -> Path:
    """Draw a causal graph (nodes with a ``kind``) in layers, inputs at the bottom, to a PNG.

    Variables in ``passed`` are green or red by result; other inputs are grey and other
    variables blue.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    layers: dict[str, int] = {}
    for node in nx.topological_sort(graph):
        preds = list(graph.predecessors(node))
        layers[node] = 0 if not preds else 1 + max(layers[p] for p in preds)
    nx.set_node_attributes(graph, layers, "layer")
    pos = nx.multipartite_layout(graph, subset_key="layer", align="horizontal")
    verdicts = passed or {}
    colours = [
        (VERDICT_COLOURS["faithful"] if verdicts[node] else VERDICT_COLOURS["unfaithful"])
        if node in verdicts
        else "#b0bec5"
        if graph.nodes[node].get("kind") == "input"
        else "#90caf9"
        for node in graph.nodes
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    nx.draw_networkx(
        graph,
        pos,
        ax=ax,
        node_color=colours,
        node_size=1400,
        font_size=10,
        arrowsize=15,
        edge_color="#555555",
    )
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_heatmap(cells: pd.DataFrame, path: str | Path, *, title: str = "validation IIA") -> Path:
    """Draw a sweep's cells (``layer``, ``position``, ``val_iia`` columns) as a heatmap PNG.

    Each square is the best validation IIA over the ranks and components tried at
    that layer and position; ``cells`` is e.g. ``SweepResult.cells`` or
    ``result.to_frame("sweep")``.
    """
    table = cells.copy()
    table["position"] = table["position"].astype(str)
    grid = table.pivot_table(
        index="layer", columns="position", values="val_iia", aggfunc="max", sort=False
    )
    return _grid_figure(grid, path, title, "position")


def draw_head_heatmap(
    cells: pd.DataFrame, path: str | Path, *, title: str = "validation IIA per head"
) -> Path | None:
    """Draw a sweep's attention-head cells as a layer x head heatmap PNG (one per position
    would need several figures: the best over positions is drawn); ``None`` without heads."""
    heads = cells[cells["component"] == "head"] if "component" in cells else cells.iloc[:0]
    if heads.empty:
        return None
    grid = heads.pivot_table(index="layer", columns="head", values="val_iia", aggfunc="max")
    grid.columns = [int(c) for c in grid.columns]
    return _grid_figure(grid, path, title, "head")


def _grid_figure(grid: pd.DataFrame, path: str | Path, title: str, xlabel: str) -> Path:
    """A heatmap of ``grid`` (rows: layers) with each value written in its square; cells
    not tried are blank and marked "–"; the title wraps to the figure's width."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = grid.to_numpy(dtype=float)
    width = max(4.5, 1.5 + 0.8 * grid.shape[1])
    height = max(2.5, 1.6 + 0.32 * grid.shape[0])
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer")
    small = 8 if grid.shape[0] <= 16 else 6
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            value = values[i, j]
            if math.isnan(value):
                ax.text(j, i, "–", ha="center", va="center", color="grey", fontsize=small)
                continue
            colour = "white" if value < 0.6 else "black"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=small)
    characters = max(30, int(width * 11))
    ax.set_title("\n".join(textwrap.wrap(title, characters)), fontsize=9)
    fig.colorbar(image, ax=ax, label="validation IIA")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _figures(results: ExperimentResult, directory: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    figures: dict[str, Path] = {}
    directory.mkdir(parents=True, exist_ok=True)
    variables = results.variables

    # causal graph, variables coloured by whether they passed
    graph = nx.DiGraph()
    for node in results.causal_model.graph.nodes:
        graph.add_node(node.name, kind=node.kind)
    graph.add_edges_from(results.causal_model.graph.edges)
    figures["graph"] = draw_causal_graph(
        graph,
        directory / "causal_graph.png",
        title=f"{results.causal_model.name}: green = aligned and passed, red = aligned and failed",
        passed={name: v.passed for name, v in variables.items()},
    )

    # IIA per variable with CIs, against each baseline
    names = list(variables)
    if names:
        fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 3.6))
        xs = range(len(names))
        values = [variables[n].iia for n in names]
        errors = [
            [v - variables[n].ci[0] for n, v in zip(names, values, strict=True)],
            [variables[n].ci[1] - v for n, v in zip(names, values, strict=True)],
        ]
        ax.bar(xs, values, color="#1565c0", yerr=errors, capsize=5, label="IIA (95% CI)")
        markers = ["o", "s", "^", "D", "v", "P"]
        baseline_names = sorted(
            {b for n in names for b in variables[n].baselines if not b.endswith("accuracy")}
        )
        for k, baseline in enumerate(baseline_names):
            ys = [variables[n].baselines.get(baseline) for n in names]
            ax.scatter(
                [x for x, y in zip(xs, ys, strict=True) if y is not None],
                [y for y in ys if y is not None],
                marker=markers[k % len(markers)],
                color="black",
                zorder=3,
                label=baseline,
            )
        threshold = results.thresholds.iia
        ax.axhline(
            threshold, color="#c62828", linestyle="--", linewidth=1, label=f"threshold {threshold}"
        )
        ax.set_xticks(list(xs), names)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("interchange intervention accuracy")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        figures["iia"] = directory / "iia.png"
        fig.savefig(figures["iia"], dpi=110)
        plt.close(fig)

    if results.methods is not None:
        figures["methods"] = _methods_figure(results, directory / "methods.png")

    curve = results.alignment.curve
    if len(curve) > 1:

        def series(key: str) -> list[float]:
            return [float("nan") if (v := c.get(key)) is None else v for c in curve]

        fig, ax = plt.subplots(figsize=(5, 3.2))
        epochs = series("epoch")
        ax.plot(epochs, series("val_iia"), marker="o", label="validation IIA")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation IIA")
        ax2 = ax.twinx()
        ax2.plot(epochs, series("loss"), color="#ef6c00", marker=".", label="loss")
        ax2.set_ylabel("training loss")
        fig.legend(fontsize=7, loc="center right")
        fig.tight_layout()
        figures["curve"] = directory / "training_curve.png"
        fig.savefig(figures["curve"], dpi=110)
        plt.close(fig)

    for variable, each in (results.sweeps or {}).items():
        chosen = each.chosen
        figures[f"sweep {variable}"] = draw_heatmap(
            each.frame(),
            directory / f"sweep_heatmap_{_file_safe(variable)}.png",
            title=f"{variable}: validation IIA; chosen: layer {chosen.layer}, "
            f"position {chosen.position}",
        )
    sweep = results.sweep
    if sweep is not None and sweep.cells:
        cells = sweep.frame()
        chosen = sweep.chosen
        figures["sweep"] = draw_heatmap(
            cells,
            directory / "sweep_heatmap.png",
            title=f"validation IIA (best over components; – not tried); chosen: layer "
            f"{chosen.layer}, position {chosen.position}",
        )
        heads = draw_head_heatmap(
            cells,
            directory / "sweep_heads.png",
            title="validation IIA per attention head (– not tried)",
        )
        if heads is not None:
            figures["heads"] = heads
        by_rank = cells.groupby("rank")["val_iia"].max()
        if len(by_rank) > 1:
            fig, ax = plt.subplots(figsize=(4.5, 3))
            ax.plot(by_rank.index, by_rank.to_numpy(), marker="o")
            ax.set_xlabel("rank (dimensions per variable)")
            ax.set_ylabel("best validation IIA")
            ax.set_ylim(0, 1.05)
            fig.tight_layout()
            figures["rank"] = directory / "iia_vs_rank.png"
            fig.savefig(figures["rank"], dpi=110)
            plt.close(fig)
    return figures


def _methods_figure(results: ExperimentResult, path: Path) -> Path:
    """IIA by method with 95 % CIs, beside the same method on the untrained network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert results.methods is not None
    table = results.methods.variables
    fig, axes = plt.subplots(
        1, len(table), figsize=(1.5 + 2.6 * len(table), 3.6), squeeze=False, sharey=True
    )
    for ax, (variable, rows) in zip(axes[0], table.items(), strict=True):
        xs = list(range(len(rows)))
        iias = [row.iia for row in rows]
        errors = [
            [row.iia - row.ci[0] for row in rows],
            [row.ci[1] - row.iia for row in rows],
        ]
        ax.bar(
            [x - 0.2 for x in xs],
            iias,
            width=0.4,
            color="#1565c0",
            yerr=errors,
            capsize=4,
            label="IIA (95% CI)",
        )
        untrained = [row.untrained_iia if row.untrained_iia is not None else 0.0 for row in rows]
        ax.bar(
            [x + 0.2 for x in xs], untrained, width=0.4, color="#9e9e9e", label="untrained network"
        )
        ax.axhline(results.thresholds.iia, color="#c62828", linestyle="--", linewidth=1)
        ax.set_xticks(xs, [f"{row.method}\n{row.units}/{row.of}" for row in rows], fontsize=8)
        ax.set_title(variable, fontsize=9)
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("interchange intervention accuracy")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(
        f"IIA by method (features used / available); best on validation: {results.methods.best}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def _template(name: str) -> str:
    return (resources.files("abstraction") / "templates" / name).read_text()


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def describe_location(location: Mapping[str, Any]) -> str:
    """``"layer 18 residual @ s.last"``: a location record (a dict of its fields) in words."""
    if location.get("path"):
        where = f"{location['path']} ({location.get('hook', 'output')})"
    else:
        where = f"layer {location['layer']} {location['component']}"
        if location.get("head") is not None:
            where += f" {location['head']}"
        if location.get("hook", "output") != "output":
            where += f" ({location['hook']})"
    if location.get("dims") is not None:
        start, stop = location["dims"]
        where += f" [{start}:{stop}]"
    if location.get("position") is not None:
        where += f" @ {location['position']}"
    return where


def _where_all(locations: Mapping[str, Mapping[str, Any]]) -> str:
    """``"layer 1 residual @ last"``, or ``"s at ...; io at ..."`` for several sites."""
    distinct = {describe_location(loc) for loc in locations.values()}
    if len(distinct) == 1:
        return distinct.pop()
    return "; ".join(f"{v} at {describe_location(loc)}" for v, loc in locations.items())


def _locations(document: Mapping[str, Any]) -> str:
    per_variable = document["config"].get("locations")
    if per_variable:
        return "; ".join(f"{v} at {describe_location(loc)}" for v, loc in per_variable.items())
    return describe_location(document["alignment"]["location"])


def render(results: ExperimentResult, figures: Mapping[str, Path]) -> tuple[str, str]:
    """The HTML and Markdown texts for ``results`` with the given figure files.

    The templates read the ``results.json`` document itself (``r.variables``,
    ``r.behavior.accuracy``, ...), so a report shows exactly what the file holds.
    """
    document = results.to_dict()
    env = jinja2.Environment(
        autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined
    )
    md_env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined)
    baseline_names = sorted({b for v in results.variables.values() for b in v.baselines})
    context = {
        "r": document,
        "baseline_names": baseline_names,
        "fmt": _fmt,
        "location": _locations(document),
        "where_all": _where_all,
        "equations": "\n".join(results.causal_model.equations.values()),
        "images": {k: base64.b64encode(p.read_bytes()).decode() for k, p in figures.items()},
        "colour": VERDICT_COLOURS.get(results.verdict, "#333"),
        "figures": {k: p.name for k, p in figures.items()},
        "image_order": [
            "iia",
            "methods",
            "curve",
            "sweep",
            *(k for k in figures if k.startswith("sweep ")),
            "rank",
        ],
    }
    html = env.from_string(_template("report.html.j2")).render(**context)
    markdown = md_env.from_string(_template("report.md.j2")).render(**context)
    return html, markdown


def _as_result(results: ExperimentResult | Mapping[str, Any]) -> ExperimentResult:
    if isinstance(results, ExperimentResult):
        validate(results)
        return results
    document = dict(results)
    check_schema_version(document)  # a readable error for files of another version
    validate(document)
    return ExperimentResult.from_dict(document)


def write(results: ExperimentResult | Mapping[str, Any], directory: str | Path) -> Path:
    """Validate ``results`` and write the report directory atomically; returns index.html.

    Args:
        results: what :func:`abstraction.run` returned, or a parsed ``results.json``.
        directory: the report directory; an existing one is replaced whole.
    """
    result = _as_result(results)
    target = Path(directory)
    with atomic_directory(target) as staging:
        atomic_write_text(staging / "results.json", result.to_json())
        figures = _figures(result, staging / "figures")
        html, markdown = render(result, figures)
        atomic_write_text(staging / "index.html", html)
        atomic_write_text(staging / "report.md", markdown)
    return target / "index.html"


def rerender(directory: str | Path) -> Path:
    """Render a report again from its ``results.json`` (``abstraction report DIR``).

    The file is checked first (:meth:`ExperimentResult.read`): a damaged or foreign
    ``results.json`` raises :class:`~abstraction.errors.DamagedFileError` naming it.
    """
    source = Path(directory) / "results.json"
    if not source.is_file():
        raise FileNotFoundError(
            f"{source} does not exist; pass a report directory written by `abstraction run`"
        )
    return write(ExperimentResult.read(source), directory)
