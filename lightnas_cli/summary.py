"""`lightnas summary`: per-layer and total costs of a model, in the spirit of Larq's summary.

Every number comes from `lightnas_cli.costs` (the same cost models as ENAS rewards, PIT
regularizers and architecture records), with BatchNorm layers included as Larq counts them
(`costs.profile(..., norm_layers=True)`); `--cost NAME` adds any registered cost model's
per-layer column and total. A model is named as

- a zoo name (``meliusnet22``, ``resnet_e18``), with options given as ``-o key=value``;
- a custom string (``meliusnet_custom:DTSI``, ``meliusnet22_custom:...``);
- ``run:<name>``: the final (or newest) architecture of a run, built by the run's search
  method (`SearchMethod.build`), so any method's derived network is summarised the same way.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from lightnas_cli import costs
from lightnas_cli.errors import ArchitectureError, ConfigError, RunError

#: Input shape and classes when none are given (ImageNet, as the papers' tables count).
DEFAULT_INPUT_SHAPE = (3, 224, 224)
DEFAULT_CLASSES = 1000
#: Largest input a summary traces (values per sample: 3x4096x4096 fits; 3x8192x8192 already
#: needs over 1 GB for one forward pass, and 3x100000x100000 would need 120 GB).
MAX_INPUT_ELEMENTS = 1 << 26
MAX_INPUT_DIMENSIONS = 4
MAX_CLASSES = 100_000
RUN_PREFIX = "run:"


@dataclass
class ModelSummary:
    """Per-layer costs and totals of one model at one input shape."""

    model: str
    input_shape: list[int]
    classes: int | None
    options: dict
    layers: list[costs.Layer]
    totals: costs.CostSummary = field(default_factory=costs.CostSummary)
    architecture: str | None = None
    #: Facts the run's search method adds (e.g. a MeliusNet run's custom string).
    notes: dict[str, str] = field(default_factory=dict)
    #: Registered cost models shown per layer and in total (`--cost NAME[:key=value,...]`).
    cost_names: list[str] = field(default_factory=list)

    def layer_rows(self) -> list[dict]:
        """One JSON-able dict per layer: shape, 1-bit/32-bit parameters and MACs, memory, and
        the requested cost models' values."""
        params, macs = costs.get_cost_model("params"), costs.get_cost_model("macs")
        memory = costs.get_cost_model("binary_memory")
        extra = {name: costs.cost_model_from_spec(name) for name in self.cost_names}
        rows = []
        for layer in self.layers:
            binary, layer_params, layer_macs = layer.binary, params(layer), macs(layer)
            row = {"name": layer.path or layer.name, "type": layer.layer_type,
                   "binary": binary, "output_shape": list(layer.output_shape[1:]),
                   "params_binary": layer_params if binary else 0,
                   "params_float": 0 if binary else layer_params,
                   "macs_binary": layer_macs if binary else 0,
                   "macs_float": 0 if binary else layer_macs,
                   "memory_bytes": memory(layer)}
            if extra:
                row["costs"] = {name: model(layer) for name, model in extra.items()}
            rows.append(row)
        return rows

    def cost_totals(self) -> dict:
        """Totals of the requested cost models, with their units."""
        return {name: {"total": costs.cost_model_from_spec(name).total(self.layers),
                       "unit": _unit(name)} for name in self.cost_names}

    def totals_dict(self) -> dict:
        t = self.totals
        return {"params": t.params, "params_binary": t.params_binary,
                "params_float": t.params_float, "macs_binary": t.macs_binary,
                "macs_float": t.macs_float, "macs": t.macs, "flops": t.flops, "ops": t.ops,
                "memory_bytes": t.memory_bytes, "memory_mib": t.memory_mib,
                "float32_memory_mib": t.params * costs.FLOAT_BITS / 8 / costs.MIB,
                "binary_fraction_params": t.binary_fraction_params,
                "binary_fraction_macs": t.binary_fraction_macs}

    def to_dict(self) -> dict:
        out = {"model": self.model, "input_shape": self.input_shape, "classes": self.classes,
               "options": self.options, "layers": self.layer_rows(),
               "totals": self.totals_dict()}
        if self.cost_names:
            out["costs"] = self.cost_totals()
        if self.architecture is not None:
            out["architecture"] = self.architecture
        if self.notes:
            out["notes"] = dict(self.notes)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def parse_input_shape(text: str | None) -> list[int] | None:
    """``"3,224,224"`` -> [3, 224, 224]; None stays None. Bad text raises ConfigError."""
    if text is None:
        return None
    parts = [p.strip() for p in re.split(r"[,x ]+", text.strip()) if p.strip()]
    try:
        shape = [int(p) for p in parts]
    except ValueError:
        shape = []
    if not shape or any(v < 1 for v in shape) or len(shape) > MAX_INPUT_DIMENSIONS:
        raise ConfigError(f"--input-shape {text!r} is not a list of positive integers; write "
                          f"it as C,H,W (e.g. 3,224,224) or C,L for 1-D models")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise ConfigError(f"--input-shape {text!r} is {math.prod(shape):,} values per sample, "
                          f"more than a summary traces ({MAX_INPUT_ELEMENTS:,}, e.g. "
                          f"3,4096,4096); costs grow with the area, so summarise a smaller "
                          f"input and scale")
    return shape


