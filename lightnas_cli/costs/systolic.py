"""`systolic`: runtime of a layer on an s1 x s2 systolic array, exact or with a smooth ceiling.

U-Boost NAS (Yüzügüler, Dimitriadis & Frossard, ECCV 2022, arXiv 2203.12412; seed 004,
"DmaskingNAS"): a convolution is computed as a matrix product ("matrixification") whose
reduction axis (k1·k2·c) is tiled over the s1 rows of the array and whose filters (f) over its
s2 columns; every tile pair streams one row per output position of every sample:

    RUNTIME = ⌈k1·k2·c / s1⌉ · ⌈f / s2⌉ · h · w · B        (cycles)

Choices made here (the seed is silent or loose on them):

- h, w are the *output* sizes: the array produces one row per output position, so a strided
  convolution costs its output positions (the seed says "input"; they agree at stride 1 with
  same padding). U-Boost's own code uses the output window too (`hw.py`, `conv_runtime`).
- A dense layer is a 1x1 convolution on a 1x1 map: ⌈in / s1⌉ · ⌈out / s2⌉ · B.
- A grouped convolution runs its groups one after another, each its own matrix product:
  g · ⌈k1·k2·(c/g) / s1⌉ · ⌈(f/g) / s2⌉ · h · w · B. A depthwise one (g = c = f) is therefore
  c · ⌈k1·k2 / s1⌉ · h · w · B, the mapping U-Boost's `dw_conv_runtime` uses.
- Batch norms cost nothing (they fold into the neighbouring layer); the weight precision is
  ignored (the array is assumed to compute every MAC alike).
- Conv1D (and 3-D) layers use the product of their kernel sizes and of their output sizes.

The ceiling ⌈x⌉ is not differentiable. The smooth ceiling replaces it by

    f_T(x) = Σ_{i=0..N} sigmoid(T · (x − i)),       N covering the largest x

with integer offsets (offsets at i + 0.5 would compute round, not ceil); away from integers
f_T → ⌈x⌉ as T grows (at an integer it is x + 0.5). Only the terms near x vary: the ones
more than W = ⌈30/T⌉ + 1 below ⌊x⌋ equal 1 and the ones above equal 0 to within e^-30, so
they are counted in closed form and N need not be known in advance (a hybridized graph
cannot know it): the result equals the sum for any N ≥ x + W within 1e-12.

Options (keywords of `get_cost_model("systolic", ...)`): `s1`, `s2` (array rows and
columns, 128 x 128 as U-Boost), `batch` (B, 64), `ceiling` (`exact`, `smooth`, or `auto`:
exact for plain numbers, smooth when a channel count is an NDArray or Symbol, so the same
model gives exact figures in reports and gradients in a regularizer) and `sharpness` (T).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from lightnas_cli.costs.layer import Layer, is_int, product
from lightnas_cli.costs.registry import CostModel, register_cost_model
from lightnas_cli.errors import ConfigError

#: How the ceiling is computed: exactly, smoothly, or exactly unless the counts are soft.
CEILINGS = ("exact", "smooth", "auto")
#: Terms of f_T further than this many multiples of 1/T from x are 0 or 1 within e^-30.
_TAIL = 30.0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value,
                                                                                       bool)


def _namespace(value: Any, F: Any = None) -> Any:
    """mx.nd or mx.sym for an array value (from `F` when given), None for a plain number."""
    if _is_number(value):
        return None
    if F is not None:
        return F
    import mxnet as mx
    return mx.sym if isinstance(value, mx.sym.Symbol) else mx.nd


def window(sharpness: float) -> int:
    """Half-width W of the band of offsets around ⌊x⌋ that f_T sums term by term."""
    return int(math.ceil(_TAIL / float(sharpness))) + 1


def exact_ceil(x: Any, F: Any = None) -> Any:
    """⌈x⌉: an int for plain numbers, F.ceil for arrays (zero gradient)."""
    ns = _namespace(x, F)
    if ns is None:
        return int(math.ceil(x))
    return ns.ceil(x)


def smooth_ceil(x: Any, sharpness: float, F: Any = None) -> Any:
    """f_T(x) = Σ_{i>=0} sigmoid(T·(x − i)) (module docstring): a float for plain numbers,
    else an array of x's shape, differentiable in x."""
    T, W = float(sharpness), window(sharpness)
    ns = _namespace(x, F)
    if ns is None:
        x = float(x)
        base = math.floor(x)
        offsets = base + np.arange(-W + 1, W + 1, dtype=np.float64)
        offsets = offsets[offsets >= 0]
        # sigmoid(z) = (1 + tanh(z/2)) / 2: no overflow for large |z|.
        window_sum = float(np.sum(0.5 * (1.0 + np.tanh(0.5 * T * (x - offsets)))))
        return max(base - W + 1, 0) + window_sum
    steps = ns.arange(-W + 1, W + 1, **_ctx_of(x, ns)).reshape((1, -1))
    column = ns.expand_dims(x, axis=-1)
    base = ns.floor(ns.BlockGrad(column))
    offsets = ns.broadcast_add(base, steps)
    terms = ns.sigmoid(T * ns.broadcast_sub(column, offsets)) * (offsets >= 0)
    below = ns.relu(base - (W - 1))
    return ns.sum(terms, axis=-1) + ns.sum(below, axis=-1)


