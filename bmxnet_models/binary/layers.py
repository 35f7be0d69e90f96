"""Binary layers from stock MXNet operators.

`QConv2D` is a drop-in for ``gluon.nn.Conv2D`` (same parameter names ``weight``/``bias``, same
deferred ``in_channels``) that binarizes its input activations and weights when ``bits=1`` and
is a plain convolution when ``bits=32``. Keeping the parameters identical in both cases is what
lets ENAS share one set of full-precision weights between a 1-bit and a 32-bit candidate
(seed 000: "the weights for each block are trained in full precision and simply binarized if
the 1 bit option is chosen").

Layers combine activation and weight quantization like BMXNet-v2's ``BinaryConvolution``
(``QActivation`` + ``QConv2D``, python/mxnet/gluon/nn/binary_layers.py in hpi-xnor/BMXNet-v2),
so one layer is one entry for cost counters.
"""
from __future__ import annotations

from typing import Any, Sequence

from mxnet import gluon

from bmxnet_models.binary.quantizers import (Quantizer, activation_quantizer, check_bits,
                                             check_weight_scaling, weight_quantizer)

IntOrPair = int | Sequence[int]


def _pair(value: IntOrPair, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


class QConv2D(gluon.HybridBlock):
    """2-D convolution with optional binarization of input activations and weights (NCHW).

    ``bits=1``: ``sign`` of the input (straight-through, gradient cancelled outside
    ``±clip``) and ``sign`` of the weights (straight-through), optionally scaled by the mean
    ``|W|`` per output channel, then ``Convolution``. Zero padding is applied to the
    binarized input (so padded positions contribute 0, not ±1). ``bits=32``: a plain
    convolution with the same parameters.
    """

    def __init__(self, channels: int, kernel_size: IntOrPair, strides: IntOrPair = 1,
                 padding: IntOrPair = 0, dilation: IntOrPair = 1, groups: int = 1,
                 in_channels: int = 0, use_bias: bool = False, bits: int = 1, clip: float = 1.0,
                 weight_scaling: str = "none", prefix: str | None = None,
                 params: gluon.ParameterDict | None = None, *, weight_initializer: Any = None,
                 bias_initializer: Any = "zeros"):
        super().__init__(prefix=prefix, params=params)
        self.channels = int(channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups = int(groups)
        self.use_bias = bool(use_bias)
        self.bits = check_bits(bits)
        self.clip = float(clip)
        self.weight_scaling = check_weight_scaling(weight_scaling)
        if in_channels % self.groups or self.channels % self.groups:
            raise ValueError(f"in_channels ({in_channels}) and channels ({channels}) must be "
                             f"divisible by groups ({groups})")
        self.activation_quantizer: Quantizer = activation_quantizer(self.bits, clip=self.clip)
        self.weight_quantizer: Quantizer = weight_quantizer(self.bits, self.weight_scaling)
        with self.name_scope():
            # Same names and shapes as gluon.nn.Conv2D ('weight', 'bias'; 0 = infer later),
            # so parameters can be shared with, or copied from, a plain Conv2D.
            self.weight = self.params.get(
                "weight", shape=(self.channels, in_channels // self.groups) + self.kernel_size,
                init=weight_initializer, allow_deferred_init=True)
            if self.use_bias:
                self.bias = self.params.get("bias", shape=(self.channels,),
                                            init=bias_initializer, allow_deferred_init=True)
            else:
                self.bias = None

    @property
    def is_binary(self) -> bool:
        """True when activations and weights are binarized (bits == 1)."""
        return self.bits == 1

    @property
    def in_channels(self) -> int:
        """Input channels; 0 until the shape is known (deferred initialization)."""
        return int(self.weight.shape[1]) * self.groups

    def quantized_weight(self, F: Any, weight: Any) -> Any:
        """The weights the convolution really uses; applying it twice changes nothing, so an
        inference export can store them pre-quantized (see lightnas_cli.export)."""
        return self.weight_quantizer(F, weight)

    def _conv_kwargs(self) -> dict:
        return {"kernel": self.kernel_size, "stride": self.strides, "dilate": self.dilation,
                "pad": self.padding, "num_filter": self.channels, "num_group": self.groups,
                "no_bias": not self.use_bias, "layout": "NCHW"}

    def hybrid_forward(self, F: Any, x: Any, weight: Any, bias: Any = None) -> Any:
        x = self.activation_quantizer(F, x)
        weight = self.weight_quantizer(F, weight)
        if bias is None:
            return F.Convolution(x, weight, name="fwd", **self._conv_kwargs())
        return F.Convolution(x, weight, bias, name="fwd", **self._conv_kwargs())

    def __repr__(self) -> str:
        in_channels = self.in_channels or None
        return (f"{type(self).__name__}({in_channels} -> {self.channels}, "
                f"kernel_size={self.kernel_size}, stride={self.strides}, "
                f"padding={self.padding}, bits={self.bits}, "
                f"weight_scaling={self.weight_scaling!r})")
