"""Pruned export: a plain Gluon network with the kept channels, taps and dilations.

PLiNIO's `convert(..., 'export')` rewrites PIT layers back into standard ones. Here the searched
network is cloned block by block: every PIT layer becomes a plain, smaller `nn.Conv1D/2D`,
`nn.Dense` or `nn.BatchNorm` holding the surviving weights; plain layers fed by pruned tensors
lose the matching input channels; every other block is copied with its own copy of its
parameters. The result holds no search machinery and computes the same function as the masked
network (pruned channels are exactly zero there, and removed here).
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import TYPE_CHECKING

import mxnet as mx
import numpy as np
from mxnet import gluon, nd
from mxnet.gluon import nn

from lightnas_cli.search.pit.conv import PITConvBase
from lightnas_cli.search.pit.dense import PITDense
from lightnas_cli.search.pit.features_masker import PITMasker

if TYPE_CHECKING:
    from lightnas_cli.search.pit.model import PITModel


def top_channels(theta: np.ndarray, count: int) -> np.ndarray:
    """The `count` channels with the largest mask values, in channel order.

    With `count` equal to the number of values above the threshold this is exactly the set the
    binarized mask keeps, so an unedited architecture exports the masked network's function.
    """
    order = np.argsort(-np.asarray(theta), kind="stable")[:int(count)]
    return np.sort(order)


def kept_channels(maskers: list[PITMasker], threshold: float,
                  counts: dict[int, int] | None = None) -> dict[int, np.ndarray]:
    """Kept channel indices per masker (by id): the binarized mask, or the top `counts[id]`."""
    kept = {}
    for masker in maskers:
        theta = masker.theta_nd().asnumpy()
        if counts is not None and id(masker) in counts:
            kept[id(masker)] = top_channels(theta, counts[id(masker)])
        else:
            kept[id(masker)] = np.flatnonzero(theta > threshold)
    return kept


def copy_parameter(param: gluon.Parameter) -> gluon.Parameter:
    """An independent copy of a parameter (same name and settings, own data on cpu)."""
    if isinstance(param, gluon.Constant):
        value = param.data(param.list_ctx()[0]).as_in_context(mx.cpu()).copy()
        new: gluon.Parameter = gluon.Constant(param.name, value)
        new.initialize(ctx=mx.cpu())
        return new
    new = gluon.Parameter(param.name, grad_req=param.grad_req, shape=param.shape,
                          dtype=param.dtype, lr_mult=param.lr_mult, wd_mult=param.wd_mult,
                          init=param.init, allow_deferred_init=param._allow_deferred_init,
                          differentiable=param._differentiable)
    if param._data is not None:
        new.initialize(ctx=mx.cpu())
        new.set_data(param._reduce().as_in_context(mx.cpu()))
    return new


def clone_block(block: gluon.Block, substitutes: dict[int, gluon.Block],
                memo: dict[int, gluon.Block] | None = None) -> gluon.Block:
    """A structural copy of `block`: children cloned (or substituted by id), parameters copied.

    Attributes that referred to children or parameters point at the copies, so custom
    `hybrid_forward` code (residual blocks, ...) runs unchanged on the copy.
    """
    memo = {} if memo is None else memo
    if id(block) in memo:
        return memo[id(block)]
    if id(block) in substitutes:
        memo[id(block)] = substitutes[id(block)]
        return memo[id(block)]
    dup = copy.copy(block)
    dup._children = OrderedDict()
    dup._reg_params = OrderedDict()
    dup._params = gluon.ParameterDict(block._params.prefix)
    dup._forward_hooks = OrderedDict()
    dup._forward_pre_hooks = OrderedDict()
    if isinstance(block, gluon.HybridBlock):
        dup._cached_graph = ()
        dup._cached_op = None
        dup._cached_op_args = []
        dup._active = False
        dup._flags = list(block._flags)
    params: dict[int, gluon.Parameter] = {}
    for key, param in block._reg_params.items():
        params.setdefault(id(param), copy_parameter(param))
        dup._reg_params[key] = params[id(param)]
    for name, param in block._params.items():
        params.setdefault(id(param), copy_parameter(param))
        dup._params._params[name] = params[id(param)]
    for key, child in block._children.items():
        dup._children[key] = clone_block(child, substitutes, memo)
    for attr, value in block.__dict__.items():
        if isinstance(value, gluon.Parameter) and id(value) in params:
            dup.__dict__[attr] = params[id(value)]
        elif isinstance(value, gluon.Block) and id(value) in memo:
            dup.__dict__[attr] = memo[id(value)]
    memo[id(block)] = dup
    return dup


def slice_inputs(block: gluon.Block, index: np.ndarray) -> gluon.HybridBlock:
    """A copy of a plain Conv/Dense layer that reads only the input features in `index`."""
    index = np.asarray(index, dtype=np.int64)
    activation = block.act._act_type if block.act is not None else None
    if isinstance(block, nn.Dense):
        layer = nn.Dense(int(block._units), in_units=len(index), flatten=block._flatten,
                         use_bias=block.bias is not None, activation=activation,
                         prefix=block.prefix)
    else:
        kwargs = block._kwargs
        if int(kwargs["num_group"]) != 1:
            raise ValueError(f"{block.name}: a grouped convolution's inputs cannot be pruned")
        layer = type(block)(int(kwargs["num_filter"]), tuple(kwargs["kernel"]),
                            strides=tuple(kwargs["stride"]), padding=tuple(kwargs["pad"]),
                            dilation=tuple(kwargs["dilate"]), layout=kwargs["layout"],
                            use_bias=block.bias is not None, activation=activation,
                            in_channels=len(index), prefix=block.prefix)
    layer.initialize(ctx=mx.cpu())
    layer.weight.set_data(nd.array(block.weight._reduce().asnumpy()[:, index]))
    if block.bias is not None:
        layer.bias.set_data(block.bias._reduce().as_in_context(mx.cpu()))
    return layer


def export_pruned(model: "PITModel", counts: dict[int, int] | None = None,
                  taps: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None
                  ) -> gluon.HybridBlock:
    """The plain pruned network of `model` (on cpu, not hybridized).

    `counts` overrides kept channels per masker id (top-|theta| channels), `taps` overrides
    (kernel sizes, dilations) per layer path; both default to the current binarized masks.
    """
    taps = taps or {}
    kept = kept_channels(model.maskers, model.threshold, counts)
    substitutes: dict[int, gluon.Block] = {}
    for entry in model.layers:
        block = entry.block
        if entry.role == "pit":
            in_index = block.input_features_calculator.kept_indices(kept)
            out_index = block.output_features_calculator.kept_indices(kept)
            if isinstance(block, PITConvBase):
                kernel, dilation = taps.get(entry.path, (None, None))
                substitutes[id(block)] = block.export(in_index, out_index, kernel, dilation)
            elif isinstance(block, PITDense):
                substitutes[id(block)] = block.export(in_index, out_index)
        elif entry.role == "fixed" and not entry.input_calculator.is_constant:
            substitutes[id(block)] = slice_inputs(
                block, entry.input_calculator.kept_indices(kept))
    for _, bn in model.batchnorms:
        substitutes[id(bn)] = bn.export(bn.output_features_calculator.kept_indices(kept))
    return clone_block(model.seed, substitutes)
