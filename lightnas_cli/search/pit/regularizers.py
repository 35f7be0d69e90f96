"""Differentiable cost regularizers: `size` (parameters), `macs` and `flops` (2 x MACs).

Risso et al. (2021) and PLiNIO `cost/params.py`, `cost/ops.py`: the cost of a layer is its
parameter or MAC count with the channel and kernel sizes replaced by the sums of the
*continuous* masks (theta, not binarized), so its gradient reaches every α, β and γ. The
counting formulas are `lightnas_cli.costs` itself (conv_params, conv_macs, dense_params,
dense_macs), called with soft NDArray counts: the regularizer and every report count alike,
and with binarized masks (`soft=False`) the same code gives the pruned network's exact cost.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import mxnet as mx
from mxnet import gluon, nd

from lightnas_cli import costs
from lightnas_cli.search.pit.conv import PITConvBase
from lightnas_cli.search.pit.dense import PITDense
from lightnas_cli.search.pit.features_calculator import NormFn, ThetaFn, default_theta
from lightnas_cli.search.pit.graph import LayerEntry

REGULARIZERS = ("size", "macs", "flops")
#: The unit each regularizer counts (as in `lightnas_cli.costs.COST_UNITS`).
REGULARIZER_UNITS = {"size": "parameters", "macs": "MACs", "flops": "FLOPs"}


def layer_cost(entry: LayerEntry, soft: bool = True, theta: ThetaFn | None = None,
               threshold: float = 0.5, norm: NormFn | None = None) -> tuple[Any, Any]:
    """(parameters, MACs) of one layer: NDArrays when soft, ints from binarized masks."""
    theta = theta or default_theta()
    block = entry.block
    if entry.role == "pit" and isinstance(block, PITConvBase):
        terms = block.cost_terms(soft, theta, norm)
        params = costs.conv_params(terms["in_channels"], terms["out_channels"], terms["kernel"],
                                   terms["groups"], terms["bias"])
        macs = costs.conv_macs(terms["in_channels"], terms["out_channels"], terms["kernel"],
                               terms["output_positions"], terms["groups"], terms["bias"])
        return params, macs
    if entry.role == "pit" and isinstance(block, PITDense):
        terms = block.cost_terms(soft, theta)
        return (costs.dense_params(terms["in_units"], terms["out_units"], terms["bias"]),
                costs.dense_macs(terms["in_units"], terms["out_units"], terms["bias"]))
    if entry.role == "fixed":
        in_features = entry.input_calculator.features(soft, threshold, theta)
        bias = block.bias is not None
        if hasattr(block, "_units"):
            units = int(block._units)
            return (costs.dense_params(in_features, units, bias),
                    costs.dense_macs(in_features, units, bias))
        kwargs = block._kwargs
        groups = int(kwargs["num_group"])
        out_channels = int(kwargs["num_filter"])
        kernel = [int(k) for k in kwargs["kernel"]]
        return (costs.conv_params(in_features, out_channels, kernel, groups, bias),
                costs.conv_macs(in_features, out_channels, kernel, entry.output_shape[2:],
                                groups, bias))
    found = costs.layer_cost(block, entry.output_shape)
    return (found.params, found.macs) if found is not None else (0, 0)


def model_costs(layers: list[LayerEntry], soft: bool = True, theta: ThetaFn | None = None,
                threshold: float = 0.5, norm: NormFn | None = None) -> dict[str, Any]:
    """Whole-network size, MACs and FLOPs, plus the per-layer (path, params, macs) list."""
    theta = theta or default_theta()
    size: Any = 0
    macs: Any = 0
    per_layer = []
    for entry in layers:
        params, layer_macs = layer_cost(entry, soft, theta, threshold, norm)
        size = size + params
        macs = macs + layer_macs
        per_layer.append((entry.path, params, layer_macs))
    return {"size": size, "macs": macs, "flops": 2 * macs, "layers": per_layer}


class CostGraph(gluon.HybridBlock):
    """One regularizer of a model as a hybridizable block of the masker parameters.

    The same `model_costs` code as the imperative path, traced once with F = mx.sym: a search
    step then runs one cached graph instead of a few hundred small NDArray operations. The
    block is called with a dummy input (Gluon blocks need one) that adds exactly zero.
    """

    def __init__(self, layers: list[LayerEntry], maskers: list, name: str, threshold: float,
                 ctx: list[mx.Context]):
        super().__init__(prefix=f"pit_cost_{name}_")
        if name not in REGULARIZERS:
            raise ValueError(f"unknown regularizer {name!r}; choose one of {REGULARIZERS}")
        self._layers = tuple(layers)
        self._cost_name = name
        self._threshold = float(threshold)
        # A plain namespace, not a dict attribute: Gluon warns about Blocks held in containers.
        self._wiring = SimpleNamespace(maskers={})
        for index, masker in enumerate(maskers):
            keys = {}
            for keyword, param in masker.forward_params().items():
                keys[keyword] = f"m{index}_{keyword}"
                self._reg_params[keys[keyword]] = param
                self._params._params[param.name] = param
            norm_key = None
            if hasattr(masker, "norm"):
                norm_key = f"m{index}_norm"
                constant = gluon.Constant(f"{masker.prefix}norm", nd.array(masker.norm))
                constant.initialize(ctx=ctx)
                self._reg_params[norm_key] = constant
                self._params._params[constant.name] = constant
            self._wiring.maskers[id(masker)] = (masker, keys, norm_key)

    def hybrid_forward(self, F: Any, x: Any, **params: Any) -> Any:
        thetas = {key: masker.theta(F, **{kw: params[name] for kw, name in keys.items()})
                  for key, (masker, keys, _) in self._wiring.maskers.items()}
        norms = {key: params[norm_key] for key, (_, _, norm_key) in self._wiring.maskers.items()
                 if norm_key is not None}
        total = model_costs(list(self._layers), True, lambda m: thetas[id(m)], self._threshold,
                            lambda m: norms[id(m)])[self._cost_name]
        return F.sum(x) * 0 + total
