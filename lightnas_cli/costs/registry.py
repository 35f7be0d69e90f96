"""Cost models selected by name: `get_cost_model("macs")`, `available_cost_models()`.

A cost model is a per-layer function of a `Layer` description; a network's cost is the sum over
its layers (which is what makes per-block costs of a supernet add up to any sampled network's).
Models that need settings (a latency table's file, a systolic array's size) take them as
keyword options of `get_cost_model(name, **options)`.

To add one: subclass `CostModel` in a module of this package (or your own), set `name`, `unit`
and `description`, implement `layer`, and decorate the class with `@register_cost_model`.
"""
from __future__ import annotations

import abc
import difflib
import inspect
from typing import Any, Iterable

import yaml

from lightnas_cli.costs.layer import Layer
from lightnas_cli.errors import ConfigError


class CostModel(abc.ABC):
    """Base class: `layer(description)` is one layer's cost, `total(descriptions)` their sum."""

    name: str = ""
    unit: str = ""
    description: str = ""
    #: True for models that cannot be built from their name alone (a latency table needs its
    #: file): config keys that name a cost model by itself do not offer them.
    needs_options: bool = False

    def __init__(self, **options: Any) -> None:
        if options:
            raise ConfigError(f"cost model {self.name!r} takes no options, got "
                              f"{sorted(options)}")

    @abc.abstractmethod
    def layer(self, layer: Layer) -> Any:
        """One layer's cost: a number, or an NDArray/Symbol when the description is soft."""

    def total(self, layers: Iterable[Layer]) -> Any:
        """Sum of the per-layer costs (0 for no layers); stays soft if any term is."""
        total: Any = 0
        for layer in layers:
            total = total + self.layer(layer)
        return total

    def __call__(self, layer: Layer) -> Any:
        return self.layer(layer)


_COST_MODELS: dict[str, type[CostModel]] = {}


def register_cost_model(cls: type[CostModel]) -> type[CostModel]:
    """Class decorator adding a cost model to the registry under `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a `name` to be registered")
    existing = _COST_MODELS.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"cost model {cls.name!r} is already registered to {existing!r}")
    _COST_MODELS[cls.name] = cls
    return cls


def available_cost_models(with_options: bool = False) -> list[str]:
    """Names of the registered cost models that work by name alone, sorted; `with_options`
    adds those that need keyword options (`needs_options`, e.g. `latency_table`)."""
    return sorted(name for name, cls in _COST_MODELS.items()
                  if with_options or not cls.needs_options)


def cost_model_class(name: str) -> type[CostModel]:
    """The registered class; an unknown name raises ConfigError with the closest names."""
    if name not in _COST_MODELS:
        close = difflib.get_close_matches(str(name), list(_COST_MODELS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown cost model {name!r}.{hint} Registered cost models: "
                          f"{', '.join(available_cost_models(with_options=True))}")
    return _COST_MODELS[name]


def get_cost_model(name: str, **options: Any) -> CostModel:
    """An instance of the cost model registered as `name`, with its options (an option the
    model does not take is a ConfigError naming the ones it does)."""
    cls = cost_model_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters.values()
                if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind is p.VAR_KEYWORD
                    for p in inspect.signature(cls.__init__).parameters.values())
    unknown = sorted(set(options) - {p.name for p in accepted})
    if unknown and not (takes_any and cls.__init__ is not CostModel.__init__):
        if not accepted:
            raise ConfigError(f"cost model {name!r} takes no options, got {unknown}")
        raise ConfigError(f"cost model {name!r} has no option(s) {', '.join(unknown)}; its "
                          f"options are: {', '.join(p.name for p in accepted)}")
    return cls(**options)


def parse_cost_spec(spec: str) -> tuple[str, dict]:
    """``"systolic:s1=32,s2=32"`` -> ("systolic", {"s1": 32, "s2": 32}); a plain name has no
    options. Values are read as YAML scalars (numbers, booleans, strings)."""
    name, _, rest = str(spec).partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"cost {spec!r}: options are written name:key=value,key=value "
                              f"(e.g. systolic:s1=32,s2=32)")
        try:
            options[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"cost {spec!r}: cannot read the value of {key!r}") from None
    cost_model_class(name.strip())
    return name.strip(), options


def cost_model_from_spec(spec: str) -> CostModel:
    """The cost model a ``name[:key=value,...]`` spec describes."""
    name, options = parse_cost_spec(spec)
    return get_cost_model(name, **options)


def cost_unit(name: str) -> str:
    return cost_model_class(name).unit
