"""MLPerf Tiny reference networks and a small TCN, as plain Gluon models (PIT seeds).

Architectures follow the MLPerf Tiny v1.0 reference training code (mlcommons/tiny,
`benchmark/training/*`; Banbury et al., "MLPerf Tiny Benchmark", NeurIPS 2021):

- `dscnn`: keyword spotting, DS-CNN (small): a 10x4 stride-2 convolution with 64 filters, then
  4 x (3x3 depthwise, 1x1 pointwise, 64 channels), each followed by BatchNorm and ReLU,
  global average pooling and a 12-way classifier; input 49 x 10 MFCCs (1 channel).
- `resnet8`: image classification on CIFAR-10, ResNet-8: a 3x3 16-filter stem and three
  residual stacks (16, 32, 64 filters; stride 2 in the last two, 1x1 convolution shortcut when
  the shape changes), global average pooling and a 10-way classifier.
- `mobilenet_v1`: visual wake words, MobileNetV1 with width multiplier 0.25 on 96x96x3 images
  and 2 classes: a 3x3 stride-2 stem and 13 depthwise-separable blocks.
- `fc_autoencoder`: anomaly detection (ToyADMOS), the fully connected autoencoder on 640 inputs
  (5 frames x 128 mel bins): 4 x Dense(128), a Dense(8) bottleneck, 4 x Dense(128), each with
  BatchNorm and ReLU, and a linear Dense(640) reconstruction.
- `tcn`: a small causal temporal convolutional network (Bai et al. 2018, "An Empirical
  Evaluation of Generic Convolutional and Recurrent Networks") for 1-D signals such as
  MNIST-1D: residual blocks of two causal dilated convolutions. PIT starts from large kernels at
  dilation 1 and finds receptive fields and dilations itself (Risso et al. 2021).

Convolutions use symmetric padding of Gluon (the reference's TensorFlow "same" padding is
asymmetric for stride 2; output sizes are equal). Every layer declares its input channels, so
the networks have their final shapes right after `initialize()`.
"""
from __future__ import annotations

from typing import Any, Sequence

from mxnet import gluon
from mxnet.gluon import nn

from bmxnet_models import register_model
from lightnas_cli.errors import ConfigError

__all__ = ["DSCNN", "ResNet8", "MobileNetV1", "FCAutoencoder", "TCN", "dscnn", "resnet8",
           "mobilenet_v1", "fc_autoencoder", "tcn"]


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _conv_bn_relu(channels: int, kernel: Any, stride: Any, padding: Any, in_channels: int,
                  groups: int = 1, use_bias: bool = True) -> list[gluon.HybridBlock]:
    return [nn.Conv2D(channels, kernel, strides=stride, padding=padding, groups=groups,
                      in_channels=in_channels, use_bias=use_bias),
            nn.BatchNorm(in_channels=channels), nn.Activation("relu")]


class DSCNN(nn.HybridSequential):
    """DS-CNN for keyword spotting (MLPerf Tiny KWS reference, `ds_cnn` small)."""

    def __init__(self, classes: int = 12, in_channels: int = 1, filters: int = 64,
                 blocks: int = 4, dropout: float = 0.2, **kwargs: Any):
        super().__init__(**kwargs)
        filters = _positive("filters", filters)
        with self.name_scope():
            # 10x4 kernel, stride 2; padding (5, 1) gives the reference's 25x5 map from 49x10.
            self.add(*_conv_bn_relu(filters, (10, 4), 2, (5, 1), in_channels))
            self.add(nn.Dropout(dropout))
            for _ in range(_positive("blocks", blocks)):
                self.add(*_conv_bn_relu(filters, 3, 1, 1, filters, groups=filters))
                self.add(*_conv_bn_relu(filters, 1, 1, 0, filters))
            self.add(nn.Dropout(2 * dropout), nn.GlobalAvgPool2D(),
                     nn.Dense(_positive("classes", classes), in_units=filters))


