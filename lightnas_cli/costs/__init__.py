"""Cost models: parameters, MACs and binary memory of layers and networks.

One implementation serves ENAS rewards, architecture records, run summaries and graphs.

Counting convention (PLiNIO's, so results compare): parameters include biases; MACs are one
per weight per output position plus the bias (Conv1d 3->32, k=3, length 100: 320 parameters,
32,000 MACs); FLOPs = 2 x MACs. A binarized layer's weights and MACs are counted apart from
full-precision ones; memory counts 1 bit per binary weight and 32 bits per other weight.
Batch-norm statistics are not counted (they fold into the following layer at deployment).

Summaries in Larq's style (`lightnas summary`) also count BatchNorm layers (`profile(...,
norm_layers=True)`): two 32-bit parameters per channel, the scale and shift left after folding
the running statistics in, and no MACs (at deployment a BatchNorm folds into the neighbouring
convolution or into the threshold of the following sign). Larq's summary and the MeliusNet paper
count model size so (Bethge et al. 2020: MeliusNet-22 3.88 MB, with MB = 2**20 bytes).

Operations of a binary network (`CostSummary.ops`) follow Rastegari et al. 2016 (XNOR-Net),
Liu et al. 2018 (Bi-Real Net) and Bethge et al. 2020: binary MACs / 64 + full-precision MACs,
since a 64-bit CPU computes 64 binary MACs with one XNOR and one popcount.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

FLOAT_BITS = 32
BINARY_BITS = 1
#: Binary MACs one 64-bit XNOR + popcount instruction computes (the papers' OPs convention).
BINARY_MACS_PER_OP = 64
MIB = 2 ** 20


@dataclass
class LayerCost:
    """Cost of one weight layer at a given output shape."""

    name: str
    layer_type: str
    binary: bool
    output_shape: tuple
    params: int
    macs: int
    #: Structural path in the network ("stage1.dense2.conv"), filled in by `profile`.
    path: str = ""

    @property
    def memory_bits(self) -> int:
        return self.params * (BINARY_BITS if self.binary else FLOAT_BITS)


@dataclass
class CostSummary:
    """Totals over a set of layers; addable, so per-block costs sum to a network's."""

    params_binary: int = 0
    params_float: int = 0
    macs_binary: int = 0
    macs_float: int = 0

    @property
    def params(self) -> int:
        return self.params_binary + self.params_float

    @property
    def macs(self) -> int:
        return self.macs_binary + self.macs_float

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def memory_bytes(self) -> float:
        return (self.params_binary * BINARY_BITS + self.params_float * FLOAT_BITS) / 8.0

    @property
    def memory_mib(self) -> float:
        """Model size in MiB (2**20 bytes): what Larq's summary and the MeliusNet paper call MB."""
        return self.memory_bytes / MIB

    @property
    def ops(self) -> float:
        """Binary MACs / 64 + full-precision MACs (XNOR-Net / Bi-Real Net / MeliusNet OPs)."""
        return self.macs_binary / BINARY_MACS_PER_OP + self.macs_float

    @property
    def binary_fraction_params(self) -> float:
        """Share of the parameters that are binary (0 for an empty summary)."""
        return self.params_binary / self.params if self.params else 0.0

    @property
    def binary_fraction_macs(self) -> float:
        """Share of the MACs that are binary (0 for an empty summary)."""
        return self.macs_binary / self.macs if self.macs else 0.0

    def __add__(self, other: "CostSummary") -> "CostSummary":
        return CostSummary(self.params_binary + other.params_binary,
                           self.params_float + other.params_float,
                           self.macs_binary + other.macs_binary,
                           self.macs_float + other.macs_float)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(params=self.params, macs=self.macs, flops=self.flops,
                   memory_bytes=self.memory_bytes)
        return out


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _product(values: Sequence):
    """prod(values): an int for int sizes, else the (soft, differentiable) product as given."""
    values = list(values)
    if all(_is_int(v) for v in values):
        return int(np.prod(values))
    total = values[0]
    for value in values[1:]:
        total = total * value
    return total


def conv_params(in_channels: int, out_channels: int, kernel: Sequence[int], groups: int = 1,
                bias: bool = True) -> int:
    """Weights (in/groups x out x prod(kernel)) plus one bias per output channel.

    Channel counts and kernel sizes may also be soft (floats or NDArrays): PIT's differentiable
    regularizer calls this very formula with mask sums, so search and reports count alike. A
    depthwise layer passes groups=in_channels (then in/groups is 1 however soft the count).
    """
    if _is_int(in_channels) and _is_int(groups):
        per_group = in_channels // groups
    elif groups is in_channels:
        per_group = 1
    else:
        per_group = in_channels / groups
    return per_group * out_channels * _product(kernel) + (out_channels if bias else 0)


def conv_macs(in_channels: int, out_channels: int, kernel: Sequence[int],
              output_positions: Sequence[int], groups: int = 1, bias: bool = True) -> int:
    """One MAC per weight per output position, plus the bias (PLiNIO's convention)."""
    return conv_params(in_channels, out_channels, kernel, groups, bias) * int(np.prod(output_positions))


