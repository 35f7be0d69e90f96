"""`CostSummary`: parameters and MACs of a set of layers, binary and full-precision apart.

Addable, so the summaries of a supernet's blocks sum to any sampled network's. Its derived
figures (memory, OPs, binary fractions) are the registered cost models' totals, written out
so that summaries and architecture records can show them side by side.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

from lightnas_cli.costs.layer import BINARY_BITS, FLOAT_BITS, Layer
from lightnas_cli.costs.ops import BINARY_MACS_PER_OP
from lightnas_cli.costs.registry import get_cost_model

MIB = 2 ** 20


@dataclass
class CostSummary:
    """Totals over a set of layers, binary and full-precision kept apart."""

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
        """The `binary_memory` cost: 1 bit per binary weight, 32 bits per other weight."""
        return (self.params_binary * BINARY_BITS + self.params_float * FLOAT_BITS) / 8.0

    @property
    def memory_mib(self) -> float:
        """Model size in MiB (2**20 bytes): what Larq's summary and the MeliusNet paper call MB."""
        return self.memory_bytes / MIB

    @property
    def ops(self) -> float:
        """The `ops` cost: binary MACs / 64 + full-precision MACs."""
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


def summarize(layers: Iterable[Layer]) -> CostSummary:
    """Parameters and MACs of the layers by precision, counted by the `params` and `macs`
    cost models."""
    params, macs = get_cost_model("params"), get_cost_model("macs")
    total = CostSummary()
    for layer in layers:
        if layer.binary:
            total += CostSummary(params_binary=params(layer), macs_binary=macs(layer))
        else:
            total += CostSummary(params_float=params(layer), macs_float=macs(layer))
    return total
