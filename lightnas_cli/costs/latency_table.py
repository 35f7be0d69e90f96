"""`latency_table`: measured latency per searchable layer and candidate block (FBNet's LUT).

Wu et al. (2019) price an architecture by the sum of its blocks' latencies, each measured once
on the target device at its real input shape. This module:

- `LatencySpace`: what a table times, given by a search method (`SearchMethod.latency_space`):
  the searchable layers (name, input/output shape, candidate names), the fixed parts (stem,
  tail) and how to build one block or one whole network;
- `build_table`: times every candidate of every layer and each fixed part (hybridized with
  static memory, warm-up runs, the median (or minimum) of `repeats` runs, each ended by
  `wait_to_read`), and records device, CPU/GPU name, thread count, shapes, MXNet version and
  date;
- `LatencyTable`: a table read from JSON, checked against a space (the first mismatch is
  named), its per-entry latencies, and the prediction of a whole network;
- the cost model `latency_table` (`get_cost_model("latency_table", table=PATH)`): prices
  `costs.Layer(op="block", key="<layer>:<candidate>")` descriptions (and the fixed parts,
  key "<name>"), in milliseconds;
- `check_table`: measures random whole networks the same way and compares them with the
  table's prediction.

Every timed call carries a fixed cost (Python, the cached graph's launch, the wait) that a
whole network pays once, not once per block. The table measures it (`build_table`) and
subtracts it from every entry except the first fixed part (the stem), so the predicted latency
of a network, the plain sum of its entries, counts it once.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from lightnas_cli.costs.layer import Layer
from lightnas_cli.costs.registry import CostModel, register_cost_model
from lightnas_cli.errors import ConfigError

TABLE_FORMAT = 1
TABLE_KIND = "lightnas-latency-table"


@dataclass(frozen=True)
class SpaceLayer:
    """A searchable layer (or a fixed part, with one candidate "") and its per-sample shapes."""

    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    candidates: tuple[str, ...] = ("",)


@dataclass
class LatencySpace:
    """What a latency table times for one config (see the module docstring).

    `signature` identifies the space (model, structural options, input shape, classes);
    `make_block(name, candidate)` returns an initialised block of a layer ("" for a fixed
    part); `make_network(choices)` an initialised whole network; `default_table` is where the
    config expects its table.
    """

    signature: dict
    layers: list[SpaceLayer]
    fixed: list[SpaceLayer]
    make_block: Callable[[str, str], Any]
    make_network: Callable[[Sequence[str]], Any]
    default_table: str = ""


def entry_key(layer: str, candidate: str = "") -> str:
    """The key of a table entry: "<layer>:<candidate>", or the fixed part's name."""
    return f"{layer}:{candidate}" if candidate else layer


# --- timing -------------------------------------------------------------------------------------

def device_name(ctx: Any) -> str:
    """The CPU model (from /proc/cpuinfo) or GPU name (nvidia-smi), or the platform's word."""
    if getattr(ctx, "device_type", "cpu") == "gpu":
        try:
            result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader",
                                     "-i", str(ctx.device_id)], capture_output=True, text=True,
                                    timeout=30)
            if result.returncode == 0 and result.stdout.strip():
                return result.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
        return f"gpu {ctx.device_id}"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: How repeated timings become one number: the median (the default), or the minimum, which
#: is robust on a busy machine (the fastest run is the one other processes disturbed least;
#: a longer network is preempted more often than a short block, so medians there predict
#: too little).
STATISTICS = ("median", "min")


def _prepare(block: Any, shape: Sequence[int], ctx: Any, warmup: int) -> Callable[[], float]:
    """Hybridize `block` with static memory on `ctx`, run it `warmup` times untimed; returns a
    function timing one more run (ms, ended by `wait_to_read`)."""
    import mxnet as mx

    params = block.collect_params()
    if params.keys():
        params.reset_ctx(ctx)
    block.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.uniform(shape=tuple(shape), ctx=ctx)
    for _ in range(max(1, warmup)):
        block(x).wait_to_read()

    def run() -> float:
        started = time.perf_counter()
        block(x).wait_to_read()
        return (time.perf_counter() - started) * 1e3
    return run


