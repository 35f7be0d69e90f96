"""The DMasking supernet: FBNetV2 channel masking (Wan et al., CVPR 2020) of a plain stack.

Each conv/dense layer is built once at its largest width (and kernel). Its output is
multiplied by

    m = Σ_i g_i · mask_i,     mask_i keeps the first c_i channels,   g = Gumbel-softmax(α, τ)

so one set of weights serves every option (the first c channels of the widest layer are the
c-channel layer). Kernel options mask the weights instead: the centre k x k of the largest
kernel, weighted the same way (one draw per batch, since one weight tensor serves it).

The mask is applied after the layer's batch norm and activation: a masked channel is then
exactly 0 whatever the activation, so the next layer and a flatten ignore it, and the batch
norm of a kept channel sees what it sees in the narrow network. With one-hot gates
(`mode="argmax"`) the supernet therefore computes what the plain narrower network computes.

The forward pass also returns the relaxed latency: the layers described as `costs.Layer`s
whose channel counts are the expected counts Σ g_i c_i (the input channels of a layer are
the expected output channels of the one before it), costed by the `systolic` model with the
smooth ceiling, inside the same (hybridizable) graph. With per-sample noise the latency uses
the batch mean of g.

How the gates are drawn (`GateSettings`: mode, τ, noise, latency on/off) is fixed when the
graph is traced; `MaskedNet.configure` re-traces it only when they change (a few times per
epoch), so a hybridized supernet stays one cached graph per phase.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from mxnet import gluon, init as mx_init, nd
from mxnet.gluon import nn

from lightnas_cli import costs
from lightnas_cli.search.dmasking.space import OUTPUT_NAME, SearchSpace, SpaceLayer
from lightnas_cli.search.relaxation import gumbel_softmax

#: Gate modes: Gumbel-softmax samples (training) or one-hot argmax α (the derived network).
MODES = ("sample", "argmax")
#: α starts near uniform with a tiny ramp, so the argmax of a fresh search is the widest option.
ALPHA_RAMP = 1e-3


@dataclass(frozen=True)
class GateSettings:
    """How the traced graph draws its gates."""

    mode: str = "sample"
    temperature: float = 1.0
    noise: str = "per_sample"
    latency: bool = True

    @property
    def per_sample(self) -> bool:
        return self.mode == "sample" and self.noise == "per_sample"


class _Shared:
    """The settings every masked layer reads while the graph is traced (a plain holder: a
    dict attribute of a Block would make Gluon look for Blocks in it)."""

    def __init__(self) -> None:
        self.settings = GateSettings()


def ramp(options: int) -> np.ndarray:
    """Initial α: almost uniform, ties broken towards the widest option."""
    return np.linspace(0.0, ALPHA_RAMP, options, dtype=np.float32)


#: Activations with act(m·z) = m·act(z) for m >= 0: a per-batch mask folds into the weights.
HOMOGENEOUS = ("relu", "none")


def _ones(F: Any, shape: tuple, like: Any) -> Any:
    return F.ones(shape, ctx=like.context) if F is nd else F.ones(shape)


def _expand(F: Any, vector: Any, columns: int, like: Any) -> Any:
    """(n,) -> (n, columns), each row one value. An outer product with ones, not a broadcast:
    MXNet 1.9's broadcast_mul back-propagates through a slow generic reduction (measured
    8-18 ms for a 64x6x28x28 activation on this CPU; the product's GEMV: under 1 ms)."""
    return F.dot(vector.reshape((-1, 1)), _ones(F, (1, columns), like))


