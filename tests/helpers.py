"""Helpers shared by several test modules (model tests and quantizer tests)."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from mxnet import autograd, gluon, nd

from bmxnet_models.enas.unit import active_parameters


def random_data(shape: Sequence[int], seed: int = 0) -> nd.NDArray:
    """Standard normal float32 input of `shape`, reproducible by `seed`."""
    return nd.array(np.random.RandomState(seed).normal(size=shape).astype(np.float32))


def randomize(net: gluon.Block, seed: int = 1) -> None:
    """Random values for every parameter, incl. BatchNorm running stats (var > 0)."""
    rng = np.random.RandomState(seed)
    for name, param in sorted(net.collect_params().items()):
        values = rng.normal(scale=0.5, size=param.shape)
        if name.endswith(("running_var", "gamma")):
            values = np.abs(values) + 0.5
        param.set_data(nd.array(values))


def copy_active_parameters(source: gluon.Block, target: gluon.Block) -> None:
    """Give `target` the values of `source`'s active parameters (same shapes, in order)."""
    src_params, dst_params = active_parameters(source), active_parameters(target)
    assert [p.shape for p in src_params] == [p.shape for p in dst_params]
    for src, dst in zip(src_params, dst_params):
        dst.set_data(src.data())


def assert_matches_supernet(plain: gluon.HybridBlock, supernet: gluon.HybridBlock,
                            x: nd.NDArray, hybridize: bool) -> None:
    """A network built with fixed choices, given the supernet's active parameters, computes
    what the supernet computes with those choices selected."""
    plain.initialize()
    plain(x)
    copy_active_parameters(supernet, plain)
    if hybridize:
        plain.hybridize()
    np.testing.assert_allclose(plain(x).asnumpy(), supernet(x).asnumpy(), rtol=1e-5, atol=1e-5)


def assert_export_round_trip(net: gluon.HybridBlock, x: nd.NDArray, prefix: str,
                             epoch: int) -> None:
    """Random parameters, export, reload as a SymbolBlock: the reloaded model computes the
    same outputs on `x` (the exported symbol and parameters are the whole model)."""
    net.initialize()
    net(x)
    randomize(net)
    net.hybridize()
    expected = net(x).asnumpy()
    net.export(prefix, epoch=epoch)
    with warnings.catch_warnings():
        # Stock MXNet warns on every SymbolBlock.imports that the input's dtype is not given.
        warnings.filterwarnings("ignore", message="Cannot decide type for the following arguments")
        loaded = gluon.SymbolBlock.imports(f"{prefix}-symbol.json", ["data"],
                                           f"{prefix}-{epoch:04d}.params")
    assert np.abs(loaded(x).asnumpy() - expected).max() <= 1e-5


def value_and_grad(quantizer: Any, x: Any, head: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """`quantizer(nd, x)` and the gradient of x (head gradient `head`, default ones)."""
    x = nd.array(x)
    x.attach_grad()
    with autograd.record():
        y = quantizer(nd, x)
    y.backward(None if head is None else nd.array(head))
    return y.asnumpy(), x.grad.asnumpy()
