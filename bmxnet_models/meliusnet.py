"""MeliusNet: alternating DenseBlocks (more features) and ImprovementBlocks (better features).

Bethge, Bartz, Yang, Chen, Meinel, "MeliusNet: Can Binary Neural Networks Achieve MobileNet-level
Accuracy?" (arXiv:2001.05936, 2020). Facts taken from the authors' code (hpi-xnor/
BMXNet-v2-examples ``binary_models/meliusnet.py``, ``basenet_dense.py``, ``common_layers.py``)
and larq/zoo ``larq_zoo/literature/meliusnet.py``:

- DenseBlock: BatchNorm -> binary 3x3 convolution producing ``growth`` (64) channels, which are
  concatenated to the input;
- ImprovementBlock: BatchNorm -> binary 3x3 convolution producing 64 channels, added to the
  newest 64 channels of the input (the others pass unchanged);
- one "block" of the paper is a DenseBlock followed by an ImprovementBlock; blocks per stage:
  MeliusNet-22: 4, 5, 4, 4; -29: 4, 6, 8, 6; -42: 5, 8, 14, 10; -59: 6, 12, 24, 12;
- Transition (full precision): BatchNorm -> 2x2/2 max pooling -> ReLU -> 1x1 convolution without
  bias, reducing the channels to 160, 224, 256 (22), 128, 192, 256 (29), 160, 256, 416 (42) and
  192, 320, 544 (59): the ``reduction`` factors of BMXNet-v2-examples (e.g. 160/320, 224/480,
  256/480 for 22, channels rounded to multiples of 32) and larq-zoo's ``transition_features``;
- stem ``imagenet`` is the paper's grouped stem: 3x3/2 convolution to 32 channels, BatchNorm,
  ReLU, 3x3 convolution with 4 groups (32), BatchNorm, ReLU, 3x3 convolution with 8 groups (64),
  BatchNorm, ReLU, 3x3/2 max pooling (``grouped_stem`` in common_layers.py); stem ``thumbnail``
  is a single 3x3/1 convolution (for inputs of about 32 pixels);
- the network ends with BatchNorm, ReLU, global average pooling and a full-precision dense layer.

``base_channels`` (64 in the paper) is both the growth rate and the stem's output width, as the
paper uses 64 for both (``default_init_features`` and ``default_growth_rate`` in
basenet_dense.py); transition widths scale with it (rounded to multiples of base_channels / 2,
i.e. 32 at the paper's width), so small values give tiny test networks of the same shape.

The max pooling of a transition rounds the output size up, as larq-zoo's ``padding="same"``:
identical on even sizes, and a 1x1 map stays 1x1 instead of vanishing (`CeilMaxPool2D`).

Custom networks from a string (seed 000): ``D`` dense block, ``I`` improvement block, ``S``
skipped dense block (a binary 1x1 convolution producing the same growth, padding 0, so the
concatenation still fits; the original's padding 1 broke it), ``T`` transition. The name is
``meliusnet_custom:DTSI`` (every transition halves the channels, the original's ``_custom``
reduction) or ``meliusnet22_custom:...`` (exactly three transitions with MeliusNet-22's
reductions; likewise 29, 42, 59), which is what a derived ENAS architecture converts to.

The same two block classes serve plain networks, custom strings and ENAS: `DenseBlockEnas` and
`ImprovementBlockEnas` are decorated with
``enas_unit(replace_by_skip_connection=(True, False))`` (seed 000, separate
parameters per candidate). Called with ``replace_by_skip_connection=`` they return a plain block,
without it an `EnasUnit`: a skipped dense block is the 1x1 convolution, a skipped improvement
block is the identity.
"""
from __future__ import annotations

from typing import Any, Sequence

from mxnet import gluon
from mxnet.gluon import nn

from bmxnet_models.binary import (QConv2D, check_activation, check_binary_padding,
                                  check_weight_scaling)
from bmxnet_models.enas.unit import enas_unit
from lightnas_cli.errors import ArchitectureError, ConfigError

