"""Receptive-field (time step) masks β.

PLiNIO `methods/pit/nn/timestep_masker.py` and Risso et al. (2021), Sec. III: one float β per
kernel tap, initialised to 1. The tap mask is cumulative, theta_j = sum_{i <= j} |β_i| (a
lower-triangular C_β times β), with the kernel axis ordered oldest -> newest as in a
cross-correlation, so the binarized mask always keeps a contiguous run of taps ending at the
newest one. β of the newest tap is fixed at 1, so at least that tap survives.
"""
from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from lightnas_cli.search.pit.features_masker import PITFrozenMasker, PITMasker


class PITTimestepMasker(PITMasker):
    """β over the `kernel_size` taps of one kernel axis."""

    param_name = "beta"

    def __init__(self, kernel_size: int, trainable: bool = True, prefix: str | None = None):
        super().__init__(kernel_size, trainable, prefix)
        k = self.size
        keep = np.zeros(k, dtype=np.float32)
        keep[k - 1] = 1.0  # the newest tap (PLiNIO flips the paper's time axis the same way)
        c_beta = np.tril(np.ones((k, k), dtype=np.float32))
        # Normalisation of the soft effective kernel size (PLiNIO `_generate_norm_constants`):
        # theta_j sums j + 1 betas, so theta_j / (j + 1) is 1 for an untouched mask.
        self.norm = 1.0 / np.arange(1, k + 1, dtype=np.float32)
        with self.name_scope():
            self.beta = self.params.get("beta", shape=(k,), init=mx.init.One(), dtype="float32")
            # theta = C (|beta| ⊙ (1 - keep) + keep) = C_free |beta| + C keep: the fixed
            # element's column moves into a constant offset (fewer graph operations).
            self.c_free = self.params.get_constant("c_free", nd.array(c_beta * (1.0 - keep)))
            self.offset = self.params.get_constant("offset", nd.array(c_beta @ keep))

    def forward_params(self) -> dict[str, gluon.Parameter]:
        return {"beta": self.beta, "c_free": self.c_free, "offset": self.offset}

    def theta(self, F: Any, beta: Any, c_free: Any, offset: Any) -> Any:
        return F.dot(c_free, self._gate(F, F.abs(beta))) + offset

    @property
    def nas_parameter(self) -> gluon.Parameter:
        return self.beta


class PITFrozenTimestepMasker(PITFrozenMasker):
    """Every tap kept: layers whose receptive field is not searched (stride > 1, 1-tap kernels)."""

    param_name = "beta"

    def __init__(self, kernel_size: int, prefix: str | None = None):
        super().__init__(kernel_size, trainable=False, prefix=prefix)
        self.norm = np.ones(self.size, dtype=np.float32)
