"""The searchable convolution shared by `PITConv1D` and `PITConv2D`.

Risso et al. (2021) and PLiNIO `methods/pit/nn/conv1d.py`: the layer keeps the full weight
tensor and multiplies it by binarized masks in every forward pass:

- α (one per output channel) zeroes whole filters; when a batch norm follows, the batch norm
  applies α instead (PLiNIO: y = α ⊙ BN(conv(x))), so the search sees what a channel would add;
- β (receptive field) and γ (dilation) mask kernel taps along each searched kernel axis; the
  binarized β ⊙ γ is an evenly spaced run of taps ending at the newest one.

The pruned plain layer (`export`) keeps the surviving filters, input channels and taps, so it
computes the same function; its padding is shifted so outputs stay aligned with the original.
"""
from __future__ import annotations

from typing import Any, Sequence

import mxnet as mx
import numpy as np
from mxnet import gluon, nd
from mxnet.gluon import nn

from lightnas_cli.search.pit.binarizer import DEFAULT_THRESHOLD, binarize
from lightnas_cli.search.pit.dilation_masker import PITDilationMasker, PITFrozenDilationMasker
from lightnas_cli.search.pit.features_calculator import (ConstFeaturesCalculator,
                                                         MaskerFeaturesCalculator, NormFn,
                                                         ThetaFn, default_norm, default_theta)
from lightnas_cli.search.pit.features_masker import PITFeaturesMasker, PITMasker
from lightnas_cli.search.pit.module import PITLayer
from lightnas_cli.search.pit.timestep_masker import PITFrozenTimestepMasker, PITTimestepMasker

LAYOUTS = {1: "NCW", 2: "NCHW"}


def initialize_missing(block: gluon.Block, ctx: Sequence[mx.Context]) -> None:
    """Initialise the parameters of `block` that have no data yet (new maskers)."""
    for param in block.collect_params().values():
        if param._data is None and not param._deferred_init:
            param.initialize(ctx=list(ctx))


def parameter_contexts(param: gluon.Parameter) -> list[mx.Context]:
    try:
        return param.list_ctx()
    except RuntimeError:
        raise ValueError(f"parameter {param.name} is not initialised: initialise the network "
                         f"and run it once before converting it to PIT") from None


class ShiftedConvMixin:
    """Crop and/or zero-pad the input asymmetrically before a convolution with padding 0.

    A pruned kernel that lost its oldest taps (or whose dilation grew) must read the same input
    positions as the masked kernel: the left padding shrinks by the lost span ("shift"), the
    right one stays. Gluon convolutions only pad symmetrically, hence this small wrapper.
    Put it before the Gluon convolution in the bases: it takes over that layer's ``padding``
    and crops/pads the input before the convolution's own forward.
    """

    def __init__(self, *args: Any, pad_before: Sequence[int], pad_after: Sequence[int],
                 **kwargs: Any):
        super().__init__(*args, padding=0, **kwargs)
        self._init_shift(pad_before, pad_after)

    def hybrid_forward(self, F: Any, x: Any, weight: Any, bias: Any = None) -> Any:
        return super().hybrid_forward(F, self._shift(F, x), weight, bias)

    def _init_shift(self, pad_before: Sequence[int], pad_after: Sequence[int]) -> None:
        self._pad_before = tuple(int(p) for p in pad_before)
        self._pad_after = tuple(int(p) for p in pad_after)

    def _shift(self, F: Any, x: Any) -> Any:
        # Pad first, crop second: a kernel that kept only taps reading the zero padding (a
        # 1-pixel map, say) would otherwise crop the whole input away before padding it.
        ndim = len(self._pad_before)
        pads = [(max(b, 0), a) for b, a in zip(self._pad_before, self._pad_after)]
        if any(p for pair in pads for p in pair):
            width = [0, 0, 0, 0] + [p for pair in pads for p in pair]
            if ndim == 1:
                x = F.expand_dims(x, axis=2)
                width = [0, 0, 0, 0, 0, 0] + list(pads[0])
            x = F.pad(x, mode="constant", constant_value=0, pad_width=tuple(width))
            if ndim == 1:
                x = F.reshape(x, shape=(0, 0, -1))
        for axis, before in enumerate(self._pad_before):
            if before < 0:
                x = F.slice_axis(x, axis=2 + axis, begin=-before, end=None)
        return x


