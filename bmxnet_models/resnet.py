"""Binary ResNet V1 and V2 (18, 34, 50, 101, 152) with basic and bottleneck blocks.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition" (CVPR 2016, V1) and
"Identity Mappings in Deep Residual Networks" (ECCV 2016, V2: pre-activation). Facts taken from
MXNet's Gluon model zoo (``mxnet/gluon/model_zoo/vision/resnet.py``, 1.9.1) and its binary
adaptation in hpi-xnor/BMXNet-v2-examples (``binary_models/resnet.py``):

- blocks per stage: 18: 2, 2, 2, 2 basic; 34: 3, 4, 6, 3 basic; 50: 3, 4, 6, 3 bottleneck;
  101: 3, 4, 23, 3; 152: 3, 8, 36, 3. Stage widths 64, 128, 256, 512 (basic) and 256, 512,
  1024, 2048 (bottleneck, 64 inside: channels / 4); the stem has 64 channels. The first block
  of stages 2-4 has stride 2; a block whose stride or width changes has a 1x1 convolution
  shortcut (with BatchNorm in V1, without in V2);
- bottleneck: 1x1 (channels / 4) -> 3x3 (channels / 4) -> 1x1 (channels). The stride sits on
  the first 1x1 in V1 and on the 3x3 in V2, as in both references (same weights either way);
- stems: ``imagenet`` is a 7x7/2 convolution, BatchNorm, ReLU and 3x3/2 max pooling,
  ``thumbnail`` a 3x3/1 convolution (BMXNet-v2 leaves out the BatchNorm: binary ResNets train
  better without it). Both stay full precision, as does the classifier;
- binary V1 basic block (BMXNet-v2): ``sign -> conv3x3 -> BN -> sign -> conv3x3 -> BN``, added
  to the shortcut, with no ReLU after the addition (the next block's sign is the nonlinearity);
  the network ends with ReLU, global average pooling and the classifier. Because the sign of a
  ReLU output is always +1, the V1 ImageNet stem gets a BatchNorm after its max pooling
  (BMXNet-v2 does the same);
- binary V2 basic block (BMXNet-v2): ``BN -> sign -> conv3x3 -> BN -> sign -> conv3x3``, the
  shortcut convolution reads the same normalized input; the network ends with BN and ReLU.

Choices made here where the references are silent or disagree:

- ``bottleneck_binary`` says which convolutions of a 1-bit bottleneck are binary. ``"all"``
  (default): the two 1x1s and the 3x3, like BMXNet-v2's bottleneck, whose three layers are all
  ``QConv2D`` (its bottleneck still has ReLUs and an outdated signature, so it is ambiguous).
  ``"3x3"``: only the 3x3; the 1x1s stay 32-bit. The 1x1s hold 8/17 of a bottleneck body's
  weights (2 x C x C/4 against 9 x (C/4)^2), so ``"3x3"`` costs memory: ResNet-50 V2 at 1 bit
  is 10.8 MiB with ``"all"`` and 45.4 MiB with ``"3x3"`` (``lightnas summary resnet50_v2 -o
  bottleneck_binary=3x3``). It is there because a binary 1x1 that squeezes C channels to C/4
  loses much information (Bethge et al. 2019, "Back to Simplicity", advise against bottlenecks
  in BNNs). Basic blocks only have 3x3 convolutions, so both values build the same basic-block
  network;
- ``fp_shortcut``: the 1x1 shortcut convolution is full precision even in a 1-bit block
  (Bi-Real Net / ResNet-E keep shortcuts real-valued). A full-precision shortcut is linear (no
  ReLU); a binary one binarizes its input like the body;
- a 32-bit block (``bits=32``, an ENAS choice) runs every convolution in full precision with a
  ReLU before each body convolution where the 1-bit block has a sign (BMXNet-v2's default
  activation for 32 bits is ReLU): V2 then is exactly MXNet's pre-activation block, V1 a
  pre-ReLU variant of it. The same parameters serve 1 and 32 bits, so an ENAS unit's two
  candidates share them (seed 000: "the weights for each block are trained in full precision
  and simply binarized if the 1 bit option is chosen");
- a full-precision 1x1 inside a 1-bit bottleneck (``bottleneck_binary="3x3"``) is preceded by
  a ReLU, by the same rule;
- the references' BatchNorm on the raw input is left out (LightNAS's data sets normalize).

Weight counts of conv and dense layers equal those of MXNet's ``resnetNN_vK`` (checked in
tests/test_resnet_v1v2.py for 18 and 50); MXNet's V1 bottleneck 1x1s also carry biases, which
are left out here (a BatchNorm follows each of them).

The blocks are ``enas_unit(bits=(1, 32), share_parameters=True)`` (seed 000:
``BasicBlockVxEnas`` and ``BottleNeckBlockVxEnas``). Called with ``bits=`` they return a plain
block, without it an `EnasUnit`; ``resnet18_v1(enas=True)`` is an ENAS supernet with one
decision per block (8 for ResNet-18, 16 for ResNet-50).
"""
from __future__ import annotations