class _ResidualStack(gluon.HybridBlock):
    """ResNet v1 basic block: conv-BN-ReLU-conv-BN plus (1x1 conv) shortcut, then ReLU."""

    def __init__(self, channels: int, stride: int, in_channels: int, **kwargs: Any):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv1 = nn.Conv2D(channels, 3, strides=stride, padding=1,
                                   in_channels=in_channels)
            self.bn1 = nn.BatchNorm(in_channels=channels)
            self.conv2 = nn.Conv2D(channels, 3, padding=1, in_channels=channels)
            self.bn2 = nn.BatchNorm(in_channels=channels)
            if stride != 1 or in_channels != channels:
                self.shortcut = nn.Conv2D(channels, 1, strides=stride, in_channels=in_channels)
            else:
                self.shortcut = None

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(y + shortcut)


class ResNet8(nn.HybridSequential):
    """ResNet-8 for CIFAR-10 (MLPerf Tiny image classification reference)."""

    def __init__(self, classes: int = 10, in_channels: int = 3,
                 widths: Sequence[int] = (16, 32, 64), **kwargs: Any):
        super().__init__(**kwargs)
        widths = [_positive("widths", w) for w in widths]
        with self.name_scope():
            self.add(*_conv_bn_relu(widths[0], 3, 1, 1, in_channels))
            channels = widths[0]
            for index, width in enumerate(widths):
                self.add(_ResidualStack(width, 1 if index == 0 else 2, channels))
                channels = width
            self.add(nn.GlobalAvgPool2D(), nn.Dense(_positive("classes", classes),
                                                    in_units=channels))


