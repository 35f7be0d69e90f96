"""ResNet-E: a binary ResNet with one binary convolution per residual block.

Bethge, Yang, Bornstein, Meinel, "Back to Simplicity: How to Train Accurate BNNs from Scratch?"
(arXiv:1906.08637) and "BinaryDenseNet" (ICCVW 2019). Facts taken from the reference
implementations (hpi-xnor/BMXNet-v2-examples ``binary_models/resnet_e.py`` and larq/zoo
``larq_zoo/literature/resnet_e.py``):

- the ResNet spec (ResNet-18: 2, 2, 2, 2 basic blocks per stage; ResNet-34: 3, 4, 6, 3) is
  doubled and every ResNet-E block holds a single 3x3 binary convolution, which adds a shortcut
  around every binary convolution: ResNet-E18 has 4, 4, 4, 4 blocks (16 binary convolutions +
  first convolution + classifier = 18 layers), ResNet-E34 has 6, 8, 12, 6;
- stage widths 64, 128, 256, 512; the first block of stages 2-4 has stride 2;
- the downsampling shortcut is full precision: 2x2 average pooling with stride 2, a 1x1
  full-precision convolution, BatchNorm (BMXNet-v2-examples ``use_pooling``/``use_fp``);
- the first convolution and the classifier stay full precision; stem ``imagenet`` is a 7x7/2
  convolution, BatchNorm, ReLU and 3x3/2 max pooling, stem ``thumbnail`` a 3x3/1 convolution
  without BatchNorm (for inputs smaller than about 50 pixels, as larq-zoo chooses).

Each block here normalizes before its binary convolution (BatchNorm -> sign -> conv, the
"E2"/pre-activation ordering of BMXNet-v2-examples) and the network ends with BatchNorm and
ReLU before global average pooling, so the sign never sees an unnormalized input. The
reference's extra BatchNorm on the raw input is left out: LightNAS's data sets normalize.
A 32-bit block is BatchNorm -> ReLU -> full-precision convolution (BMXNet-v2's default
activation for 32 bits is ReLU), so a float block is not a linear map.

One block class serves both the plain network and ENAS: `BasicBlockEnas` is decorated with
``enas_unit(bits=(1, 32), share_parameters=True)`` (seed 000: ResNet blocks choose
1 or 32 bits; the full-precision weights are always trained and binarized when 1 bit is
chosen). Called with ``bits=`` it returns a plain block; called without, an `EnasUnit`.

``activation`` (det_sign | approx_sign) and ``binary_padding`` (zero | minus_one) choose the sign
function and the padding of every binary convolution (see `bmxnet_models.binary`).
"""
from __future__ import annotations

from typing import Any

from mxnet import gluon
from mxnet.gluon import nn

from bmxnet_models.binary import (QConv2D, check_activation, check_binary_padding, check_bits,
                                  check_weight_scaling)
from bmxnet_models.enas.unit import enas_unit
from lightnas_cli.errors import ConfigError

__all__ = ["BasicBlockEnas", "BasicBlockE", "ResNetE", "ShortcutAvgPool", "resnet_e18",
           "resnet_e34", "RESNET_SPEC", "STEMS", "blocks_per_stage"]

#: Basic blocks per stage of the original ResNet (He et al. 2016); ResNet-E doubles them.
RESNET_SPEC: dict[int, tuple[int, ...]] = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
#: Stage width multipliers of ``base_channels`` (64, 128, 256, 512 for the default 64).
STAGE_WIDTHS = (1, 2, 4, 8)
STEMS = ("thumbnail", "imagenet")


def blocks_per_stage(depth: int) -> tuple[int, ...]:
    """ResNet-E blocks per stage: twice the ResNet basic blocks (one binary conv per block)."""
    if depth not in RESNET_SPEC:
        raise ConfigError(f"ResNet-E depth {depth} is not defined; choose one of "
                          f"{sorted(RESNET_SPEC)}")
    return tuple(2 * n for n in RESNET_SPEC[depth])


class ShortcutAvgPool(gluon.HybridBlock):
    """``stride x stride`` average pooling whose output size matches the body's convolution.

    The body's 3x3 convolution (padding 1, stride s) gives ``ceil(H / s)``; plain pooling gives
    ``floor(H / s)`` and fails on inputs smaller than the window (a 1x1 map in stage 4 of a
    16x16 input with the ImageNet stem). Replicating the last row and column ``s - 1`` times
    first gives ``ceil(H / s)`` for any size; for ``s = 2`` a window that hangs over the border
    averages exactly the values it covers.
    """

    def __init__(self, stride: int, prefix: str | None = None,
                 params: gluon.ParameterDict | None = None):
        super().__init__(prefix=prefix, params=params)
        self.stride = int(stride)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        extra = self.stride - 1
        x = F.pad(x, mode="edge", pad_width=(0, 0, 0, 0, 0, extra, 0, extra))
        return F.Pooling(x, kernel=(self.stride, self.stride), stride=(self.stride, self.stride),
                         pool_type="avg", pooling_convention="valid", name="fwd")


