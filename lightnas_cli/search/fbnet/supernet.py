"""The FBNet supernet as the search trains it: the zoo's supernet plus θ, the Gumbel-softmax
mixing weights and the expected latency, all in one (hybridizable) graph.

    m_l = softmax((θ_l + g_l) / τ)                          per layer l (shared relaxation)
    out = net(x; m_1 ... m_L)                               Σ_i m_{l,i} · block_{l,i}(x) per layer
    LAT = fixed + Σ_l Σ_i m_{l,i} · LUT(l, i)               (ms; per sample with per-sample noise)

`forward(x, tau)` returns (logits, LAT); τ is a (1,)-shaped input, so the cached graph is
built once. The LUT rows are constants of the graph (never trained nor checkpointed: a resumed
run reads its table again).
"""
from __future__ import annotations

from typing import Any, Sequence

import mxnet as mx
from mxnet import gluon, nd

from lightnas_cli.search.relaxation import gumbel_softmax


class FBNetSupernet(gluon.HybridBlock):
    """Zoo supernet `net` (its `specs` name the layers), θ per layer, and the latency table's
    rows `latencies[l][i]` (ms) plus `fixed_ms`."""

    def __init__(self, net: gluon.HybridBlock, latencies: Sequence[Sequence[float]],
                 fixed_ms: float, theta_init: float, noise: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.noise = noise
        self.fixed_ms = float(fixed_ms)
        self.count = len(latencies)
        with self.name_scope():
            self.net = net
            for index, row in enumerate(latencies):
                setattr(self, f"theta{index}",
                        self.params.get(f"theta{index}", shape=(len(row),),
                                        init=mx.init.Constant(float(theta_init))))
                setattr(self, f"lut{index}",
                        self.params.get_constant(f"lut{index}", nd.array([list(row)])))

    def thetas(self) -> list[gluon.Parameter]:
        return [getattr(self, f"theta{index}") for index in range(self.count)]

    def hybrid_forward(self, F, x, tau, **params):
        weights, latencies = [], []
        for index in range(self.count):
            theta, lut = params[f"theta{index}"], params[f"lut{index}"]
            mix = gumbel_softmax(F, theta, tau, self.noise, batch_like=x)
            if self.noise != "per_sample":
                mix = F.reshape(mix, shape=(1, -1))
            weights.append(mix)
            latencies.append(F.sum(F.broadcast_mul(mix, lut), axis=1))
        latency = F.add_n(*latencies) + self.fixed_ms
        return self.net(x, *weights), latency