def parse_options(items: Sequence[str] | None) -> dict:
    """``["stem=thumbnail", "base_channels=16"]`` -> {"stem": "thumbnail", "base_channels": 16}."""
    options: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"model option {item!r} is not of the form key=value "
                              f"(e.g. stem=thumbnail)")
        options[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return options


def summarize(net: Any, input_shape: Sequence[int]) -> tuple[list[costs.LayerCost],
                                                             costs.CostSummary]:
    """Layer costs (BatchNorm included) and totals of an initialised, non-hybridized network."""
    net.hybridize(active=False)
    layers = costs.profile(net, list(input_shape), norm_layers=True)
    return layers, costs.summarize(layers)


def summarize_model(model: str, input_shape: Sequence[int] | None = None,
                    classes: int | None = None, options: dict | None = None,
                    root: Path = Path("trainings"),
                    cost_names: Sequence[str] = ()) -> ModelSummary:
    """Build the named model (zoo name, custom string or ``run:<name>``) and summarise it,
    with the per-layer values of the registered cost models `cost_names` (each
    ``name`` or ``name:key=value,...`` with the model's options, e.g. ``systolic:s1=32``)."""
    options = dict(options or {})
    cost_names = list(dict.fromkeys(cost_names))
    if classes is not None and not 1 <= int(classes) <= MAX_CLASSES:
        raise ConfigError(f"--classes must be between 1 and {MAX_CLASSES:,}, got {classes}")
    for name in cost_names:
        costs.cost_model_from_spec(name)  # a bad name or option fails before any model is built
    if model.startswith(RUN_PREFIX):
        if options:
            raise ConfigError("model options (-o) do not apply to a run: its config fixes them")
        result = _summarize_run(model[len(RUN_PREFIX):], input_shape, classes, root)
        result.cost_names = cost_names
        return result
    import bmxnet_models

    shape = list(input_shape) if input_shape is not None else list(DEFAULT_INPUT_SHAPE)
    accepted = bmxnet_models.model_options(model)
    if "classes" in accepted:
        options.setdefault("classes", DEFAULT_CLASSES if classes is None else int(classes))
    elif classes is not None:
        raise ConfigError(f"model {model!r} has no classes option")
    if "in_channels" in accepted:
        options.setdefault("in_channels", shape[0])
    net = bmxnet_models.get_model(model, **options)
    net.initialize()
    layers, totals = summarize(net, shape)
    return ModelSummary(model=model, input_shape=shape, classes=options.get("classes"),
                        options={k: v for k, v in options.items() if k != "classes"},
                        layers=layers, totals=totals, cost_names=cost_names)


def _architecture_file(run) -> Path:
    """The run's final architecture, else the newest per-epoch record.

    run.json stores the final architecture relative to the run folder; a path of an older
    run that is absolute or relative elsewhere is only trusted if it lies inside this run.
    """
    final = run.read_status().get("final_architecture")
    if final:
        path = (run.path / final).resolve()
        if path.is_file() and run.path.resolve() in path.parents:
            return path
    records = sorted(run.architectures.glob("epoch_*.json"),
                     key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    if not records:
        raise RunError(f"run {run.name!r} has no architecture yet (no epoch has finished); "
                       f"summarise it after its first epoch")
    return records[-1]


def _summarize_run(reference: str, input_shape: Sequence[int] | None, classes: int | None,
                   root: Path) -> ModelSummary:
    from rich.console import Console

    from lightnas_cli import config as config_mod, data as data_mod, runner
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.runs import RunDir
    from lightnas_cli.search.base import Architecture

    if not reference:
        raise ConfigError("write a run as run:<name> (see `lightnas runs`)")
    run = RunDir.open(reference, root)
    cfg = config_mod.load_config(run.config_file)
    path = _architecture_file(run)
    architecture = Architecture.from_json(path.read_text(encoding="utf-8"), source=str(path))
    if input_shape is not None and list(input_shape) != architecture.input_shape:
        raise ConfigError(f"run {run.name!r} was searched at input shape "
                          f"{architecture.input_shape}; leave --input-shape out for a run")
    if classes is not None and int(classes) != architecture.classes:
        raise ConfigError(f"run {run.name!r} has {architecture.classes} classes; leave "
                          f"--classes out for a run")
    with RunLogger(run.logs, tensorboard=False, console=Console(stderr=True)) as logger:
        method = runner.create_method(cfg, runner.SpecOnly(data_mod.describe(cfg.data)), logger)
        try:
            net = method.build(architecture)
            notes = method.describe(architecture)
        except ArchitectureError as exc:
            raise ArchitectureError(f"{path}: {exc}") from None
    layers, totals = summarize(net, architecture.input_shape)
    return ModelSummary(model=f"{RUN_PREFIX}{run.name} ({architecture.base_model})",
                        input_shape=architecture.input_shape, classes=architecture.classes,
                        options=dict(architecture.model_options), layers=layers, totals=totals,
                        architecture=str(path), notes=notes)


def _unit(spec: str) -> str:
    return costs.cost_unit(costs.parse_cost_spec(spec)[0])


def _count(value: float) -> str:
    return f"{int(value):,}" if value else "0"


def _number(value: float) -> str:
    """A cost value: thousands separators for whole numbers, 4 significant digits else."""
    number = float(value)
    return f"{int(number):,}" if number.is_integer() else f"{number:,.4g}"


def render(summary: ModelSummary, console: Any) -> None:
    """Print the per-layer table and the totals with rich."""
    from rich.console import Console
    from rich.table import Table

    title = f"{summary.model}  input {'x'.join(map(str, summary.input_shape))}"
    if summary.classes is not None:
        title += f", {summary.classes} classes"
    table = Table(title=title, box=None, header_style="bold")
    columns = [("layer", "left"), ("type", "left"), ("output shape", "left"),
               ("params 1-bit", "right"), ("params 32-bit", "right"), ("MACs binary", "right"),
               ("MACs float", "right"), ("memory KiB", "right")]
    columns += [(f"{name} ({_unit(name)})", "right") for name in summary.cost_names]
    for column, justify in columns:
        table.add_column(column, justify=justify, no_wrap=True)
    for row in summary.layer_rows():
        cells = [row["name"], row["type"], "x".join(map(str, row["output_shape"])),
                 _count(row["params_binary"]), _count(row["params_float"]),
                 _count(row["macs_binary"]), _count(row["macs_float"]),
                 f"{row['memory_bytes'] / 1024:.2f}"]
        cells += [_number(row["costs"][name]) for name in summary.cost_names]
        table.add_row(*cells)
    # Never truncate names or numbers: widen past a narrow (or piped, 80-column) console.
    needed = sum(max(len(str(column.header)), *(len(str(cell)) for cell in column.cells)) + 2
                 for column in table.columns)
    wide = Console(file=console.file, width=max(console.width, needed),
                   force_terminal=console.is_terminal, color_system=console.color_system)
    wide.print(table, crop=False)
    t = summary.totals_dict()
    lines = [
        f"Total parameters:   {t['params']:,} (1-bit: {t['params_binary']:,}; "
        f"32-bit: {t['params_float']:,})",
        f"Model size:         {t['memory_mib']:.2f} MiB ({t['memory_bytes']:,.0f} bytes; "
        f"{t['float32_memory_mib']:.2f} MiB if all 32-bit)",
        f"Binary MACs:        {t['macs_binary']:,} ({t['macs_binary']:.3e})",
        f"Float MACs:         {t['macs_float']:,} ({t['macs_float']:.3e})",
        f"OPs:                {t['ops']:.3e} (binary MACs / 64 + float MACs)",
        f"Binarized fraction: {100 * t['binary_fraction_params']:.1f}% of parameters, "
        f"{100 * t['binary_fraction_macs']:.1f}% of MACs",
    ]
    for name, total in summary.cost_totals().items():
        lines.append(f"{name + ':':<20}{_number(total['total'])} {total['unit']}")
    if summary.architecture:
        lines.append(f"Architecture:       {summary.architecture}")
    for key, text in summary.notes.items():
        lines.append(f"{key.replace('_', ' ').capitalize() + ':':<20}{text}")
    for line in lines:
        console.print(line, markup=False, highlight=False)
