"""The DMasking search space: an `arch_def` (a plain conv/dense stack whose layers may list
choices) parsed and checked without MXNet, so a config is refused before any work starts.

An `arch_def` is a list of layer specs in the zoo's `PlainStack` format
(`bmxnet_models/lenet.py`), where a convolution or dense layer may give a list of options:

    - {type: conv, name: conv1, channels: [2, 4, 6], kernel: 5}        # 3 widths
    - {type: conv, name: conv2, channels: [8, 16], kernel: [3, 5]}     # widths x kernels
    - {type: pool, kernel: 2}
    - {type: dense, name: fc1, channels: [60, 90, 120]}
    - {type: dense, channels: 84}                                       # fixed

Options are sorted ascending; the supernet builds each layer at its largest option. Kernel
options must be odd and use "same" padding (padding: null): the centre k x k of the largest
kernel then computes a k x k convolution with the same output size. A classifier (`output`,
the data's classes) is appended, as the zoo does.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from lightnas_cli.errors import ConfigError

#: Keys each layer type takes, and their defaults (the zoo's `PlainStack` defaults).
LAYER_KEYS: dict[str, dict[str, Any]] = {
    "conv": {"channels": None, "kernel": 3, "stride": 1, "padding": None,
             "activation": "relu", "batchnorm": False},
    "dense": {"channels": None, "activation": "relu"},
    "pool": {"kernel": 2, "stride": None, "mode": "max"},
    "dropout": {"rate": 0.5},
}
NAME_PREFIX = {"conv": "conv", "dense": "fc", "pool": "pool", "dropout": "drop"}
ACTIVATIONS = ("relu", "tanh", "sigmoid", "softrelu", "none")
POOL_MODES = ("max", "avg")
OUTPUT_NAME = "output"


def default_arch_def() -> list[dict]:
    """LeNet-5 with seed 004's choices: conv1 in {2,4,6}, conv2 in {8,12,16}, fc1 in
    {60,90,120} (fc2 stays 84, the classifier follows the data)."""
    return [
        {"type": "conv", "name": "conv1", "channels": [2, 4, 6], "kernel": 5},
        {"type": "pool", "name": "pool1", "kernel": 2},
        {"type": "conv", "name": "conv2", "channels": [8, 12, 16], "kernel": 5},
        {"type": "pool", "name": "pool2", "kernel": 2},
        {"type": "dense", "name": "fc1", "channels": [60, 90, 120]},
        {"type": "dense", "name": "fc2", "channels": 84},
    ]


@dataclass(frozen=True)
class SpaceLayer:
    """One layer of the stack: its plain spec at the largest options, and its options."""

    spec: dict
    channels: tuple[int, ...] = ()
    kernels: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def kind(self) -> str:
        return self.spec["type"]

    @property
    def weighted(self) -> bool:
        return self.kind in ("conv", "dense")

    def choices(self) -> list[tuple[str, tuple[int, ...]]]:
        """(choice, options) of this layer's searched decisions (more than one option)."""
        found = []
        if len(self.channels) > 1:
            found.append(("channels", self.channels))
        if len(self.kernels) > 1:
            found.append(("kernel", self.kernels))
        return found