class ShiftedConv1D(ShiftedConvMixin, nn.Conv1D):
    """A Conv1D reading its input through an asymmetric crop/pad (see `ShiftedConvMixin`)."""


class ShiftedConv2D(ShiftedConvMixin, nn.Conv2D):
    """A Conv2D reading its input through an asymmetric crop/pad (see `ShiftedConvMixin`)."""


def kept_taps(kernel_size: int, count: int, step: int) -> np.ndarray:
    """Kernel indices (oldest first) of `count` taps spaced `step` apart, ending at the newest."""
    ages = step * np.arange(count)
    return np.sort(kernel_size - 1 - ages)


class PITConvBase(PITLayer):
    """A convolution (full or depthwise) with α, and β/γ per searched kernel axis."""

    ndim = 0
    plain_class: type = nn.Conv1D
    shifted_class: type = ShiftedConv1D

    def __init__(self, conv: nn.Conv1D | nn.Conv2D,
                 out_features_masker: PITMasker | None = None,
                 timestep_maskers: Sequence[PITMasker] | None = None,
                 dilation_maskers: Sequence[PITMasker] | None = None,
                 threshold: float = DEFAULT_THRESHOLD, default_masker: bool = True):
        super().__init__(prefix=conv.prefix, threshold=threshold)
        kwargs = dict(conv._kwargs)
        if kwargs.get("layout") != LAYOUTS[self.ndim]:
            raise TypeError(f"{type(self).__name__} supports layout {LAYOUTS[self.ndim]} only, "
                            f"got {kwargs.get('layout')} in {conv.name}")
        self._kwargs = kwargs
        self.kernel_size = tuple(int(k) for k in kwargs["kernel"])
        self.stride = tuple(int(s) for s in kwargs["stride"])
        self.dilation = tuple(int(d) for d in kwargs["dilate"])
        self.padding = tuple(int(p) for p in kwargs["pad"])
        self.out_channels = int(kwargs["num_filter"])
        self.groups = int(kwargs["num_group"])
        ctx = parameter_contexts(conv.weight)
        self.in_channels = int(conv.weight.shape[1]) * self.groups
        self.depthwise = self.groups > 1 and self.groups == self.in_channels == self.out_channels
        if self.groups != 1 and not self.depthwise:
            raise TypeError(f"PIT supports full and depthwise convolutions, not {self.groups} "
                            f"groups ({conv.name}); exclude it with exclude_names")
        self._adopt("weight", conv.weight)
        self._adopt("bias", conv.bias)
        self.act = conv.act
        if out_features_masker is None and default_masker and not self.depthwise:
            out_features_masker = PITFeaturesMasker(self.out_channels, prefix=f"{self.prefix}out_")
        self._wiring.timestep = []
        self._wiring.dilation = []
        for axis, k in enumerate(self.kernel_size):
            # PLiNIO freezes rf and dilation when stride != 1; a 1-tap kernel has nothing to cut.
            searchable = self.stride[axis] == 1 and k > 1
            if timestep_maskers is not None:
                beta = timestep_maskers[axis]
            elif searchable:
                beta = PITTimestepMasker(k, prefix=f"{self.prefix}rf{axis}_")
            else:
                beta = PITFrozenTimestepMasker(k, prefix=f"{self.prefix}rf{axis}_")
            if dilation_maskers is not None:
                gamma = dilation_maskers[axis]
            elif searchable:
                gamma = PITDilationMasker(k, prefix=f"{self.prefix}dil{axis}_")
            else:
                gamma = PITFrozenDilationMasker(k, prefix=f"{self.prefix}dil{axis}_")
            self.timestep_maskers.append(beta)
            self.dilation_maskers.append(gamma)
            self._register_maskers(f"rf{axis}", [beta])
            self._register_maskers(f"dil{axis}", [gamma])
        if out_features_masker is not None:
            self.output_features_calculator = MaskerFeaturesCalculator(out_features_masker)
        else:
            self.output_features_calculator = ConstFeaturesCalculator(self.out_channels)
        initialize_missing(self, ctx)

    @property
    def timestep_maskers(self) -> list[PITMasker]:
        """β per kernel axis (frozen maskers where the receptive field is not searched)."""
        return self._wiring.timestep

    @property
    def dilation_maskers(self) -> list[PITMasker]:
        """γ per kernel axis (frozen maskers where the dilation is not searched)."""
        return self._wiring.dilation

    # --- forward ------------------------------------------------------------------------
    def _axis_mask(self, F: Any, params: dict, axis: int) -> Any:
        beta, gamma = self.timestep_maskers[axis], self.dilation_maskers[axis]
        parts = []
        for role, masker in ((f"rf{axis}", beta), (f"dil{axis}", gamma)):
            if not masker.frozen:
                parts.append(binarize(F, self._thetas(F, params, role)[0], self.threshold))
        if not parts:
            return None
        return parts[0] * parts[1] if len(parts) == 2 else parts[0]

    def _time_mask(self, F: Any, params: dict) -> Any:
        masks = [self._axis_mask(F, params, axis) for axis in range(self.ndim)]
        if all(m is None for m in masks):
            return None
        if self.ndim == 1:
            return F.reshape(masks[0], shape=(1, 1, -1))
        rows, cols = masks
        rows = F.reshape(rows, shape=(1, 1, -1, 1)) if rows is not None else None
        cols = F.reshape(cols, shape=(1, 1, 1, -1)) if cols is not None else None
        if rows is None:
            return cols
        if cols is None:
            return rows
        return F.broadcast_mul(rows, cols)

    def hybrid_forward(self, F: Any, x: Any, **params: Any) -> Any:
        weight = params["weight"]
        bias = params.get("bias")
        if self.bank_bound:
            fed = self.fed_masks()
            if "weight_mask" in fed:
                weight = weight * fed["weight_mask"]
            return self._convolve(F, x, weight, fed.get("bias", bias))
        time_mask = self._time_mask(F, params)
        if time_mask is not None:
            weight = F.broadcast_mul(weight, time_mask)
        if self.mask_output:
            channel_mask = self.output_features_calculator.mask_expr(
                F, self._binary_masks(F, params, "out"))
            if channel_mask is not None:
                shape = (-1,) + (1,) * (self.ndim + 1)
                weight = F.broadcast_mul(weight, F.reshape(channel_mask, shape=shape))
                if bias is not None:
                    bias = bias * channel_mask
        return self._convolve(F, x, weight, bias)

    def _convolve(self, F: Any, x: Any, weight: Any, bias: Any) -> Any:
        if bias is None:
            out = F.Convolution(x, weight, name="fwd", **self._kwargs)
        else:
            out = F.Convolution(x, weight, bias, name="fwd", **self._kwargs)
        return self.act(out) if self.act is not None else out

    # --- properties ---------------------------------------------------------------------
    @property
    def static_in_features(self) -> int:
        return self.in_channels

    @property
    def features_defining(self) -> bool:
        return not self.depthwise

    @property
    def train_rf(self) -> bool:
        return any(m.trainable for m in self.timestep_maskers)

    @train_rf.setter
    def train_rf(self, value: bool) -> None:
        for masker in self.timestep_maskers:
            masker.trainable = value
        self._clear_cached_op()

    @property
    def train_dilation(self) -> bool:
        return any(m.trainable for m in self.dilation_maskers)

    @train_dilation.setter
    def train_dilation(self, value: bool) -> None:
        for masker in self.dilation_maskers:
            masker.trainable = value
        self._clear_cached_op()

    def time_mask(self, axis: int = 0) -> np.ndarray:
        """Binarized tap mask of one kernel axis (oldest tap first)."""
        beta = self.timestep_maskers[axis].binary_mask(self.threshold)
        gamma = self.dilation_maskers[axis].binary_mask(self.threshold)
        return beta & gamma

    def tap_choice(self, axis: int = 0) -> tuple[int, int]:
        """(kept taps, dilation factor over the original) of one axis from the binary masks."""
        kept = np.flatnonzero(self.time_mask(axis))
        ages = np.sort(self.kernel_size[axis] - 1 - kept)
        if len(ages) <= 1:
            return 1, 1
        step = int(ages[1] - ages[0])
        expected = step * np.arange(len(ages))
        if not np.array_equal(ages, expected):
            raise AssertionError(f"{self.name}: taps {kept.tolist()} are not evenly spaced")
        return int(len(ages)), step

    @property
    def kernel_size_opt(self) -> tuple[int, ...]:
        return tuple(self.tap_choice(axis)[0] for axis in range(self.ndim))

    @property
    def dilation_opt(self) -> tuple[int, ...]:
        return tuple(self.tap_choice(axis)[1] * self.dilation[axis] for axis in range(self.ndim))

    def dilation_options(self, axis: int) -> list[int]:
        """Total dilations one axis can take (original dilation times 1, 2, 4, ...)."""
        return [self.dilation[axis] * d for d in self.dilation_maskers[axis].dilations]

    def time_searchable(self, axis: int) -> bool:
        return not (self.timestep_maskers[axis].frozen and self.dilation_maskers[axis].frozen)

    def k_eff(self, axis: int = 0, theta: ThetaFn | None = None,
              norm: NormFn | None = None) -> Any:
        """Soft effective kernel size along `axis` (PLiNIO `k_eff`): sum of normalised θβ·θγ."""
        beta, gamma = self.timestep_maskers[axis], self.dilation_maskers[axis]
        if beta.frozen and gamma.frozen:
            return self.kernel_size[axis]
        theta = theta or default_theta()
        theta_beta, theta_gamma = theta(beta), theta(gamma)
        norm = norm or default_norm(theta_beta.context)
        return ((theta_beta * norm(beta)) * (theta_gamma * norm(gamma))).sum()

    def cost_terms(self, soft: bool, theta: ThetaFn | None = None,
                   norm: NormFn | None = None) -> dict:
        """Arguments of `lightnas_cli.costs.conv_params/conv_macs` for this layer."""
        theta = theta or default_theta()
        in_features = self.input_features_calculator.features(soft, self.threshold, theta)
        if soft:
            kernel = [self.k_eff(axis, theta, norm) for axis in range(self.ndim)]
        else:
            kernel = list(self.kernel_size_opt)
        if self.depthwise:
            out_features, groups = in_features, in_features
        else:
            out_features = self.output_features_calculator.features(soft, self.threshold, theta)
            groups = 1
        positions = list(self.output_shape[2:]) if self.output_shape else []
        return {"in_channels": in_features, "out_channels": out_features, "kernel": kernel,
                "groups": groups, "bias": self.bias is not None, "output_positions": positions}

    # --- export -------------------------------------------------------------------------
    def export(self, in_index: np.ndarray, out_index: np.ndarray,
               kernel: Sequence[int] | None = None,
               dilation: Sequence[int] | None = None) -> gluon.HybridBlock:
        """A plain (pruned) convolution with the kept channels and taps, weights copied."""
        kernel = list(kernel) if kernel is not None else list(self.kernel_size_opt)
        dilation = list(dilation) if dilation is not None else list(self.dilation_opt)
        in_index = np.asarray(in_index, dtype=np.int64)
        out_index = np.asarray(in_index if self.depthwise else out_index, dtype=np.int64)
        weight = self.weight._reduce().asnumpy()
        weight = weight[out_index]
        if not self.depthwise:
            weight = weight[:, in_index]
        pad_before, pad_after, new_dilation = [], [], []
        for axis in range(self.ndim):
            k_full, base = self.kernel_size[axis], self.dilation[axis]
            count, total = int(kernel[axis]), int(dilation[axis])
            if total % base or (total // base) not in self.dilation_maskers[axis].dilations:
                raise ValueError(f"{self.name}: dilation {total} is not one of "
                                 f"{self.dilation_options(axis)}")
            step = total // base
            if count < 1 or (count - 1) * step > k_full - 1:
                raise ValueError(f"{self.name}: {count} taps at dilation {total} do not fit a "
                                 f"kernel of {k_full}")
            taps = kept_taps(k_full, count, step)
            weight = np.take(weight, taps, axis=2 + axis)
            shift = (k_full - 1 - step * (count - 1)) * base
            pad_before.append(self.padding[axis] - shift)
            pad_after.append(self.padding[axis])
            new_dilation.append(1 if count == 1 else total)
        channels = len(out_index)
        in_channels = len(in_index)
        options = dict(channels=channels, kernel_size=tuple(int(k) for k in kernel),
                       strides=self.stride, dilation=tuple(new_dilation),
                       groups=in_channels if self.depthwise else 1, layout=LAYOUTS[self.ndim],
                       use_bias=self.bias is not None, in_channels=in_channels,
                       activation=self.act._act_type if self.act is not None else None,
                       prefix=self.prefix)
        if pad_before == list(self.padding):
            layer = self.plain_class(padding=self.padding, **options)
        else:
            layer = self.shifted_class(pad_before=pad_before, pad_after=pad_after, **options)
        layer.initialize(ctx=mx.cpu())
        layer.weight.set_data(nd.array(weight, dtype=weight.dtype))
        if self.bias is not None:
            layer.bias.set_data(nd.array(self.bias._reduce().asnumpy()[out_index]))
        return layer
