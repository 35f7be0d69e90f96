"""`lightnas report`: pictures and one self-contained HTML page of a sweep or a run.

- A sweep: per cost model, the objective against the cost of every finished trial (the
  Pareto front connected, dominated trials marked), a table of every trial (failures with their
  errors), the sweep's settings.
- A run: learning curves, costs over epochs, the architecture decisions over epochs, and the
  final architecture graph.

Images are PNG files beside `report.html` and are also embedded in it (data URIs), so the page
needs no network and no other file. A small script in the page records, on the `<html>`
element, how many images loaded and how many script errors happened, for the browser check
(`lightnas_cli.browser_check`).
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any, Sequence

from lightnas_cli.errors import RunError
from lightnas_cli.files import atomic_write
from lightnas_cli.runs import RunDir

REPORT = "report.html"

_STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td.text, th.text { text-align: left; }
tr.front td { background: #e8f4e8; } tr.failed td { color: #a00; }
img { max-width: 100%; border: 1px solid #ddd; margin: 6px 0; }
.meta { color: #555; font-size: 13px; }
"""

# Records, on <html>, images loaded / total and script errors: what the browser check reads.
_CHECK_SCRIPT = """
window.lightnasErrors = 0;
window.addEventListener('error', function () { window.lightnasErrors += 1; }, true);
window.addEventListener('load', function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { loaded += 1; }
  }
  var root = document.documentElement;
  root.setAttribute('data-images', loaded + '/' + images.length);
  root.setAttribute('data-errors', String(window.lightnasErrors));
});
"""


def pareto_front(points: Sequence[tuple[float, float]], maximize: bool = True) -> list[int]:
    """Indices of the points (cost, objective) no other point dominates: lower or equal cost
    and better or equal objective, strictly better in one. Sorted by cost."""
    def better(a: float, b: float) -> bool:
        return a > b if maximize else a < b

    front = []
    for i, (cost, value) in enumerate(points):
        dominated = any(
            (c <= cost and (better(v, value) or v == value) and (c < cost or better(v, value)))
            for j, (c, v) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1] if maximize else
                                        points[i][1]))


def _pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(figure: Any, path: Path) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(figure)
    data = buffer.getvalue()
    atomic_write(path, data)
    return data


def _img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
            f"<script>{_CHECK_SCRIPT}</script></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            f"{body}\n</body></html>\n")


def _number(value: Any) -> str:
    if value is None or value == "":
        return ""
    value = float(value)
    if value.is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.4g}"


# --- sweeps ------------------------------------------------------------------------------------