import abc
from typing import Any

from mxnet import gluon
from mxnet.gluon import nn

from bmxnet_models.binary import (QConv2D, check_activation, check_binary_padding, check_bits,
                                  check_weight_scaling)
from bmxnet_models.enas.unit import enas_unit
from bmxnet_models.resnet_e import StagedResNet
from lightnas_cli.errors import ConfigError

__all__ = ["ResNet", "BasicBlockV1Enas", "BasicBlockV2Enas", "BottleNeckBlockV1Enas",
           "BottleNeckBlockV2Enas", "BasicBlockV1", "BasicBlockV2", "BottleNeckBlockV1",
           "BottleNeckBlockV2", "RESNET_SPEC", "STEMS", "BOTTLENECK_BINARY", "stage_widths",
           "resnet18_v1", "resnet34_v1", "resnet50_v1", "resnet101_v1", "resnet152_v1",
           "resnet18_v2", "resnet34_v2", "resnet50_v2", "resnet101_v2", "resnet152_v2"]

#: depth -> (block kind, blocks per stage), He et al. 2016, Table 1.
RESNET_SPEC: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3))}
#: Stage output widths as multiples of ``base_channels`` (the stem's width, 64 in the paper).
_WIDTHS = {"basic": (1, 2, 4, 8), "bottleneck": (4, 8, 16, 32)}
STEMS = ("thumbnail", "imagenet")
#: Values of ``bottleneck_binary``: which convolutions of a 1-bit block's body are binary.
BOTTLENECK_BINARY = ("all", "3x3")
VERSIONS = (1, 2)


def stage_widths(depth: int, base_channels: int = 64) -> tuple[int, ...]:
    """Output channels of the four stages (64..512 for basic, 256..2048 for bottleneck nets)."""
    if depth not in RESNET_SPEC:
        raise ConfigError(f"ResNet depth {depth} is not defined; choose one of "
                          f"{sorted(RESNET_SPEC)}")
    return tuple(base_channels * m for m in _WIDTHS[RESNET_SPEC[depth][0]])


def check_bottleneck_binary(value: str) -> str:
    """Validate ``bottleneck_binary`` (``all`` or ``3x3``)."""
    if value not in BOTTLENECK_BINARY:
        raise ConfigError(f"bottleneck_binary={value!r} is not supported; use 'all' (1x1, 3x3 "
                          f"and 1x1 binary) or '3x3' (only the 3x3 binary, 1x1s 32-bit)")
    return value


