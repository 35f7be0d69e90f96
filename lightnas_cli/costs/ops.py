"""`ops`: operations of a binary network, binary MACs / 64 + full-precision MACs.

Rastegari et al. 2016 (XNOR-Net), Liu et al. 2018 (Bi-Real Net), Bethge et al. 2020
(MeliusNet): a 64-bit CPU computes 64 binary MACs with one XNOR and one popcount.
"""
from __future__ import annotations

from typing import Any

from lightnas_cli.costs.layer import Layer
from lightnas_cli.costs.macs import layer_macs
from lightnas_cli.costs.registry import CostModel, register_cost_model

#: Binary MACs one 64-bit XNOR + popcount instruction computes (the papers' OPs convention).
BINARY_MACS_PER_OP = 64


@register_cost_model
class Ops(CostModel):
    name = "ops"
    unit = "OPs"
    description = "binary MACs / 64 + full-precision MACs (XNOR-Net, Bi-Real Net, MeliusNet)"

    def layer(self, layer: Layer) -> Any:
        macs = layer_macs(layer)
        return macs / BINARY_MACS_PER_OP if layer.binary else macs
