"""The SearchMethod interface, the Architecture record and the method registry.

The runner, the CLI, checkpoints, export, graphs and summaries only talk to this interface, so
they never branch on the method name (see ARCHITECTURE.md). Importing this module is cheap (no
MXNet): the config loader uses the registry to find a method's schema.

A method is one folder `lightnas_cli/search/<name>/`: its `__init__.py` registers the method's
config schema and implementation (`register_method`), `config.py` holds the schema, and the
implementation module (imported only when a run needs it) holds the `SearchMethod` subclass.
Built-in methods are listed once, in `BUILTIN_METHODS`.
"""
from __future__ import annotations

import abc
import difflib
import importlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from lightnas_cli.errors import ArchitectureError, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from mxnet import gluon

#: Packages under lightnas_cli/search/ that register a method when imported.
BUILTIN_METHODS = ("enas", "pit", "fbnet", "dmasking", "train")

ARCHITECTURE_FORMAT = 1


@dataclass
class Decision:
    """One searchable choice and the value taken.

    `kind` tells graphs how to colour the block: "binary", "float", "skip", "keep", "pruned"
    (PIT: fewer channels/taps than the seed) or "other".
    `cost` is the cost of this block under the chosen value (same unit as Architecture.costs).
    """

    name: str
    choice: str
    value: Any
    options: list
    kind: str = "other"
    cost: dict = field(default_factory=dict)
    probabilities: list | None = None


