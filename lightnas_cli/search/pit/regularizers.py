"""Differentiable cost regularizers: any registered cost model of `lightnas_cli.costs`.

Risso et al. (2021) and PLiNIO `cost/params.py`, `cost/ops.py`: the cost of a layer is its
cost with the channel and kernel sizes replaced by the sums of the *continuous* masks (theta,
not binarized), so its gradient reaches every α, β and γ. Each layer is described as a
`costs.Layer` whose channel counts and kernel sizes are those soft sums, and the registered
cost model computes from it: the regularizer and every report count alike, and with binarized
masks (`soft=False`) the same code gives the pruned network's exact cost.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Sequence

import mxnet as mx
from mxnet import gluon, nd

from lightnas_cli import costs
from lightnas_cli.search.pit.config import REGULARIZER_ALIASES, regularizer_cost_model
from lightnas_cli.search.pit.conv import PITConvBase
from lightnas_cli.search.pit.dense import PITDense
from lightnas_cli.search.pit.features_calculator import NormFn, ThetaFn, default_theta
from lightnas_cli.search.pit.graph import LayerEntry

#: What `PITModel.costs` reports by default (cost-model names).
REPORTED_COSTS = ("params", "macs", "flops")


def layer_description(entry: LayerEntry, soft: bool = True, theta: ThetaFn | None = None,
                      threshold: float = 0.5, norm: NormFn | None = None,
                      F: Any = None) -> costs.Layer | None:
    """The cost-model description of one layer: soft counts (NDArrays or Symbols) when
    `soft`, ints from the binarized masks otherwise; None for a layer without weights."""
    theta = theta or default_theta()
    block = entry.block
    shape = tuple(entry.output_shape)
    if entry.role == "pit" and isinstance(block, PITConvBase):
        terms = block.cost_terms(soft, theta, norm)
        return costs.Layer(op="conv", in_channels=terms["in_channels"],
                           out_channels=terms["out_channels"], kernel=tuple(terms["kernel"]),
                           groups=terms["groups"], bias=terms["bias"],
                           output_shape=shape[:2] + tuple(terms["output_positions"]),
                           name=block.name, path=entry.path, F=F)
    if entry.role == "pit" and isinstance(block, PITDense):
        terms = block.cost_terms(soft, theta)
        return costs.Layer(op="dense", in_channels=terms["in_units"],
                           out_channels=terms["out_units"], bias=terms["bias"],
                           output_shape=shape, name=block.name, path=entry.path, F=F)
    if entry.role == "fixed":
        in_features = entry.input_calculator.features(soft, threshold, theta)
        bias = block.bias is not None
        if hasattr(block, "_units"):
            return costs.Layer(op="dense", in_channels=in_features,
                               out_channels=int(block._units), bias=bias, output_shape=shape,
                               name=block.name, path=entry.path, F=F)
        kwargs = block._kwargs
        return costs.Layer(op="conv", in_channels=in_features,
                           out_channels=int(kwargs["num_filter"]),
                           kernel=tuple(int(k) for k in kwargs["kernel"]),
                           stride=tuple(int(v) for v in kwargs["stride"]),
                           dilation=tuple(int(v) for v in kwargs["dilate"]),
                           groups=int(kwargs["num_group"]), bias=bias, output_shape=shape,
                           name=block.name, path=entry.path, F=F)
    return costs.describe_block(block, (), shape, entry.path)


def model_costs(layers: list[LayerEntry], soft: bool = True, theta: ThetaFn | None = None,
                threshold: float = 0.5, norm: NormFn | None = None,
                names: Sequence[str] = REPORTED_COSTS, F: Any = None) -> dict[str, Any]:
    """Whole-network costs by cost-model name (PIT's alias `size` too, when `params` is
    asked for), plus `layers`: per layer (path, params, macs)."""
    theta = theta or default_theta()
    models = {name: costs.get_cost_model(name) for name in names}
    params, macs = costs.get_cost_model("params"), costs.get_cost_model("macs")
    totals: dict[str, Any] = {name: 0 for name in names}
    per_layer = []
    for entry in layers:
        described = layer_description(entry, soft, theta, threshold, norm, F)
        if described is None:
            per_layer.append((entry.path, 0, 0))
            continue
        for name, model in models.items():
            totals[name] = totals[name] + model.layer(described)
        per_layer.append((entry.path, params.layer(described), macs.layer(described)))
    for alias, name in REGULARIZER_ALIASES.items():
        if name in totals:
            totals[alias] = totals[name]
    totals["layers"] = per_layer
    return totals


class CostGraph(gluon.HybridBlock):
    """One regularizer of a model as a hybridizable block of the masker parameters.

    The same `model_costs` code as the imperative path, traced once with F = mx.sym: a search
    step then runs one cached graph instead of a few hundred small NDArray operations. The
    block is called with a dummy input (Gluon blocks need one) that adds exactly zero.
    """

    def __init__(self, layers: list[LayerEntry], maskers: list, name: str, threshold: float,
                 ctx: list[mx.Context]):
        super().__init__(prefix=f"pit_cost_{name}_")
        self._cost_name = regularizer_cost_model(name)
        costs.cost_model_class(self._cost_name)  # an unknown name fails here, with the list
        self._layers = tuple(layers)
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
                            lambda m: norms[id(m)], (self._cost_name,), F)[self._cost_name]
        return F.sum(x) * 0 + total
