"""`macs` and `flops`: multiply-accumulates per inference of one sample.

PLiNIO's convention (`cost/ops.py`), so results compare: one MAC per weight per output
position, plus the bias (Conv1d 3->32, k=3, length 100: 32,000 MACs); a dense layer's MACs
equal its parameters; a batchnorm folds into its neighbour at deployment and costs none.
FLOPs = 2 x MACs.
"""
from __future__ import annotations

from typing import Any

from lightnas_cli.costs.layer import Layer, conv_macs, dense_macs
from lightnas_cli.costs.registry import CostModel, register_cost_model


def layer_macs(layer: Layer) -> Any:
    if layer.op == "conv":
        return conv_macs(layer.in_channels, layer.out_channels, layer.kernel,
                         layer.output_positions, layer.groups, layer.bias)
    if layer.op == "dense":
        return dense_macs(layer.in_channels, layer.out_channels, layer.bias)
    return 0


@register_cost_model
class Macs(CostModel):
    name = "macs"
    unit = "MACs"
    description = "multiply-accumulates per sample, biases included"

    def layer(self, layer: Layer) -> Any:
        return layer_macs(layer)


@register_cost_model
class Flops(CostModel):
    name = "flops"
    unit = "FLOPs"
    description = "floating-point operations per sample: 2 x MACs"

    def layer(self, layer: Layer) -> Any:
        return 2 * layer_macs(layer)
