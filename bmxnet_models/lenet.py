"""LeNet with configurable widths, and the plain conv/dense stack it is made of.

`PlainStack` builds a network from a list of layer specs (plain dicts, JSON-able), so a
stack searched layer by layer (DMasking's `arch_def`) exports as the very same kind of
network the zoo builds:

    {"type": "conv", "name": "conv1", "channels": 6, "kernel": 5, "stride": 1,
     "padding": null, "activation": "relu", "batchnorm": false}
    {"type": "pool", "name": "pool1", "kernel": 2, "stride": null, "mode": "max"}
    {"type": "dense", "name": "fc1", "channels": 120, "activation": "relu"}
    {"type": "dropout", "name": "drop1", "rate": 0.5}

`padding: null` is "same" padding (kernel // 2); `stride: null` of a pool is its kernel. A
dense layer after a convolution flattens its input. A classifier `output` (Dense, `classes`
units, no activation) is always appended. Each spec layer is a child named after it
(`conv1`, and `conv1_bn` for its batch norm), so parameter paths read like the spec.

`lenet`: LeCun et al. 1998 (LeNet-5) with "same" padding, so it takes any input of at least
4x4 (8x8 digits, 28x28 MNIST, 32x32 CIFAR): conv(6, 5x5) - max-pool 2 - conv(16, 5x5) -
max-pool 2 - fc 120 - fc 84 - classifier, ReLU activations. `channels` and `units` set the
widths (seed 004 searches conv1 in {2, 4, 6}, conv2 in {8, 12, 16}, fc1 in {60, 90, 120}).
"""
from __future__ import annotations

from typing import Any, Sequence

from mxnet import gluon
from mxnet.gluon import nn

from bmxnet_models import register_model
from lightnas_cli.errors import ConfigError

__all__ = ["PlainStack", "plain_stack", "lenet", "lenet_layers", "LAYER_TYPES", "ACTIVATIONS"]

#: Layer types a spec may name.
LAYER_TYPES = ("conv", "dense", "pool", "dropout")
#: Activations after a conv/dense layer ("none": linear).
ACTIVATIONS = ("relu", "tanh", "sigmoid", "softrelu", "none")
#: Pooling modes.
POOL_MODES = ("max", "avg")
#: The classifier appended to every stack.
OUTPUT_NAME = "output"


