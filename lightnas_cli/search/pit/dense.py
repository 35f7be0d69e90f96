"""`PITDense`: a fully connected layer whose output units are pruned by α (no β/γ).

PLiNIO `methods/pit/nn/linear.py`. With `flatten=True` (Gluon's default) a dense layer flattens
a (C, positions...) input itself; the model graph then gives it a flatten features calculator.
"""
from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon, nd
from mxnet.gluon import nn

from lightnas_cli.search.pit.binarizer import DEFAULT_THRESHOLD
from lightnas_cli.search.pit.conv import initialize_missing, parameter_contexts
from lightnas_cli.search.pit.features_calculator import (ConstFeaturesCalculator,
                                                         MaskerFeaturesCalculator, ThetaFn,
                                                         default_theta)
from lightnas_cli.search.pit.features_masker import PITFeaturesMasker, PITMasker
from lightnas_cli.search.pit.module import PITLayer


class PITDense(PITLayer):
    """Searchable `nn.Dense`: output units masked by α."""

    def __init__(self, dense: nn.Dense, out_features_masker: PITMasker | None = None,
                 threshold: float = DEFAULT_THRESHOLD, default_masker: bool = True):
        super().__init__(prefix=dense.prefix, threshold=threshold)
        ctx = parameter_contexts(dense.weight)
        self.units = int(dense._units)
        self.in_units = int(dense.weight.shape[1])
        self.flatten = bool(dense._flatten)
        self._adopt("weight", dense.weight)
        self._adopt("bias", dense.bias)
        self.act = dense.act
        if out_features_masker is None and default_masker:
            out_features_masker = PITFeaturesMasker(self.units, prefix=f"{self.prefix}out_")
        if out_features_masker is not None:
            self.output_features_calculator = MaskerFeaturesCalculator(out_features_masker)
        else:
            self.output_features_calculator = ConstFeaturesCalculator(self.units)
        initialize_missing(self, ctx)

    def hybrid_forward(self, F: Any, x: Any, **params: Any) -> Any:
        weight = params["weight"]
        bias = params.get("bias")
        if self.bank_bound:
            fed = self.fed_masks()
            if "weight_mask" in fed:
                weight = weight * fed["weight_mask"]
            bias = fed.get("bias", bias)
        elif self.mask_output:
            mask = self.output_features_calculator.mask_expr(
                F, self._binary_masks(F, params, "out"))
            if mask is not None:
                weight = F.broadcast_mul(weight, F.reshape(mask, shape=(-1, 1)))
                if bias is not None:
                    bias = bias * mask
        out = F.FullyConnected(x, weight, bias, no_bias=bias is None, num_hidden=self.units,
                               flatten=self.flatten, name="fwd")
        return self.act(out) if self.act is not None else out

    @property
    def static_in_features(self) -> int:
        return self.in_units

    def cost_terms(self, soft: bool, theta: ThetaFn | None = None) -> dict:
        """Arguments of `lightnas_cli.costs.dense_params/dense_macs` for this layer."""
        theta = theta or default_theta()
        return {"in_units": self.input_features_calculator.features(soft, self.threshold, theta),
                "out_units": self.output_features_calculator.features(soft, self.threshold, theta),
                "bias": self.bias is not None}

    def export(self, in_index: np.ndarray, out_index: np.ndarray) -> gluon.HybridBlock:
        """A plain `nn.Dense` with the kept units and inputs, weights copied."""
        in_index = np.asarray(in_index, dtype=np.int64)
        out_index = np.asarray(out_index, dtype=np.int64)
        layer = nn.Dense(len(out_index), in_units=len(in_index), flatten=self.flatten,
                         use_bias=self.bias is not None,
                         activation=self.act._act_type if self.act is not None else None,
                         prefix=self.prefix)
        layer.initialize(ctx=mx.cpu())
        weight = self.weight._reduce().asnumpy()[out_index][:, in_index]
        layer.weight.set_data(nd.array(weight))
        if self.bias is not None:
            layer.bias.set_data(nd.array(self.bias._reduce().asnumpy()[out_index]))
        return layer

