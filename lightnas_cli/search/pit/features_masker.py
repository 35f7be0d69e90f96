"""Channel (output features) masks α.

PLiNIO `methods/pit/nn/features_masker.py`: one float α per output channel, initialised to 1;
the mask is theta = |α| (binarized at the threshold in the forward pass). The last `keep_alive`
channels are fixed at 1, so a layer never loses all its channels. A frozen masker (the network
output, or channels the graph cannot prune) is a constant vector of ones.
"""
from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon, nd


class PITMasker(gluon.HybridBlock):
    """Base of every PIT masker: float parameters plus constants, turned into a soft mask theta.

    A masker is never called as a block: the PIT layers that use it register its parameters
    (`forward_params`) among their own, so shared maskers are one set of parameters wherever
    they are used, in imperative and hybridized graphs alike, and call `theta(F, **values)`.
    """

    #: name of the trainable parameter ("alpha", "beta", "gamma")
    param_name = ""

    def __init__(self, size: int, trainable: bool = True, prefix: str | None = None):
        super().__init__(prefix=prefix)
        self.size = int(size)
        self._trainable = bool(trainable)

    def forward_params(self) -> dict[str, gluon.Parameter]:
        """Parameters `theta` needs, by keyword (the trainable one first)."""
        raise NotImplementedError

    def theta(self, F: Any, **values: Any) -> Any:
        """The soft (continuous) mask from parameter values."""
        raise NotImplementedError

    def bind(self, values: Any) -> None:
        """Read and write the trainable values through `values` (a `bank.BankSlice`: this
        masker's part of a model's mask bank) instead of a parameter of its own."""
        own = getattr(self, self.param_name)
        self._reg_params.pop(self.param_name, None)
        self._params._params.pop(own.name, None)
        # object.__setattr__: Gluon refuses to replace a Parameter attribute by another type.
        object.__setattr__(self, self.param_name, values)

    @property
    def trainable(self) -> bool:
        """Whether this mask is searched (train_channels/train_rf/train_dilation, per layer or
        per layer type); False stops its gradient. The search phases freeze masks on top of
        this (`PITModel.freeze_masks`) without changing it."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)

    @property
    def frozen(self) -> bool:
        """True for maskers that can never be trained (constant masks)."""
        return False

    @property
    def nas_parameter(self) -> gluon.Parameter | None:
        """The architecture parameter of this masker, or None for a frozen one."""
        return None

    def theta_nd(self, ctx: mx.Context | None = None) -> nd.NDArray:
        """theta as an NDArray on `ctx` (recorded by autograd when called inside record())."""
        ctx = ctx or self._first_ctx()
        values = {key: param.data(ctx) for key, param in self.forward_params().items()}
        return self.theta(nd, **values)

    def binary_mask(self, threshold: float) -> np.ndarray:
        """The binarized mask as a numpy bool vector (what the network uses now)."""
        return self.theta_nd().asnumpy() > threshold

    def _first_ctx(self) -> mx.Context:
        params = list(self.forward_params().values())
        return params[0].list_ctx()[0] if params else mx.cpu()

    def _gate(self, F: Any, value: Any) -> Any:
        return value if self._trainable else F.BlockGrad(value)


class PITFrozenMasker(PITMasker):
    """Base of the frozen maskers: a constant mask of `size` ones, never trainable.

    Shared by the frozen α, β and γ maskers, which differ only in `param_name` and in what
    their layers read from them (`norm`, `dilations`).
    """

    def forward_params(self) -> dict[str, gluon.Parameter]:
        # No parameters: layers skip frozen masks, and an unused graph input would only warn.
        return {}

    def theta(self, F: Any) -> Any:
        return F.ones(shape=(self.size,))

    def theta_nd(self, ctx: mx.Context | None = None) -> nd.NDArray:
        return nd.ones((self.size,), ctx=ctx or mx.cpu())

    @property
    def trainable(self) -> bool:
        return False

    @trainable.setter
    def trainable(self, value: bool) -> None:
        # Never trainable: flags set on the whole model leave it as it is.
        self._trainable = False

    @property
    def frozen(self) -> bool:
        return True


class PITFeaturesMasker(PITMasker):
    """α: one mask element per output channel; the last `keep_alive` channels always kept."""

    param_name = "alpha"

    def __init__(self, channels: int, trainable: bool = True, keep_alive: int = 1,
                 prefix: str | None = None):
        super().__init__(channels, trainable, prefix)
        if channels < 1:
            raise ValueError(f"a features masker needs at least one channel, got {channels}")
        self.keep_alive_count = max(1, min(int(keep_alive), self.size))
        keep = np.zeros(self.size, dtype=np.float32)
        # PLiNIO keeps the last channel(s) alive, "for consistency with rf and dilation".
        keep[self.size - self.keep_alive_count:] = 1.0
        with self.name_scope():
            self.alpha = self.params.get("alpha", shape=(self.size,), init=mx.init.One(),
                                         dtype="float32")
            # theta = |α| ⊙ (1 - keep) + keep; both vectors stored, to save graph operations.
            self.keep_alive = self.params.get_constant("keep_alive", nd.array(keep))
            self.free = self.params.get_constant("free", nd.array(1.0 - keep))

    def forward_params(self) -> dict[str, gluon.Parameter]:
        return {"alpha": self.alpha, "keep_alive": self.keep_alive, "free": self.free}

    def theta(self, F: Any, alpha: Any, keep_alive: Any, free: Any) -> Any:
        return self._gate(F, F.abs(alpha)) * free + keep_alive

    @property
    def nas_parameter(self) -> gluon.Parameter:
        return self.alpha


class PITFrozenFeaturesMasker(PITFrozenMasker):
    """All channels always kept: the network's outputs, inputs and unprunable components."""

    param_name = "alpha"

    def __init__(self, channels: int, prefix: str | None = None):
        super().__init__(channels, trainable=False, prefix=prefix)