class MaskedLayer(gluon.HybridBlock):
    """A conv or dense layer at its largest options, with masked channels/kernel.

    Returns (output, soft output channels, soft kernel area): the soft counts are the
    expectations under the gates when the latency is computed, else (and for a fixed
    layer) None.

    Where the mask is one vector for the whole batch (per-batch noise, no noise, argmax) and
    the activation is positively homogeneous (relu, none), scaling output channel c by m_c is
    the same as scaling its filter, bias (or batch-norm scale and shift) by m_c: the mask is
    then applied to those small tensors instead of the activations. Otherwise (per-sample
    noise, tanh/sigmoid/softrelu) the activations are multiplied.
    """

    def __init__(self, layer: SpaceLayer, in_units: int, positions: int, shared: _Shared,
                 **kwargs: Any):
        super().__init__(**kwargs)
        spec = layer.spec
        self._kind, self._shared = layer.kind, shared
        self._channels = spec["channels"]
        self._positions = int(positions)
        self._activation = spec.get("activation", "none")
        self._searched_channels = len(layer.channels) > 1
        self._channel_options = len(layer.channels)
        self._kernel_options = layer.kernels if len(layer.kernels) > 1 else ()
        self._batchnorm = bool(spec.get("batchnorm"))
        if self._kind == "conv":
            k = spec["kernel"]
            self._conv = dict(kernel=(k, k), stride=(spec["stride"],) * 2,
                              pad=(k // 2 if spec["padding"] is None else spec["padding"],) * 2,
                              num_filter=self._channels)
            weight_shape: tuple = (self._channels, in_units, k, k)
        else:
            weight_shape = (self._channels, in_units)
        self._weight_shape = weight_shape
        channels = (self._channels,)
        with self.name_scope():
            self.weight = self.params.get("weight", shape=weight_shape,
                                          init=mx_init.Xavier(rnd_type="gaussian",
                                                              factor_type="in", magnitude=2))
            self.bias = self.params.get("bias", shape=channels, init="zeros")
            if self._batchnorm:
                # Gluon's BatchNorm defaults (momentum 0.9, eps 1e-5), held here so the
                # channel mask can scale its gamma and beta.
                self.gamma = self.params.get("gamma", shape=channels, init="ones")
                self.beta = self.params.get("beta", shape=channels, init="zeros")
                self.running_mean = self.params.get("running_mean", shape=channels,
                                                    init="zeros", grad_req="null",
                                                    differentiable=False)
                self.running_var = self.params.get("running_var", shape=channels, init="ones",
                                                   grad_req="null", differentiable=False)
            if self._searched_channels:
                options = np.array(layer.channels)
                masks = (np.arange(self._channels)[None, :] < options[:, None]).astype(np.float32)
                self.alpha = self.params.get("alpha", shape=(len(options),),
                                             init=mx_init.Constant(ramp(len(options))))
                self.channel_masks = self.params.get_constant("channel_masks", masks)
            if self._kernel_options:
                k = spec["kernel"]
                masks = np.zeros((len(self._kernel_options), k * k), dtype=np.float32)
                for row, size in enumerate(self._kernel_options):
                    grid = np.zeros((k, k), dtype=np.float32)
                    start = (k - size) // 2
                    grid[start:start + size, start:start + size] = 1
                    masks[row] = grid.reshape(-1)
                self.kernel_alpha = self.params.get(
                    "kernel_alpha", shape=(len(self._kernel_options),),
                    init=mx_init.Constant(ramp(len(self._kernel_options))))
                self.kernel_masks = self.params.get_constant("kernel_masks", masks)

    def _gate(self, F: Any, alpha: Any, options: int, batch_like: Any) -> Any:
        settings = self._shared.settings
        if settings.mode == "argmax":
            return F.one_hot(F.argmax(alpha, axis=0), depth=options).reshape((-1,))
        noise = settings.noise
        if batch_like is None and noise == "per_sample":
            noise = "per_batch"
        return gumbel_softmax(F, alpha, settings.temperature, noise, batch_like)

    def hybrid_forward(self, F: Any, x: Any, weight: Any, bias: Any, **params: Any) -> Any:
        settings = self._shared.settings
        soft_area = soft_channels = None
        if self._kernel_options:
            k = self._conv["kernel"][0]
            gate = self._gate(F, params["kernel_alpha"], len(self._kernel_options), None)
            mask = F.dot(gate, params["kernel_masks"])  # (k*k,)
            rows = self._channels * self._weight_shape[1]
            weight = weight * F.dot(_ones(F, (rows, 1), x), mask.reshape((1, -1))).reshape(
                self._weight_shape)
            if settings.latency:
                # Σ_j mask_j = Σ_i g_i k_i²: the expected kernel area k1·k2.
                soft_area = F.sum(mask)
        mask = None
        gamma, beta = params.get("gamma"), params.get("beta")
        if self._searched_channels:
            gate = self._gate(F, params["alpha"], self._channel_options,
                              x if settings.per_sample else None)
            mask = F.dot(gate, params["channel_masks"])  # (C,) or, per sample, (B, C)
            if settings.latency:
                # Σ_j m_j = Σ_i g_i c_i: the expected channel count (batch mean per sample).
                soft_channels = F.sum(F.mean(mask, axis=0) if settings.per_sample else mask)
            if not settings.per_sample and self._activation in HOMOGENEOUS:
                if self._batchnorm:
                    gamma, beta = gamma * mask, beta * mask
                else:
                    columns = int(np.prod(self._weight_shape[1:]))
                    weight = weight * _expand(F, mask, columns, x).reshape(self._weight_shape)
                    bias = bias * mask
                mask = None
        if self._kind == "conv":
            y = F.Convolution(x, weight, bias, **self._conv)
        else:
            y = F.FullyConnected(x, weight, bias, num_hidden=self._channels, flatten=True)
        if self._batchnorm:
            y = F.BatchNorm(y, gamma, beta, params["running_mean"], params["running_var"],
                            eps=1e-5, momentum=0.9, fix_gamma=False, use_global_stats=False,
                            axis=1, name="fwd")
        if self._activation != "none":
            y = F.Activation(y, act_type=self._activation)
        if mask is not None:
            if not settings.per_sample:  # one mask for the batch: a row per sample
                mask = F.broadcast_like(mask.reshape((1, -1)), y, lhs_axes=(0,),
                                        rhs_axes=(0,))
            if self._kind == "conv":
                mask = F.reshape_like(_expand(F, mask, self._positions, x), y)
            y = y * mask
        return y, soft_channels, soft_area


def layer_descriptions(templates: Sequence[costs.Layer], scales: Sequence[int],
                       in_channels: int, channels: Sequence[Any], areas: Sequence[Any],
                       F: Any = None) -> list[costs.Layer]:
    """The weight layers as cost models see them, with output channels `channels` and kernel
    areas k1·k2 `areas` (None: the template's kernel) per layer, plain numbers or soft arrays
    (an expected area Σ g_i k_i² is described as a (area, 1) kernel: the same product).

    A layer's input channels are the previous layer's output channels (the data's channels
    for the first) times its `scale`: the spatial positions a flatten folds into features.
    """
    described, previous = [], in_channels
    for template, scale, out, area in zip(templates, scales, channels, areas):
        fields: dict[str, Any] = dict(in_channels=previous * scale if scale != 1 else previous,
                                      out_channels=out, F=F)
        if area is not None:
            fields["kernel"] = (area, 1)
        described.append(dataclasses.replace(template, **fields))
        previous = out
    return described


class MaskedNet(gluon.HybridBlock):
    """The masked supernet of a search space; returns (logits, relaxed latency (1,)).

    `templates`/`scales` describe the largest network's weight layers (shapes from one
    forward pass of it, see `DMaskingSearch`); `latency_model` costs the relaxed layers
    (the smooth systolic model).
    """

    def __init__(self, space: SearchSpace, in_channels: int, classes: int,
                 templates: Sequence[costs.Layer], scales: Sequence[int],
                 latency_model: costs.CostModel, **kwargs: Any):
        super().__init__(**kwargs)
        self.space = space
        self._shared = _Shared()
        self._in_channels, self._templates, self._scales = in_channels, list(templates), list(
            scales)
        self._latency_model = latency_model
        self._order: list[tuple[str, bool, int]] = []  # (child, weighted, fixed channels)
        units = in_channels
        layers = list(space.layers) + [SpaceLayer({"type": "dense", "name": OUTPUT_NAME,
                                                   "channels": classes,
                                                   "activation": "none"}, (classes,))]
        weight_index = 0
        with self.name_scope():
            for layer in layers:
                if layer.weighted:
                    in_units = units * self._scales[weight_index]
                    positions = int(np.prod(self._templates[weight_index].output_positions
                                            or [1]))
                    block: gluon.HybridBlock = MaskedLayer(layer, in_units, positions,
                                                           self._shared, prefix=f"{layer.name}_")
                    units = layer.spec["channels"]
                    weight_index += 1
                elif layer.kind == "pool":
                    pool = nn.MaxPool2D if layer.spec["mode"] == "max" else nn.AvgPool2D
                    block = pool(layer.spec["kernel"], layer.spec["stride"])
                else:
                    block = nn.Dropout(layer.spec["rate"])
                self.register_child(block, layer.name)
                self._order.append((layer.name, layer.weighted, layer.spec.get("channels", 0)))

    # --- gates --------------------------------------------------------------------------
    @property
    def settings(self) -> GateSettings:
        return self._shared.settings

    def configure(self, **changes: Any) -> None:
        """Change how gates are drawn (mode, temperature, noise, latency); re-trace the
        cached graphs only if something changed."""
        settings = dataclasses.replace(self._shared.settings, **changes)
        if settings.mode not in MODES:
            raise ValueError(f"unknown gate mode {settings.mode!r}; one of {MODES}")
        if settings != self._shared.settings:
            self._shared.settings = settings
            self.apply(lambda block: block._clear_cached_op()
                       if isinstance(block, gluon.HybridBlock) else None)

    def masked_layers(self) -> list[MaskedLayer]:
        return [self._children[name] for name, weighted, _ in self._order if weighted]

    def architecture_params(self) -> list[gluon.Parameter]:
        """α of every searched decision (the Adam-trained parameters)."""
        found = []
        for layer in self.masked_layers():
            for attribute in ("alpha", "kernel_alpha"):
                if hasattr(layer, attribute):
                    found.append(getattr(layer, attribute))
        return found

    def weight_params(self) -> list[gluon.Parameter]:
        """Weights, biases and batch-norm parameters (everything trainable but α)."""
        skip = {id(p) for p in self.architecture_params()}
        return [p for p in self.collect_params().values()
                if id(p) not in skip and p.grad_req != "null"]

    # --- forward ------------------------------------------------------------------------
    def latency(self, F: Any, channels: Sequence[Any], areas: Sequence[Any]) -> Any:
        """The latency model's total over the weight layers with these (soft) channel counts
        and kernel areas."""
        layers = layer_descriptions(self._templates, self._scales, self._in_channels, channels,
                                    areas, F)
        return self._latency_model.total(layers)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        channels, areas = [], []
        for name, weighted, fixed in self._order:
            block = self._children[name]
            if not weighted:
                x = block(x)
                continue
            x, soft_channels, soft_area = block(x)
            channels.append(fixed if soft_channels is None else soft_channels)
            areas.append(soft_area)
        if self._shared.settings.latency:
            latency = self.latency(F, channels, areas)
        else:
            latency = F.sum(F.zeros_like(x))
        return x, latency


class LatencyTap:
    """Calls the supernet like a plain network (logits only), keeping the latency of the last
    call per device for the loss hook of `EpochTrainer` (`extra_loss(x, ...)`)."""

    def __init__(self, net: MaskedNet):
        self.net = net
        self.latest: dict = {}

    def __call__(self, x: nd.NDArray) -> nd.NDArray:
        logits, latency = self.net(x)
        self.latest[x.context] = latency
        return logits
