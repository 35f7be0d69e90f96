"""The PIT mask binarizer: a hard threshold with a straight-through gradient.

Risso et al., "Pruning In Time (PIT)" (2021) and PLiNIO's `methods/pit/nn/binarizer.py`: the
forward pass is `(theta > threshold)` as 0/1 floats, the backward pass lets the gradient of the
output through unchanged (straight-through estimator), so the float "shadow" masks keep learning
while the network only ever sees binary masks.
"""
from __future__ import annotations

from typing import Any

DEFAULT_THRESHOLD = 0.5


def binarize(F: Any, theta: Any, threshold: float = DEFAULT_THRESHOLD) -> Any:
    """0/1 mask `theta > threshold` whose gradient w.r.t. `theta` is the identity.

    Written `hard + (theta - stop_gradient(theta))`: the second term is exactly 0 in the forward
    pass (so the mask is exactly 0 or 1, not 1 +- an ulp, and pruned weights are exactly zero),
    and has gradient 1 in the backward pass. Works with `F = mx.nd` and `F = mx.sym`.
    """
    hard = theta > threshold  # comparisons have a zero gradient in MXNet
    return hard + (theta - F.BlockGrad(theta))