def _summary(times: Sequence[float], statistic: str) -> float:
    if statistic not in STATISTICS:
        raise ConfigError(f"unknown timing statistic {statistic!r}; one of "
                          f"{', '.join(STATISTICS)}")
    return float(statistics.median(times) if statistic == "median" else min(times))


def measure_ms(block: Any, shape: Sequence[int], ctx: Any, repeats: int, warmup: int = 3,
               statistic: str = "median") -> float:
    """Latency in ms of `block` on one input of `shape` (batch included): hybridized with
    static memory, `warmup` untimed runs, then `repeats` runs each ended by `wait_to_read`,
    summarised by `statistic` (median or min)."""
    _summary([0.0], statistic)
    run = _prepare(block, shape, ctx, warmup)
    return _summary([run() for _ in range(max(1, repeats))], statistic)


def measure_interleaved(items: Sequence[tuple[str, Callable[[], Any], Sequence[int]]], ctx: Any,
                        repeats: int, warmup: int = 3, statistic: str = "median",
                        rounds: int = 3,
                        on_progress: Callable[[int, int, str], None] | None = None
                        ) -> dict[str, float]:
    """Latency in ms of each (key, make_block, shape): every block is built and warmed up
    first, then `rounds` passes time each one in turn, `repeats` runs in all. A busy spell of
    the machine then spreads over all entries instead of inflating a few."""
    _summary([0.0], statistic)
    runs = {}
    total = len(items) + max(1, rounds)
    for done, (key, make, shape) in enumerate(items, start=1):
        runs[key] = _prepare(make(), shape, ctx, warmup)
        if on_progress:
            on_progress(done, total, key)
    rounds = max(1, min(int(rounds), int(repeats)))
    times: dict[str, list[float]] = {key: [] for key in runs}
    for index in range(rounds):
        share = repeats // rounds + (1 if index < repeats % rounds else 0)
        for key, run in runs.items():
            times[key].extend(run() for _ in range(share))
        if on_progress:
            on_progress(len(items) + index + 1, total, f"round {index + 1}/{rounds}")
    return {key: _summary(values, statistic) for key, values in times.items()}


def identity_block() -> Any:
    """A hybridized identity: what a call costs without computing anything."""
    from mxnet import gluon

    class Identity(gluon.HybridBlock):
        def hybrid_forward(self, F, x):
            return F.identity(x)

    return Identity(prefix="overhead_")


def _threads() -> int:
    value = os.environ.get("OMP_NUM_THREADS")
    return int(value) if value and value.isdigit() else (os.cpu_count() or 1)


