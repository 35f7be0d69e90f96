"""Quantizers as small composable objects (after Larq's `lq.quantizers`).

A quantizer is called as ``quantizer(F, x)`` inside a ``hybrid_forward``, with ``F`` being
``mxnet.ndarray`` or ``mxnet.symbol``. Everything is built from stock MXNet operators, because
stock MXNet 1.9.1 has none of BMXNet-v2's ``det_sign``/``approx_sign``/``gradcancel`` operators
and exported symbols must load in stock MXNet.

The straight-through estimator uses the ``stop_gradient`` trick::

    clip(x, -c, c) + stop_gradient(sign(x) - clip(x, -c, c))

Forward it is ``sign(x)`` with ``sign(0) = +1`` (BMXNet-v2's ``det_sign``); backward it is the
gradient of ``clip``: 1 for ``|x| <= c`` and 0 outside, which is BMXNet-v2's gradient
cancelling (``contrib.gradcancel`` passes the gradient where ``|x| <= threshold``,
src/operator/contrib/gradient_cancel-inl.h in hpi-xnor/BMXNet-v2). Without a clip value the
gradient is passed everywhere, as BMXNet-v2's ``det_sign`` does for weights (its backward is
``identity_grad``, src/operator/tensor/elemwise_unary_op_basic.cc).

``approx_sign`` (Liu et al. 2018, "Bi-Real Net", eq. 3; BMXNet-v2's ``approx_sign`` operator) is
the same sign forward with the gradient of a piecewise quadratic, ``2 - 2|x|`` inside ±1.
Quantizers register with `register_quantizer` and are available by name through `get_quantizer`,
so a config chooses them with `model.activation`.
"""
from __future__ import annotations

import abc
from typing import Any, Callable

from lightnas_cli.errors import ConfigError

#: Weight scaling modes accepted by `weight_quantizer` and the binary layers.
WEIGHT_SCALING_MODES = ("none", "mean")
#: Bit widths the binary layers support: 1 (binarized) and 32 (full precision, no quantization).
SUPPORTED_BITS = (1, 32)
#: Sign functions a binary layer may apply to its input activations (`model.activation`).
ACTIVATION_METHODS = ("det_sign", "approx_sign")