class _ResidualBlock(gluon.HybridBlock):
    """Options and helpers every V1/V2 block shares; subclasses build and wire the layers.

    ``bits`` is the block's precision (1 or 32, the ENAS choice); which convolutions it
    actually binarizes also depends on ``fp_shortcut`` and ``bottleneck_binary``.
    """

    def __init__(self, channels: int, stride: int, in_channels: int, bits: int = 1,
                 fp_shortcut: bool = False, bottleneck_binary: str = "all",
                 grad_cancel: float = 1.0, weight_scaling: str = "none",
                 activation: str = "det_sign", binary_padding: str = "zero",
                 prefix: str | None = None, params: gluon.ParameterDict | None = None):
        super().__init__(prefix=prefix, params=params)
        self.channels = int(channels)
        self.stride = int(stride)
        self.in_channels = int(in_channels)
        self.bits = check_bits(bits)
        self.fp_shortcut = bool(fp_shortcut)
        self.bottleneck_binary = check_bottleneck_binary(bottleneck_binary)
        self.grad_cancel = float(grad_cancel)
        self.weight_scaling = check_weight_scaling(weight_scaling)
        self.activation = check_activation(activation)
        self.binary_padding = check_binary_padding(binary_padding)
        self.needs_shortcut_conv = self.stride != 1 or self.in_channels != self.channels
        self._build()

    @abc.abstractmethod
    def _build(self) -> None:
        """Create the layers (the V1/V2 wiring classes define it)."""

    @abc.abstractmethod
    def _make_body(self) -> None:
        """Create the body convolutions (the basic/bottleneck classes define it)."""

    @property
    def is_binary(self) -> bool:
        """True for a 1-bit block (what ENAS chose), whatever ``fp_shortcut`` says."""
        return self.bits == 1

    def _conv(self, channels: int, kernel: int, stride: int, in_channels: int,
              binary: bool) -> QConv2D:
        """A convolution that is binary (sign of input and weights) or 32-bit, same params."""
        return QConv2D(channels, kernel, strides=stride, padding=kernel // 2,
                       in_channels=in_channels, bits=1 if binary else 32, clip=self.grad_cancel,
                       weight_scaling=self.weight_scaling, activation=self.activation,
                       binary_padding=self.binary_padding)

    def _shortcut_conv(self) -> QConv2D:
        return self._conv(self.channels, 1, self.stride, self.in_channels,
                          self.is_binary and not self.fp_shortcut)

    @staticmethod
    def _activated(F: Any, conv: QConv2D, x: Any) -> Any:
        """A body convolution's input activation: a binary conv signs its input itself, a
        32-bit one gets a ReLU (BMXNet-v2's activation for 32 bits)."""
        return conv(x) if conv.is_binary else conv(F.relu(x))


class _BasicBody(_ResidualBlock):
    """Two 3x3 convolutions, the first with the block's stride."""

    def _make_body(self) -> None:
        binary = self.is_binary  # basic blocks only have 3x3s: bottleneck_binary changes nothing
        self.conv1 = self._conv(self.channels, 3, self.stride, self.in_channels, binary)
        self.conv2 = self._conv(self.channels, 3, 1, self.channels, binary)


class _BottleneckBody(_ResidualBlock):
    """1x1 (channels/4) -> 3x3 (channels/4) -> 1x1 (channels); stride on ``stride_on``."""

    stride_on = "conv1"

    def _make_body(self) -> None:
        mid = self.channels // 4
        if mid < 1:
            raise ConfigError(f"a bottleneck block needs at least 4 channels, got "
                              f"{self.channels}; raise base_channels")
        ones = self.is_binary and self.bottleneck_binary == "all"
        s1, s2 = (self.stride, 1) if self.stride_on == "conv1" else (1, self.stride)
        self.conv1 = self._conv(mid, 1, s1, self.in_channels, ones)
        self.conv2 = self._conv(mid, 3, s2, mid, self.is_binary)
        self.conv3 = self._conv(self.channels, 1, 1, mid, ones)


class _V1(_ResidualBlock):
    """V1 wiring: ``act -> conv -> BN`` per body conv; shortcut ``conv1x1 -> BN``; no ReLU
    after the addition (each body conv's sign, or ReLU at 32 bits, is the nonlinearity)."""

    body_convs = ("conv1", "conv2")

    def _build(self) -> None:
        with self.name_scope():
            self._make_body()
            for index in range(1, len(self.body_convs) + 1):
                setattr(self, f"bn{index}", nn.BatchNorm(in_channels=getattr(
                    self, f"conv{index}").channels))
            if self.needs_shortcut_conv:
                self.downsample = nn.HybridSequential(prefix="sc_")
                with self.downsample.name_scope():
                    self.downsample.add(self._shortcut_conv(),
                                        nn.BatchNorm(in_channels=self.channels))
            else:
                self.downsample = None

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        shortcut = x if self.downsample is None else self.downsample(x)
        h = x
        for index, name in enumerate(self.body_convs, start=1):
            h = getattr(self, f"bn{index}")(self._activated(F, getattr(self, name), h))
        return shortcut + h