def build_table(space: LatencySpace, ctx: Any, device: str, batch: int = 1, repeats: int = 50,
                warmup: int = 3, statistic: str = "median", rounds: int = 3,
                calibration: int = 4,
                on_progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Time every entry of `space` on `ctx` (`measure_interleaved`); the table as a
    JSON-ready dict.

    The per-call overhead subtracted from each entry (module docstring) is calibrated on
    whole networks: the reference (the first candidate of every layer) and `calibration`
    others drawn at random from each layer's first candidates but the last (no identity), each
    giving (Σ its parts − the whole) / (parts − 1); the median is used. If timing noise puts it
    outside [0, the smallest part of those networks], a hybridized identity's call time is used
    instead.
    """
    import mxnet as mx
    import numpy as np

    rng = np.random.RandomState(TABLE_FORMAT)
    networks = [[layer.candidates[0] for layer in space.layers]]
    networks += [[layer.candidates[rng.randint(max(len(layer.candidates) - 1, 1))]
                  for layer in space.layers] for _ in range(max(0, calibration))]
    first_input = (space.fixed or space.layers)[0].input_shape
    items: list = [("overhead", identity_block, first_input)]
    items += [(entry_key(part.name), lambda n=part.name: space.make_block(n, ""),
               part.input_shape) for part in space.fixed]
    items += [(entry_key(layer.name, c), lambda n=layer.name, c=c: space.make_block(n, c),
               layer.input_shape) for layer in space.layers for c in layer.candidates]
    items += [(f"network {i}", lambda choices=choices: space.make_network(choices),
               first_input) for i, choices in enumerate(networks)]
    raw = measure_interleaved([(key, make, (batch, *shape)) for key, make, shape in items], ctx,
                              repeats, warmup, statistic, rounds, on_progress)
    identity = raw.pop("overhead")
    wholes = [raw.pop(f"network {i}") for i in range(len(networks))]
    estimates, smallest = [], float("inf")
    for choices, whole in zip(networks, wholes):
        parts = [entry_key(p.name) for p in space.fixed]
        parts += [entry_key(layer.name, c) for layer, c in zip(space.layers, choices)]
        estimates.append((sum(raw[key] for key in parts) - whole) / max(len(parts) - 1, 1))
        smallest = min(smallest, *(raw[key] for key in parts))
    calibrated = float(np.median(estimates))
    overhead = calibrated if 0.0 <= calibrated <= smallest else identity
    first = entry_key(space.fixed[0].name) if space.fixed else None

    def net(key: str) -> float:
        return raw[key] if key == first else max(raw[key] - overhead, 0.0)

    return {
        "format": TABLE_FORMAT, "kind": TABLE_KIND, "space": space.signature,
        "device": device, "device_name": device_name(ctx), "threads": _threads(),
        "batch": int(batch), "repeats": int(repeats), "warmup": int(warmup),
        "rounds": int(rounds), "statistic": statistic, "mxnet": mx.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "overhead_ms": overhead, "identity_call_ms": identity,
        "calibration": [{"choices": c, "measured_ms": w, "overhead_ms": e}
                        for c, w, e in zip(networks, wholes, estimates)],
        "fixed": [{"name": part.name, "input_shape": list(part.input_shape),
                   "output_shape": list(part.output_shape),
                   "latency_ms": net(entry_key(part.name)), "raw_ms": raw[entry_key(part.name)]}
                  for part in space.fixed],
        "layers": [{"name": layer.name, "input_shape": list(layer.input_shape),
                    "output_shape": list(layer.output_shape),
                    "latency_ms": {c: net(entry_key(layer.name, c)) for c in layer.candidates},
                    "raw_ms": {c: raw[entry_key(layer.name, c)] for c in layer.candidates}}
                   for layer in space.layers],
    }


def write_table(table: dict, path: Path) -> Path:
    """Write atomically (a temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# --- reading and checking -------------------------------------------------------------------

class LatencyTable:
    """A measured table: per-entry latencies (ms) and what it was measured for."""

    def __init__(self, data: dict, source: str = "latency table"):
        self.source = source
        try:
            if data.get("kind") != TABLE_KIND or int(data.get("format", 0)) != TABLE_FORMAT:
                raise ValueError(f"not a LightNAS latency table of format {TABLE_FORMAT}")
            self.data = data
            self.fixed = {part["name"]: float(part["latency_ms"]) for part in data["fixed"]}
            self.layers = [(layer["name"], {str(c): float(v) for c, v in
                                            layer["latency_ms"].items()})
                           for layer in data["layers"]]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source} is not a valid latency table ({exc}); build one with "
                              f"`lightnas latency build -c CONFIG`") from None
        self.entries = dict(self.fixed)
        for name, candidates in self.layers:
            for candidate, value in candidates.items():
                self.entries[entry_key(name, candidate)] = value

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"latency table {str(path)!r} not found; build it with `lightnas "
                              f"latency build -c CONFIG` (or set fbnet.latency_table)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not readable JSON ({exc}); build the table again with "
                              f"`lightnas latency build -c CONFIG`") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: not a latency table (a JSON object is expected)")
        return cls(data, str(path))

    @property
    def fixed_ms(self) -> float:
        """What every network of the space pays: the fixed parts (one call overhead included)."""
        return float(sum(self.fixed.values()))

    def lookup(self, key: str) -> float:
        if key not in self.entries:
            raise ConfigError(f"{self.source} has no entry {key!r}; it was built for another "
                              f"space (rebuild it with `lightnas latency build -c CONFIG`)")
        return self.entries[key]

    def layer_latencies(self, name: str, candidates: Sequence[str]) -> list[float]:
        return [self.lookup(entry_key(name, c)) for c in candidates]

    def predict(self, layer_names: Sequence[str], choices: Sequence[str]) -> float:
        """Predicted latency (ms) of the network choosing `choices[i]` at `layer_names[i]`."""
        return self.fixed_ms + float(sum(self.lookup(entry_key(n, c))
                                         for n, c in zip(layer_names, choices)))

    def check_space(self, space: LatencySpace) -> None:
        """Refuse a table built for another space or other shapes, naming the first mismatch."""
        hint = "; rebuild it with `lightnas latency build -c CONFIG`"
        built, wanted = _flat(self.data.get("space", {})), _flat(space.signature)
        for key in sorted(set(built) | set(wanted)):
            if built.get(key) != wanted.get(key):
                raise ConfigError(f"{self.source} was built for {key}={built.get(key)!r}, this "
                                  f"config has {key}={wanted.get(key)!r}{hint}")
        parts = [("fixed part", self.data["fixed"], space.fixed),
                 ("searchable layer", self.data["layers"], space.layers)]
        for what, recorded, expected in parts:
            if len(recorded) != len(expected):
                raise ConfigError(f"{self.source} has {len(recorded)} {what}s, this config "
                                  f"{len(expected)}{hint}")
            for entry, layer in zip(recorded, expected):
                if entry["name"] != layer.name:
                    raise ConfigError(f"{self.source}: {what} {entry['name']!r} where this "
                                      f"config has {layer.name!r}{hint}")
                for key in ("input_shape", "output_shape"):
                    if list(entry[key]) != list(layer.input_shape if key == "input_shape"
                                                else layer.output_shape):
                        got = list(getattr(layer, key))
                        raise ConfigError(f"{self.source}: {what} {layer.name} was measured "
                                          f"with {key} {list(entry[key])}, this config gives "
                                          f"{got}{hint}")
                if what == "searchable layer" and list(entry["latency_ms"]) != list(layer.candidates):
                    raise ConfigError(f"{self.source}: layer {layer.name} has candidates "
                                      f"{list(entry['latency_ms'])}, this config "
                                      f"{list(layer.candidates)}{hint}")

    def header(self) -> dict:
        """What the table was measured on, for `lightnas latency show`."""
        keys = ("device", "device_name", "threads", "batch", "repeats", "rounds", "statistic",
                "mxnet", "date", "overhead_ms")
        return {"table": self.source, **{k: self.data.get(k) for k in keys},
                "space": self.data.get("space")}

    def extremes(self) -> dict:
        """Predicted latency of the fastest and slowest networks of the space."""
        fastest = self.fixed_ms + sum(min(c.values()) for _, c in self.layers)
        slowest = self.fixed_ms + sum(max(c.values()) for _, c in self.layers)
        return {"fastest_ms": fastest, "slowest_ms": slowest}


