"""What every PIT layer shares: masker wiring, features calculators and flags.

A masker may be used by several layers (residual adds share one α). A layer on its own registers
the masker as a child (so `collect_params` finds its parameters once) and puts the masker's
parameters among its own (`_reg_params`), so Gluon hands their values to `hybrid_forward` in
imperative and hybridized graphs alike; there they become binary masks (`binarize`).

Inside a `PITModel` the layers are bound to the model's mask bank (bank.py) instead: the model
computes every mask at once and hands each layer its weight and channel masks (`feed`) for
the forward pass; the layer then holds no masker parameters of its own.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from mxnet import gluon

from lightnas_cli.search.pit.binarizer import DEFAULT_THRESHOLD, binarize
from lightnas_cli.search.pit.features_calculator import (ConstFeaturesCalculator,
                                                         FeaturesCalculator,
                                                         MaskerFeaturesCalculator)
from lightnas_cli.search.pit.features_masker import PITMasker


class PITLayer(gluon.HybridBlock):
    """Base of PIT layers: maskers by role, input/output features calculators, threshold."""

    def __init__(self, prefix: str | None = None, threshold: float = DEFAULT_THRESHOLD):
        super().__init__(prefix=prefix)
        self.threshold = float(threshold)
        # Maskers by role, in a namespace: bound to a model's bank, a layer no longer
        # registers its maskers as children, and Gluon warns about lists of Blocks it holds.
        self._wiring = SimpleNamespace(roles={})
        self._input_calculator: FeaturesCalculator | None = None
        self._output_calculator: FeaturesCalculator | None = None
        # Output shape of one sample (batch 1), set when the model graph is traced.
        self.output_shape: tuple[int, ...] | None = None
        # False when a following (PIT) batch norm applies the output channel mask instead
        # (PLiNIO masks after the batch norm: y = α ⊙ BN(conv(x))).
        self.mask_output = True
        # Bound to a PITModel's mask bank: masks come from `feed`, set by the model for the
        # length of one forward pass (by name: weight_mask, channel_mask, and the masked
        # bias, gamma, beta; a name is absent when there is nothing to mask).
        self.bank_bound = False
        self.feed: dict[str, Any] | None = None

    @property
    def _roles(self) -> dict[str, list[tuple[PITMasker, dict[str, str]]]]:
        return self._wiring.roles

    def _adopt(self, key: str, param: gluon.Parameter | None) -> None:
        """Take over a parameter of the layer being converted (same object, same name)."""
        if param is None:
            object.__setattr__(self, key, None)
            return
        setattr(self, key, param)
        self._params._params[param.name] = param

    # --- masker wiring ------------------------------------------------------------------
    def _register_maskers(self, role: str, maskers: list[PITMasker]) -> None:
        for index, (_, keys) in enumerate(self._roles.get(role, [])):
            self._children.pop(f"{role}{index}", None)
            for key in keys.values():
                self._reg_params.pop(key, None)
        entries = []
        for index, masker in enumerate(maskers):
            self.register_child(masker, f"{role}{index}")
            keys = {}
            for keyword, param in masker.forward_params().items():
                key = f"{role}{index}_{keyword}"
                self._reg_params[key] = param
                keys[keyword] = key
            entries.append((masker, keys))
        self._roles[role] = entries
        self._clear_cached_op()

    def bind_to_bank(self) -> None:
        """Stop holding masker parameters: from now on the model's mask bank feeds the masks."""
        for role, entries in self._roles.items():
            for index, (_, keys) in enumerate(entries):
                self._children.pop(f"{role}{index}", None)
                for key in keys.values():
                    self._reg_params.pop(key, None)
            self._roles[role] = [(masker, {}) for masker, _ in entries]
        self.bank_bound = True
        self._clear_cached_op()

    def fed_masks(self) -> dict[str, Any]:
        """The masks (and masked parameters) the model handed over for this forward pass."""
        if self.feed is None:
            raise RuntimeError(f"{self.name} is part of a PITModel and reads its masks from the "
                               f"model's mask bank: call the PITModel, not the layer or the "
                               f"network inside it")
        return self.feed

    def _thetas(self, F: Any, params: dict, role: str) -> list[Any]:
        out = []
        for masker, keys in self._roles.get(role, []):
            out.append(masker.theta(F, **{kw: params[key] for kw, key in keys.items()}))
        return out

    def _binary_masks(self, F: Any, params: dict, role: str) -> dict[int, Any]:
        """Binarized masks of the role's trainable maskers, by masker id (frozen ones skipped)."""
        out = {}
        for masker, keys in self._roles.get(role, []):
            if masker.frozen:
                continue
            theta = masker.theta(F, **{kw: params[key] for kw, key in keys.items()})
            out[id(masker)] = binarize(F, theta, self.threshold)
        return out

    def maskers(self) -> list[PITMasker]:
        """Every masker this layer uses, each once."""
        seen: dict[int, PITMasker] = {}
        for entries in self._roles.values():
            for masker, _ in entries:
                seen.setdefault(id(masker), masker)
        return list(seen.values())

    # --- features calculators -----------------------------------------------------------
    @property
    def input_features_calculator(self) -> FeaturesCalculator:
        """Alive input features (a constant until the model graph says otherwise)."""
        if self._input_calculator is None:
            return ConstFeaturesCalculator(self.static_in_features)
        return self._input_calculator

    @input_features_calculator.setter
    def input_features_calculator(self, calculator: FeaturesCalculator) -> None:
        self._input_calculator = calculator

    @property
    def output_features_calculator(self) -> FeaturesCalculator:
        """Alive output features: the layer's own α, or (depthwise, batch norm) its input's."""
        if self._output_calculator is None:
            # AttributeError (not an assert): Gluon's __setattr__ probes with hasattr().
            raise AttributeError("output features calculator not set yet")
        return self._output_calculator

    @output_features_calculator.setter
    def output_features_calculator(self, calculator: FeaturesCalculator) -> None:
        self._output_calculator = calculator
        self._register_maskers("out", calculator.maskers())

    @property
    def out_features_masker(self) -> PITMasker | None:
        """The α masker when the output count comes from exactly one masker."""
        calc = self._output_calculator
        return calc.masker if isinstance(calc, MaskerFeaturesCalculator) else None

    @property
    def static_in_features(self) -> int:
        raise NotImplementedError

    @property
    def features_defining(self) -> bool:
        """True when the layer chooses its output channels (not depthwise / normalisation)."""
        return True

    # --- flags --------------------------------------------------------------------------
    @property
    def train_features(self) -> bool:
        masker = self.out_features_masker
        return bool(masker is not None and masker.trainable)

    @train_features.setter
    def train_features(self, value: bool) -> None:
        masker = self.out_features_masker
        if masker is not None and self.features_defining:
            masker.trainable = value
            self._clear_cached_op()

    @property
    def out_features_eff(self):
        """Soft number of alive output channels (differentiable)."""
        return self.output_features_calculator.features(soft=True, threshold=self.threshold)

    @property
    def out_features_opt(self) -> int:
        """Alive output channels after binarization."""
        return self.output_features_calculator.features(soft=False, threshold=self.threshold)

    @property
    def in_features_opt(self) -> int:
        return self.input_features_calculator.features(soft=False, threshold=self.threshold)
