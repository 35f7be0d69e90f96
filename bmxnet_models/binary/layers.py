"""Binary layers from stock MXNet operators.

`QConv2D` is a drop-in for ``gluon.nn.Conv2D`` (same parameter names ``weight``/``bias``, same
deferred ``in_channels``) that binarizes its input activations and weights when ``bits=1`` and
is a plain convolution when ``bits=32``. Keeping the parameters identical in both cases is what
lets ENAS share one set of full-precision weights between a 1-bit and a 32-bit candidate
(seed 000: "the weights for each block are trained in full precision and simply binarized if
the 1 bit option is chosen").

Layers combine activation and weight quantization like BMXNet-v2's ``BinaryConvolution``
(``QActivation`` + ``QConv2D``, python/mxnet/gluon/nn/binary_layers.py in hpi-xnor/BMXNet-v2),
so one layer is one entry for cost counters. `QDense` does the same for ``gluon.nn.Dense``.

Binary inputs are padded with 0 by default (padded positions contribute nothing) or, with
``binary_padding="minus_one"``, with -1 as BMXNet-v2 does (``_QConv._apply_pre_padding`` pads the
already binarized input with ``constant_value=-1``), so that every input of an XNOR convolution
is representable by one bit.
"""
from __future__ import annotations

from typing import Any, Sequence

from mxnet import gluon

from bmxnet_models.binary.quantizers import (Quantizer, activation_quantizer, check_activation,
                                             check_bits, check_weight_scaling, weight_quantizer)
from lightnas_cli.errors import ConfigError

IntOrPair = int | Sequence[int]
#: How a binary convolution pads its binarized input (`model.binary_padding`).
PADDING_MODES = ("zero", "minus_one")


def check_binary_padding(mode: str) -> str:
    """Validate a padding mode of binary convolutions."""
    if mode not in PADDING_MODES:
        raise ConfigError(f"binary_padding={mode!r} is not supported; use one of "
                          f"{', '.join(PADDING_MODES)}")
    return mode


