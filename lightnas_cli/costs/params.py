"""`params`: parameters of a layer, biases included (PLiNIO's `cost/params.py` convention).

Conv1d 3->32, k=3: 3*32*3 + 32 = 320. A batchnorm (summaries only) counts its scale and shift,
two 32-bit values per channel: the running statistics fold into them at deployment, which is
how Larq's summary and the MeliusNet paper count model size.
"""
from __future__ import annotations

from typing import Any

from lightnas_cli.costs.layer import Layer, conv_params, dense_params
from lightnas_cli.costs.registry import CostModel, register_cost_model


def layer_params(layer: Layer) -> Any:
    if layer.op == "conv":
        return conv_params(layer.in_channels, layer.out_channels, layer.kernel, layer.groups,
                           layer.bias)
    if layer.op == "dense":
        return dense_params(layer.in_channels, layer.out_channels, layer.bias)
    if layer.op == "batchnorm":
        return 2 * layer.out_channels  # scale and shift per channel
    return 0  # a "block" (table entry) has no weights of its own


@register_cost_model
class Params(CostModel):
    name = "params"
    unit = "parameters"
    description = "weights and biases (batch norms: scale and shift) of every layer"

    def layer(self, layer: Layer) -> Any:
        return layer_params(layer)
