"""Features calculators: how many (and which) input features a layer sees.

PLiNIO `graph/features_calculation.py`: the static shape of a tensor says nothing once the layer
before it is being pruned, so every PIT layer asks a calculator for its number of *alive* input
features. The number comes from what feeds the layer:

- `ConstFeaturesCalculator`: a constant (the network input, or an unprunable component);
- `MaskerFeaturesCalculator`: another layer's channel mask α. Layers whose outputs are added
  (residuals) share one masker, so the add's output has one calculator for all of them;
- `ConcatFeaturesCalculator`: a channel concatenation, the sum of its parts;
- `FlattenFeaturesCalculator`: a flatten, the previous count times the positions per channel.

Soft counts (`features(soft=True)`) are sums of the continuous masks and carry gradients (the
regularizer uses them); discrete counts and masks are what the pruned network will have.
"""
from __future__ import annotations

import abc
from typing import Any, Callable

import mxnet as mx
import numpy as np
from mxnet import nd

from lightnas_cli.search.pit.binarizer import DEFAULT_THRESHOLD
from lightnas_cli.search.pit.features_masker import PITMasker

#: theta of a masker, memoised per regularizer evaluation: masker -> NDArray.
ThetaFn = Callable[[PITMasker], nd.NDArray]


#: normalisation constants of a β/γ masker (for the soft kernel size): masker -> array.
NormFn = Callable[[PITMasker], Any]

#: positions of a masker's mask elements in a mask bank's vector: masker -> int array.
SlotFn = Callable[[PITMasker], np.ndarray]


def default_norm(ctx: mx.Context) -> NormFn:
    """Each masker's `norm` vector as an NDArray on `ctx`."""
    def norm(masker: PITMasker) -> nd.NDArray:
        return nd.array(masker.norm, ctx=ctx)
    return norm


def default_theta(ctx: mx.Context | None = None) -> ThetaFn:
    """theta_nd on `ctx`, computed once per masker."""
    cache: dict[int, nd.NDArray] = {}

    def theta(masker: PITMasker) -> nd.NDArray:
        if id(masker) not in cache:
            cache[id(masker)] = masker.theta_nd(ctx)
        return cache[id(masker)]

    return theta