def _flat(mapping: Any, prefix: str = "") -> dict:
    """{"options": {"width": 1}} -> {"options.width": 1}, so a mismatch names its key."""
    if not isinstance(mapping, dict):
        return {prefix.rstrip("."): mapping}
    flat: dict = {}
    for key, value in mapping.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict)
                    else {f"{prefix}{key}": value})
    return flat


@register_cost_model
class LatencyTableCost(CostModel):
    """Prices "block" descriptions from a measured table (ms); `table` is a path or a
    `LatencyTable`."""

    name = "latency_table"
    unit = "ms"
    description = "measured latency of whole candidate blocks from a table (lightnas latency)"
    needs_options = True

    def __init__(self, table: Any = None, **options: Any) -> None:
        super().__init__(**options)
        if table is None:
            raise ConfigError("the latency_table cost model needs a table: "
                              "get_cost_model('latency_table', table=PATH), a JSON file from "
                              "`lightnas latency build -c CONFIG`")
        self.table = table if isinstance(table, LatencyTable) else LatencyTable.load(table)

    def layer(self, layer: Layer) -> Any:
        if layer.op != "block" or not layer.key:
            raise ConfigError(f"latency_table prices whole blocks (Layer(op='block', key=...)), "
                              f"not a single {layer.op} layer ({layer.path or layer.name}); "
                              f"use params/macs/flops for per-layer counts")
        return self.table.lookup(layer.key)


