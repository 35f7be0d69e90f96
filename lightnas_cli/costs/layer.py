"""`Layer`: the per-layer description every cost model computes from, and the counting formulas.

A description carries what hardware models need (operation, channels, kernel, stride,
dilation, groups, input and output shapes, weight precision), not a live network, so one cost
model serves summaries, ENAS rewards, PIT regularizers and architecture records alike.

Channel counts and kernel sizes may be plain numbers or soft values (NDArrays or Symbols, e.g.
sums of PIT's continuous masks): the formulas only add, multiply and divide them, so a cost of
soft counts is differentiable in them. `F` names the array namespace (`mx.nd` or `mx.sym`) for
cost models that need more than arithmetic (a smooth ceiling, say); None means plain numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

FLOAT_BITS = 32
BINARY_BITS = 1
#: Operations a description may name. "block" is a whole candidate block of a search space,
#: priced by a measured table (`latency_table`) through its `key`; it has no weights of its own
#: (the blocks' convolutions are described as "conv" layers for counting models).
OPS = ("conv", "dense", "batchnorm", "block")


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def product(values: Sequence[Any]) -> Any:
    """prod(values): an int for int sizes, else the (soft, differentiable) product as given."""
    values = list(values)
    if not values:
        return 1
    if all(is_int(v) for v in values):
        return int(np.prod(values))
    total = values[0]
    for value in values[1:]:
        total = total * value
    return total


def conv_params(in_channels: Any, out_channels: Any, kernel: Sequence[Any], groups: Any = 1,
                bias: bool = True) -> Any:
    """Weights (in/groups x out x prod(kernel)) plus one bias per output channel.

    A depthwise layer with soft channels passes groups=in_channels (the very same object):
    then in/groups is exactly 1 however soft the count.
    """
    if is_int(in_channels) and is_int(groups):
        per_group = in_channels // groups
    elif groups is in_channels:
        per_group = 1
    else:
        per_group = in_channels / groups
    return per_group * out_channels * product(kernel) + (out_channels if bias else 0)


def conv_macs(in_channels: Any, out_channels: Any, kernel: Sequence[Any],
              output_positions: Sequence[int], groups: Any = 1, bias: bool = True) -> Any:
    """One MAC per weight per output position, plus the bias (PLiNIO's convention)."""
    return (conv_params(in_channels, out_channels, kernel, groups, bias)
            * int(np.prod(list(output_positions) or [1])))


def dense_params(in_units: Any, out_units: Any, bias: bool = True) -> Any:
    return in_units * out_units + (out_units if bias else 0)


def dense_macs(in_units: Any, out_units: Any, bias: bool = True) -> Any:
    return dense_params(in_units, out_units, bias)


@dataclass
class Layer:
    """One weight layer as cost models see it.

    `input_shape` / `output_shape` include the batch axis (N, C, *spatial), as a forward pass
    with a batch of one gives them. For a dense layer `kernel`, `stride` and `dilation` are
    empty and the spatial output is none. `bits` is the weight precision: 1 (binary) or 32.
    A batchnorm description (summaries only) has `in_channels == out_channels`.
    A block description ("block") names a table entry in `key` (e.g. "layers.3:k5_e6"); counting
    models give it 0, since its weight layers are described on their own.
    """

    op: str
    in_channels: Any
    out_channels: Any
    output_shape: tuple
    input_shape: tuple = ()
    kernel: tuple = ()
    stride: tuple = ()
    dilation: tuple = ()
    groups: Any = 1
    bias: bool = True
    bits: int = FLOAT_BITS
    name: str = ""
    #: Structural path in the network ("stage1.dense2.conv"); the name when unknown.
    path: str = ""
    F: Any = None
    #: Table entry of a "block" description (see `latency_table`); empty otherwise.
    key: str = ""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown layer operation {self.op!r}; one of {OPS}")

    @property
    def binary(self) -> bool:
        return self.bits == BINARY_BITS

    @property
    def output_positions(self) -> list[int]:
        """Spatial output sizes (empty for a dense layer)."""
        return [int(v) for v in self.output_shape[2:]]

    @property
    def layer_type(self) -> str:
        """Short type for tables: conv1d/conv2d/dense/batchnorm, "q"-prefixed when binary."""
        base = f"conv{len(self.kernel)}d" if self.op == "conv" else self.op
        return ("q" if self.binary else "") + base

    def cost(self, model: str, **options: Any) -> Any:
        """This layer's cost under the registered cost model `model`."""
        from lightnas_cli.costs.registry import get_cost_model
        return get_cost_model(model, **options).layer(self)

    @property
    def params(self) -> Any:
        return self.cost("params")

    @property
    def macs(self) -> Any:
        return self.cost("macs")
