"""Pictures and tables of an Architecture: .json, .txt, .dot and (with graphviz) .png.

The runner writes these once per epoch under logs/architectures/, so a user can watch the
searched network change; the CLI writes them for `lightnas graph`. Graphviz's `dot` program is
optional: without it the .dot file is still written and the caller is told plainly why no image
was made.
"""
from __future__ import annotations

import math
import numbers
import shutil
from pathlib import Path
from typing import Any

import pydot

from lightnas_cli.files import atomic_write
from lightnas_cli.search.base import Architecture, Decision

# Fill colour and extra style per decision kind; "other" covers unknown kinds too.
KIND_STYLES: dict[str, dict[str, str]] = {
    "binary": {"fillcolor": "#add8e6", "style": "filled,rounded"},
    "float": {"fillcolor": "#ffa500", "style": "filled,rounded"},
    "skip": {"fillcolor": "#d3d3d3", "style": "filled,rounded,dashed"},
    "keep": {"fillcolor": "#90ee90", "style": "filled,rounded"},
    "pruned": {"fillcolor": "#f08080", "style": "filled,rounded"},
    "other": {"fillcolor": "#ffffff", "style": "filled,rounded"},
}
# When one unit mixes kinds, the most telling one colours it (a skipped block is skipped
# whatever its precision).
_KIND_PRIORITY = ["skip", "pruned", "binary", "float", "keep", "other"]

PNG_MISSING_REASON = ("graphviz's `dot` program was not found on PATH, so no .png was drawn "
                      "(the .dot file was written); install it with `apt-get install graphviz`")


def graphviz_available() -> bool:
    """Whether graphviz's `dot` program is on PATH (pydot needs it to draw images)."""
    return shutil.which("dot") is not None


def format_number(value: Any) -> str:
    """Compact number for labels and tables: 320, 0.523, 12.3k, 1.2M."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    number = float(value)
    if not math.isfinite(number):
        return str(number)
    magnitude = abs(number)
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            return f"{number / limit:.3g}{suffix}"
    if isinstance(value, numbers.Integral) or number.is_integer():
        return str(int(number))
    return f"{number:.3g}"


def _format_costs(costs: dict) -> str:
    return ", ".join(f"{key}={format_number(value)}" for key, value in costs.items())


def _units(arch: Architecture) -> list[tuple[str, list[Decision]]]:
    """Decisions grouped by unit name, in model order (a unit may hold several choices)."""
    units: list[tuple[str, list[Decision]]] = []
    index: dict[str, int] = {}
    for decision in arch.decisions:
        if decision.name not in index:
            index[decision.name] = len(units)
            units.append((decision.name, []))
        units[index[decision.name]][1].append(decision)
    return units


def _unit_kind(decisions: list[Decision]) -> str:
    kinds = {d.kind if d.kind in KIND_STYLES else "other" for d in decisions}
    return next(kind for kind in _KIND_PRIORITY if kind in kinds)


def _unit_cost(decisions: list[Decision]) -> dict:
    """Per-key sum of the numeric costs of a unit's decisions."""
    total: dict[str, Any] = {}
    for decision in decisions:
        for key, value in decision.cost.items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            else:
                total.setdefault(key, value)
    return total


def _chosen_probability(decision: Decision) -> float | None:
    probabilities = decision.probabilities
    if not probabilities or len(probabilities) != len(decision.options):
        return None
    try:
        return float(probabilities[decision.options.index(decision.value)])
    except (ValueError, TypeError):
        return None


def _dot_text(text: str) -> str:
    # pydot escapes quotes and newlines but not backslashes, which dot reads as escapes.
    return str(text).replace("\\", "\\\\")


def _node_label(name: str, decisions: list[Decision]) -> str:
    lines = [name]
    for decision in decisions:
        line = f"{decision.choice}={decision.value}"
        probability = _chosen_probability(decision)
        if probability is not None:
            line += f" (p={probability:.2f})"
        lines.append(line)
    cost = _unit_cost(decisions)
    if cost:
        lines.append(_format_costs(cost))
    return "\n".join(_dot_text(line) for line in lines)