class _V2(_ResidualBlock):
    """V2 (pre-activation) wiring: ``BN -> act -> conv`` per body conv; the shortcut 1x1 conv
    reads the first BatchNorm's output (MXNet and BMXNet-v2 alike), without a BatchNorm."""

    body_convs = ("conv1", "conv2")

    def _build(self) -> None:
        with self.name_scope():
            self.bn1 = nn.BatchNorm(in_channels=self.in_channels)
            self._make_body()
            for index in range(2, len(self.body_convs) + 1):
                setattr(self, f"bn{index}", nn.BatchNorm(in_channels=getattr(
                    self, f"conv{index - 1}").channels))
            self.downsample = self._shortcut_conv() if self.needs_shortcut_conv else None

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        h = self.bn1(x)
        if self.downsample is None:
            shortcut = x
        else:
            # Binary: the conv signs bn1(x); full precision: linear, no ReLU (see module doc).
            shortcut = self.downsample(h)
        for index, name in enumerate(self.body_convs, start=1):
            if index > 1:
                h = getattr(self, f"bn{index}")(h)
            h = self._activated(F, getattr(self, name), h)
        return shortcut + h


@enas_unit(bits=(1, 32), share_parameters=True)
class BasicBlockV1Enas(_V1, _BasicBody):
    """ResNet V1 basic block: ``shortcut(x) + BN(conv3x3(act(BN(conv3x3_s(act(x))))))``.

    ``act`` is the sign (1 bit, inside the binary convolution) or a ReLU (32 bits).
    """


@enas_unit(bits=(1, 32), share_parameters=True)
class BottleNeckBlockV1Enas(_V1, _BottleneckBody):
    """ResNet V1 bottleneck: ``act -> 1x1/s -> BN -> act -> 3x3 -> BN -> act -> 1x1 -> BN``
    plus the shortcut; the stride on the first 1x1 as in MXNet's and BMXNet-v2's V1."""

    body_convs = ("conv1", "conv2", "conv3")
    stride_on = "conv1"


@enas_unit(bits=(1, 32), share_parameters=True)
class BasicBlockV2Enas(_V2, _BasicBody):
    """ResNet V2 basic block: ``shortcut + conv3x3(act(BN(conv3x3_s(act(BN(x))))))``."""


@enas_unit(bits=(1, 32), share_parameters=True)
class BottleNeckBlockV2Enas(_V2, _BottleneckBody):
    """ResNet V2 bottleneck: ``BN -> act -> 1x1 -> BN -> act -> 3x3/s -> BN -> act -> 1x1``
    plus the shortcut; the stride on the 3x3 as in MXNet's and BMXNet-v2's V2."""

    body_convs = ("conv1", "conv2", "conv3")
    stride_on = "conv2"


#: The block classes themselves (the names above are `enas_unit` factories), for isinstance.
BasicBlockV1: type = BasicBlockV1Enas.block_class
BottleNeckBlockV1: type = BottleNeckBlockV1Enas.block_class
BasicBlockV2: type = BasicBlockV2Enas.block_class
BottleNeckBlockV2: type = BottleNeckBlockV2Enas.block_class
_BLOCKS = {(1, "basic"): BasicBlockV1Enas, (1, "bottleneck"): BottleNeckBlockV1Enas,
           (2, "basic"): BasicBlockV2Enas, (2, "bottleneck"): BottleNeckBlockV2Enas}