def _pair(value: IntOrPair, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


class QLayerBase(gluon.HybridBlock):
    """What `QConv2D` and `QDense` share: the quantization options, the two quantizers and the
    ``weight``/``bias`` parameters named as in Gluon's own layers.

    Split into two steps so each layer keeps its own order of checks: `_set_quantization`
    validates the options, `_build` (after the layer's own checks) makes quantizers and
    parameters.
    """

    def _set_quantization(self, bits: int, clip: float, weight_scaling: str,
                          activation: str) -> None:
        """Validate and store bits, gradient clip, weight scaling and activation sign."""
        self.bits = check_bits(bits)
        self.clip = float(clip)
        self.weight_scaling = check_weight_scaling(weight_scaling)
        self.activation = check_activation(activation)

    def _build(self, weight_shape: tuple[int, ...], weight_initializer: Any,
               bias_initializer: Any) -> None:
        """Quantizers, then ``weight`` and (with `use_bias`) ``bias`` of shape (weight_shape[0],).

        Same names and shapes as gluon.nn.Conv2D/Dense (0 = infer later), so parameters can be
        shared with, or copied from, a plain layer.
        """
        self.activation_quantizer: Quantizer = activation_quantizer(self.bits, clip=self.clip,
                                                                    method=self.activation)
        self.weight_quantizer: Quantizer = weight_quantizer(self.bits, self.weight_scaling)
        with self.name_scope():
            self.weight = self.params.get("weight", shape=weight_shape,
                                          init=weight_initializer, allow_deferred_init=True)
            if self.use_bias:
                self.bias = self.params.get("bias", shape=(weight_shape[0],),
                                            init=bias_initializer, allow_deferred_init=True)
            else:
                self.bias = None

    @property
    def is_binary(self) -> bool:
        """True when input activations and weights are binarized (bits == 1)."""
        return self.bits == 1

    def quantized_weight(self, F: Any, weight: Any) -> Any:
        """The weights the layer really uses; applying it twice changes nothing, so an
        inference export can store them pre-quantized (see lightnas_cli.export)."""
        return self.weight_quantizer(F, weight)


class QConv2D(QLayerBase):
    """2-D convolution with optional binarization of input activations and weights (NCHW).

    ``bits=1``: ``activation`` (det_sign or approx_sign) of the input, gradient cancelled
    outside ``±clip``, and ``sign`` of the weights (straight-through), optionally scaled by the
    mean ``|W|`` per output channel, then ``Convolution``. The binarized input is padded with
    0 (``binary_padding="zero"``: padded positions contribute nothing) or -1
    (``"minus_one"``, BMXNet-v2). ``bits=32``: a plain zero-padded convolution with the same
    parameters.
    """

    def __init__(self, channels: int, kernel_size: IntOrPair, strides: IntOrPair = 1,
                 padding: IntOrPair = 0, dilation: IntOrPair = 1, groups: int = 1,
                 in_channels: int = 0, use_bias: bool = False, bits: int = 1, clip: float = 1.0,
                 weight_scaling: str = "none", prefix: str | None = None,
                 params: gluon.ParameterDict | None = None, *, weight_initializer: Any = None,
                 bias_initializer: Any = "zeros", activation: str = "det_sign",
                 binary_padding: str = "zero"):
        super().__init__(prefix=prefix, params=params)
        self.channels = int(channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups = int(groups)
        self.use_bias = bool(use_bias)
        self._set_quantization(bits, clip, weight_scaling, activation)
        self.binary_padding = check_binary_padding(binary_padding)
        if in_channels % self.groups or self.channels % self.groups:
            raise ValueError(f"in_channels ({in_channels}) and channels ({channels}) must be "
                             f"divisible by groups ({groups})")
        self._build((self.channels, in_channels // self.groups) + self.kernel_size,
                    weight_initializer, bias_initializer)

    @property
    def in_channels(self) -> int:
        """Input channels; 0 until the shape is known (deferred initialization)."""
        return int(self.weight.shape[1]) * self.groups

    @property
    def pads_with_minus_one(self) -> bool:
        """True when the binarized input is padded with -1 before the convolution."""
        return self.is_binary and self.binary_padding == "minus_one" and any(self.padding)

    def _conv_kwargs(self) -> dict:
        pad = (0, 0) if self.pads_with_minus_one else self.padding
        return {"kernel": self.kernel_size, "stride": self.strides, "dilate": self.dilation,
                "pad": pad, "num_filter": self.channels, "num_group": self.groups,
                "no_bias": not self.use_bias, "layout": "NCHW"}

    def hybrid_forward(self, F: Any, x: Any, weight: Any, bias: Any = None) -> Any:
        x = self.activation_quantizer(F, x)
        if self.pads_with_minus_one:
            (top, left) = self.padding
            x = F.pad(x, mode="constant", constant_value=-1,
                      pad_width=(0, 0, 0, 0, top, top, left, left))
        weight = self.weight_quantizer(F, weight)
        if bias is None:
            return F.Convolution(x, weight, name="fwd", **self._conv_kwargs())
        return F.Convolution(x, weight, bias, name="fwd", **self._conv_kwargs())

    def __repr__(self) -> str:
        in_channels = self.in_channels or None
        return (f"{type(self).__name__}({in_channels} -> {self.channels}, "
                f"kernel_size={self.kernel_size}, stride={self.strides}, "
                f"padding={self.padding}, bits={self.bits}, activation={self.activation!r}, "
                f"binary_padding={self.binary_padding!r}, "
                f"weight_scaling={self.weight_scaling!r})")


class QDense(QLayerBase):
    """Fully connected layer with optional binarization of inputs and weights.

    A drop-in for ``gluon.nn.Dense`` (parameters ``weight`` of shape (units, in_units) and
    ``bias``; ``in_units=0`` is inferred; inputs are flattened to 2-D). ``bits=1`` binarizes the
    input with ``activation`` (gradient cancelled outside ``±clip``) and the weights with a
    straight-through sign, optionally scaled by the mean ``|W|`` per output unit, like
    BMXNet-v2's ``QDense`` (python/mxnet/gluon/nn/binary_layers.py) without its XNOR offset:
    the output is the plain dot product of ±1 values. ``bits=32`` is a plain dense layer.
    """

    def __init__(self, units: int, in_units: int = 0, use_bias: bool = False, bits: int = 1,
                 clip: float = 1.0, weight_scaling: str = "none", activation: str = "det_sign",
                 prefix: str | None = None, params: gluon.ParameterDict | None = None, *,
                 weight_initializer: Any = None, bias_initializer: Any = "zeros"):
        super().__init__(prefix=prefix, params=params)
        self.units = int(units)
        self.use_bias = bool(use_bias)
        self._set_quantization(bits, clip, weight_scaling, activation)
        self._build((self.units, int(in_units)), weight_initializer, bias_initializer)

    @property
    def in_units(self) -> int:
        """Input features; 0 until the shape is known (deferred initialization)."""
        return int(self.weight.shape[1])

    def hybrid_forward(self, F: Any, x: Any, weight: Any, bias: Any = None) -> Any:
        x = self.activation_quantizer(F, F.flatten(x))
        weight = self.weight_quantizer(F, weight)
        if bias is None:
            return F.FullyConnected(x, weight, no_bias=True, num_hidden=self.units, name="fwd")
        return F.FullyConnected(x, weight, bias, num_hidden=self.units, name="fwd")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.in_units or None} -> {self.units}, "
                f"bits={self.bits}, activation={self.activation!r}, "
                f"weight_scaling={self.weight_scaling!r})")