# --- check: whole networks against the prediction -----------------------------------------------

def architecture_choices(path: str | os.PathLike, space: LatencySpace) -> list[str]:
    """The candidate per searchable layer of an architecture JSON file (its decisions'
    values, one per layer, in order), checked against the space."""
    source = str(path)
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source}: not a readable architecture JSON ({exc})") from None
    decisions = record.get("decisions", []) if isinstance(record, dict) else []
    values = [d.get("value") for d in decisions if isinstance(d, dict)]
    if len(values) != len(space.layers):
        raise ConfigError(f"{source}: {len(values)} decisions, but the space has "
                          f"{len(space.layers)} searchable layers")
    for value, layer in zip(values, space.layers):
        if value not in layer.candidates:
            raise ConfigError(f"{source}: {value!r} is not a candidate of {layer.name} "
                              f"({', '.join(layer.candidates)})")
    return values


def check_table(space: LatencySpace, table: LatencyTable, ctx: Any, samples: int, seed: int = 0,
                repeats: int = 50, warmup: int = 3, batch: int | None = None,
                statistic: str | None = None, rounds: int | None = None,
                architectures: Sequence[tuple[str, Sequence[str]]] = (),
                on_progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Measure `samples` random networks (uniform choice per layer), the space's fastest and
    slowest networks and any given (label, choices), as the table was measured (batch and
    statistic, unless given); compare each with the table's prediction. The error summary
    covers the random samples."""
    import numpy as np

    table.check_space(space)
    batch = int(batch or table.data.get("batch", 1))
    statistic = statistic or table.data.get("statistic", "median")
    names = [layer.name for layer in space.layers]
    rng = np.random.RandomState(seed)
    plans = [("sample", [layer.candidates[rng.randint(len(layer.candidates))]
                         for layer in space.layers]) for _ in range(samples)]
    for label, pick in (("fastest", min), ("slowest", max)):
        plans.append((label, [pick(layer.candidates,
                                   key=lambda c, n=layer.name: table.lookup(entry_key(n, c)))
                              for layer in space.layers]))
    plans += [(label, list(choices)) for label, choices in architectures]
    input_shape = (batch, *(space.fixed or space.layers)[0].input_shape)
    measured = measure_interleaved(
        [(str(i), lambda c=choices: space.make_network(c), input_shape)
         for i, (_, choices) in enumerate(plans)], ctx, repeats, warmup, statistic,
        rounds if rounds is not None else int(table.data.get("rounds", 1)), on_progress)
    rows = []
    for index, (label, choices) in enumerate(plans):
        predicted, real = table.predict(names, choices), measured[str(index)]
        rows.append({"kind": label, "choices": choices, "predicted_ms": predicted,
                     "measured_ms": real, "error_pct": 100.0 * (predicted - real) / real})
    errors = [abs(r["error_pct"]) for r in rows if r["kind"] == "sample"]
    return {"table": table.source, "device": table.data.get("device"), "batch": batch,
            "repeats": repeats, "statistic": statistic, "samples": samples,
            "device_name": device_name(ctx),
            "median_abs_error_pct": float(np.median(errors)) if errors else None,
            "worst_abs_error_pct": float(max(errors)) if errors else None,
            "rows": rows}


def space_for_config(config: str, overrides: Sequence[str] = ()) -> tuple[Any, LatencySpace]:
    """(resolved config, its LatencySpace) from the config's search method."""
    from lightnas_cli import config as config_mod, data as data_mod
    from lightnas_cli.search.base import get_method

    cfg = config_mod.load_config(config, overrides)
    method = get_method(cfg.method)
    return cfg, method.latency_space(cfg, data_mod.describe(cfg.data))