class FeaturesCalculator(abc.ABC):
    """Number of alive features of one tensor (channels, or flattened units)."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """The static (unpruned) number of features."""

    @abc.abstractmethod
    def features(self, soft: bool = True, threshold: float = DEFAULT_THRESHOLD,
                 theta: ThetaFn | None = None) -> Any:
        """Alive features: a differentiable NDArray (soft) or an int (binarized masks)."""

    @abc.abstractmethod
    def features_mask(self, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        """Binarized bool mask over the features (what the network computes now)."""

    @abc.abstractmethod
    def maskers(self) -> list[PITMasker]:
        """The channel maskers this count depends on (each once, in order)."""

    @abc.abstractmethod
    def mask_expr(self, F: Any, masks: dict[int, Any]) -> Any:
        """The binary mask as an F expression from binarized masker masks (by id); None = all 1."""

    @abc.abstractmethod
    def kept_indices(self, kept: dict[int, np.ndarray]) -> np.ndarray:
        """Indices of the features a pruned network keeps, given each masker's kept channels."""

    @abc.abstractmethod
    def slots(self, slot_of: SlotFn, one: int) -> np.ndarray:
        """Per feature, the position of its mask element in a mask bank's vector (`slot_of`
        gives a masker's positions; `one` is the position of a constant 1). Lets the bank
        compute every layer's masks and soft counts as a few vector operations."""

    @property
    def is_constant(self) -> bool:
        """True when no trainable mask can change the count."""
        return all(m.frozen for m in self.maskers())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class ConstFeaturesCalculator(FeaturesCalculator):
    """A fixed number of features (network input, frozen components)."""

    def __init__(self, size: int):
        self._size = int(size)

    @property
    def size(self) -> int:
        return self._size

    def features(self, soft: bool = True, threshold: float = DEFAULT_THRESHOLD,
                 theta: ThetaFn | None = None) -> int:
        return self._size

    def features_mask(self, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        return np.ones(self._size, dtype=bool)

    def maskers(self) -> list[PITMasker]:
        return []

    def mask_expr(self, F: Any, masks: dict[int, Any]) -> None:
        return None

    def kept_indices(self, kept: dict[int, np.ndarray]) -> np.ndarray:
        return np.arange(self._size)

    def slots(self, slot_of: SlotFn, one: int) -> np.ndarray:
        return np.full(self._size, one, dtype=np.int64)


class MaskerFeaturesCalculator(FeaturesCalculator):
    """The alive output channels of the layer(s) owning one α masker."""

    def __init__(self, masker: PITMasker):
        self.masker = masker

    @property
    def size(self) -> int:
        return self.masker.size

    def features(self, soft: bool = True, threshold: float = DEFAULT_THRESHOLD,
                 theta: ThetaFn | None = None) -> Any:
        if self.masker.frozen:
            return self.masker.size
        if soft:
            return (theta or default_theta())(self.masker).sum()
        return int(self.features_mask(threshold).sum())

    def features_mask(self, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        if self.masker.frozen:
            return np.ones(self.masker.size, dtype=bool)
        return self.masker.binary_mask(threshold)

    def maskers(self) -> list[PITMasker]:
        return [self.masker]

    def mask_expr(self, F: Any, masks: dict[int, Any]) -> Any:
        return None if self.masker.frozen else masks[id(self.masker)]

    def kept_indices(self, kept: dict[int, np.ndarray]) -> np.ndarray:
        if self.masker.frozen:
            return np.arange(self.masker.size)
        return np.asarray(kept[id(self.masker)])

    def slots(self, slot_of: SlotFn, one: int) -> np.ndarray:
        if self.masker.frozen:
            return np.full(self.masker.size, one, dtype=np.int64)
        return np.asarray(slot_of(self.masker), dtype=np.int64)


class ConcatFeaturesCalculator(FeaturesCalculator):
    """A concatenation along channels: the parts' counts add up, masks are concatenated."""

    def __init__(self, inputs: list[FeaturesCalculator]):
        if not inputs:
            raise ValueError("a concatenation needs at least one input")
        self.inputs = list(inputs)

    @property
    def size(self) -> int:
        return sum(part.size for part in self.inputs)

    def features(self, soft: bool = True, threshold: float = DEFAULT_THRESHOLD,
                 theta: ThetaFn | None = None) -> Any:
        total: Any = 0
        for part in self.inputs:
            total = total + part.features(soft, threshold, theta)
        return total

    def features_mask(self, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        return np.concatenate([part.features_mask(threshold) for part in self.inputs])

    def maskers(self) -> list[PITMasker]:
        seen: dict[int, PITMasker] = {}
        for part in self.inputs:
            for masker in part.maskers():
                seen.setdefault(id(masker), masker)
        return list(seen.values())

    def mask_expr(self, F: Any, masks: dict[int, Any]) -> Any:
        parts = [part.mask_expr(F, masks) for part in self.inputs]
        if all(p is None for p in parts):
            return None
        parts = [F.ones(shape=(part.size,)) if p is None else p
                 for part, p in zip(self.inputs, parts)]
        return F.concat(*parts, dim=0)

    def kept_indices(self, kept: dict[int, np.ndarray]) -> np.ndarray:
        out, offset = [], 0
        for part in self.inputs:
            out.append(part.kept_indices(kept) + offset)
            offset += part.size
        return np.concatenate(out)

    def slots(self, slot_of: SlotFn, one: int) -> np.ndarray:
        return np.concatenate([part.slots(slot_of, one) for part in self.inputs])


class FlattenFeaturesCalculator(FeaturesCalculator):
    """A flatten of (C, positions...) into C x multiplier features, channel-major."""

    def __init__(self, previous: FeaturesCalculator, multiplier: int):
        self.previous = previous
        self.multiplier = int(multiplier)

    @property
    def size(self) -> int:
        return self.previous.size * self.multiplier

    def features(self, soft: bool = True, threshold: float = DEFAULT_THRESHOLD,
                 theta: ThetaFn | None = None) -> Any:
        return self.previous.features(soft, threshold, theta) * self.multiplier

    def features_mask(self, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        return np.repeat(self.previous.features_mask(threshold), self.multiplier)

    def maskers(self) -> list[PITMasker]:
        return self.previous.maskers()

    def mask_expr(self, F: Any, masks: dict[int, Any]) -> Any:
        previous = self.previous.mask_expr(F, masks)
        if previous is None or self.multiplier == 1:
            return previous
        return F.repeat(previous, repeats=self.multiplier)

    def kept_indices(self, kept: dict[int, np.ndarray]) -> np.ndarray:
        channels = self.previous.kept_indices(kept)
        return (channels[:, None] * self.multiplier + np.arange(self.multiplier)).reshape(-1)

    def slots(self, slot_of: SlotFn, one: int) -> np.ndarray:
        return np.repeat(self.previous.slots(slot_of, one), self.multiplier)
