"""Reports: results.json rendered as HTML, Markdown and PNG figures.

A report directory holds:

* ``results.json`` - the results, in the versioned schema :data:`RESULTS_SCHEMA`
  (``schema_version``, ``verdict``, ``reasons``, ``variables.<name>.iia``, ``.ci``,
  ``.changed_iia``, ``.baselines``, ``.p_values``, ``.selectivity``,
  ``behavior.accuracy``, ``baselines``, ``counterexamples``, ``alignment``,
  ``sweep``, ``rivals``, ``causal_model``, ``network``, ``network_hash``,
  ``config``, ``versions``, ``timings``);
* ``index.html`` - self-contained (figures inlined), readable without a server;
* ``report.md`` - the same in Markdown;
* ``figures/*.png`` - causal graph coloured by verdict, IIA per variable against
  each baseline, sweep heatmap and IIA against rank (when there is a sweep),
  training curve.

Rendering only reads results; it never recomputes them. Writes are atomic: the new
report replaces the old one in one rename.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

__all__ = ["RESULTS_SCHEMA", "draw_causal_graph", "render", "validate", "write"]

_ESTIMATE = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}

RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "abstraction results",
    "type": "object",
    "required": [
        "schema_version",
        "experiment",
        "verdict",
        "reasons",
        "variables",
        "behavior",
        "baselines",
        "config",
        "versions",
        "network_hash",
        "causal_model",
        "alignment",
    ],
    "properties": {
        "schema_version": {"const": 1},
        "experiment": {"type": "string"},
        "verdict": {"enum": ["faithful", "partial", "unfaithful", "inconclusive"]},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "variables": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["iia", "ci", "changed_iia", "baselines", "p_values", "passed"],
                "properties": {
                    "iia": {"type": "number", "minimum": 0, "maximum": 1},
                    "ci": _ESTIMATE,
                    "changed_iia": {"type": ["number", "null"]},
                    "baselines": {"type": "object", "additionalProperties": {"type": "number"}},
                    "p_values": {"type": "object", "additionalProperties": {"type": "number"}},
                    "selectivity": {"type": ["number", "null"]},
                    "passed": {"type": "boolean"},
                },
            },
        },
        "behavior": {
            "type": "object",
            "required": ["accuracy"],
            "properties": {"accuracy": {"type": "number"}, "ci": _ESTIMATE},
        },
        "baselines": {"type": "array", "items": {"type": "object", "required": ["name", "iia"]}},
        "counterexamples": {"type": "array"},
        "sweep": {"type": ["object", "null"]},
        "rivals": {"type": "array"},
        "shifts": {"type": "object"},
        "network_hash": {"type": "string"},
        "config": {"type": "object"},
        "versions": {"type": "object", "required": ["abstraction", "torch"]},
        "causal_model": {"type": "object", "required": ["name", "equations", "graph"]},
        "alignment": {"type": "object", "required": ["method", "location", "curve"]},
    },
}


def validate(results: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``results`` does not follow the schema."""
    import jsonschema

    jsonschema.validate(results, RESULTS_SCHEMA)


_COLOURS = {
    "faithful": "#2e7d32",
    "partial": "#ef6c00",
    "unfaithful": "#c62828",
    "inconclusive": "#6d6d6d",
}


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
        (_COLOURS["faithful"] if verdicts[node] else _COLOURS["unfaithful"])
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