__all__ = ["DenseBlockEnas", "ImprovementBlockEnas", "DenseBlock", "ImprovementBlock",
           "Transition", "CeilMaxPool2D", "MeliusNet", "MELIUSNET_SPEC", "STEMS", "CUSTOM_LETTERS",
           "meliusnet22", "meliusnet29", "meliusnet42", "meliusnet59", "meliusnet_custom",
           "meliusnet_sized_custom",
           "parse_custom_string", "size_layout", "size_reductions", "transition_width"]

#: Per size: blocks (DenseBlock + ImprovementBlock) per stage, and the transition widths at the
#: paper's growth rate of 64 (BMXNet-v2-examples meliusnet_spec; larq-zoo transition_features).
MELIUSNET_SPEC: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    22: ((4, 5, 4, 4), (160, 224, 256)),
    29: ((4, 6, 8, 6), (128, 192, 256)),
    42: ((5, 8, 14, 10), (160, 256, 416)),
    59: ((6, 12, 24, 12), (192, 320, 544)),
}
PAPER_BASE_CHANNELS = 64
STEMS = ("imagenet", "thumbnail")
#: Letters of a custom MeliusNet string and what they build.
CUSTOM_LETTERS = {"D": "dense block (binary 3x3 conv, concatenated)",
                  "I": "improvement block (binary 3x3 conv added to the newest channels)",
                  "S": "skipped dense block (binary 1x1 conv, concatenated)",
                  "T": "transition (max pool + full-precision 1x1 conv)"}
#: Reduction of every transition of `meliusnet_custom:` (the original's `_custom` spec: 1/2).
GENERIC_REDUCTION = 0.5

_SKIP = "replace_by_skip_connection"


def size_layout(size: int) -> str:
    """The custom string of a zoo size: "DI" per block, stages joined by "T"."""
    blocks, _ = _spec(size)
    return "T".join("DI" * count for count in blocks)


def size_reductions(size: int) -> tuple[float, ...]:
    """Transition reduction factors of a size: width / channels entering the transition (at 64)."""
    blocks, widths = _spec(size)
    features, factors = PAPER_BASE_CHANNELS, []
    for count, width in zip(blocks, widths):
        features += count * PAPER_BASE_CHANNELS
        factors.append(width / features)
        features = width
    return tuple(factors)