def _positive(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")
    return int(value)


def _layer(where: str, spec: Any, counters: dict) -> dict:
    """A spec with every key present (defaults filled in), checked."""
    if not isinstance(spec, dict) or spec.get("type") not in LAYER_TYPES:
        raise ConfigError(f"{where}: a layer is a mapping with 'type' one of "
                          f"{', '.join(LAYER_TYPES)}, got {spec!r}")
    kind = spec["type"]
    counters[kind] = counters.get(kind, 0) + 1
    prefix = {"conv": "conv", "dense": "fc", "pool": "pool", "dropout": "drop"}[kind]
    out = {"type": kind, "name": str(spec.get("name") or f"{prefix}{counters[kind]}")}
    if kind == "conv":
        out["channels"] = _positive(f"{where}.channels", spec.get("channels"))
        out["kernel"] = _positive(f"{where}.kernel", spec.get("kernel", 3))
        out["stride"] = _positive(f"{where}.stride", spec.get("stride", 1))
        padding = spec.get("padding")
        if padding is not None and (isinstance(padding, bool) or not isinstance(padding, int)
                                    or padding < 0):
            raise ConfigError(f"{where}.padding must be null (same) or an integer >= 0")
        out["padding"] = padding
        out["batchnorm"] = bool(spec.get("batchnorm", False))
    elif kind == "dense":
        out["channels"] = _positive(f"{where}.channels", spec.get("channels"))
    elif kind == "pool":
        out["kernel"] = _positive(f"{where}.kernel", spec.get("kernel", 2))
        stride = spec.get("stride")
        out["stride"] = None if stride is None else _positive(f"{where}.stride", stride)
        out["mode"] = spec.get("mode", "max")
        if out["mode"] not in POOL_MODES:
            raise ConfigError(f"{where}.mode must be one of {', '.join(POOL_MODES)}")
    else:
        rate = spec.get("rate", 0.5)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ConfigError(f"{where}.rate must be in [0, 1), got {rate!r}")
        out["rate"] = float(rate)
    if kind in ("conv", "dense"):
        out["activation"] = spec.get("activation", "relu")
        if out["activation"] not in ACTIVATIONS:
            raise ConfigError(f"{where}.activation must be one of {', '.join(ACTIVATIONS)}")
    return out


def normalize_layers(layers: Sequence[Any]) -> list[dict]:
    """Specs with defaults filled in and names made unique; bad specs raise ConfigError."""
    counters: dict[str, int] = {}
    result = [_layer(f"layers[{i}]", spec, counters) for i, spec in enumerate(layers)]
    names = [layer["name"] for layer in result]
    for name in names:
        if names.count(name) > 1 or name == OUTPUT_NAME or name.endswith("_bn"):
            raise ConfigError(f"layer name {name!r} is repeated or reserved ('{OUTPUT_NAME}', "
                              f"'*_bn'); give each layer its own name")
    return result


def conv_padding(spec: dict) -> int:
    """The padding of a conv spec: given, or "same" (kernel // 2)."""
    return spec["kernel"] // 2 if spec["padding"] is None else int(spec["padding"])


class PlainStack(gluon.HybridBlock):
    """A plain sequential network from layer specs (module docstring) plus a classifier."""

    def __init__(self, layers: Sequence[Any], classes: int = 10, in_channels: int = 1,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.specs = normalize_layers(layers)
        self.classes = _positive("classes", classes)
        channels = _positive("in_channels", in_channels)
        self._order: list[tuple[str, str | None, str]] = []  # (child, bn child, activation)
        with self.name_scope():
            for spec in self.specs:
                name, kind = spec["name"], spec["type"]
                if kind == "conv":
                    block = nn.Conv2D(spec["channels"], spec["kernel"], strides=spec["stride"],
                                      padding=conv_padding(spec), in_channels=channels)
                    channels = spec["channels"]
                elif kind == "dense":
                    block = nn.Dense(spec["channels"])
                    channels = spec["channels"]
                elif kind == "pool":
                    pool = nn.MaxPool2D if spec["mode"] == "max" else nn.AvgPool2D
                    block = pool(spec["kernel"], spec["stride"])
                else:
                    block = nn.Dropout(spec["rate"])
                self.register_child(block, name)
                norm = None
                if spec.get("batchnorm"):
                    norm = f"{name}_bn"
                    self.register_child(nn.BatchNorm(in_channels=channels), norm)
                self._order.append((name, norm, spec.get("activation", "none")))
            self.register_child(nn.Dense(self.classes), OUTPUT_NAME)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        for name, norm, activation in self._order:
            x = self._children[name](x)
            if norm is not None:
                x = self._children[norm](x)
            if activation != "none":
                x = F.Activation(x, act_type=activation)
        return self._children[OUTPUT_NAME](x)


def plain_stack(layers: Sequence[Any] = (), classes: int = 10, in_channels: int = 1,
                **kwargs: Any) -> PlainStack:
    """Any plain conv/dense stack given as layer specs (e.g. a small VGG-style network)."""
    if not layers:
        raise ConfigError("plain_stack needs `layers`: a list of layer specs (see "
                          "bmxnet_models/lenet.py)")
    return PlainStack(layers, classes=classes, in_channels=in_channels, **kwargs)


def lenet_layers(channels: Sequence[int] = (6, 16), units: Sequence[int] = (120, 84),
                 kernel_size: int = 5, activation: str = "relu",
                 batchnorm: bool = False) -> list[dict]:
    """LeNet-5's layer specs with the given widths ("same" padding, 2x2 max pooling)."""
    channels, units = list(channels), list(units)
    if len(channels) != 2 or len(units) != 2:
        raise ConfigError(f"lenet takes two conv widths and two fc widths, got channels="
                          f"{channels} and units={units}")
    layers: list[dict] = []
    for index, width in enumerate(channels, 1):
        layers.append({"type": "conv", "name": f"conv{index}", "channels": width,
                       "kernel": kernel_size, "activation": activation,
                       "batchnorm": batchnorm})
        layers.append({"type": "pool", "name": f"pool{index}", "kernel": 2})
    for index, width in enumerate(units, 1):
        layers.append({"type": "dense", "name": f"fc{index}", "channels": width,
                       "activation": activation})
    return layers


def lenet(classes: int = 10, in_channels: int = 1, channels: Sequence[int] = (6, 16),
          units: Sequence[int] = (120, 84), kernel_size: int = 5, activation: str = "relu",
          batchnorm: bool = False, **kwargs: Any) -> PlainStack:
    """LeNet-5 (module docstring) with widths `channels` (convolutions) and `units` (fc)."""
    return PlainStack(lenet_layers(channels, units, kernel_size, activation, batchnorm),
                      classes=classes, in_channels=in_channels, **kwargs)


register_model("lenet")(lenet)
register_model("plain_stack")(plain_stack)
