"""`binary_memory`: bytes of weights, 1 bit per binary weight and 32 bits per other one.

Model size as the BNN papers and Larq count it (Bethge et al. 2020, MeliusNet-22: 3.88 MB,
with MB = 2**20 bytes).
"""
from __future__ import annotations

from typing import Any

from lightnas_cli.costs.layer import Layer
from lightnas_cli.costs.params import layer_params
from lightnas_cli.costs.registry import CostModel, register_cost_model


@register_cost_model
class BinaryMemory(CostModel):
    name = "binary_memory"
    unit = "bytes"
    description = "weight memory: 1 bit per binary weight, 32 bits per other weight"

    def layer(self, layer: Layer) -> Any:
        return layer_params(layer) * layer.bits / 8.0