class Quantizer(abc.ABC):
    """Base class: a callable ``(F, x) -> x_quantized`` with a readable description."""

    #: Registry name; ``None`` for quantizers that are only composed, never named in configs.
    name: str | None = None

    @abc.abstractmethod
    def __call__(self, F: Any, x: Any) -> Any:
        """Quantize ``x`` with the operators of ``F`` (``mxnet.ndarray`` or ``mxnet.symbol``)."""

    def config(self) -> dict:
        """The arguments that rebuild this quantizer (for summaries and architecture records)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.config().items()))))


class Identity(Quantizer):
    """No quantization: what a 32-bit layer uses for activations and weights."""

    name = "identity"

    def __call__(self, F: Any, x: Any) -> Any:
        return x


def straight_through(F: Any, x: Any, forward: Any, clip: float | None) -> Any:
    """Return ``forward`` in the forward pass and the gradient of ``clip(x)`` (or 1) backward.

    ``forward`` must be computed from ``x`` without needing a gradient; it is wrapped in
    ``stop_gradient``. Only elementwise operators are used, so MXNet's shape inference can run
    backwards through this (needed for deferred ``in_channels``).
    """
    surrogate = x if clip is None else F.clip(x, -clip, clip)
    return surrogate + F.stop_gradient(forward - surrogate)


def sign_of(x: Any) -> Any:
    """+1 where x >= 0, else -1 (sign(0) = +1), as an expression of stock operators.

    Written as ``(x < 0) * -2 + 1`` rather than ``(x >= 0) * 2 - 1`` (the same values, ±0
    included) because MXNet 1.9.1's ONNX exporter has no conversion for `_greater_equal_scalar`
    but has one for `_lesser_scalar` (ENVIRONMENT.md), so binary networks export to ONNX.
    """
    return (x < 0) * -2 + 1


class DetSign(Quantizer):
    """Deterministic sign with a straight-through estimator and gradient cancelling.

    Forward: ``+1`` where ``x >= 0`` else ``-1`` (BMXNet-v2 ``det_sign``: sign(0) = +1, so
    every value is representable by one bit). Backward: 1 where ``|x| <= clip``, 0 outside
    (Courbariaux et al. 2016, "Binarized Neural Networks", gradient cancelling); ``clip=None``
    passes the gradient everywhere (plain STE).
    """

    name = "det_sign"

    def __init__(self, clip: float | None = 1.0):
        if clip is not None and not clip > 0:
            raise ConfigError(f"det_sign clip (gradient cancel threshold) must be > 0, got {clip}")
        self.clip = None if clip is None else float(clip)

    def __call__(self, F: Any, x: Any) -> Any:
        return straight_through(F, x, sign_of(x), self.clip)

    def config(self) -> dict:
        return {"clip": self.clip}


class ApproxSign(Quantizer):
    """Sign forward, Bi-Real Net's approximate-sign gradient backward.

    Forward: ``+1`` where ``x >= 0`` else ``-1`` (as `DetSign`). Backward: ``2 - 2|x|`` for
    ``|x| <= 1`` and 0 outside: the derivative of the piecewise polynomial ``2x + x^2``
    (``-1 <= x < 0``), ``2x - x^2`` (``0 <= x < 1``), ``±1`` beyond (Liu et al. 2018, eq. 3; the
    same function as BMXNet-v2's ``approx_sign`` in ``binary_layers.py``). That polynomial is
    written as ``2s - s|s|`` with ``s = clip(x, -1, 1)``, so only elementwise operators are
    used. ``clip < 1`` additionally cancels the gradient where ``|x| > clip`` (BMXNet-v2 applies
    ``gradcancel`` before the sign); ``clip >= 1`` or ``None`` changes nothing.
    """

    name = "approx_sign"

    def __init__(self, clip: float | None = 1.0):
        if clip is not None and not clip > 0:
            raise ConfigError(f"approx_sign clip (gradient cancel threshold) must be > 0, "
                              f"got {clip}")
        self.clip = None if clip is None else float(clip)

    def __call__(self, F: Any, x: Any) -> Any:
        bound = 1.0 if self.clip is None else min(self.clip, 1.0)
        s = F.clip(x, -bound, bound)
        surrogate = 2 * s - s * F.abs(s)
        return surrogate + F.stop_gradient(sign_of(x) - surrogate)

    def config(self) -> dict:
        return {"clip": self.clip}


class MeanScaled(Quantizer):
    """Multiply a weight quantizer's output by the mean ``|W|`` per output channel.

    The per-output-channel scale is XNOR-Net's alpha (Rastegari et al. 2016). The gradient
    flows through the scale as well ("magnitude aware gradients" of Bi-Real Net, Liu et al.
    2018), as in BMXNet-v2's ``ScaledWeightsBinaryConv`` (python/mxnet/gluon/nn/
    binary_layers.py). Axis 0 is the output channel for both convolution and dense weights.
    """

    name = "mean_scaled"

    def __init__(self, base: Quantizer):
        self.base = base

    def __call__(self, F: Any, w: Any) -> Any:
        scale = F.mean(F.abs(w), axis=0, exclude=True, keepdims=True)
        # Spread the scale to w's shape with broadcast_add onto zeros_like(w), then multiply
        # elementwise: elementwise operators infer shapes in both directions, so the weight's
        # deferred in_channels is still inferred from the convolution. (broadcast_mul would
        # block that, and broadcast_like mis-infers partially known shapes in MXNet 1.9.1.)
        return self.base(F, w) * F.broadcast_add(F.zeros_like(w), scale)

    def config(self) -> dict:
        return {"base": self.base}


_QUANTIZERS: dict[str, Callable[..., Quantizer]] = {}


def register_quantizer(name: str) -> Callable[[Callable[..., Quantizer]], Callable[..., Quantizer]]:
    """Make a quantizer class or factory available by name to `get_quantizer`."""

    def decorate(factory: Callable[..., Quantizer]) -> Callable[..., Quantizer]:
        _QUANTIZERS[name] = factory
        return factory

    return decorate


register_quantizer("identity")(Identity)
register_quantizer("det_sign")(DetSign)
register_quantizer("approx_sign")(ApproxSign)


def available_quantizers() -> list[str]:
    """Names accepted by `get_quantizer`."""
    return sorted(_QUANTIZERS)


def get_quantizer(name: str, **kwargs: Any) -> Quantizer:
    """Build a registered quantizer by name; unknown names raise `ConfigError`."""
    try:
        factory = _QUANTIZERS[name]
    except KeyError:
        raise ConfigError(f"unknown quantizer {name!r}; available: "
                          f"{', '.join(available_quantizers())}") from None
    return factory(**kwargs)


def check_bits(bits: int) -> int:
    """Validate a layer's bit width (only 1 and 32 are implemented)."""
    if bits not in SUPPORTED_BITS:
        raise ConfigError(f"bits={bits!r} is not supported; use 1 (binary) or 32 "
                          f"(full precision)")
    return int(bits)


def check_weight_scaling(weight_scaling: str) -> str:
    """Validate a weight scaling mode."""
    if weight_scaling not in WEIGHT_SCALING_MODES:
        raise ConfigError(f"weight_scaling={weight_scaling!r} is not supported; use one of "
                          f"{', '.join(WEIGHT_SCALING_MODES)}")
    return weight_scaling


def check_activation(method: str) -> str:
    """Validate a binary layer's activation sign function (`model.activation`)."""
    if method not in ACTIVATION_METHODS:
        raise ConfigError(f"activation={method!r} is not supported; use one of "
                          f"{', '.join(ACTIVATION_METHODS)}")
    return method


def activation_quantizer(bits: int, clip: float = 1.0, method: str = "det_sign") -> Quantizer:
    """Quantizer for a binary layer's input activations.

    1 bit: ``method`` (det_sign or approx_sign) with gradient cancelling at ``clip`` (BMXNet-v2
    applies ``gradcancel`` to activations only). 32 bits: identity.
    """
    check_activation(method)
    if check_bits(bits) == 32:
        return Identity()
    return get_quantizer(method, clip=clip)


def weight_quantizer(bits: int, weight_scaling: str = "none",
                     method: str = "det_sign") -> Quantizer:
    """Quantizer for a binary layer's weights.

    1 bit: ``method`` with a plain straight-through gradient (no cancelling, as BMXNet-v2's
    ``det_sign`` on weights), optionally scaled by the mean ``|W|`` per output channel.
    32 bits: identity (scaling does not apply to full-precision weights).
    """
    scaling = check_weight_scaling(weight_scaling)
    if check_bits(bits) == 32:
        return Identity()
    base = get_quantizer(method, clip=None)
    return MeanScaled(base) if scaling == "mean" else base