def transition_width(features: int, reduction: float, base_channels: int) -> int:
    """Channels after a transition: ``features * reduction`` rounded to multiples of base/2.

    BMXNet-v2-examples rounds to multiples of 32 at the paper's width of 64; rounding to
    ``base_channels // 2`` keeps every width proportional for smaller networks.
    """
    unit = max(1, int(base_channels) // 2)
    return max(unit, int(round(features * reduction / unit)) * unit)


def _spec(size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if size not in MELIUSNET_SPEC:
        raise ConfigError(f"MeliusNet-{size} is not defined; choose one of "
                          f"{sorted(MELIUSNET_SPEC)}")
    return MELIUSNET_SPEC[size]


def _marked(text: str, index: int) -> str:
    return f"{text[:index]}[{text[index]}]{text[index + 1:]}" if index < len(text) else text


def parse_custom_string(text: str, transitions: int | None = None,
                        name: str = "meliusnet_custom") -> list[str]:
    """Validate a custom MeliusNet string and split it into stages (between the ``T``s).

    Errors name the 1-based position: unknown letters, ``I`` before any dense block (``D`` or
    ``S``: an improvement block improves channels a dense block added), a ``T`` that starts the
    string, follows another ``T`` or ends the string (empty stage), and, for sized variants, a
    number of transitions other than ``transitions``.
    """
    source = f"{name}:{text}"
    if not text:
        raise ArchitectureError(f"{source}: the string is empty; write blocks with the letters "
                                f"{_letters_help()}, e.g. {name}:DTSI")
    seen_dense = False
    count_t = 0
    for index, letter in enumerate(text):
        where = f"position {index + 1} ({_marked(text, index)})"
        if letter not in CUSTOM_LETTERS:
            hint = " (letters are upper case)" if letter.upper() in CUSTOM_LETTERS else ""
            raise ArchitectureError(f"{source}: unknown letter {letter!r} at {where}{hint}; "
                                    f"allowed: {_letters_help()}")
        if letter in "DS":
            seen_dense = True
        elif letter == "I" and not seen_dense:
            raise ArchitectureError(f"{source}: improvement block 'I' at {where} comes before "
                                    f"any dense block; an improvement block improves the "
                                    f"channels a dense block ('D' or 'S') added, so put one "
                                    f"before it")
        elif letter == "T":
            count_t += 1
            if index == 0 or text[index - 1] == "T":
                raise ArchitectureError(f"{source}: transition 'T' at {where} follows no block "
                                        f"(empty stage); put at least one block before it")
            if index == len(text) - 1:
                raise ArchitectureError(f"{source}: the string ends with a transition 'T' at "
                                        f"{where}; a transition must be followed by blocks "
                                        f"(remove it or add blocks after it)")
            if transitions is not None and count_t > transitions:
                raise ArchitectureError(f"{source}: transition 'T' at {where} is number "
                                        f"{count_t}, but {name} has exactly {transitions}")
    if transitions is not None and count_t != transitions:
        raise ArchitectureError(f"{source}: {name} needs exactly {transitions} transitions 'T' "
                                f"(one between each of its {transitions + 1} stages), found "
                                f"{count_t}")
    return text.split("T")


def _letters_help() -> str:
    return ", ".join(f"{letter} = {meaning}" for letter, meaning in CUSTOM_LETTERS.items())


class _BinaryOptions:
    """Options every binary convolution of a MeliusNet shares (one place to validate them)."""

    def __init__(self, grad_cancel: float, weight_scaling: str, activation: str,
                 binary_padding: str):
        self.grad_cancel = float(grad_cancel)
        self.weight_scaling = check_weight_scaling(weight_scaling)
        self.activation = check_activation(activation)
        self.binary_padding = check_binary_padding(binary_padding)

    def as_kwargs(self) -> dict:
        return {"grad_cancel": self.grad_cancel, "weight_scaling": self.weight_scaling,
                "activation": self.activation, "binary_padding": self.binary_padding}


def _binary_conv(channels: int, kernel: int, in_channels: int, grad_cancel: float,
                 weight_scaling: str, activation: str, binary_padding: str) -> QConv2D:
    return QConv2D(channels, kernel, padding=kernel // 2, in_channels=in_channels, bits=1,
                   clip=grad_cancel, weight_scaling=weight_scaling, activation=activation,
                   binary_padding=binary_padding)


@enas_unit(replace_by_skip_connection=(True, False))
class DenseBlockEnas(gluon.HybridBlock):
    """``concat(x, conv(BatchNorm(x)))``: adds ``growth`` channels.

    The binary convolution is 3x3 (padding 1); when the block is skipped
    (``replace_by_skip_connection=True``, the custom string's ``S``) it is 1x1 with padding 0,
    which still adds ``growth`` channels so the rest of the network keeps its shapes.
    """

    def __init__(self, growth: int, in_channels: int, replace_by_skip_connection: bool = False,
                 grad_cancel: float = 1.0, weight_scaling: str = "none",
                 activation: str = "det_sign", binary_padding: str = "zero",
                 prefix: str | None = None, params: gluon.ParameterDict | None = None):
        super().__init__(prefix=prefix, params=params)
        self.growth = int(growth)
        self.in_channels = int(in_channels)
        self.replace_by_skip_connection = bool(replace_by_skip_connection)
        kernel = 1 if self.replace_by_skip_connection else 3
        with self.name_scope():
            self.bn = nn.BatchNorm(in_channels=self.in_channels)
            self.conv = _binary_conv(self.growth, kernel, self.in_channels, grad_cancel,
                                     weight_scaling, activation, binary_padding)

    @property
    def out_channels(self) -> int:
        return self.in_channels + self.growth

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return F.concat(x, self.conv(self.bn(x)), dim=1)


@enas_unit(replace_by_skip_connection=(True, False))
class ImprovementBlockEnas(gluon.HybridBlock):
    """Adds ``conv(BatchNorm(x))`` (binary 3x3, ``growth`` channels) to the newest ``growth``
    channels of ``x``; skipped (``replace_by_skip_connection=True``) it is the identity."""

    def __init__(self, growth: int, in_channels: int, replace_by_skip_connection: bool = False,
                 grad_cancel: float = 1.0, weight_scaling: str = "none",
                 activation: str = "det_sign", binary_padding: str = "zero",
                 prefix: str | None = None, params: gluon.ParameterDict | None = None):
        super().__init__(prefix=prefix, params=params)
        self.growth = int(growth)
        self.in_channels = int(in_channels)
        self.replace_by_skip_connection = bool(replace_by_skip_connection)
        if self.in_channels < self.growth:
            raise ArchitectureError(f"an improvement block needs at least growth={self.growth} "
                                    f"input channels, got {self.in_channels}")
        if not self.replace_by_skip_connection:
            with self.name_scope():
                self.bn = nn.BatchNorm(in_channels=self.in_channels)
                self.conv = _binary_conv(self.growth, 3, self.in_channels, grad_cancel,
                                         weight_scaling, activation, binary_padding)

    @property
    def out_channels(self) -> int:
        return self.in_channels

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        if self.replace_by_skip_connection:
            # A copy, not `x` itself: a hybridized block whose output is its input detaches
            # the autograd graph in MXNet 1.9.1 (no gradient reaches the layers before it).
            return F.identity(x)
        improvement = self.conv(self.bn(x))
        if self.in_channels == self.growth:
            return x + improvement
        kept = self.in_channels - self.growth
        return F.concat(F.slice_axis(x, axis=1, begin=0, end=kept),
                        F.slice_axis(x, axis=1, begin=kept, end=None) + improvement, dim=1)


#: The plain block classes (the names above are `enas_unit` factories), for isinstance checks.
DenseBlock: type = DenseBlockEnas.block_class
ImprovementBlock: type = ImprovementBlockEnas.block_class


class CeilMaxPool2D(gluon.HybridBlock):
    """2x2/2 max pooling with output size ``ceil(H / 2)``, also for a 1x1 map.

    MXNet's "full" pooling convention still refuses a window larger than its input, so the last
    row and column are replicated once and a "valid" pooling follows: on even sizes this equals
    plain 2x2/2 pooling, on odd sizes it is larq-zoo's ``padding="same"`` (replicated values do
    not change a maximum).
    """

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        x = F.pad(x, mode="edge", pad_width=(0, 0, 0, 0, 0, 1, 0, 1))
        return F.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max",
                         pooling_convention="valid", name="fwd")


class Transition(nn.HybridSequential):
    """Full-precision downsampling: BatchNorm, 2x2/2 max pool (`CeilMaxPool2D`), ReLU, 1x1
    convolution without bias (BMXNet-v2-examples DOWNSAMPLE_STRUCT "bn,max_pool,relu,fp_conv")."""

    def __init__(self, in_channels: int, channels: int, prefix: str | None = None):
        super().__init__(prefix=prefix)
        self.in_channels = int(in_channels)
        self.channels = int(channels)
        with self.name_scope():
            self.add(nn.BatchNorm(in_channels=self.in_channels),
                     CeilMaxPool2D(),
                     nn.Activation("relu"),
                     nn.Conv2D(self.channels, 1, use_bias=False, in_channels=self.in_channels))


class MeliusNet(gluon.HybridBlock):
    """A MeliusNet from a layout string (``D``/``I``/``S``/``T``) and transition reductions.

    With ``enas=True`` every ``D`` and ``I`` becomes an `EnasUnit` choosing to skip it or not
    (inside ``fixed_choices`` a plain block with the given choice); the layout may then hold no
    ``S``. Stages are children named ``stage1``, ``stage2``, ... holding ``dense<k>`` /
    ``improve<k>`` blocks, transitions are ``transition1``, ..., so ENAS decisions read
    ``stage2.dense3``.
    """

    def __init__(self, layout: str, reductions: Sequence[float], classes: int = 1000,
                 stem: str = "imagenet", base_channels: int = 64, grad_cancel: float = 1.0,
                 weight_scaling: str = "none", activation: str = "det_sign",
                 binary_padding: str = "zero", in_channels: int = 3, enas: bool = False,
                 name: str = "meliusnet_custom", **kwargs: Any):
        super().__init__(**kwargs)
        if stem not in STEMS:
            raise ConfigError(f"unknown MeliusNet stem {stem!r}; use 'imagenet' (the paper's "
                              f"grouped stem, for about 224 pixels) or 'thumbnail' (3x3 conv, "
                              f"for about 32 pixels)")
        if int(base_channels) < 1:
            raise ConfigError(f"base_channels must be a positive integer, got {base_channels}")
        if stem == "imagenet" and int(base_channels) % 16:
            raise ConfigError(f"the imagenet (grouped) stem needs base_channels divisible by 16 "
                              f"(its convolutions have 4 and 8 groups on base/2 channels), got "
                              f"{base_channels}; use stem=thumbnail for tiny networks")
        if int(classes) < 1:
            raise ConfigError(f"classes must be a positive integer, got {classes}")
        stages = layout.split("T")
        if len(reductions) != len(stages) - 1:
            raise ArchitectureError(f"{name}:{layout}: {len(stages) - 1} transitions but "
                                    f"{len(reductions)} reduction factors")
        if enas and "S" in layout:
            raise ArchitectureError(f"{name}:{layout}: an ENAS supernet layout holds only D, I "
                                    f"and T; its units choose whether to skip")
        self.layout = layout
        self.model_name = name
        self.reductions = tuple(float(r) for r in reductions)
        self.classes = int(classes)
        self.stem_kind = stem
        self.base_channels = int(base_channels)
        self.growth = self.base_channels
        self.options = _BinaryOptions(grad_cancel, weight_scaling, activation, binary_padding)
        # Expected data channels, kept for summaries; the first convolution infers the actual
        # count from the data (deferred initialization).
        self.in_channels = int(in_channels)
        self.enas = bool(enas)
        self._parts: list[str] = []
        widths: list[int] = []
        with self.name_scope():
            self.stem = self._make_stem()
            self._parts.append("stem")
            channels = self.base_channels
            for index, tokens in enumerate(stages):
                stage, channels = self._make_stage(index, tokens, channels)
                setattr(self, f"stage{index + 1}", stage)
                self._parts.append(f"stage{index + 1}")
                if index < len(self.reductions):
                    width = transition_width(channels, self.reductions[index],
                                             self.base_channels)
                    setattr(self, f"transition{index + 1}",
                            Transition(channels, width, prefix=f"transition{index + 1}_"))
                    self._parts.append(f"transition{index + 1}")
                    widths.append(width)
                    channels = width
            self.head = nn.HybridSequential(prefix="head_")
            with self.head.name_scope():
                self.head.add(nn.BatchNorm(in_channels=channels), nn.Activation("relu"),
                              nn.GlobalAvgPool2D(), nn.Flatten())
            self._parts.append("head")
            self.output = nn.Dense(self.classes, in_units=channels)
        self.transition_widths = tuple(widths)
        self.out_features = channels

    def _make_stem(self) -> nn.HybridSequential:
        stem = nn.HybridSequential(prefix="stem_")
        base = self.base_channels
        with stem.name_scope():
            if self.stem_kind == "thumbnail":
                stem.add(nn.Conv2D(base, 3, strides=1, padding=1, use_bias=False))
                return stem
            half = base // 2
            # in_channels=0 on the first convolution lets it follow the data (1-channel too).
            stem.add(nn.Conv2D(half, 3, strides=2, padding=1, use_bias=False),
                     nn.BatchNorm(in_channels=half), nn.Activation("relu"),
                     nn.Conv2D(half, 3, padding=1, groups=4, use_bias=False, in_channels=half),
                     nn.BatchNorm(in_channels=half), nn.Activation("relu"),
                     nn.Conv2D(base, 3, padding=1, groups=8, use_bias=False, in_channels=half),
                     nn.BatchNorm(in_channels=base), nn.Activation("relu"),
                     nn.MaxPool2D(pool_size=3, strides=2, padding=1))
        return stem

    def _make_stage(self, index: int, tokens: str,
                    channels: int) -> tuple[nn.HybridSequential, int]:
        stage = nn.HybridSequential(prefix=f"stage{index + 1}_")
        options = self.options.as_kwargs()
        dense_count = 0
        with stage.name_scope():
            for letter in tokens:
                if letter in "DS":
                    dense_count += 1
                    if self.enas:
                        block = DenseBlockEnas(self.growth, channels, **options)
                    else:
                        block = DenseBlockEnas(self.growth, channels,
                                               replace_by_skip_connection=letter == "S", **options)
                    stage.register_child(block, f"dense{dense_count}")
                    channels += self.growth
                elif letter == "I":
                    if channels < self.growth:
                        raise ArchitectureError(
                            f"{self.model_name}:{self.layout}: an improvement block in stage "
                            f"{index + 1} sees {channels} channels, fewer than the growth "
                            f"{self.growth}; put a dense block before it")
                    if self.enas:
                        block = ImprovementBlockEnas(self.growth, channels, **options)
                    else:
                        block = ImprovementBlockEnas(self.growth, channels,
                                                     replace_by_skip_connection=False, **options)
                    stage.register_child(block, f"improve{dense_count}")
                else:
                    raise ArchitectureError(f"{self.model_name}:{self.layout}: unknown letter "
                                            f"{letter!r}; allowed: {_letters_help()}")
        return stage, channels

    @property
    def blocks(self) -> list[gluon.HybridBlock]:
        """Dense and improvement blocks (or their `EnasUnit`s) in network order."""
        return [block for part in self._parts if part.startswith("stage")
                for block in getattr(self, part)._children.values()]

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        for part in self._parts:
            x = getattr(self, part)(x)
        return self.output(x)


def _build_size(size: int, classes: int, stem: str, base_channels: int, grad_cancel: float,
                weight_scaling: str, activation: str, binary_padding: str, in_channels: int,
                enas: bool, **kwargs: Any) -> MeliusNet:
    return MeliusNet(size_layout(size), size_reductions(size), classes=classes, stem=stem,
                     base_channels=base_channels, grad_cancel=grad_cancel,
                     weight_scaling=weight_scaling, activation=activation,
                     binary_padding=binary_padding, in_channels=in_channels, enas=enas,
                     name=f"meliusnet{size}", **kwargs)


def meliusnet22(classes: int = 1000, stem: str = "imagenet", base_channels: int = 64,
                grad_cancel: float = 1.0, weight_scaling: str = "none",
                activation: str = "det_sign", binary_padding: str = "zero", in_channels: int = 3,
                enas: bool = False, **kwargs: Any) -> MeliusNet:
    """MeliusNet-22: 4, 5, 4, 4 blocks; transitions to 160, 224, 256 channels (at width 64)."""
    return _build_size(22, classes, stem, base_channels, grad_cancel, weight_scaling,
                       activation, binary_padding, in_channels, enas, **kwargs)


def meliusnet29(classes: int = 1000, stem: str = "imagenet", base_channels: int = 64,
                grad_cancel: float = 1.0, weight_scaling: str = "none",
                activation: str = "det_sign", binary_padding: str = "zero", in_channels: int = 3,
                enas: bool = False, **kwargs: Any) -> MeliusNet:
    """MeliusNet-29: 4, 6, 8, 6 blocks; transitions to 128, 192, 256 channels (at width 64)."""
    return _build_size(29, classes, stem, base_channels, grad_cancel, weight_scaling,
                       activation, binary_padding, in_channels, enas, **kwargs)


def meliusnet42(classes: int = 1000, stem: str = "imagenet", base_channels: int = 64,
                grad_cancel: float = 1.0, weight_scaling: str = "none",
                activation: str = "det_sign", binary_padding: str = "zero", in_channels: int = 3,
                enas: bool = False, **kwargs: Any) -> MeliusNet:
    """MeliusNet-42: 5, 8, 14, 10 blocks; transitions to 160, 256, 416 channels (at width 64)."""
    return _build_size(42, classes, stem, base_channels, grad_cancel, weight_scaling,
                       activation, binary_padding, in_channels, enas, **kwargs)


def meliusnet59(classes: int = 1000, stem: str = "imagenet", base_channels: int = 64,
                grad_cancel: float = 1.0, weight_scaling: str = "none",
                activation: str = "det_sign", binary_padding: str = "zero", in_channels: int = 3,
                enas: bool = False, **kwargs: Any) -> MeliusNet:
    """MeliusNet-59: 6, 12, 24, 12 blocks; transitions to 192, 320, 544 channels (at width 64)."""
    return _build_size(59, classes, stem, base_channels, grad_cancel, weight_scaling,
                       activation, binary_padding, in_channels, enas, **kwargs)


def meliusnet_custom(layout: str, classes: int = 1000, stem: str = "imagenet",
                     base_channels: int = 64, grad_cancel: float = 1.0,
                     weight_scaling: str = "none", activation: str = "det_sign",
                     binary_padding: str = "zero", in_channels: int = 3, enas: bool = False,
                     **kwargs: Any) -> MeliusNet:
    """``meliusnet_custom:LAYOUT``: any number of transitions, each halving the channels."""
    return _custom(None, layout, classes, stem, base_channels, grad_cancel, weight_scaling,
                   activation, binary_padding, in_channels, enas, **kwargs)


def meliusnet_sized_custom(size: int, layout: str, classes: int = 1000, stem: str = "imagenet",
                           base_channels: int = 64, grad_cancel: float = 1.0,
                           weight_scaling: str = "none", activation: str = "det_sign",
                           binary_padding: str = "zero", in_channels: int = 3,
                           enas: bool = False, **kwargs: Any) -> MeliusNet:
    """``meliusnet22_custom:LAYOUT`` etc.: exactly three transitions with that size's reductions
    (what a derived ENAS architecture of that size converts to)."""
    return _custom(size, layout, classes, stem, base_channels, grad_cancel, weight_scaling,
                   activation, binary_padding, in_channels, enas, **kwargs)


def _custom(size: int | None, layout: str, classes: int, stem: str, base_channels: int,
            grad_cancel: float, weight_scaling: str, activation: str, binary_padding: str,
            in_channels: int, enas: bool, **kwargs: Any) -> MeliusNet:
    name = "meliusnet_custom" if size is None else f"meliusnet{size}_custom"
    if enas:
        raise ConfigError(f"{name}:{layout} is a fixed architecture and has nothing to search; "
                          f"search over meliusnet22/29/42/59 instead (their derived "
                          f"architectures convert to meliusnetNN_custom strings)")
    if size is None:
        stages = parse_custom_string(layout, None, name)
        reductions: tuple[float, ...] = (GENERIC_REDUCTION,) * (len(stages) - 1)
    else:
        blocks, _ = _spec(size)
        parse_custom_string(layout, len(blocks) - 1, name)
        reductions = size_reductions(size)
    return MeliusNet(layout, reductions, classes=classes, stem=stem, base_channels=base_channels,
                     grad_cancel=grad_cancel, weight_scaling=weight_scaling,
                     activation=activation, binary_padding=binary_padding,
                     in_channels=in_channels, enas=False, name=name, **kwargs)
