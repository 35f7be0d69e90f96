"""FBNet search spaces as zoo models: FBNet (Wu et al., CVPR 2019, arXiv 1812.03443, Table 1)
and FBNet-SE (a ResNet-50-style stack, seed 003), with softmax / AM-Softmax / ArcFace heads.

Every model here is one chain: stem -> searchable layers -> tail (last conv or feature layer,
global pooling) -> head. A searchable layer is either

- a `MixedLayer` (the supernet: every candidate block of the layer, mixed as Σ_i m_i·block_i(x)
  with weights m given as an input of shape (batch or 1, candidates); without weights the
  candidates are averaged), or
- a `ChosenLayer` (a derived network: only the chosen block; plain Gluon, nothing of the
  search left in it).

`get_model("fbnet")` builds the supernet; `get_model("fbnet", choices=[...])` (one candidate
name per searchable layer, or one name for every layer, or a comma-separated string) builds a
plain network. Both share parameter paths, so a derived network takes the supernet's weights by
path (`layers.3.candidates.<i>.*` -> `layers.3.block.*`). The zoo imports nothing of the search
package: the search passes the mixing weights in.

FBNet (paper Table 1 / Figure 3): stem 3x3/16 stride 2; 22 searchable layers in stages of
1,4,4,4,4,4,1 with widths 16,24,32,64,112,184,352 and first-layer strides 1,2,2,2,1,2,1; last
conv 1x1/1984; global average pooling; head. Candidates k3_e1, k3_e1_g2, k3_e3, k3_e6, k5_e1,
k5_e1_g2, k5_e3, k5_e6 and skip: 1x1 group conv -> ReLU -> channel shuffle (g>=2) -> kxk
depthwise conv (stride s) -> ReLU -> 1x1 group conv -> shuffle (g>=2), plus the input when
stride is 1 and the width stays. The first layer of each stage has no skip.
Seed 003's differences are options: `stem_stride=1` (its 3x108x108 input), `bn="outside"`
(a BatchNorm before each searchable layer, none inside blocks; the paper's `inside` puts one
after each convolution), `last_kernel=3` with `feature_dim` filters (the paper: 1x1/1984).

FBNet-SE (seed 003's "FBNet based on SE-ResNet-50"): stem 3x3/64 (stride `stem_stride`),
BN, ReLU, 3x3/2 max-pool; 16 searchable bottlenecks in stages of 3,4,6,3 with outputs
256,512,1024,2048 (a quarter inside) and first-layer strides 1,2,2,2; global pooling, a
`feature_dim` dense layer (seed 003: 192), head. Candidates (chosen from seed 003's list
"Resnet_50, Se, Group_Conv, Channel_shuffle, Deform_Conv"):

  resnet        ResNet-50 V1 bottleneck: 1x1 -> 3x3 (stride) -> 1x1, BN after each conv
  resnet_se     the same plus squeeze-and-excitation (Hu et al. 2018, reduction 16)
  group         all three convolutions with `groups` groups (seed 003: 2)
  group_se      group + SE
  shuffle       group + channel shuffle after the first 1x1 (ShuffleNet, Zhang et al. 2018)
  shuffle_se    shuffle + SE
  deform        the 3x3 is a deformable convolution (Dai et al. 2017; MXNet's
                contrib DeformableConvolution, which runs on CPU)
  deform_se     deform + SE

`deform*` are candidates of the last stage's layers after the first (as in seed 003's port,
which adds the deformable block only there: Dai et al. also put deformable convolutions only in
the last stage); the other layers have the first six. A shortcut is the identity when the shape
stays, else a strided 1x1 convolution + BN.

Identity candidates return `F.identity(x)`: a hybridized block that returns its input object
cuts the autograd graph (found with the zoo's ENAS blocks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn

from lightnas_cli.errors import ArchitectureError, ConfigError

__all__ = ["FBNET_CANDIDATES", "FBNET_SE_CANDIDATES", "HEADS", "LayerSpec", "FBNet", "FBNetSE",
           "fbnet_symbol", "margin_logits", "layer_specs",
           "channel_shuffle", "MixedLayer", "ChosenLayer", "CosineHead"]

#: FBNet's candidate blocks (paper Table 2): kernel, expansion, groups; "skip" is the identity.
FBNET_CANDIDATES = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3",
                    "k5_e6", "skip")
#: FBNet stages: (width, layers, stride of the first layer) (paper Table 1).
FBNET_STAGES = ((16, 1, 1), (24, 4, 2), (32, 4, 2), (64, 4, 2), (112, 4, 1), (184, 4, 2),
                (352, 1, 1))
FBNET_STEM = 16

#: FBNet-SE's candidates (see the module docstring); the last two only in the last stage.
FBNET_SE_CANDIDATES = ("resnet", "resnet_se", "group", "group_se", "shuffle", "shuffle_se",
                       "deform", "deform_se")
#: FBNet-SE stages: (output width, bottlenecks, stride of the first) (ResNet-50).
FBNET_SE_STAGES = ((256, 3, 1), (512, 4, 2), (1024, 6, 2), (2048, 3, 2))
FBNET_SE_STEM = 64

#: Heads: a dense classifier, or cosine logits s·cos(x, w_j) trained with a margin.
HEADS = ("softmax", "amsoftmax", "arcface")
#: Margin m and scale s per margin head (seed 003: AM-Softmax m 0.3, s 30; ArcFace m 0.5, s 64).
HEAD_DEFAULTS = {"amsoftmax": (0.3, 30.0), "arcface": (0.5, 64.0)}


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def scaled_width(channels: int, multiplier: float, divisor: int) -> int:
    """channels x multiplier rounded to a multiple of `divisor` (at least `divisor`), never
    more than 10% below the exact product (MobileNetV2's rounding, Sandler et al. 2018)."""
    exact = channels * float(multiplier)
    width = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    if width < 0.9 * exact:
        width += divisor
    return int(width)


def channel_shuffle(F: Any, x: Any, groups: int, channels: int) -> Any:
    """ShuffleNet's channel shuffle: (N, g·c, H, W) -> (N, g, c, H·W) -> swap g and c -> back.

    Written with reshape codes 0 and -1 and `reshape_like` only (not -2/-3/-4), which MXNet's
    ONNX exporter converts; the element order is that of the 5-D (N, g, c, H, W) swap."""
    y = F.reshape(x, shape=(0, groups, channels // groups, -1))
    # swapaxes, not transpose: oneDNN fails on transpose's backward next to grouped
    # convolutions ("could not create a primitive descriptor for a reorder primitive").
    y = F.swapaxes(y, 1, 2)
    return F.reshape_like(y, x)


@dataclass(frozen=True)
class LayerSpec:
    """One searchable layer: its name (the parameter path), widths, stride and candidates."""

    name: str
    in_channels: int
    out_channels: int
    stride: int
    candidates: tuple[str, ...]
    stage: int
    index: int


# --- blocks -----------------------------------------------------------------------------------

class Identity(gluon.HybridBlock):
    """The skip candidate. `F.identity` keeps the autograd graph connected when hybridized."""

    def hybrid_forward(self, F, x):
        return F.identity(x)


def _conv(channels: int, kernel: int, stride: int, in_channels: int, groups: int,
          bias: bool) -> nn.Conv2D:
    return nn.Conv2D(channels, kernel, strides=stride, padding=kernel // 2, groups=groups,
                     in_channels=in_channels, use_bias=bias)


def parse_fbnet_candidate(name: str) -> tuple[int, int, int]:
    """(kernel, expansion, groups) of an FBNet candidate name such as "k5_e1_g2"."""
    parts = name.split("_")
    try:
        kernel, expansion = int(parts[0][1:]), int(parts[1][1:])
        groups = int(parts[2][1:]) if len(parts) > 2 else 1
    except (IndexError, ValueError):
        raise ArchitectureError(f"{name!r} is not an FBNet candidate; one of "
                                f"{', '.join(FBNET_CANDIDATES)}") from None
    return kernel, expansion, groups


class FBNetBlock(gluon.HybridBlock):
    """1x1 group conv -> ReLU -> shuffle -> kxk depthwise -> ReLU -> 1x1 group conv -> shuffle
    (+ input when the shape stays). `bn=True` puts a BatchNorm after each convolution
    (the paper); `bn=False` has none inside (seed 003: the layer has one before it)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, kernel: int,
                 expansion: int, groups: int = 1, bn: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        mid = in_channels * expansion
        for what, width in (("input", in_channels), ("output", out_channels)):
            if width % groups:
                raise ConfigError(f"FBNet block with {groups} groups needs {what} channels "
                                  f"divisible by {groups}, got {width}; choose another "
                                  f"width_multiplier or channel_divisor")
        self.groups = groups
        self.widths = (mid, out_channels)
        self.residual = stride == 1 and in_channels == out_channels
        with self.name_scope():
            self.expand = _conv(mid, 1, 1, in_channels, groups, not bn)
            self.bn1 = nn.BatchNorm(in_channels=mid) if bn else None
            self.depthwise = _conv(mid, kernel, stride, mid, mid, not bn)
            self.bn2 = nn.BatchNorm(in_channels=mid) if bn else None
            self.project = _conv(out_channels, 1, 1, mid, groups, not bn)
            self.bn3 = nn.BatchNorm(in_channels=out_channels) if bn else None

    def hybrid_forward(self, F, x):
        out = self.expand(x)
        if self.bn1 is not None:
            out = self.bn1(out)
        out = F.relu(out)
        if self.groups > 1:
            out = channel_shuffle(F, out, self.groups, self.widths[0])
        out = self.depthwise(out)
        if self.bn2 is not None:
            out = self.bn2(out)
        out = F.relu(out)
        out = self.project(out)
        if self.bn3 is not None:
            out = self.bn3(out)
        if self.groups > 1:
            out = channel_shuffle(F, out, self.groups, self.widths[1])
        return out + x if self.residual else out


class SqueezeExcitation(gluon.HybridBlock):
    """x · sigmoid(W2 relu(W1 mean_hw(x))) (Hu et al. 2018), as 1x1 convolutions so it is
    independent of the input size."""

    def __init__(self, channels: int, reduction: int = 16, **kwargs: Any):
        super().__init__(**kwargs)
        hidden = max(1, channels // reduction)
        with self.name_scope():
            self.reduce = nn.Conv2D(hidden, 1, in_channels=channels)
            self.expand = nn.Conv2D(channels, 1, in_channels=hidden)

    def hybrid_forward(self, F, x):
        scale = F.mean(x, axis=(2, 3), keepdims=True)
        scale = F.sigmoid(self.expand(F.relu(self.reduce(scale))))
        return F.broadcast_mul(x, scale)


class SEBottleneck(gluon.HybridBlock):
    """One FBNet-SE candidate: a ResNet-50 V1 bottleneck with optional groups, channel
    shuffle, deformable 3x3 and squeeze-and-excitation (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int = 1,
                 shuffle: bool = False, deformable: bool = False, se: bool = False,
                 **kwargs: Any):
        super().__init__(**kwargs)
        mid = max(1, out_channels // 4)
        for what, width in (("input", in_channels), ("inner", mid), ("output", out_channels)):
            if width % groups:
                raise ConfigError(f"FBNet-SE block with {groups} groups needs {what} channels "
                                  f"divisible by {groups}, got {width}")
        self.groups = groups
        self.mid = mid
        self.shuffle = shuffle and groups > 1
        with self.name_scope():
            self.conv1 = _conv(mid, 1, 1, in_channels, groups, False)
            self.bn1 = nn.BatchNorm(in_channels=mid)
            if deformable:
                from mxnet.gluon.contrib.cnn import DeformableConvolution
                self.conv2 = DeformableConvolution(mid, kernel_size=3, strides=stride,
                                                   padding=1, in_channels=mid, use_bias=False)
            else:
                self.conv2 = _conv(mid, 3, stride, mid, groups, False)
            self.bn2 = nn.BatchNorm(in_channels=mid)
            self.conv3 = _conv(out_channels, 1, 1, mid, groups, False)
            self.bn3 = nn.BatchNorm(in_channels=out_channels)
            self.se = SqueezeExcitation(out_channels) if se else None
            if stride == 1 and in_channels == out_channels:
                self.shortcut = None
            else:
                self.shortcut = nn.HybridSequential()
                self.shortcut.add(_conv(out_channels, 1, stride, in_channels, 1, False),
                                  nn.BatchNorm(in_channels=out_channels))

    def hybrid_forward(self, F, x):
        out = F.relu(self.bn1(self.conv1(x)))
        if self.shuffle:
            out = channel_shuffle(F, out, self.groups, self.mid)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


def make_candidate(spec: LayerSpec, name: str, *, bn: bool = True,
                   groups: int = 2) -> gluon.HybridBlock:
    """The block of candidate `name` at layer `spec` (FBNet or FBNet-SE, by the name)."""
    if name not in spec.candidates:
        raise ArchitectureError(f"layer {spec.name} has no candidate {name!r}; its candidates: "
                                f"{', '.join(spec.candidates)}")
    if name == "skip":
        return Identity(prefix="skip_")
    if name in FBNET_SE_CANDIDATES:
        return SEBottleneck(spec.in_channels, spec.out_channels, spec.stride,
                            groups=1 if name.startswith(("resnet", "deform")) else groups,
                            shuffle=name.startswith("shuffle"), deformable=name.startswith("deform"),
                            se=name.endswith("_se"), prefix=f"{name}_")
    kernel, expansion, block_groups = parse_fbnet_candidate(name)
    return FBNetBlock(spec.in_channels, spec.out_channels, spec.stride, kernel, expansion,
                      block_groups, bn=bn, prefix=f"{name}_")


# --- layers -----------------------------------------------------------------------------------

class MixedLayer(gluon.HybridBlock):
    """Σ_i m_i · candidate_i(x): the supernet's searchable layer. `weights` has shape
    (batch, candidates) (one mixture per sample) or (1, candidates) (one for the batch);
    without it the candidates are averaged."""

    def __init__(self, spec: LayerSpec, norm_before: bool, bn_inside: bool, groups: int,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.spec = spec
        with self.name_scope():
            self.bn = nn.BatchNorm(in_channels=spec.in_channels) if norm_before else None
            self.candidates = nn.HybridSequential(prefix="")
            for name in spec.candidates:
                self.candidates.add(make_candidate(spec, name, bn=bn_inside, groups=groups))

    def hybrid_forward(self, F, x, weights=None):
        if self.bn is not None:
            x = self.bn(x)
        outputs = [candidate(x) for candidate in self.candidates]
        if weights is None:
            return F.add_n(*outputs) / len(outputs)
        # One batched matrix product (batch, 1, n) x (batch, n, C·H·W): its backward is two
        # GEMMs, 3-6x faster on CPU than n broadcast products whose weight gradients are
        # generic reductions (benchmarks/fbnet_supernet.py).
        stacked = F.concat(*[F.reshape(out, shape=(0, 1, -1)) for out in outputs], dim=1)
        first = F.slice_axis(F.slice_axis(stacked, axis=1, begin=0, end=1), axis=2, begin=0,
                             end=1)
        rows = F.broadcast_add(F.reshape(weights, shape=(0, 1, -1)), first * 0)
        return F.reshape_like(F.batch_dot(rows, stacked), outputs[0])


class ChosenLayer(gluon.HybridBlock):
    """One chosen candidate (and the layer's BatchNorm when it has one): a derived network's
    layer, plain Gluon."""

    def __init__(self, spec: LayerSpec, choice: str, norm_before: bool, bn_inside: bool,
                 groups: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.spec = spec
        self.choice = choice
        with self.name_scope():
            self.bn = nn.BatchNorm(in_channels=spec.in_channels) if norm_before else None
            self.block = make_candidate(spec, choice, bn=bn_inside, groups=groups)

    def hybrid_forward(self, F, x):
        if self.bn is not None:
            x = self.bn(x)
        return self.block(x)


# --- heads ------------------------------------------------------------------------------------

class CosineHead(gluon.HybridBlock):
    """Logits s · cos(x, w_j): features and class weights L2-normalised (AM-Softmax, ArcFace).

    The margin needs the label, so it is applied by the loss (`margin_logits`); the network's
    output stays s · cos, whose arg-max is the prediction.
    """

    def __init__(self, classes: int, in_units: int, kind: str, margin: float, scale: float,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.kind, self.margin, self.scale = kind, float(margin), float(scale)
        self.classes = classes
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(classes, in_units),
                                          init=mx.init.Xavier(magnitude=2))

    def hybrid_forward(self, F, x, weight):
        features = F.L2Normalization(F.flatten(x), mode="instance", eps=1e-8)
        weight = F.L2Normalization(weight, mode="instance", eps=1e-8)
        cosine = F.FullyConnected(features, weight, no_bias=True, num_hidden=self.classes)
        return cosine * self.scale


def margin_logits(F: Any, logits: Any, label: Any, kind: str, margin: float,
                  scale: float) -> Any:
    """The training logits of a margin head from its output s·cos θ_j and the labels.

    amsoftmax (Wang et al. 2018, "Additive Margin Softmax"): the target's s·cos θ_y becomes
    s·(cos θ_y − m). arcface (Deng et al. 2019): it becomes s·cos(θ_y + m) while θ_y + m ≤ π,
    else s·(cos θ_y − m·sin m) (InsightFace's rule, keeping the logit decreasing in θ_y).
    softmax: unchanged.
    """
    if kind == "softmax":
        return logits
    classes = logits.shape[1]
    target = F.one_hot(label, depth=classes)
    cosine = F.clip(logits / scale, -1.0, 1.0)
    if kind == "amsoftmax":
        target_cos = cosine - margin
    elif kind == "arcface":
        sine = F.sqrt(F.clip(1.0 - cosine * cosine, 0.0, 1.0))
        with_margin = cosine * math.cos(margin) - sine * math.sin(margin)
        fallback = cosine - margin * math.sin(margin)
        target_cos = F.where(cosine > math.cos(math.pi - margin), with_margin, fallback)
    else:
        raise ConfigError(f"unknown head {kind!r}; one of {', '.join(HEADS)}")
    return scale * (cosine + target * (target_cos - cosine))


def make_head(head: str, classes: int, in_units: int, margin: float | None,
              scale: float | None) -> gluon.HybridBlock:
    if head == "softmax":
        return nn.Dense(classes, in_units=in_units, prefix="head_")
    if head not in HEAD_DEFAULTS:
        raise ConfigError(f"unknown head {head!r}; one of {', '.join(HEADS)}")
    default_margin, default_scale = HEAD_DEFAULTS[head]
    return CosineHead(classes, in_units, head,
                      default_margin if margin is None else margin,
                      default_scale if scale is None else scale, prefix="head_")


# --- networks ---------------------------------------------------------------------------------

def _parse_choices(choices: Any, specs: Sequence[LayerSpec]) -> list[str] | None:
    """None (supernet), or one candidate per layer from a list, one name or "a,b,c"."""
    if choices is None:
        return None
    if isinstance(choices, str):
        names = [c.strip() for c in choices.split(",")] if "," in choices else [choices] * len(specs)
    else:
        names = [str(c) for c in choices]
    if len(names) != len(specs):
        raise ArchitectureError(f"choices name {len(names)} blocks but the space has "
                                f"{len(specs)} searchable layers")
    for spec, name in zip(specs, names):
        if name not in spec.candidates:
            raise ArchitectureError(f"layer {spec.name} has no candidate {name!r}; its "
                                    f"candidates: {', '.join(spec.candidates)}")
    return names


class _SearchSpaceNet(gluon.HybridBlock):
    """stem -> searchable layers -> tail -> head; the supernet takes mixing weights."""

    specs: list[LayerSpec]
    space: str

    def _set_space(self, width_multiplier: float, channel_divisor: int, choices: Any) -> None:
        """The searchable layers of `space` at this width, and the chosen candidates (None
        for the supernet)."""
        if float(width_multiplier) <= 0:
            raise ConfigError(f"width_multiplier must be > 0, got {width_multiplier}")
        self.specs = layer_specs(self.space, width_multiplier, _check_divisor(channel_divisor))
        self.choices = _parse_choices(choices, self.specs)

    def _stem(self, in_channels: int, stride: int) -> nn.HybridSequential:
        """3x3 convolution -> BN -> ReLU to the first searchable layer's width (call inside
        the network's name scope, so parameter names stay those of the network)."""
        width = self.specs[0].in_channels
        stem = nn.HybridSequential(prefix="stem_")
        stem.add(nn.Conv2D(width, 3, strides=_positive("stem_stride", stride), padding=1,
                           in_channels=_positive("in_channels", in_channels), use_bias=False),
                 nn.BatchNorm(in_channels=width), nn.Activation("relu"))
        return stem

    def _build_layers(self, choices: list[str] | None, norm_before: bool, bn_inside: bool,
                      groups: int) -> None:
        self._layer_args = (norm_before, bn_inside, groups)
        self.layers = nn.HybridSequential(prefix="")
        for spec in self.specs:
            if choices is None:
                self.layers.add(MixedLayer(spec, norm_before, bn_inside, groups,
                                           prefix=f"layer{spec.index}_"))
            else:
                self.layers.add(self.chosen_layer(spec.index, choices[spec.index]))

    def chosen_layer(self, index: int, choice: str) -> ChosenLayer:
        """Layer `index` with candidate `choice` alone, as a derived network builds it (also
        used to time one candidate at its place)."""
        return ChosenLayer(self.specs[index], choice, *self._layer_args,
                           prefix=f"layer{index}_")

    @property
    def is_supernet(self) -> bool:
        return self.choices is None

    def hybrid_forward(self, F, x, *weights):
        x = self.stem(x)
        if weights and len(weights) != len(self.specs):
            raise ValueError(f"expected {len(self.specs)} mixing weights, got {len(weights)}")
        for index, layer in enumerate(self.layers):
            x = layer(x, weights[index]) if weights else layer(x)
        return self.head(self.tail(x))


def layer_specs(name: str, width_multiplier: float = 1.0, channel_divisor: int = 8) -> list[LayerSpec]:
    """The searchable layers of space `name` ("fbnet" or "fbnet_se") at a width."""
    specs: list[LayerSpec] = []
    if name == "fbnet":
        in_channels = scaled_width(FBNET_STEM, width_multiplier, channel_divisor)
        for stage, (width, count, first_stride) in enumerate(FBNET_STAGES):
            out = scaled_width(width, width_multiplier, channel_divisor)
            for position in range(count):
                candidates = FBNET_CANDIDATES if position else FBNET_CANDIDATES[:-1]
                specs.append(LayerSpec(f"layers.{len(specs)}", in_channels, out,
                                       first_stride if position == 0 else 1, candidates,
                                       stage, len(specs)))
                in_channels = out
    elif name == "fbnet_se":
        in_channels = scaled_width(FBNET_SE_STEM, width_multiplier, channel_divisor)
        for stage, (width, count, first_stride) in enumerate(FBNET_SE_STAGES):
            out = scaled_width(width, width_multiplier, channel_divisor)
            last_stage = stage == len(FBNET_SE_STAGES) - 1
            for position in range(count):
                candidates = (FBNET_SE_CANDIDATES if last_stage and position
                              else FBNET_SE_CANDIDATES[:6])
                specs.append(LayerSpec(f"layers.{len(specs)}", in_channels, out,
                                       first_stride if position == 0 else 1, candidates,
                                       stage, len(specs)))
                in_channels = out
    else:
        raise ConfigError(f"unknown FBNet space {name!r}; one of fbnet, fbnet_se")
    return specs


def _check_divisor(channel_divisor: int) -> int:
    divisor = _positive("channel_divisor", channel_divisor)
    if divisor % 2:
        raise ConfigError(f"channel_divisor must be even (group-2 candidates split channels in "
                          f"two), got {divisor}")
    return divisor


class FBNet(_SearchSpaceNet):
    """The FBNet space (module docstring). `choices=None` builds the supernet."""

    space = "fbnet"

    def __init__(self, classes: int = 1000, in_channels: int = 3, choices: Any = None,
                 width_multiplier: float = 1.0, channel_divisor: int = 8, stem_stride: int = 2,
                 feature_dim: int | None = None, last_kernel: int = 1, bn: str = "inside",
                 head: str = "softmax", margin: float | None = None,
                 scale: float | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if bn not in ("inside", "outside"):
            raise ConfigError(f"bn must be 'inside' (the paper) or 'outside' (seed 003), got {bn!r}")
        if last_kernel not in (1, 3):
            raise ConfigError(f"last_kernel must be 1 (the paper) or 3 (seed 003), got {last_kernel!r}")
        self._set_space(width_multiplier, channel_divisor, choices)
        feature_dim = _positive("feature_dim", 1984 if feature_dim is None else feature_dim)
        last = self.specs[-1].out_channels
        with self.name_scope():
            self.stem = self._stem(in_channels, stem_stride)
            self._build_layers(self.choices, bn == "outside", bn == "inside", 2)
            self.tail = nn.HybridSequential(prefix="tail_")
            self.tail.add(nn.Conv2D(feature_dim, last_kernel, padding=last_kernel // 2,
                                    in_channels=last, use_bias=False),
                          nn.BatchNorm(in_channels=feature_dim), nn.Activation("relu"),
                          nn.GlobalAvgPool2D(), nn.Flatten())
            self.head = make_head(head, _positive("classes", classes), feature_dim, margin, scale)


class FBNetSE(_SearchSpaceNet):
    """The FBNet-SE space (module docstring). `choices=None` builds the supernet."""

    space = "fbnet_se"

    def __init__(self, classes: int = 1000, in_channels: int = 3, choices: Any = None,
                 width_multiplier: float = 1.0, channel_divisor: int = 8, stem_stride: int = 1,
                 feature_dim: int | None = None, groups: int = 2, head: str = "softmax",
                 margin: float | None = None, scale: float | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._set_space(width_multiplier, channel_divisor, choices)
        feature_dim = _positive("feature_dim", 192 if feature_dim is None else feature_dim)
        last = self.specs[-1].out_channels
        with self.name_scope():
            self.stem = self._stem(in_channels, stem_stride)
            self.stem.add(nn.MaxPool2D(3, 2, 1))
            self._build_layers(self.choices, False, True, _positive("groups", groups))
            self.tail = nn.HybridSequential(prefix="tail_")
            self.tail.add(nn.GlobalAvgPool2D(), nn.Flatten(),
                          nn.Dense(feature_dim, in_units=last))
            self.head = make_head(head, _positive("classes", classes), feature_dim, margin, scale)


def fbnet_symbol(name: str = "fbnet", choices: Any = None, data: Any = None,
                 prefix: str | None = None, **options: Any) -> mx.sym.Symbol:
    """The `mx.sym.Symbol` of any network of a space (derived or sampled with `choices`, the
    supernet without), for MXNet's Module API. It is traced from the same Gluon blocks, so its
    argument names are the Gluon network's parameter names (built with the same `prefix`,
    default "<name>_"), and it computes what that network computes with those weights. The
    supernet's mixing weights are inputs `mix0`, `mix1`, ... of shape (batch or 1, candidates).
    """
    factory = {"fbnet": FBNet, "fbnet_se": FBNetSE}.get(name)
    if factory is None:
        raise ConfigError(f"unknown FBNet space {name!r}; one of fbnet, fbnet_se")
    net = factory(choices=choices, prefix=f"{name}_" if prefix is None else prefix, **options)
    data = mx.sym.var("data") if data is None else data
    if net.is_supernet:
        return net(data, *[mx.sym.var(f"mix{i}") for i in range(len(net.specs))])
    return net(data)