@dataclass
class Architecture:
    """The currency between search, export, graphs and summaries: small, stable JSON."""

    method: str
    base_model: str
    model_options: dict
    input_shape: list[int]
    classes: int
    decisions: list[Decision]
    costs: dict = field(default_factory=dict)
    format: int = ARCHITECTURE_FORMAT

    def values(self) -> list[dict]:
        """Per searchable unit, the dict of its choice values, in model order."""
        units: list[dict] = []
        index: dict[str, int] = {}
        for decision in self.decisions:
            if decision.name not in index:
                index[decision.name] = len(units)
                units.append({})
            units[index[decision.name]][decision.choice] = decision.value
        return units

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any, source: str = "architecture") -> "Architecture":
        """Parse and validate; a malformed record raises ArchitectureError naming the field."""
        if not isinstance(data, dict):
            raise ArchitectureError(f"{source}: expected a JSON object, got {type(data).__name__}")
        required = ["method", "base_model", "input_shape", "classes", "decisions"]
        missing = [key for key in required if key not in data]
        if missing:
            raise ArchitectureError(f"{source}: missing field(s) {missing}; an architecture "
                                    f"needs {required}")
        if not isinstance(data["decisions"], list):
            raise ArchitectureError(f"{source}: 'decisions' must be a list")
        decisions = []
        for position, item in enumerate(data["decisions"]):
            if not isinstance(item, dict) or not {"name", "choice", "value"} <= set(item):
                raise ArchitectureError(f"{source}: decision #{position} must be an object with "
                                        f"'name', 'choice' and 'value', got {item!r}")
            options = item.get("options", [item["value"]])
            if item["value"] not in options:
                raise ArchitectureError(f"{source}: decision #{position} ({item['name']}) has "
                                        f"value {item['value']!r}, not one of {options}")
            decisions.append(Decision(name=item["name"], choice=item["choice"],
                                      value=item["value"], options=list(options),
                                      kind=item.get("kind", "other"),
                                      cost=dict(item.get("cost", {})),
                                      probabilities=item.get("probabilities")))
        try:
            input_shape = [int(v) for v in data["input_shape"]]
            classes = int(data["classes"])
        except (TypeError, ValueError):
            raise ArchitectureError(f"{source}: input_shape must be a list of integers and "
                                    f"classes an integer") from None
        return cls(method=str(data["method"]), base_model=str(data["base_model"]),
                   model_options=dict(data.get("model_options", {})), input_shape=input_shape,
                   classes=classes, decisions=decisions, costs=dict(data.get("costs", {})),
                   format=int(data.get("format", ARCHITECTURE_FORMAT)))

    @classmethod
    def from_json(cls, text: str, source: str = "architecture") -> "Architecture":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArchitectureError(f"{source}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source)


class SearchMethod(abc.ABC):
    """What every search backend implements. Built from (config, data, contexts, logger).

    Attributes every method has (set here, from the config and the data spec):
      `config`, `data` (a bundle with `spec`, and `train`/`val`/`test` loaders, or only `spec`
      when restored for export), `contexts`, `logger`, `input_shape`, `classes`, `model_name`
      (`config.model.name`) and `model_options` (from `model_options_from(config)`: the zoo
      constructor options its networks are built with, recorded in every Architecture).
    The runner builds a method before the run folder exists (so the method's own checks of
    the config refuse bad input before anything is created), with a console-only logger, and
    sets `logger` to the run's logger when training starts: use `self.logger`, keep no other
    reference to the first one, and raise `ConfigError` from `__init__` for a bad config.
    Class attributes a method may set:
      `name` (set by `register_method`), `console_hidden` (metric keys logged to TensorBoard
      and metrics.jsonl but left off the console's epoch line).
    """

    name: str = ""
    console_hidden: tuple[str, ...] = ()

    def __init__(self, config: Any, data: Any, contexts: list, logger: Any):
        self.config = config
        self.data = data
        self.contexts = contexts
        self.logger = logger
        # What every method builds its networks for; read from the data spec, not the files.
        self.input_shape = [int(v) for v in data.spec.shape]
        self.classes = int(data.spec.classes)
        self.model_name = config.model.name
        self.model_options: dict = dict(self.model_options_from(config))

    @abc.abstractmethod
    def model_options_from(self, config: Any) -> dict:
        """The zoo constructor options of this run's networks (input shape and classes are
        already set on self)."""

    def split_loader(self, split: str) -> Any:
        """The loader of `split` (train, val, test); a ConfigError when the data set has none
        (what every `evaluate` reads)."""
        loader = getattr(self.data, split, None)
        if loader is None:
            raise ConfigError(f"data set has no {split!r} split")
        return loader

    def make_architecture(self, decisions: list[Decision], costs: dict) -> Architecture:
        """An Architecture of this run's method, base model, options, input and classes."""
        return Architecture(method=self.name, base_model=self.model_name,
                            model_options=dict(self.model_options),
                            input_shape=list(self.input_shape), classes=self.classes,
                            decisions=decisions, costs=costs)

    def check_architecture(self, architecture: Architecture) -> None:
        """Refuse an architecture derived for another base model or other data."""
        if architecture.base_model != self.model_name:
            raise ArchitectureError(f"architecture is for {architecture.base_model!r}, but this "
                                    f"run searched {self.model_name!r}")
        if architecture.input_shape != self.input_shape or architecture.classes != self.classes:
            raise ArchitectureError("architecture input shape/classes differ from the run's data")

    @abc.abstractmethod
    def train_epoch(self, epoch: int) -> dict:
        """Train weights (and architecture parameters) for one epoch; return metrics."""

    @abc.abstractmethod
    def evaluate(self, split: str) -> dict:
        """Metrics of the current derived architecture on a data split ("val" or "test")."""

    @abc.abstractmethod
    def derive(self) -> Architecture:
        """The current best discrete architecture, with its costs."""

    @abc.abstractmethod
    def build(self, architecture: Architecture) -> "gluon.HybridBlock":
        """A plain, initialised Gluon network for the architecture, weights from the search."""

    @classmethod
    def config_for_architecture(cls, architecture: Architecture) -> dict:
        """A config (a mapping) under which this method builds `architecture` when no run's
        config comes with it (an architecture file on its own, for `lightnas train`): by
        default the base model's name; methods whose model section holds the constructor
        options map `architecture.model_options` back onto it."""
        return {"method": cls.name, "model": {"name": architecture.base_model}}

    def describe(self, architecture: Architecture) -> dict[str, str]:
        """Extra facts about an architecture for summaries (label -> text); none by default.
        ENAS over MeliusNet gives the custom string that rebuilds it, for example."""
        return {}

    def sample_architectures(self, count: int, seed: int) -> list[Architecture]:
        """`count` architectures drawn from the search's current distribution (`lightnas export
        --sample`), reproducible by `seed`. Methods without one refuse."""
        raise ArchitectureError(f"method {self.name!r} has no distribution over architectures "
                                f"to sample from; export its derived architecture instead "
                                f"(without --sample)")

    @classmethod
    def latency_space(cls, config: Any, spec: Any) -> Any:
        """The blocks a measured latency table times for `config` (a
        `lightnas_cli.costs.latency_table.LatencySpace`), from the config and the data spec
        alone (`lightnas latency build|check`). Methods without per-layer candidate blocks
        refuse."""
        raise ConfigError(f"method {cls.name!r} has no per-layer candidate blocks to time; "
                          f"`lightnas latency` needs a method whose space has them")

    @abc.abstractmethod
    def state(self) -> tuple[dict, dict]:
        """(arrays, json_state): NDArrays by name, and a JSON-serialisable dict. No pickle."""

    @abc.abstractmethod
    def load_state(self, arrays: dict, json_state: dict) -> None:
        """Restore exactly what `state` returned."""


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its config schema (a `BaseConfig` subclass) and where its
    `SearchMethod` subclass lives ("package.module:Class", imported when first needed)."""

    name: str
    schema: type
    implementation: str


_REGISTRY: dict[str, MethodEntry] = {}


def register_method(name: str, schema: type, implementation: str) -> None:
    """Register a method under `name` (what configs write as `method:`)."""
    existing = _REGISTRY.get(name)
    entry = MethodEntry(name, schema, implementation)
    if existing is not None and existing != entry:
        raise ValueError(f"search method {name!r} is already registered: {existing}")
    _REGISTRY[name] = entry


def _entry(name: Any) -> MethodEntry:
    _load_builtin_methods()
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown search method {name!r}; available: "
                          f"{', '.join(available_methods())}.{hint}")
    return _REGISTRY[name]


def method_schema(name: Any) -> type:
    """The config schema (dataclass) of method `name`; cheap (no MXNet import)."""
    return _entry(name).schema


def get_method(name: Any) -> type[SearchMethod]:
    """The SearchMethod subclass of method `name` (imports its implementation)."""
    entry = _entry(name)
    module_name, _, class_name = entry.implementation.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, SearchMethod)):
        raise TypeError(f"{entry.implementation} is not a SearchMethod subclass")
    cls.name = entry.name
    return cls


def available_methods() -> list[str]:
    _load_builtin_methods()
    return sorted(_REGISTRY)


def _load_builtin_methods() -> None:
    for name in BUILTIN_METHODS:
        importlib.import_module(f"lightnas_cli.search.{name}")