class ResNet(StagedResNet):
    """Binary ResNet V1/V2 (NCHW, any input size) as a plain model or an ENAS supernet.

    With ``enas=False`` every block uses ``bits``; with ``enas=True`` every block is an
    `EnasUnit` choosing 1 or 32 bits with shared weights (or, inside ``fixed_choices``, a
    plain block with the given value). The stem and the classifier are always 32-bit.
    """

    def __init__(self, depth: int, version: int, classes: int = 1000, stem: str = "imagenet",
                 base_channels: int = 64, grad_cancel: float = 1.0,
                 weight_scaling: str = "none", in_channels: int = 3, enas: bool = False,
                 bits: int = 1, activation: str = "det_sign", binary_padding: str = "zero",
                 fp_shortcut: bool = False, bottleneck_binary: str = "all", **kwargs: Any):
        super().__init__(**kwargs)
        if version not in VERSIONS:
            raise ConfigError(f"ResNet version {version} is not defined; use 1 or 2")
        if stem not in STEMS:
            raise ConfigError(f"unknown ResNet stem {stem!r}; use 'thumbnail' (3x3 conv, inputs "
                              f"of 32x32 and smaller) or 'imagenet' (7x7/2 conv + max pool)")
        if int(base_channels) < 1:
            raise ConfigError(f"base_channels must be a positive integer, got {base_channels}")
        if int(classes) < 1:
            raise ConfigError(f"classes must be a positive integer, got {classes}")
        self.depth = int(depth)
        self.version = int(version)
        self.widths = stage_widths(self.depth, int(base_channels))
        self.block_kind, self.stages = RESNET_SPEC[self.depth]
        self.classes = int(classes)
        self.stem = stem
        self.base_channels = int(base_channels)
        # Expected data channels, for shape-based summaries; the first convolution infers the
        # actual count from the data, so 1-channel data works too.
        self.in_channels = int(in_channels)
        self.enas = bool(enas)
        self.bits = check_bits(bits)
        self.block_options = {
            "fp_shortcut": bool(fp_shortcut),
            "bottleneck_binary": check_bottleneck_binary(bottleneck_binary),
            "grad_cancel": float(grad_cancel),
            "weight_scaling": check_weight_scaling(weight_scaling),
            "activation": check_activation(activation),
            "binary_padding": check_binary_padding(binary_padding)}

        # V2 blocks end without a norm, so the head normalises first (He et al. 2016b).
        self._build_network(final_norm=self.version == 2)

    def _make_stem(self) -> list[gluon.HybridBlock]:
        # Full precision; in_channels=0 lets the first convolution follow the data.
        if self.stem == "thumbnail":
            return [nn.Conv2D(self.base_channels, 3, strides=1, padding=1, use_bias=False)]
        layers = [nn.Conv2D(self.base_channels, 7, strides=2, padding=3, use_bias=False),
                  nn.BatchNorm(in_channels=self.base_channels), nn.Activation("relu"),
                  nn.MaxPool2D(pool_size=3, strides=2, padding=1)]
        if self.version == 1:
            # V1 blocks start with a sign, and sign(ReLU(.)) is always +1 (BMXNet-v2 V1).
            layers.append(nn.BatchNorm(in_channels=self.base_channels))
        return layers

    def _make_stage(self, index: int, count: int, in_channels: int,
                    channels: int) -> nn.HybridSequential:
        stage = nn.HybridSequential(prefix=f"stage{index + 1}_")
        block = _BLOCKS[(self.version, self.block_kind)]
        with stage.name_scope():
            for position in range(count):
                stride = 2 if index > 0 and position == 0 else 1
                if self.enas:
                    stage.add(block(channels, stride, in_channels, **self.block_options))
                else:
                    stage.add(block(channels, stride, in_channels, bits=self.bits,
                                    **self.block_options))
                in_channels = channels
        return stage


def _constructor(depth: int, version: int):
    """The public ``resnetNN_vK`` function: explicit options (the registry reads them)."""

    def build(classes: int = 1000, stem: str = "imagenet", base_channels: int = 64,
              grad_cancel: float = 1.0, weight_scaling: str = "none", in_channels: int = 3,
              enas: bool = False, bits: int = 1, activation: str = "det_sign",
              binary_padding: str = "zero", fp_shortcut: bool = False,
              bottleneck_binary: str = "all", **kwargs: Any) -> ResNet:
        return ResNet(depth, version, classes=classes, stem=stem, base_channels=base_channels,
                      grad_cancel=grad_cancel, weight_scaling=weight_scaling,
                      in_channels=in_channels, enas=enas, bits=bits, activation=activation,
                      binary_padding=binary_padding, fp_shortcut=fp_shortcut,
                      bottleneck_binary=bottleneck_binary, **kwargs)

    kind, stages = RESNET_SPEC[depth]
    build.__name__ = build.__qualname__ = f"resnet{depth}_v{version}"
    build.__doc__ = (f"Binary ResNet-{depth} V{version}: {', '.join(map(str, stages))} {kind} "
                     f"blocks per stage ({'He et al. 2016' if version == 1 else 'pre-activation'}"
                     f"); see `bmxnet_models.resnet` for the options.")
    return build


resnet18_v1 = _constructor(18, 1)
resnet34_v1 = _constructor(34, 1)
resnet50_v1 = _constructor(50, 1)
resnet101_v1 = _constructor(101, 1)
resnet152_v1 = _constructor(152, 1)
resnet18_v2 = _constructor(18, 2)
resnet34_v2 = _constructor(34, 2)
resnet50_v2 = _constructor(50, 2)
resnet101_v2 = _constructor(101, 2)
resnet152_v2 = _constructor(152, 2)