def front_figure(points: list[tuple[float, float]], labels: list[str], front: list[int],
                 cost: str, unit: str, objective: str) -> Any:
    """Objective against one cost: the front connected, dominated trials as grey crosses."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    others = [i for i in range(len(points)) if i not in front]
    if others:
        axes.scatter([points[i][0] for i in others], [points[i][1] for i in others],
                     marker="x", color="#999999", label="dominated")
    axes.plot([points[i][0] for i in front], [points[i][1] for i in front], "-o",
              color="#1f77b4", drawstyle="steps-post", label="Pareto front")
    for i, label in enumerate(labels):
        axes.annotate(label, points[i], textcoords="offset points", xytext=(4, 4), fontsize=8)
    costs = [p[0] for p in points if p[0] > 0]
    if costs and max(costs) / min(costs) > 20:
        axes.set_xscale("log")
    axes.set_xlabel(f"{cost} ({unit})")
    axes.set_ylabel(objective)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    return figure


def sweep_report(folder: Path, out: Path) -> Path:
    from lightnas_cli.sweep import load_sweep, read_status

    sweep_cfg, trials = load_sweep(folder)
    out.mkdir(parents=True, exist_ok=True)
    finished = [t for t in trials.values() if t.status == "finished" and t.objective is not None]
    maximize = not sweep_cfg.objective.endswith("_loss")
    sections, on_front = [], set()
    for cost in sweep_cfg.costs:
        usable = [t for t in finished if t.costs.get(cost) is not None]
        if not usable:
            continue
        points = [(float(t.costs[cost]), float(t.objective)) for t in usable]
        front = pareto_front(points, maximize)
        on_front.update(usable[i].trial for i in front)
        figure = front_figure(points, [f"#{t.trial}" for t in usable], front, cost,
                              _unit(cost), sweep_cfg.objective)
        data = _save(figure, out / f"front_{cost}.png")
        sections.append(f"<h2>{html.escape(sweep_cfg.objective)} against {html.escape(cost)}"
                        f"</h2>\n{_img(data, f'Pareto front, {cost}')}")
    columns = ["trial", "status", "overrides", sweep_cfg.objective] + \
        [f"{c} ({_unit(c)})" for c in sweep_cfg.costs] + ["seconds", "error"]
    rows = []
    for trial in sorted(trials.values(), key=lambda t: t.trial):
        css = "front" if trial.trial in on_front else ("failed" if trial.status == "failed"
                                                       else "")
        cells = [f"<td>{trial.trial}{' *' if trial.trial in on_front else ''}</td>",
                 f'<td class="text">{html.escape(trial.status)}</td>',
                 f'<td class="text">{html.escape(" ".join(trial.overrides))}</td>',
                 f"<td>{_number(trial.objective)}</td>"]
        cells += [f"<td>{_number(trial.costs.get(c))}</td>" for c in sweep_cfg.costs]
        cells += [f"<td>{trial.seconds:.1f}</td>",
                  f'<td class="text">{html.escape(trial.error)}</td>']
        rows.append(f'<tr class="{css}">' + "".join(cells) + "</tr>")
    header = "".join(f'<th class="{"text" if c in ("status", "overrides", "error") else ""}">'
                     f"{html.escape(c)}</th>" for c in columns)
    status = read_status(folder)
    meta = (f'<p class="meta">searcher {html.escape(sweep_cfg.searcher)}, '
            f"{len(trials)} of {status.get('num_trials', sweep_cfg.num_trials)} trials "
            f"recorded ({len(finished)} finished), status {html.escape(status.get('status', '?'))}"
            f"; * = on a Pareto front. Space: "
            f"{html.escape(json.dumps(_plain(sweep_cfg.space)))}</p>")
    table = f"<h2>Trials</h2>\n<table><tr>{header}</tr>\n" + "\n".join(rows) + "</table>"
    if not sections:
        sections.append("<p>No finished trial yet: nothing to plot.</p>")
    path = out / REPORT
    atomic_write(path, _page(f"Sweep {folder.name}", meta + "\n".join(sections) + table))
    return path


def _unit(spec: str) -> str:
    from lightnas_cli import costs as cost_models
    return cost_models.cost_unit(cost_models.parse_cost_spec(spec)[0])


def _plain(value: Any) -> Any:
    from omegaconf import OmegaConf
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


# --- single runs -------------------------------------------------------------------------------

def _architectures(run: RunDir) -> list[tuple[int, dict]]:
    found = []
    for path in run.architectures.glob("epoch_*.json"):
        match = re.fullmatch(r"epoch_(\d+)", path.stem)
        if match:
            try:
                found.append((int(match.group(1)), json.loads(path.read_text("utf-8"))))
            except ValueError:
                continue
    return sorted(found)


def run_report(run: RunDir, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    records = run.read_metrics()
    if not records:
        raise RunError(f"run {run.name!r} has no finished epoch yet: nothing to report")
    epochs = [r["epoch"] for r in records]
    sections = []
    figure, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, axes in (("loss", loss_axes), ("accuracy", acc_axes)):
        for split in ("train", "val"):
            values = [r.get(f"{split}_{key}") for r in records]
            if any(v is not None for v in values):
                axes.plot(epochs, values, "-o", label=split)
        axes.set_xlabel("epoch")
        axes.set_ylabel(key)
        axes.grid(True, alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8)
    sections.append("<h2>Learning curves</h2>\n" +
                    _img(_save(figure, out / "learning_curves.png"), "learning curves"))
    architectures = _architectures(run)
    cost_keys = ("params", "macs", "memory_bytes", "cost")
    figure, axes = plt.subplots(figsize=(6.4, 3.8))
    for key in cost_keys:
        values = [(epoch, arch.get("costs", {}).get(key)) for epoch, arch in architectures]
        values = [(e, v) for e, v in values if isinstance(v, (int, float))]
        if values and key != "cost":
            axes.plot([e for e, _ in values], [v for _, v in values], "-o", label=key)
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("cost of the derived architecture")
    axes.grid(True, alpha=0.3)
    if axes.lines:
        axes.legend(fontsize=8)
    sections.append("<h2>Costs over epochs</h2>\n" +
                    _img(_save(figure, out / "costs.png"), "costs over epochs"))
    if architectures:
        first = architectures[-1][1]["decisions"]
        labels = [f"{d['name']}:{d['choice']}" for d in first]
        matrix = []
        for _, arch in architectures:
            row = []
            for decision in arch["decisions"][:len(labels)]:
                options = decision.get("options") or [decision["value"]]
                index = options.index(decision["value"]) if decision["value"] in options else 0
                row.append(index / max(len(options) - 1, 1))
            matrix.append(row + [0.0] * (len(labels) - len(row)))
        figure, axes = plt.subplots(figsize=(max(6, 0.25 * len(architectures) + 4),
                                             max(3, 0.22 * len(labels) + 1)))
        image = axes.imshow([list(col) for col in zip(*matrix)], aspect="auto",
                            cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        axes.set_yticks(range(len(labels)))
        axes.set_yticklabels(labels, fontsize=6)
        axes.set_xticks(range(len(architectures)))
        axes.set_xticklabels([str(e) for e, _ in architectures], fontsize=7)
        axes.set_xlabel("epoch")
        figure.colorbar(image, ax=axes, label="chosen option (first = 0, last = 1)")
        sections.append("<h2>Decisions over epochs</h2>\n" +
                        _img(_save(figure, out / "decisions.png"), "decisions over epochs"))
        last = architectures[-1][0]
        graph = run.architectures / f"epoch_{last}.png"
        if graph.is_file():
            sections.append(f"<h2>Architecture after epoch {last}</h2>\n" +
                            _img(graph.read_bytes(), "final architecture graph"))
    status = run.read_status()
    facts = {key: status.get(key) for key in ("method", "model", "dataset", "status",
                                               "best_epoch", "best_val_accuracy",
                                               "test_accuracy", "cost", "cost_name")}
    meta = '<p class="meta">' + ", ".join(f"{k} {html.escape(str(v))}" for k, v in
                                          facts.items() if v is not None) + "</p>"
    path = out / REPORT
    atomic_write(path, _page(f"Run {run.name}", meta + "\n".join(sections)))
    return path


def report(reference: str, out: Path | None = None, root: Path = Path("trainings")) -> Path:
    """Write the report of a sweep or run (name under root, or a folder); returns the page."""
    from lightnas_cli.sweep import find_sweep

    folder = find_sweep(reference, root)
    if folder is not None:
        return sweep_report(folder, Path(out) if out else folder / "report")
    run = RunDir.open(reference, root)
    return run_report(run, Path(out) if out else run.path / "report")