@enas_unit(bits=(1, 32), share_parameters=True)
class BasicBlockEnas(gluon.HybridBlock):
    """ResNet-E block: ``shortcut(x) + conv3x3_bits(BatchNorm(x))``.

    ``bits=1`` binarizes the 3x3 convolution's input and weights, ``bits=32`` runs it in full
    precision after a ReLU; both use the same parameters, so an ENAS unit's two candidates share them.
    The shortcut is the identity, or, when the shape changes, average pooling (stride 2),
    a full-precision 1x1 convolution and BatchNorm.
    """

    def __init__(self, channels: int, stride: int, in_channels: int, bits: int = 1,
                 grad_cancel: float = 1.0, weight_scaling: str = "none",
                 activation: str = "det_sign", binary_padding: str = "zero",
                 prefix: str | None = None, params: gluon.ParameterDict | None = None):
        super().__init__(prefix=prefix, params=params)
        self.channels = int(channels)
        self.stride = int(stride)
        self.in_channels = int(in_channels)
        self.bits = check_bits(bits)
        self.grad_cancel = float(grad_cancel)
        self.weight_scaling = check_weight_scaling(weight_scaling)
        self.activation = check_activation(activation)
        self.binary_padding = check_binary_padding(binary_padding)
        with self.name_scope():
            self.bn = nn.BatchNorm(in_channels=self.in_channels)
            self.conv = QConv2D(self.channels, 3, strides=self.stride, padding=1,
                                in_channels=self.in_channels, bits=self.bits,
                                clip=self.grad_cancel, weight_scaling=self.weight_scaling,
                                activation=self.activation, binary_padding=self.binary_padding)
            if self.stride != 1 or self.in_channels != self.channels:
                self.downsample = nn.HybridSequential(prefix="sc_")
                with self.downsample.name_scope():
                    if self.stride != 1:
                        self.downsample.add(ShortcutAvgPool(self.stride))
                    self.downsample.add(nn.Conv2D(self.channels, 1, use_bias=False,
                                                  in_channels=self.in_channels))
                    self.downsample.add(nn.BatchNorm(in_channels=self.channels))
            else:
                self.downsample = None

    @property
    def is_binary(self) -> bool:
        return self.bits == 1

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        shortcut = x if self.downsample is None else self.downsample(x)
        h = self.bn(x)
        if self.bits == 32:
            # A full-precision block needs its own nonlinearity (sign is the binary one);
            # BMXNet-v2's activated_conv uses ReLU for 32 bits (`_default_activation`).
            h = F.relu(h)
        return shortcut + self.conv(h)


#: The block class itself (``BasicBlockEnas`` is the `enas_unit` factory), for isinstance checks.
BasicBlockE: type = BasicBlockEnas.block_class


class StagedResNet(gluon.HybridBlock):
    """What ResNet-E and the binary ResNet V1/V2 share: `features` (stem, then one
    HybridSequential of residual blocks per stage, at `_stage_indices`), `output`, and
    `stages` (blocks per stage)."""

    @property
    def blocks(self) -> list[gluon.HybridBlock]:
        """The residual blocks (plain blocks or `EnasUnit`s) in network order."""
        return [block for index in self._stage_indices
                for block in self.features[index]._children.values()]

    @property
    def num_blocks(self) -> int:
        return sum(self.stages)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.output(self.features(x))

    def _build_network(self, final_norm: bool) -> None:
        """`features` (the subclass's `_make_stem`, one `_make_stage` per stage, [BatchNorm,]
        ReLU, global pooling) and the `output` classifier, in this block's name scope."""
        with self.name_scope():
            self.features = nn.HybridSequential(prefix="")
            with self.features.name_scope():
                self.features.add(*self._make_stem())
                first_stage = len(self.features)
                channels = self.base_channels
                for index, (count, width) in enumerate(zip(self.stages, self.widths)):
                    self.features.add(self._make_stage(index, count, channels, width))
                    channels = width
                # Indices of the stage containers inside ``features`` (a list of Blocks as an
                # attribute would be an unregistered container to gluon).
                self._stage_indices = tuple(range(first_stage, len(self.features)))
                if final_norm:
                    self.features.add(nn.BatchNorm(in_channels=channels))
                self.features.add(nn.Activation("relu"), nn.GlobalAvgPool2D(), nn.Flatten())
            self.output = nn.Dense(self.classes, in_units=channels)