def architecture_graph(arch: Architecture) -> pydot.Dot:
    """The architecture as a vertical chain input -> stem -> units -> head, coloured by kind."""
    title = f"{arch.method} on {arch.base_model}"
    if arch.costs:
        title += f"\n{_format_costs(arch.costs)}"
    graph = pydot.Dot("architecture", graph_type="digraph", rankdir="TB", labelloc="t",
                      label=_dot_text(title), fontname="Helvetica", fontsize="16")
    graph.set_node_defaults(shape="box", fontname="Helvetica", fontsize="11")

    shape_text = "x".join(str(v) for v in arch.input_shape)
    chain = [pydot.Node("input", label=_dot_text(f"input\n{shape_text}"), shape="ellipse"),
             pydot.Node("stem", label="stem", style="filled,rounded", fillcolor="#f5f5f5")]
    for position, (name, decisions) in enumerate(_units(arch)):
        style = KIND_STYLES[_unit_kind(decisions)]
        chain.append(pydot.Node(f"unit{position}", label=_node_label(name, decisions), **style))
    chain.append(pydot.Node("head", label=_dot_text(f"head ({arch.classes} classes)"),
                            style="filled,rounded", fillcolor="#f5f5f5"))
    for node in chain:
        graph.add_node(node)
    for upper, lower in zip(chain, chain[1:]):
        graph.add_edge(pydot.Edge(upper.get_name(), lower.get_name()))

    legend = pydot.Cluster("legend", label="legend", fontname="Helvetica", fontsize="11",
                           style="rounded", color="#999999")
    previous = None
    for kind, style in KIND_STYLES.items():
        node_name = f"legend_{kind}"
        legend.add_node(pydot.Node(node_name, label=kind, fontsize="10", **style))
        if previous is not None:
            legend.add_edge(pydot.Edge(previous, node_name, style="invis"))
        previous = node_name
    graph.add_subgraph(legend)
    return graph


def architecture_table(arch: Architecture) -> str:
    """A readable plain-text table of the decisions, their costs and probabilities."""
    header = ["#", "unit", "choice=value", "kind", "cost", "probabilities"]
    rows = []
    for position, decision in enumerate(arch.decisions):
        probabilities = ""
        if decision.probabilities:
            probabilities = " ".join(f"{option}:{float(p):.3f}" for option, p in
                                     zip(decision.options, decision.probabilities))
        rows.append([str(position), decision.name, f"{decision.choice}={decision.value}",
                     decision.kind, _format_costs(decision.cost), probabilities])
    if not any(row[5] for row in rows):
        header, rows = header[:5], [row[:5] for row in rows]
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    shape_text = "x".join(str(v) for v in arch.input_shape)
    out = [f"method: {arch.method}", f"base model: {arch.base_model}",
           f"input: {shape_text}   classes: {arch.classes}"]
    if arch.model_options:
        out.append("model options: " + ", ".join(f"{k}={v}" for k, v in
                                                  arch.model_options.items()))
    out += ["", line(header), line(["-" * width for width in widths])]
    out += [line(row) for row in rows]
    out += ["", "total costs: " + (_format_costs(arch.costs) if arch.costs else "(none)")]
    if arch.costs:
        out += [f"  {key}: {value}" for key, value in arch.costs.items()]
    return "\n".join(out) + "\n"


def write_architecture(arch: Architecture, out_stem: Path) -> dict[str, Path | str | None]:
    """Write <stem>.json, .txt, .dot and, when graphviz is installed, .png.

    Returns the paths by kind ("json", "txt", "dot", "png") and "png_reason": None when the
    image was drawn, else a sentence saying why not (png is then None and any stale
    <stem>.png from an earlier call is removed so it cannot be mistaken for this one).
    """
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)

    def path_for(extension: str) -> Path:
        # Not with_suffix: a stem such as "epoch_1.5" must keep its dot.
        return out_stem.with_name(f"{out_stem.name}.{extension}")

    paths: dict[str, Path | str | None] = {}
    paths["json"] = path_for("json")
    atomic_write(paths["json"], arch.to_json() + "\n")
    paths["txt"] = path_for("txt")
    atomic_write(paths["txt"], architecture_table(arch))
    graph = architecture_graph(arch)
    paths["dot"] = path_for("dot")
    atomic_write(paths["dot"], graph.to_string())

    png = path_for("png")
    reason: str | None = None
    if not graphviz_available():
        reason = PNG_MISSING_REASON
    else:
        try:
            image = graph.create(prog="dot", format="png")
        except Exception as exc:  # dot crashed or vanished: keep the other files, say why
            reason = f"graphviz's `dot` failed to draw {png.name}: {exc}".strip()
        else:
            atomic_write(png, image)
    if reason is not None:
        png.unlink(missing_ok=True)
    paths["png"] = None if reason is not None else png
    paths["png_reason"] = reason
    return paths
