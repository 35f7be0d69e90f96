"""Dilation masks γ.

PLiNIO `methods/pit/nn/dilation_masker.py` and Risso et al. (2021), Sec. III: L = max(ceil(log2 K),
1) floats γ_0..γ_{L-1}, initialised to 1; γ_i stands for "keep the taps on the grid of step 2^i",
and the tap mask is cumulative, theta_j = sum_i |γ_i| [tap j lies on the 2^i grid] (C_γ times γ),
so the binarized mask is always a power-of-two dilation. γ_{L-1} (the coarsest grid) is fixed.

One deliberate difference from PLiNIO: the grids are anchored at the newest tap (age 0 =
last kernel position) instead of at index 0. PLiNIO's grid for K = 8 drops the newest tap,
which the receptive-field mask promises to keep; anchored at the newest tap, every grid keeps
it, and β (contiguous from the newest) and γ combine into an evenly spaced kernel for any K.
"""
from __future__ import annotations

import math
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from lightnas_cli.search.pit.features_masker import PITFrozenMasker, PITMasker


def gamma_length(kernel_size: int) -> int:
    """Number of γ elements: max(ceil(log2 K), 1) (PLiNIO `_gamma_len`)."""
    return max(math.ceil(math.log2(kernel_size)) if kernel_size > 1 else 0, 1)


def dilation_grid(kernel_size: int) -> np.ndarray:
    """C_γ: rows are taps (oldest first), columns grids 2^0..2^(L-1) anchored at the newest tap."""
    length = gamma_length(kernel_size)
    ages = kernel_size - 1 - np.arange(kernel_size)
    return np.stack([(ages % (2 ** i) == 0) for i in range(length)], axis=1).astype(np.float32)


class PITDilationMasker(PITMasker):
    """γ over the power-of-two dilations of one kernel axis of size `kernel_size`."""

    param_name = "gamma"

    def __init__(self, kernel_size: int, trainable: bool = True, prefix: str | None = None):
        self.kernel_size = int(kernel_size)
        super().__init__(gamma_length(self.kernel_size), trainable, prefix)
        keep = np.zeros(self.size, dtype=np.float32)
        keep[self.size - 1] = 1.0
        grid = dilation_grid(self.kernel_size)
        # Tap j is summed over grid.sum(1)[j] gammas: normalise so an untouched mask gives 1.
        self.norm = (1.0 / grid.sum(axis=1)).astype(np.float32)
        with self.name_scope():
            self.gamma = self.params.get("gamma", shape=(self.size,), init=mx.init.One(),
                                         dtype="float32")
            # theta = C (|gamma| ⊙ (1 - keep) + keep) = C_free |gamma| + C keep: the fixed
            # element's column moves into a constant offset (fewer graph operations).
            self.c_free = self.params.get_constant("c_free", nd.array(grid * (1.0 - keep)))
            self.offset = self.params.get_constant("offset", nd.array(grid @ keep))

    def forward_params(self) -> dict[str, gluon.Parameter]:
        return {"gamma": self.gamma, "c_free": self.c_free, "offset": self.offset}

    def theta(self, F: Any, gamma: Any, c_free: Any, offset: Any) -> Any:
        return F.dot(c_free, self._gate(F, F.abs(gamma))) + offset

    @property
    def nas_parameter(self) -> gluon.Parameter:
        return self.gamma

    @property
    def dilations(self) -> list[int]:
        """The dilation factors this mask can select: 1, 2, 4, ..., 2^(L-1)."""
        return [2 ** i for i in range(self.size)]


class PITFrozenDilationMasker(PITFrozenMasker):
    """Every tap kept (dilation 1): layers whose dilation is not searched."""

    param_name = "gamma"

    def __init__(self, kernel_size: int, prefix: str | None = None):
        self.kernel_size = int(kernel_size)
        super().__init__(self.kernel_size, trainable=False, prefix=prefix)
        self.norm = np.ones(self.kernel_size, dtype=np.float32)

    @property
    def dilations(self) -> list[int]:
        return [1]