#: MobileNetV1 (channels at width 1.0, stride) of the 13 depthwise-separable blocks.
MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
                    (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNetV1(nn.HybridSequential):
    """MobileNetV1 (Howard et al. 2017) with a width multiplier (MLPerf Tiny VWW: 0.25)."""

    def __init__(self, classes: int = 2, in_channels: int = 3, width_multiplier: float = 0.25,
                 **kwargs: Any):
        super().__init__(**kwargs)
        if not 0 < float(width_multiplier) <= 4:
            raise ConfigError(f"width_multiplier must be in (0, 4], got {width_multiplier!r}")

        def width(channels: int) -> int:
            return max(8, int(channels * float(width_multiplier)))

        with self.name_scope():
            channels = width(32)
            self.add(*_conv_bn_relu(channels, 3, 2, 1, in_channels, use_bias=False))
            for out, stride in MOBILENET_BLOCKS:
                self.add(*_conv_bn_relu(channels, 3, stride, 1, channels, groups=channels,
                                        use_bias=False))
                self.add(*_conv_bn_relu(width(out), 1, 1, 0, channels, use_bias=False))
                channels = width(out)
            self.add(nn.GlobalAvgPool2D(), nn.Dense(_positive("classes", classes),
                                                    in_units=channels))


class FCAutoencoder(nn.HybridSequential):
    """The MLPerf Tiny anomaly-detection autoencoder; output = reconstruction of the input."""

    def __init__(self, inputs: int = 640, hidden: int = 128, bottleneck: int = 8,
                 depth: int = 4, **kwargs: Any):
        super().__init__(**kwargs)
        inputs, hidden = _positive("inputs", inputs), _positive("hidden", hidden)
        bottleneck, depth = _positive("bottleneck", bottleneck), _positive("depth", depth)
        self.inputs = inputs
        sizes = [hidden] * depth + [bottleneck] + [hidden] * depth
        with self.name_scope():
            previous = inputs
            for size in sizes:
                self.add(nn.Dense(size, in_units=previous), nn.BatchNorm(in_channels=size),
                         nn.Activation("relu"))
                previous = size
            self.add(nn.Dense(inputs, in_units=previous))


class _TemporalBlock(gluon.HybridBlock):
    """Two causal dilated convolutions (BatchNorm, ReLU) and a residual connection.

    Causal: each convolution pads (k - 1) * dilation on both sides and the block drops the
    last (k - 1) * dilation outputs, so output t only sees inputs up to t.
    """

    def __init__(self, channels: int, in_channels: int, kernel_size: int, dilation: int,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.chomp = (kernel_size - 1) * dilation
        with self.name_scope():
            self.conv1 = nn.Conv1D(channels, kernel_size, padding=self.chomp, dilation=dilation,
                                   in_channels=in_channels)
            self.bn1 = nn.BatchNorm(in_channels=channels)
            self.conv2 = nn.Conv1D(channels, kernel_size, padding=self.chomp, dilation=dilation,
                                   in_channels=channels)
            self.bn2 = nn.BatchNorm(in_channels=channels)
            self.downsample = (nn.Conv1D(channels, 1, in_channels=in_channels)
                               if in_channels != channels else None)

    def _causal(self, F: Any, x: Any) -> Any:
        return F.slice_axis(x, axis=2, begin=0, end=-self.chomp) if self.chomp else x

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        y = F.relu(self.bn1(self._causal(F, self.conv1(x))))
        y = self.bn2(self._causal(F, self.conv2(y)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class TCN(nn.HybridSequential):
    """A small causal TCN classifier: temporal blocks, global average pooling, dense."""

    def __init__(self, classes: int = 10, in_channels: int = 1,
                 channels: Sequence[int] = (32, 32, 64), kernel_size: int = 9,
                 dilations: Sequence[int] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        channels = [_positive("channels", c) for c in channels]
        kernel_size = _positive("kernel_size", kernel_size)
        dilations = [1] * len(channels) if dilations is None else list(dilations)
        if len(dilations) != len(channels):
            raise ConfigError(f"dilations has {len(dilations)} entries, channels {len(channels)}")
        with self.name_scope():
            previous = in_channels
            for width, dilation in zip(channels, dilations):
                self.add(_TemporalBlock(width, previous, kernel_size,
                                        _positive("dilations", dilation)))
                previous = width
            self.add(nn.GlobalAvgPool1D(), nn.Dense(_positive("classes", classes),
                                                    in_units=previous))


@register_model("dscnn")
def dscnn(classes: int = 12, in_channels: int = 1, filters: int = 64, blocks: int = 4,
          dropout: float = 0.2, **kwargs: Any) -> DSCNN:
    """DS-CNN (MLPerf Tiny keyword spotting): 49x10 MFCC input, 12 classes."""
    return DSCNN(classes, in_channels, filters, blocks, dropout, **kwargs)


@register_model("resnet8")
def resnet8(classes: int = 10, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64),
            **kwargs: Any) -> ResNet8:
    """ResNet-8 (MLPerf Tiny image classification): CIFAR-10, 32x32x3, 10 classes."""
    return ResNet8(classes, in_channels, tuple(widths), **kwargs)


@register_model("mobilenet_v1")
def mobilenet_v1(classes: int = 2, in_channels: int = 3, width_multiplier: float = 0.25,
                 **kwargs: Any) -> MobileNetV1:
    """MobileNetV1 x0.25 (MLPerf Tiny visual wake words): 96x96x3, 2 classes."""
    return MobileNetV1(classes, in_channels, width_multiplier, **kwargs)


@register_model("fc_autoencoder")
def fc_autoencoder(inputs: int = 640, hidden: int = 128, bottleneck: int = 8, depth: int = 4,
                   **kwargs: Any) -> FCAutoencoder:
    """FC autoencoder (MLPerf Tiny anomaly detection): 640 inputs reconstructed."""
    return FCAutoencoder(inputs, hidden, bottleneck, depth, **kwargs)


@register_model("tcn")
def tcn(classes: int = 10, in_channels: int = 1, channels: Sequence[int] = (32, 32, 64),
        kernel_size: int = 9, dilations: Sequence[int] | None = None, **kwargs: Any) -> TCN:
    """Small causal TCN for 1-D signals (e.g. MNIST-1D: 1 x 40, 10 classes)."""
    return TCN(classes, in_channels, tuple(channels), kernel_size, dilations, **kwargs)