class ResNetE(StagedResNet):
    """ResNet-E network (NCHW, any input size) as a plain model or an ENAS supernet.

    With ``enas=False`` every block uses ``bits``; with ``enas=True`` every block is an
    `EnasUnit` choosing 1 or 32 bits (or, inside ``fixed_choices``, a plain block with the
    given value). The top level is never hybridized while it holds units; as a plain model it
    hybridizes and exports completely.
    """

    def __init__(self, depth: int, classes: int = 1000, stem: str = "thumbnail",
                 base_channels: int = 64, grad_cancel: float = 1.0,
                 weight_scaling: str = "none", in_channels: int = 3, enas: bool = False,
                 bits: int = 1, activation: str = "det_sign", binary_padding: str = "zero",
                 **kwargs: Any):
        super().__init__(**kwargs)
        if stem not in STEMS:
            raise ConfigError(f"unknown ResNet-E stem {stem!r}; use 'thumbnail' (inputs of "
                              f"32x32 and smaller) or 'imagenet' (7x7/2 conv + max pool)")
        if int(base_channels) < 1:
            raise ConfigError(f"base_channels must be a positive integer, got {base_channels}")
        if int(classes) < 1:
            raise ConfigError(f"classes must be a positive integer, got {classes}")
        self.depth = int(depth)
        self.stages = blocks_per_stage(self.depth)
        self.classes = int(classes)
        self.stem = stem
        self.base_channels = int(base_channels)
        self.widths = tuple(self.base_channels * m for m in STAGE_WIDTHS)
        self.grad_cancel = float(grad_cancel)
        self.weight_scaling = check_weight_scaling(weight_scaling)
        self.activation = check_activation(activation)
        self.binary_padding = check_binary_padding(binary_padding)
        # Expected data channels, kept for shape-based summaries; the first convolution infers
        # the actual count from the data (deferred initialization), so 1-channel data works.
        self.in_channels = int(in_channels)
        self.enas = bool(enas)
        self.bits = check_bits(bits)

        self._build_network(final_norm=True)

    def _make_stem(self) -> list[gluon.HybridBlock]:
        # First convolution in full precision; in_channels=0 lets it follow the data.
        if self.stem == "thumbnail":
            return [nn.Conv2D(self.base_channels, 3, strides=1, padding=1, use_bias=False)]
        return [nn.Conv2D(self.base_channels, 7, strides=2, padding=3, use_bias=False),
                nn.BatchNorm(in_channels=self.base_channels), nn.Activation("relu"),
                nn.MaxPool2D(pool_size=3, strides=2, padding=1)]

    def _make_stage(self, index: int, count: int, in_channels: int,
                    channels: int) -> nn.HybridSequential:
        stage = nn.HybridSequential(prefix=f"stage{index + 1}_")
        with stage.name_scope():
            for position in range(count):
                stride = 2 if index > 0 and position == 0 else 1
                stage.add(self._make_block(channels, stride, in_channels))
                in_channels = channels
        return stage

    def _make_block(self, channels: int, stride: int, in_channels: int) -> gluon.HybridBlock:
        options = {"grad_cancel": self.grad_cancel, "weight_scaling": self.weight_scaling,
                   "activation": self.activation, "binary_padding": self.binary_padding}
        if self.enas:
            return BasicBlockEnas(channels, stride, in_channels, **options)
        return BasicBlockEnas(channels, stride, in_channels, bits=self.bits, **options)


def resnet_e18(classes: int = 1000, stem: str = "thumbnail", base_channels: int = 64,
               grad_cancel: float = 1.0, weight_scaling: str = "none", in_channels: int = 3,
               enas: bool = False, bits: int = 1, activation: str = "det_sign",
               binary_padding: str = "zero", **kwargs: Any) -> ResNetE:
    """ResNet-E18: 4, 4, 4, 4 single-conv blocks (ResNet-18's 2, 2, 2, 2 doubled)."""
    return ResNetE(18, classes=classes, stem=stem, base_channels=base_channels,
                   grad_cancel=grad_cancel, weight_scaling=weight_scaling,
                   in_channels=in_channels, enas=enas, bits=bits, activation=activation,
                   binary_padding=binary_padding, **kwargs)


def resnet_e34(classes: int = 1000, stem: str = "thumbnail", base_channels: int = 64,
               grad_cancel: float = 1.0, weight_scaling: str = "none", in_channels: int = 3,
               enas: bool = False, bits: int = 1, activation: str = "det_sign",
               binary_padding: str = "zero", **kwargs: Any) -> ResNetE:
    """ResNet-E34: 6, 8, 12, 6 single-conv blocks (ResNet-34's 3, 4, 6, 3 doubled)."""
    return ResNetE(34, classes=classes, stem=stem, base_channels=base_channels,
                   grad_cancel=grad_cancel, weight_scaling=weight_scaling,
                   in_channels=in_channels, enas=enas, bits=bits, activation=activation,
                   binary_padding=binary_padding, **kwargs)
