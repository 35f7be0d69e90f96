"""The mask bank: every α, β and γ of a PIT model in one parameter, every mask from it at once.

Why: a PIT layer that computes its own masks adds a few dozen tiny operations per layer to the
forward and backward passes (|α|, cumulative sums, the binarizer, reshapes, outer products),
about 400 graph nodes for ResNet-8, and one optimizer update per mask parameter. MXNet runs
each node separately, so on a CPU they cost as much as a good part of the convolutions. The
bank computes the same masks as a handful of vector operations over all layers:

1. `p`: one flat parameter holding every trainable masker's values (α first, then β and γ);
   a gate vector stops the gradient of the maskers that are not trainable now;
2. `theta = [|p_α| ⊙ free + keep, C_taps |p_taps| + offset, 1]`: every masker's soft mask in
   one vector (the same formulas as the maskers, PLiNIO `features_masker.py`,
   `timestep_masker.py`, `dilation_masker.py`), and a constant 1 at the end;
3. `bits = binarize(theta)`: every binary mask, one straight-through binarizer;
4. one gather-and-multiply gives every layer's weight mask (channel x taps per kernel axis) as
   one flat vector, from which each layer gathers its mask at its weight's shape; the biases,
   batch-norm gammas and betas to mask are concatenated, multiplied by their channel masks at
   once and split again.

Layers inside the model read their masks from the bank (`PITLayer.feed`); each masker's
parameter becomes a `BankSlice`, a view of its part of the bank, so `masker.alpha.set_data(...)`
and `masker.theta_nd()` keep working. The soft counts the regularizer needs come from the same
`theta` (see `regularizers.StackedCost`).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from lightnas_cli.search.pit.batchnorm import PITBatchNorm
from lightnas_cli.search.pit.binarizer import binarize
from lightnas_cli.search.pit.conv import PITConvBase
from lightnas_cli.search.pit.dense import PITDense
from lightnas_cli.search.pit.dilation_masker import PITDilationMasker
from lightnas_cli.search.pit.features_masker import PITFeaturesMasker, PITMasker
from lightnas_cli.search.pit.timestep_masker import PITTimestepMasker

if TYPE_CHECKING:
    from lightnas_cli.search.pit.module import PITLayer


class BankSlice:
    """One masker's values inside a mask bank, with the Parameter calls users and maskers make
    (`data`, `set_data`, `grad`, `list_ctx`, `shape`, `name`). Always a view of the bank's
    current arrays, so it stays right when the bank is re-initialised or loaded."""

    def __init__(self, bank: gluon.Parameter, start: int, stop: int, name: str):
        self._bank = bank
        self.start, self.stop = int(start), int(stop)
        self.name = name
        self.shape = (self.stop - self.start,)
        self.dtype = "float32"

    def data(self, ctx: mx.Context | None = None) -> nd.NDArray:
        return self._bank.data(ctx)[self.start:self.stop]

    def list_data(self) -> list[nd.NDArray]:
        return [arr[self.start:self.stop] for arr in self._bank.list_data()]

    def set_data(self, value: Any) -> None:
        for arr in self._bank.list_data():
            arr[self.start:self.stop] = value

    def grad(self, ctx: mx.Context | None = None) -> nd.NDArray:
        return self._bank.grad(ctx)[self.start:self.stop]

    def list_ctx(self) -> list[mx.Context]:
        return self._bank.list_ctx()

    @property
    def grad_req(self) -> str:
        return self._bank.grad_req

    def _reduce(self) -> nd.NDArray:
        return self.data(self.list_ctx()[0]).copyto(mx.cpu())

    def __repr__(self) -> str:
        return f"BankSlice({self.name}, {self.start}:{self.stop} of {self._bank.name})"


#: What a bound layer with nothing to mask is fed.
_NOTHING: dict[str, Any] = {}


def _flat_index(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _split(F: Any, flat: Any, sizes: list[int]) -> list[Any]:
    """`flat` cut into consecutive pieces of `sizes`."""
    if len(sizes) == 1:
        return [flat]
    pieces = F.split_v2(flat, tuple(int(b) for b in np.cumsum(sizes)[:-1]), axis=0)
    return [pieces[i] for i in range(len(sizes))]


def _value(F: Any, param: gluon.Parameter, x: Any) -> Any:
    """A parameter's value in a graph being built: its variable, or its array on x's context.
    (The variable is the one the layer itself would read: Gluon caches `Parameter.var()`.)"""
    return param.var() if F is mx.sym else param.data(x.context)


class MaskBank:
    """The layout of a model's masks in one vector, and the F expressions that compute them.

    Built once after conversion from the trainable maskers and the PIT layers;
    `constant_values` are the (non-trainable) arrays the expressions read, registered as Gluon
    Constants by the model, so the whole computation hybridizes into the model's graph.
    """

    def __init__(self, maskers: Sequence[PITMasker], layers: Sequence["PITLayer"],
                 batchnorms: Sequence[PITBatchNorm], threshold: float):
        self.threshold = float(threshold)
        # How the gradient reaches the bank (gate_mode_of); set by the model before tracing.
        self.gate_mode = "all"
        # Every layer that reads its masks from the bank (fed or not: nothing to mask).
        self.bound: list[Any] = list(layers) + list(batchnorms)
        alphas = [m for m in maskers if isinstance(m, PITFeaturesMasker)]
        taps = [m for m in maskers if isinstance(m, (PITTimestepMasker, PITDilationMasker))]
        others = [m for m in maskers if m not in alphas and m not in taps]
        if others:
            raise TypeError(f"the mask bank cannot hold maskers of type "
                            f"{sorted({type(m).__name__ for m in others})}")
        self.maskers: list[PITMasker] = alphas + taps
        # Parameter ranges (in p) and theta ranges (in theta): equal for α; γ has fewer
        # parameters (one per power-of-two grid) than taps.
        self.param_range: dict[int, tuple[int, int]] = {}
        self.theta_range: dict[int, tuple[int, int]] = {}
        position = 0
        for masker in alphas:
            self.param_range[id(masker)] = (position, position + masker.size)
            self.theta_range[id(masker)] = (position, position + masker.size)
            position += masker.size
        self.n_alpha = position
        theta_position = position
        for masker in taps:
            self.param_range[id(masker)] = (position, position + masker.size)
            width = int(masker.c_free.shape[0])
            self.theta_range[id(masker)] = (theta_position, theta_position + width)
            position += masker.size
            theta_position += width
        self.size = position
        self.n_theta = theta_position
        self.one = theta_position  # the constant 1 at the end of theta (and of bits)

        constants: dict[str, np.ndarray] = {}
        if alphas:
            constants["alpha_free"] = np.concatenate(
                [m.free.data(m.free.list_ctx()[0]).asnumpy() for m in alphas])
            constants["alpha_keep"] = np.concatenate(
                [m.keep_alive.data(m.keep_alive.list_ctx()[0]).asnumpy() for m in alphas])
        n_tap_params = self.size - self.n_alpha
        n_tap_theta = self.n_theta - self.n_alpha
        if taps:
            matrix = np.zeros((n_tap_theta, n_tap_params), dtype=np.float32)
            offset = np.zeros(n_tap_theta, dtype=np.float32)
            for masker in taps:
                p0, p1 = self.param_range[id(masker)]
                t0, t1 = self.theta_range[id(masker)]
                ctx = masker.c_free.list_ctx()[0]
                matrix[t0 - self.n_alpha:t1 - self.n_alpha, p0 - self.n_alpha:p1 - self.n_alpha] = \
                    masker.c_free.data(ctx).asnumpy()
                offset[t0 - self.n_alpha:t1 - self.n_alpha] = masker.offset.data(ctx).asnumpy()
            constants["tap_matrix"] = matrix
            constants["tap_offset"] = offset
        constants["one"] = np.ones(1, dtype=np.float32)
        if self.size:
            constants["gate"] = np.ones(self.size, dtype=np.float32)

        # --- per-layer masks: one flat vector of weight/bias/channel masks ---------------------
        # Tap products bits_β ⊙ bits_γ of every searched (layer, axis, tap), appended to bits.
        # Their positions in [bits, tap products] by (layer, axis), and PLiNIO's normalisation
        # constants of the soft kernel size (norm_β ⊙ norm_γ) per tap.
        beta_index, gamma_index, norms = [], [], []
        self.tap_base: dict[tuple[int, int], int] = {}
        tap_base = self.tap_base
        for layer in layers:
            if not isinstance(layer, PITConvBase):
                continue
            for axis in range(layer.ndim):
                if not layer.time_searchable(axis):
                    continue
                beta, gamma = layer.timestep_maskers[axis], layer.dilation_maskers[axis]
                tap_base[(id(layer), axis)] = self.n_theta + 1 + len(beta_index)
                beta_index.extend(self.tap_slots(beta, layer.kernel_size[axis]))
                gamma_index.extend(self.tap_slots(gamma, layer.kernel_size[axis]))
                norms.append(np.asarray(beta.norm, dtype=np.float32)
                             * np.asarray(gamma.norm, dtype=np.float32))
        self.tap_norm = (np.concatenate(norms) if norms else np.zeros(0)).astype(np.float32)
        self.n_tap_products = len(beta_index)
        if beta_index:
            constants["index_beta"] = np.asarray(beta_index, dtype=np.int32)
            constants["index_gamma"] = np.asarray(gamma_index, dtype=np.int32)

        # Weight masks (and the channel masks of batch norms with a fixed gamma): one flat
        # product of gathered factors, channel x taps of axis 0 x taps of axis 1, one value
        # per (output channel, tap); each layer then gathers its mask at the full shape of
        # its weight, so applying it is an element-wise product (no broadcast, whose
        # backward is a slow reduction in MXNet, and no reshape). The price: one int32 index
        # per masked weight.
        one = self.one
        factors: list[list[np.ndarray]] = [[], [], []]
        self.mask_feeds: list[tuple[Any, str, str]] = []
        gathers: list[np.ndarray] = []
        offset = 0
        # Per-channel parameters to mask (conv/dense biases, batch-norm gammas and betas):
        # concatenated, multiplied by their gathered channel masks at once, split again.
        self.vector_feeds: list[tuple[Any, str, gluon.Parameter]] = []
        vector_slots: list[np.ndarray] = []

        def add_mask(layer: Any, key: str, shape: tuple, ch: np.ndarray, t0: np.ndarray,
                     t1: np.ndarray) -> None:
            """`shape`: the mask's shape as applied, (out, in/groups, *kernel) for a weight;
            the factors run over (out, *kernel)."""
            nonlocal offset
            factors[0].append(ch)
            factors[1].append(t0)
            factors[2].append(t1)
            positions = offset + np.arange(len(ch))
            if len(shape) > 1:  # a weight: the same mask for every input channel
                out, inputs, kernel = shape[0], shape[1], tuple(shape[2:])
                positions = np.broadcast_to(positions.reshape((out, 1) + kernel), shape)
            gathers.append(np.ascontiguousarray(positions))
            offset += len(ch)
            self.mask_feeds.append((layer, key, f"index_feed{len(self.mask_feeds)}"))

        def add_vector(layer: Any, key: str, param: gluon.Parameter, ch: np.ndarray) -> None:
            self.vector_feeds.append((layer, key, param))
            vector_slots.append(ch)

        for layer in layers:
            channel = self._channel_slots(layer)
            if isinstance(layer, PITConvBase):
                kernel = tuple(layer.kernel_size)
                axes = [None if (id(layer), axis) not in tap_base else
                        tap_base[(id(layer), axis)] + np.arange(kernel[axis])
                        for axis in range(layer.ndim)]
                if channel is not None or any(a is not None for a in axes):
                    grid = np.indices((layer.out_channels,) + kernel).reshape(1 + layer.ndim, -1)
                    size = grid.shape[1]
                    ch = np.full(size, one) if channel is None else channel[grid[0]]
                    t0 = np.full(size, one) if axes[0] is None else axes[0][grid[1]]
                    t1 = (np.full(size, one) if layer.ndim < 2 or axes[1] is None
                          else axes[1][grid[2]])
                    add_mask(layer, "weight_mask", tuple(layer.weight.shape), ch, t0, t1)
            elif isinstance(layer, PITDense) and channel is not None:
                add_mask(layer, "weight_mask", tuple(layer.weight.shape), channel,
                         np.full(len(channel), one), np.full(len(channel), one))
            if channel is not None and layer.bias is not None:
                add_vector(layer, "bias", layer.bias, channel)
        for bn in batchnorms:
            channel = bn.output_features_calculator.slots(self._alpha_slots, one)
            if np.all(channel == one):
                continue
            if bn.fix_gamma:
                # A fixed gamma of 1 cannot carry the mask: the batch norm masks its output.
                add_mask(bn, "channel_mask", (len(channel),), channel,
                         np.full(len(channel), one), np.full(len(channel), one))
            else:
                add_vector(bn, "gamma", bn.gamma, channel)
            if bn.center:
                add_vector(bn, "beta", bn.beta, channel)
        self.factors = [_flat_index(parts) for parts in factors]
        if self.mask_feeds:
            constants["index_channel"] = self.factors[0].astype(np.int32)
            for key, index in (("index_taps0", self.factors[1]),
                               ("index_taps1", self.factors[2])):
                if np.any(index != one):
                    constants[key] = index.astype(np.int32)
            for (_, _, key), index in zip(self.mask_feeds, gathers):
                constants[key] = index.astype(np.int32)
        if self.vector_feeds:
            constants["index_vectors"] = _flat_index(vector_slots).astype(np.int32)
        self.vector_sizes = [len(slots) for slots in vector_slots]
        self.constant_values = constants

    @property
    def feeds(self) -> bool:
        """Whether any layer has a mask to apply (else the network runs unmasked)."""
        return bool(self.mask_feeds or self.vector_feeds)

    # --- layout -----------------------------------------------------------------------------
    def _alpha_slots(self, masker: PITMasker) -> np.ndarray:
        t0, t1 = self.theta_range[id(masker)]
        return np.arange(t0, t1)

    def tap_slots(self, masker: PITMasker, kernel: int) -> list[int]:
        """theta positions of a β or γ masker's taps (the constant 1 when frozen)."""
        if masker.frozen:
            return [self.one] * kernel
        t0, t1 = self.theta_range[id(masker)]
        return list(range(t0, t1))

    def _channel_slots(self, layer: Any) -> np.ndarray | None:
        """The output-channel mask positions of a layer that masks its own output; None when
        nothing is to mask (a following batch norm applies it, or it is constant)."""
        if not layer.mask_output:
            return None
        slots = layer.output_features_calculator.slots(self._alpha_slots, self.one)
        return None if np.all(slots == self.one) else slots

    def slot_of(self, masker: PITMasker) -> np.ndarray:
        """theta positions of an α masker (for features calculators)."""
        return self._alpha_slots(masker)

    def initial_values(self) -> np.ndarray:
        """The maskers' current values, concatenated in bank order."""
        if not self.maskers:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([m.nas_parameter.data(m.nas_parameter.list_ctx()[0]).asnumpy()
                               for m in self.maskers]).astype(np.float32)

    def gate_values(self, phase_frozen: bool) -> np.ndarray:
        """1 where the gradient reaches the bank (masker trainable now), else 0."""
        gate = np.zeros(self.size, dtype=np.float32)
        if not phase_frozen:
            for masker in self.maskers:
                if masker.trainable:
                    p0, p1 = self.param_range[id(masker)]
                    gate[p0:p1] = 1.0
        return gate

    @staticmethod
    def gate_mode_of(gate: np.ndarray) -> str:
        """all | none | mixed: whether every, no or some mask element gets a gradient. Only
        "mixed" needs the gate in the graph (4 operations); the others are structural."""
        if gate.size == 0 or np.all(gate == 1):
            return "all"
        return "none" if np.all(gate == 0) else "mixed"

    # --- expressions --------------------------------------------------------------------------
    def theta(self, F: Any, v: dict) -> Any:
        """Every soft mask, plus the constant 1 at the end: shape (n_theta + 1,)."""
        if not self.size:
            return v["one"]
        parts = []
        p = v["masks"]
        if self.gate_mode == "none":
            p = F.BlockGrad(p)
        elif self.gate_mode == "mixed":
            # Forward value p; gradient only where the gate is 1 (the trainable maskers).
            held = F.BlockGrad(p)
            p = held + v["gate"] * (p - held)
        magnitude = F.abs(p)
        if self.n_alpha:
            alpha = F.slice_axis(magnitude, axis=0, begin=0, end=self.n_alpha)
            parts.append(alpha * v["alpha_free"] + v["alpha_keep"])
        if self.size > self.n_alpha:
            taps = F.slice_axis(magnitude, axis=0, begin=self.n_alpha, end=self.size)
            parts.append(F.dot(v["tap_matrix"], taps) + v["tap_offset"])
        parts.append(v["one"])
        return parts[0] if len(parts) == 1 else F.concat(*parts, dim=0)

    def bits(self, F: Any, theta: Any) -> Any:
        """Every binary mask (straight-through), with the constant 1 at the end."""
        return binarize(F, theta, self.threshold)

    def tap_products(self, F: Any, z: Any, v: dict, norm: Any = None) -> Any:
        """z_β ⊙ z_γ (⊙ norm) for every searched (layer, axis, tap); None if there are none."""
        if not self.n_tap_products:
            return None
        product = F.take(z, v["index_beta"]) * F.take(z, v["index_gamma"])
        return product if norm is None else product * norm

    def layer_masks(self, F: Any, bits: Any, v: dict, x: Any) -> dict[int, dict[str, Any]]:
        """Per fed layer (by id): its masks and masked per-channel parameters by name
        (weight_mask, channel_mask, bias, gamma, beta). `x` (the network input) gives the
        context of imperative parameter values."""
        masks: dict[int, dict[str, Any]] = {}
        source = bits
        if "index_taps0" in v or "index_taps1" in v:
            source = F.concat(bits, self.tap_products(F, bits, v), dim=0)
        if self.mask_feeds:
            flat = F.take(source, v["index_channel"])
            for key in ("index_taps0", "index_taps1"):
                if key in v:
                    flat = flat * F.take(source, v[key])
            for layer, key, index in self.mask_feeds:
                masks.setdefault(id(layer), {})[key] = F.take(flat, v[index])
        if self.vector_feeds:
            values = [_value(F, param, x) for _, _, param in self.vector_feeds]
            joined = values[0] if len(values) == 1 else F.concat(*values, dim=0)
            masked = joined * F.take(bits, v["index_vectors"])
            for (layer, key, _), piece in zip(self.vector_feeds,
                                              _split(F, masked, self.vector_sizes)):
                masks.setdefault(id(layer), {})[key] = piece
        return masks

    @contextlib.contextmanager
    def feeding(self, masks: dict[int, dict[str, Any]]) -> Iterator[None]:
        """Hand each layer its masks ({}: nothing to mask) for one forward pass."""
        # object.__setattr__: Gluon's __setattr__ checks for parameters and children, which
        # a plain dict is not; this runs every forward pass in imperative mode.
        for layer in self.bound:
            object.__setattr__(layer, "feed", masks.get(id(layer), _NOTHING))
        try:
            yield
        finally:
            for layer in self.bound:
                object.__setattr__(layer, "feed", None)