def _figures(results: dict[str, Any], directory: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    figures: dict[str, Path] = {}
    directory.mkdir(parents=True, exist_ok=True)

    # causal graph, variables coloured by whether they passed
    graph_data = results["causal_model"]["graph"]
    graph = nx.DiGraph()
    for node in graph_data["nodes"]:
        graph.add_node(node["name"], kind=node.get("kind", "intermediate"))
    graph.add_edges_from(tuple(e) for e in graph_data["edges"])
    figures["graph"] = draw_causal_graph(
        graph,
        directory / "causal_graph.png",
        title=f"{results['causal_model']['name']}: green = aligned and passed, red = aligned "
        "and failed",
        passed={name: info["passed"] for name, info in results["variables"].items()},
    )

    # IIA per variable with CIs, against each baseline
    names = list(results["variables"])
    if names:
        fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 3.6))
        xs = range(len(names))
        values = [results["variables"][n]["iia"] for n in names]
        errors = [
            [v - results["variables"][n]["ci"][0] for n, v in zip(names, values, strict=True)],
            [results["variables"][n]["ci"][1] - v for n, v in zip(names, values, strict=True)],
        ]
        ax.bar(xs, values, color="#1565c0", yerr=errors, capsize=5, label="IIA (95% CI)")
        markers = ["o", "s", "^", "D", "v", "P"]
        baseline_names = sorted(
            {
                b
                for n in names
                for b in results["variables"][n]["baselines"]
                if not b.endswith("accuracy")
            }
        )
        for k, baseline in enumerate(baseline_names):
            ys = [results["variables"][n]["baselines"].get(baseline) for n in names]
            ax.scatter(
                [x for x, y in zip(xs, ys, strict=True) if y is not None],
                [y for y in ys if y is not None],
                marker=markers[k % len(markers)],
                color="black",
                zorder=3,
                label=baseline,
            )
        threshold = results.get("thresholds", {}).get("iia")
        if threshold is not None:
            ax.axhline(
                threshold,
                color="#c62828",
                linestyle="--",
                linewidth=1,
                label=f"threshold {threshold}",
            )
        ax.set_xticks(list(xs), names)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("interchange intervention accuracy")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        figures["iia"] = directory / "iia.png"
        fig.savefig(figures["iia"], dpi=110)
        plt.close(fig)

    curve = results["alignment"].get("curve") or []
    if len(curve) > 1:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        epochs = [c["epoch"] for c in curve]
        ax.plot(epochs, [c["val_iia"] for c in curve], marker="o", label="validation IIA")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation IIA")
        ax2 = ax.twinx()
        ax2.plot(epochs, [c["loss"] for c in curve], color="#ef6c00", marker=".", label="loss")
        ax2.set_ylabel("training loss")
        fig.legend(fontsize=7, loc="center right")
        fig.tight_layout()
        figures["curve"] = directory / "training_curve.png"
        fig.savefig(figures["curve"], dpi=110)
        plt.close(fig)

    sweep = results.get("sweep")
    if sweep:
        import pandas as pd

        from abstraction.alignment.sweep import draw_heatmap

        cells = pd.DataFrame(sweep["cells"])
        chosen = sweep["chosen"]
        figures["sweep"] = draw_heatmap(
            cells,
            directory / "sweep_heatmap.png",
            title=f"validation IIA; chosen: layer {chosen['layer']}, position {chosen['position']}",
        )
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


def _template(name: str) -> str:
    return (resources.files("abstraction") / "templates" / name).read_text()


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def render(results: dict[str, Any], figures: dict[str, Path]) -> tuple[str, str]:
    """The HTML and Markdown texts for ``results`` with the given figure files."""
    env = jinja2.Environment(
        autoescape=jinja2.select_autoescape(default=True), undefined=jinja2.StrictUndefined
    )
    md_env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined)
    baseline_names = sorted({b for v in results["variables"].values() for b in v["baselines"]})
    location = results["alignment"]["location"]
    where = (
        f"{location['path']}"
        if location.get("path")
        else f"layer {location['layer']} {location['component']}"
        + (f" @ {location['position']}" if location.get("position") is not None else "")
    )
    equations = "\n".join(results["causal_model"]["equations"].values())
    images = {k: base64.b64encode(p.read_bytes()).decode() for k, p in figures.items()}
    context = {
        "r": results,
        "baseline_names": baseline_names,
        "fmt": _fmt,
        "location": where,
        "equations": equations,
        "images": images,
        "colour": _COLOURS.get(results["verdict"], "#333"),
        "figures": {k: p.name for k, p in figures.items()},
    }
    html = env.from_string(_template("report.html.j2")).render(**context)
    markdown = md_env.from_string(_template("report.md.j2")).render(**context)
    return html, markdown


def write(results: dict[str, Any], directory: str | Path) -> Path:
    """Validate ``results`` and write the report directory atomically; returns index.html."""
    validate(results)
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        (staging / "results.json").write_text(json.dumps(results, indent=2, default=str))
        figures = _figures(results, staging / "figures")
        html, markdown = render(results, figures)
        (staging / "index.html").write_text(html)
        (staging / "report.md").write_text(markdown)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}-old-{os.getpid()}")
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target / "index.html"


def rerender(directory: str | Path) -> Path:
    """Render a report again from its ``results.json`` (``abstraction report DIR``)."""
    source = Path(directory) / "results.json"
    if not source.is_file():
        raise FileNotFoundError(
            f"{source} does not exist; pass a report directory written by `abstraction run`"
        )
    return write(json.loads(source.read_text()), directory)
