"""`PITBatchNorm`: batch normalisation that applies the channel mask of its input.

PLiNIO fuses a batch norm into the PIT layer before it and masks after it (y = α ⊙ BN(conv x));
here the batch norm stays a block of its own and masks its scale and shift with the binarized
mask of its input features (α of the layer before, a concatenation of masks, ...). That is the
same function, since α ⊙ (γ x̂ + β) = (α γ) x̂ + (α β), costs two C-vector products instead of a
pass over the activations, and makes pruned channels exactly zero in training and inference
(a plain batch norm would turn a zero channel into β - γ μ / σ).
"""
from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon, nd
from mxnet.gluon import nn

from lightnas_cli.search.pit.binarizer import DEFAULT_THRESHOLD
from lightnas_cli.search.pit.conv import parameter_contexts
from lightnas_cli.search.pit.features_calculator import ConstFeaturesCalculator
from lightnas_cli.search.pit.module import PITLayer


class PITBatchNorm(PITLayer):
    """`nn.BatchNorm` (channel axis 1) masked by its input features calculator."""

    def __init__(self, bn: nn.BatchNorm, threshold: float = DEFAULT_THRESHOLD):
        super().__init__(prefix=bn.prefix, threshold=threshold)
        parameter_contexts(bn.gamma)
        self._kwargs = dict(bn._kwargs)
        if int(self._kwargs.get("axis", 1)) != 1:
            raise TypeError(f"PITBatchNorm needs the channel axis 1, got {self._kwargs['axis']}")
        self._bn_class = type(bn)
        self.fuse_relu = bool(getattr(bn, "fuse_relu", False))
        self.channels = int(bn.gamma.shape[0])
        self._adopt("gamma", bn.gamma)
        self._adopt("beta", bn.beta)
        self._adopt("running_mean", bn.running_mean)
        self._adopt("running_var", bn.running_var)
        self.output_features_calculator = ConstFeaturesCalculator(self.channels)

    @property
    def static_in_features(self) -> int:
        return self.channels

    @property
    def fix_gamma(self) -> bool:
        """Gamma fixed at 1 (then the output is masked instead of gamma)."""
        return bool(self._kwargs.get("fix_gamma", False))

    @property
    def center(self) -> bool:
        """Whether beta is learnt (a shift to mask)."""
        return self.beta.grad_req != "null"

    @property
    def features_defining(self) -> bool:
        return False

    def hybrid_forward(self, F: Any, x: Any, gamma: Any, beta: Any, running_mean: Any,
                       running_var: Any, **params: Any) -> Any:
        fix_gamma = self.fix_gamma
        if self.bank_bound:
            # The model masked gamma and beta (with every other layer's, at once).
            fed = self.fed_masks()
            gamma, beta = fed.get("gamma", gamma), fed.get("beta", beta)
            mask = fed.get("channel_mask")
        else:
            mask = self.output_features_calculator.mask_expr(
                F, self._binary_masks(F, params, "out"))
            if mask is not None:
                beta = beta * mask
                if not fix_gamma:
                    gamma = gamma * mask
        op = F.contrib.BatchNormWithReLU if self.fuse_relu else F.BatchNorm
        ndim = len(self.output_shape) if self.output_shape else 4
        if ndim == 3:
            # MXNet 1.9.1's oneDNN batch norm fails in the backward pass on N x C x L tensors
            # ("Check failed: !is_view"); on N x C x L x 1 it works and computes the same.
            x = F.expand_dims(x, axis=3)
        out = op(x, gamma, beta, running_mean, running_var, name="fwd", **self._kwargs)
        if ndim == 3:
            out = F.reshape(out, shape=(0, 0, -1))
        if mask is not None and fix_gamma:
            # A fixed gamma of 1 cannot carry the mask: mask the output instead.
            out = F.broadcast_mul(out, F.reshape(mask, shape=(1, -1) + (1,) * (ndim - 2)))
        return out

    def export(self, index: np.ndarray) -> gluon.HybridBlock:
        """A plain batch norm over the kept channels, statistics and affine terms copied."""
        index = np.asarray(index, dtype=np.int64)
        kwargs = self._kwargs
        layer = self._bn_class(axis=1, momentum=kwargs["momentum"], epsilon=kwargs["eps"],
                               center=self.beta.grad_req != "null",
                               scale=not kwargs.get("fix_gamma", False),
                               use_global_stats=kwargs.get("use_global_stats", False),
                               in_channels=len(index), prefix=self.prefix)
        layer.initialize(ctx=mx.cpu())
        for name in ("gamma", "beta", "running_mean", "running_var"):
            source = getattr(self, name)._reduce().asnumpy()[index]
            getattr(layer, name).set_data(nd.array(source))
        return layer

