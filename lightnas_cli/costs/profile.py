"""`profile`: the `Layer` descriptions of a live Gluon network, from one batch-1 forward pass.

A leaf weight layer is recognised by a `weight` parameter of rank >= 2: rank 2 is a dense
layer, higher ranks are convolutions (the weight shape already divides input channels by
groups). Stride, dilation and groups come from Gluon's convolution arguments or the zoo's
`QConv2D` attributes; `is_binary` marks 1-bit weights.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from lightnas_cli.costs.layer import BINARY_BITS, FLOAT_BITS, Layer


def _is_norm_layer(block: Any) -> bool:
    return all(hasattr(getattr(block, attr, None), "shape")
               for attr in ("gamma", "beta", "running_mean"))


def _is_weight_layer(block: Any) -> bool:
    weight = getattr(block, "weight", None)
    return weight is not None and hasattr(weight, "shape")


def _conv_argument(block: Any, gluon_key: str, attribute: str, ndim: int) -> tuple:
    """A convolution argument from Gluon's `_kwargs` or the zoo layer's attribute; 1s if absent."""
    value = getattr(block, "_kwargs", {}).get(gluon_key)
    if value is None:
        value = getattr(block, attribute, None)
    if value is None:
        return (1,) * ndim
    if isinstance(value, (int, np.integer)):
        return (int(value),) * ndim
    return tuple(int(v) for v in value)


def describe_block(block: Any, input_shape: Sequence[int], output_shape: Sequence[int],
                   path: str = "") -> Layer | None:
    """The description of a leaf weight layer (None for anything else)."""
    weight = getattr(block, "weight", None)
    if weight is None or not hasattr(weight, "shape") or weight.shape is None:
        return None
    shape = tuple(int(v) for v in weight.shape)
    if len(shape) < 2 or 0 in shape:
        return None
    bias = getattr(block, "bias", None)
    has_bias = bias is not None and bool(bias.shape) and 0 not in bias.shape
    bits = BINARY_BITS if getattr(block, "is_binary", False) else FLOAT_BITS
    common = dict(output_shape=tuple(int(v) for v in output_shape),
                  input_shape=tuple(int(v) for v in input_shape), bias=has_bias, bits=bits,
                  name=block.name, path=path or block.name)
    if len(shape) == 2:
        return Layer(op="dense", in_channels=shape[1], out_channels=shape[0], **common)
    ndim = len(shape) - 2
    groups = int(getattr(block, "_kwargs", {}).get("num_group") or getattr(block, "groups", 1))
    return Layer(op="conv", in_channels=shape[1] * groups, out_channels=shape[0],
                 kernel=shape[2:], stride=_conv_argument(block, "stride", "strides", ndim),
                 dilation=_conv_argument(block, "dilate", "dilation", ndim), groups=groups,
                 **common)


def describe_norm(block: Any, input_shape: Sequence[int], output_shape: Sequence[int],
                  path: str = "") -> Layer | None:
    """A batchnorm's description (summaries count its scale and shift), None if not one."""
    if not _is_norm_layer(block) or not block.gamma.shape or 0 in block.gamma.shape:
        return None
    channels = int(np.prod(block.gamma.shape))
    return Layer(op="batchnorm", in_channels=channels, out_channels=channels,
                 output_shape=tuple(int(v) for v in output_shape),
                 input_shape=tuple(int(v) for v in input_shape), bias=False,
                 name=block.name, path=path or block.name)


def profile(net: Any, input_shape: Sequence[int], ctx: Any = None,
            run: Callable | None = None, norm_layers: bool = False) -> list[Layer]:
    """Layer descriptions of a network in execution order (one batch-1 forward pass, hooks).

    The network must be initialised and not hybridized (hooks on children of a cached graph
    never fire). `run(net, x)` overrides how the pass is made (default `net(x)`).
    `norm_layers=True` adds BatchNorm layers (Larq-style summaries). Each `path` is the
    layer's structural name below `net` ("stage1.dense2.conv").
    """
    import mxnet as mx

    ctx = ctx or mx.cpu()
    found: list[Layer] = []
    handles = []
    paths: dict[int, str] = {}

    def hook(block: Any, inputs: Any, output: Any) -> None:
        out = output[0] if isinstance(output, (list, tuple)) else output
        first = inputs[0] if isinstance(inputs, (list, tuple)) and inputs else inputs
        in_shape = getattr(first, "shape", ())
        path = paths.get(id(block), block.name)
        layer = describe_block(block, in_shape, out.shape, path)
        if layer is None and norm_layers:
            layer = describe_norm(block, in_shape, out.shape, path)
        if layer is not None:
            found.append(layer)

    def attach(block: Any, path: str) -> None:
        paths.setdefault(id(block), path or block.name)
        if _is_weight_layer(block) or (norm_layers and _is_norm_layer(block)):
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