def _int(where: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _options(where: str, value: Any) -> tuple[int, ...]:
    """An int or a non-empty list of ints >= 1, as sorted unique options."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ConfigError(f"{where} is an empty list; give one value or several options")
    return tuple(sorted({_int(where, v) for v in values}))


def _layer(where: str, spec: Any, counters: dict) -> SpaceLayer:
    if not isinstance(spec, Mapping) or spec.get("type") not in LAYER_KEYS:
        raise ConfigError(f"{where}: each layer is a mapping with 'type' one of "
                          f"{', '.join(LAYER_KEYS)}, got {spec!r}")
    kind = spec["type"]
    allowed = LAYER_KEYS[kind]
    for key in spec:
        if key not in allowed and key not in ("type", "name"):
            close = difflib.get_close_matches(str(key), list(allowed) + ["name"], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r} for a {kind} layer.{hint} Keys: "
                              f"type, name, {', '.join(allowed)}")
    counters[kind] = counters.get(kind, 0) + 1
    name = spec.get("name") or f"{NAME_PREFIX[kind]}{counters[kind]}"
    plain: dict[str, Any] = {"type": kind, "name": str(name)}
    plain.update({key: spec.get(key, default) for key, default in allowed.items()})
    where = f"{where} ({plain['name']})"
    channels: tuple[int, ...] = ()
    kernels: tuple[int, ...] = ()
    if kind in ("conv", "dense"):
        if plain["channels"] is None:
            raise ConfigError(f"{where}: 'channels' is required (an int or a list of options)")
        channels = _options(f"{where}.channels", plain["channels"])
        plain["channels"] = channels[-1]
        if plain["activation"] not in ACTIVATIONS:
            raise ConfigError(f"{where}.activation is {plain['activation']!r}; one of "
                              f"{', '.join(ACTIVATIONS)}")
    if kind == "conv":
        kernels = _options(f"{where}.kernel", plain["kernel"])
        plain["kernel"] = kernels[-1]
        if len(kernels) > 1 and (plain["padding"] is not None or
                                 any(k % 2 == 0 for k in kernels)):
            raise ConfigError(f"{where}: kernel options {list(kernels)} need odd sizes and "
                              f"'same' padding (leave padding out): the centre of the largest "
                              f"kernel then computes each option with the same output size")
        plain["stride"] = _int(f"{where}.stride", plain["stride"])
        if plain["padding"] is not None:
            plain["padding"] = _int(f"{where}.padding", plain["padding"], 0)
        if not isinstance(plain["batchnorm"], bool):
            raise ConfigError(f"{where}.batchnorm must be true or false")
    elif kind == "pool":
        plain["kernel"] = _int(f"{where}.kernel", plain["kernel"])
        if plain["stride"] is not None:
            plain["stride"] = _int(f"{where}.stride", plain["stride"])
        if plain["mode"] not in POOL_MODES:
            raise ConfigError(f"{where}.mode is {plain['mode']!r}; one of "
                              f"{', '.join(POOL_MODES)}")
    elif kind == "dropout":
        rate = plain["rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ConfigError(f"{where}.rate must be in [0, 1), got {rate!r}")
        plain["rate"] = float(rate)
    return SpaceLayer(plain, channels, kernels)


class SearchSpace:
    """A parsed `arch_def`: layers in order, the searched decisions, plain specs of choices."""

    def __init__(self, arch_def: Sequence[Any], source: str = "dmasking.arch_def"):
        if not isinstance(arch_def, (list, tuple)) or not arch_def:
            raise ConfigError(f"{source} must be a non-empty list of layers (see "
                              f"configs/dmasking/lenet_digits.yml)")
        counters: dict[str, int] = {}
        self.layers = [_layer(f"{source}[{i}]", spec, counters)
                       for i, spec in enumerate(arch_def)]
        names = [layer.name for layer in self.layers]
        for name in names:
            if names.count(name) > 1 or name == OUTPUT_NAME or name.endswith("_bn"):
                raise ConfigError(f"{source}: layer name {name!r} is repeated or reserved "
                                  f"('{OUTPUT_NAME}', '*_bn'); give each layer its own name")
        if not any(layer.weighted for layer in self.layers):
            raise ConfigError(f"{source} has no conv or dense layer to search")
        if not self.decisions():
            raise ConfigError(f"{source} lists no choice: give at least one conv/dense layer "
                              f"a list of channel (or kernel) options, e.g. channels: [8, 16]")
        seen_dense = False
        for layer in self.layers:
            seen_dense = seen_dense or layer.kind == "dense"
            if seen_dense and layer.kind in ("conv", "pool"):
                raise ConfigError(f"{source}: {layer.kind} layer {layer.name!r} follows a dense "
                                  f"layer; a stack is convolutions and pools first, then dense "
                                  f"layers")

    @property
    def weight_layers(self) -> list[SpaceLayer]:
        return [layer for layer in self.layers if layer.weighted]

    @property
    def has_conv(self) -> bool:
        return any(layer.kind == "conv" for layer in self.layers)

    def decisions(self) -> list[tuple[SpaceLayer, str, tuple[int, ...]]]:
        """(layer, choice, options) of every searched decision, in layer order."""
        return [(layer, choice, options) for layer in self.layers
                for choice, options in layer.choices()]

    def extreme(self, largest: bool) -> dict[str, dict[str, int]]:
        """Values of the largest (or smallest) network of the space, per weight layer."""
        pick = (lambda options: options[-1]) if largest else (lambda options: options[0])
        values = {}
        for layer in self.weight_layers:
            values[layer.name] = {"channels": pick(layer.channels)}
            if layer.kind == "conv":
                values[layer.name]["kernel"] = pick(layer.kernels)
        return values

    def plain_specs(self, values: Mapping[str, Mapping[str, int]]) -> list[dict]:
        """The zoo specs of the network that takes `values` (layer -> {choice: value});
        layers or choices not given keep their largest option."""
        specs = []
        for layer in self.layers:
            spec = dict(layer.spec)
            chosen = values.get(layer.name, {})
            if "channels" in chosen:
                spec["channels"] = int(chosen["channels"])
            if "kernel" in chosen:
                spec["kernel"] = int(chosen["kernel"])
            specs.append(spec)
        return specs