def _ctx_of(x: Any, ns: Any) -> dict:
    import mxnet as mx
    return {"ctx": x.context} if ns is mx.nd else {}


@register_cost_model
class Systolic(CostModel):
    """Cycles of one inference of `batch` samples on an s1 x s2 systolic array."""

    name = "systolic"
    unit = "cycles"
    description = ("cycles on an s1 x s2 systolic array for a batch of B: "
                   "ceil(k1 k2 c / s1) ceil(f / s2) h w B (U-Boost NAS); options s1, s2, batch, "
                   "ceiling (exact|smooth|auto), sharpness")

    def __init__(self, s1: int = 128, s2: int = 128, batch: int = 64, ceiling: str = "auto",
                 sharpness: float = 10.0) -> None:
        for key, value in (("s1", s1), ("s2", s2), ("batch", batch)):
            if not is_int(value) or value < 1:
                raise ConfigError(f"systolic cost model: {key} must be a positive integer, "
                                  f"got {value!r}")
        if ceiling not in CEILINGS:
            raise ConfigError(f"systolic cost model: ceiling must be one of "
                              f"{', '.join(CEILINGS)}, got {ceiling!r}")
        if not _is_number(sharpness) or not math.isfinite(sharpness) or sharpness <= 0:
            raise ConfigError(f"systolic cost model: sharpness (T of the smooth ceiling) must "
                              f"be a positive number, got {sharpness!r}")
        self.s1, self.s2, self.batch = int(s1), int(s2), int(batch)
        self.ceiling, self.sharpness = ceiling, float(sharpness)

    def ceil(self, x: Any, F: Any = None) -> Any:
        """The configured ceiling of a tile count x (a number or an array)."""
        smooth = self.ceiling == "smooth" or (self.ceiling == "auto"
                                              and _namespace(x, F) is not None)
        if smooth:
            return smooth_ceil(x, self.sharpness, F)
        if is_int(x):  # x is an exact int only when called with an int numerator and s = 1
            return int(x)
        return exact_ceil(x, F)

    def tiles(self, numerator: Any, size: int, F: Any = None) -> Any:
        """⌈numerator / size⌉ (or its smooth version); exact integer arithmetic for ints."""
        if is_int(numerator) and self.ceiling != "smooth":
            return -(-int(numerator) // size)
        return self.ceil(numerator / size, F)

    def layer(self, layer: Layer) -> Any:
        if layer.op == "batchnorm":
            return 0
        F = layer.F
        if layer.op == "dense":
            area, positions, groups = 1, 1, 1
            per_group_in, per_group_out = layer.in_channels, layer.out_channels
        else:
            area = product(list(layer.kernel))
            positions = int(np.prod(layer.output_positions or [1]))
            groups = layer.groups
            per_group_in = _per_group(layer.in_channels, groups)
            per_group_out = _per_group(layer.out_channels, groups)
        rows = self.tiles(area * per_group_in, self.s1, F)
        cols = self.tiles(per_group_out, self.s2, F)
        return groups * rows * cols * (positions * self.batch)


def _per_group(channels: Any, groups: Any) -> Any:
    """channels / groups: exact for ints, 1 when a soft count is its own group count (PIT
    passes a depthwise layer's soft channels as its groups, the very same object)."""
    if is_int(groups) and groups == 1:
        return channels
    if channels is groups:
        return 1
    if is_int(channels) and is_int(groups):
        return channels // groups
    return channels / groups