def dense_params(in_units: int, out_units: int, bias: bool = True) -> int:
    return in_units * out_units + (out_units if bias else 0)


def dense_macs(in_units: int, out_units: int, bias: bool = True) -> int:
    return dense_params(in_units, out_units, bias)


def summarize(layers: Iterable[LayerCost]) -> CostSummary:
    total = CostSummary()
    for layer in layers:
        if layer.binary:
            total += CostSummary(params_binary=layer.params, macs_binary=layer.macs)
        else:
            total += CostSummary(params_float=layer.params, macs_float=layer.macs)
    return total


# Costs an ENAS reward (or any method) can ask for by name.
COST_FUNCTIONS: dict[str, Callable[[CostSummary], float]] = {
    "params": lambda s: float(s.params),
    "binary_memory": lambda s: float(s.memory_bytes),
    "macs": lambda s: float(s.macs),
}

COST_UNITS = {"params": "parameters", "binary_memory": "bytes", "macs": "MACs"}


def _is_norm_layer(block) -> bool:
    return all(hasattr(getattr(block, attr, None), "shape")
               for attr in ("gamma", "beta", "running_mean"))


def norm_cost(block, output_shape: Sequence[int], name: str | None = None) -> LayerCost | None:
    """Cost of a BatchNorm layer: scale and shift per channel (32-bit), no MACs (it folds)."""
    if not _is_norm_layer(block) or not block.gamma.shape or 0 in block.gamma.shape:
        return None
    channels = int(np.prod(block.gamma.shape))
    return LayerCost(name=name or block.name, layer_type="batchnorm", binary=False,
                     output_shape=tuple(int(v) for v in output_shape), params=2 * channels,
                     macs=0)


def layer_cost(block, output_shape: Sequence[int], name: str | None = None) -> LayerCost | None:
    """Cost of a leaf weight layer (Conv1D/2D/3D, Dense, QConv2D, QDense, ...) from its parameters.

    A layer is recognised by a `weight` parameter of rank >= 2: rank 2 is a dense layer (its
    MACs equal its parameters), higher ranks are convolutions (parameters x output positions;
    the weight shape already divides input channels by groups). Anything else returns None.
    """
    weight = getattr(block, "weight", None)
    if weight is None or not hasattr(weight, "shape") or weight.shape is None:
        return None
    shape = tuple(weight.shape)
    if len(shape) < 2 or 0 in shape:
        return None
    bias = getattr(block, "bias", None)
    bias_count = int(np.prod(bias.shape)) if bias is not None and bias.shape else 0
    params = int(np.prod(shape)) + bias_count
    if len(shape) == 2:
        macs, layer_type = params, "dense"
    else:
        macs = params * int(np.prod(output_shape[2:]))
        layer_type = f"conv{len(shape) - 2}d"
    binary = bool(getattr(block, "is_binary", False))
    return LayerCost(name=name or block.name, layer_type=("q" if binary else "") + layer_type,
                     binary=binary, output_shape=tuple(int(v) for v in output_shape),
                     params=params, macs=macs)


def _is_leaf_layer(block) -> bool:
    weight = getattr(block, "weight", None)
    return weight is not None and hasattr(weight, "shape")


def profile(net, input_shape: Sequence[int], ctx=None, run: Callable | None = None,
            norm_layers: bool = False) -> list[LayerCost]:
    """Layer costs of a network in execution order, found by one batch-1 forward pass with hooks.

    The network must not be hybridized (hooks on children of a cached graph never fire) and
    must be initialised. `run(net, x)` overrides how the pass is made (default `net(x)`).
    `norm_layers=True` adds BatchNorm layers (Larq-style summaries, see the module docstring).
    Each cost's `path` is the layer's structural name below `net` ("stage1.dense2.conv").
    """
    import mxnet as mx

    ctx = ctx or mx.cpu()
    found: list[LayerCost] = []
    handles = []
    paths: dict[int, str] = {}

    def hook(block, _inputs, output):
        out = output[0] if isinstance(output, (list, tuple)) else output
        cost = layer_cost(block, out.shape)
        if cost is None and norm_layers:
            cost = norm_cost(block, out.shape)
        if cost is not None:
            cost.path = paths.get(id(block), cost.name)
            found.append(cost)

    def attach(block, path: str) -> None:
        paths.setdefault(id(block), path or block.name)
        if _is_leaf_layer(block) or (norm_layers and _is_norm_layer(block)):
            handles.append(block.register_forward_hook(hook))
        for key, child in block._children.items():
            attach(child, f"{path}.{key}" if path else str(key))

    attach(net, "")
    try:
        x = mx.nd.zeros((1, *input_shape), ctx=ctx)
        (run or (lambda n, data: n(data)))(net, x)
    finally:
        for handle in handles:
            handle.detach()
    return found
