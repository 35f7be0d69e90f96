"""What differentiable (DNAS) methods share: the Gumbel-softmax relaxation of a categorical
choice and its temperature schedule (FBNet: Wu et al. 2019; FBNetV2 / DMasking: Wan et al.
2020; Jang et al. 2017 and Maddison et al. 2017 for the relaxation itself).

    m = softmax((θ + g) / τ),  g = -log(-log(u)),  u ~ U(0, 1)

`gumbel_softmax` works with `F` = `mx.nd` or `mx.sym`, so a hybridized supernet draws its noise
inside the cached graph; MXNet's random state is re-seeded per epoch by the runner, so a resumed
run draws the same noise as the uninterrupted one. τ may be a number or a (1,)-shaped array:
as an input of the cached graph it changes every epoch without rebuilding the graph. `temperature_at(epoch)` is a pure function
of the epoch for the same reason. `RelaxationConfig` is the config section both methods embed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lightnas_cli.config.schema import setting

#: How Gumbel noise is drawn: one draw per sample (the PyTorch FBNet port), one per batch
#: shared by all samples (the MXNet port), or none (plain softmax, deterministic).
NOISE_MODES = ("per_sample", "per_batch", "none")
#: Keeps log(-log(u)) finite at u = 0 or 1.
_EPSILON = 1e-10


@dataclass
class RelaxationConfig:
    # Temperature τ of the Gumbel softmax at the first epoch (FBNet: 5.0).
    initial_temperature: float = setting(5.0, gt=0)
    # τ is multiplied by exp(-temperature_decay) after each epoch (FBNet: 0.045, i.e. x0.956).
    temperature_decay: float = setting(0.045, ge=0)
    # Gumbel noise: per_sample | per_batch | none.
    noise: str = setting("per_sample", choices=NOISE_MODES)


def temperature_at(epoch: int, initial: float, decay: float) -> float:
    """τ of a (1-based) epoch: initial · exp(-decay · (epoch - 1))."""
    return float(initial) * math.exp(-float(decay) * (int(epoch) - 1))


def gumbel_softmax(F: Any, logits: Any, temperature: float, noise: str = "per_sample",
                   batch_like: Any = None) -> Any:
    """Relaxed one-hot weights over the last axis of `logits` (shape (options,)).

    With `noise="per_sample"` and `batch_like` (an array whose first axis is the batch), the
    result has shape (batch, options): each sample draws its own noise; otherwise (options,).
    """
    if noise not in NOISE_MODES:
        raise ValueError(f"unknown Gumbel noise mode {noise!r}; one of {NOISE_MODES}")
    if noise == "none":
        return F.softmax(_divide(F, logits, temperature), axis=-1)
    if noise == "per_sample" and batch_like is not None:
        # (batch, options): broadcast the logits over the batch, noise per entry.
        ones = F.ones_like(F.slice_axis(F.reshape(batch_like, shape=(0, -1)), axis=1,
                                        begin=0, end=1))
        logits = F.broadcast_mul(ones, F.reshape(logits, shape=(1, -1)))
    uniform = F.random.uniform_like(logits)
    gumbel = -F.log(-F.log(uniform + _EPSILON) + _EPSILON)
    return F.softmax(_divide(F, logits + gumbel, temperature), axis=-1)


def _divide(F: Any, value: Any, temperature: Any) -> Any:
    """value / τ for a number τ, or broadcast over a (1,)-shaped array τ."""
    if isinstance(temperature, (int, float)):
        return value / temperature
    return F.broadcast_div(value, temperature)
