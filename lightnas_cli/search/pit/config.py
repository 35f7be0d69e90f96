"""Config schema of the `pit` method (Pruning In Time). Every key is documented here.

The shared sections (run, data, train, checkpoint, export) are `BaseConfig`'s; `model` and
`pit` are PIT's own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from lightnas_cli.config.schema import BaseConfig, ModelSection, setting
from lightnas_cli.errors import ConfigError

#: Layer types `pit.exclude_types` may name (the Gluon classes PIT converts or follows).
EXCLUDABLE_TYPES = ("Conv1D", "Conv2D", "Dense", "BatchNorm")
#: `pit.regularizer` names that are not cost-model names: PIT's paper calls params "size".
REGULARIZER_ALIASES = {"size": "params"}
#: Layer types whose masks `pit.train_*_types` can switch: channels (α) of all three, receptive
#: field (β) and dilation (γ) of the convolutions.
SEARCHABLE_TYPES = ("Conv1D", "Conv2D", "Dense")
KERNEL_TYPES = ("Conv1D", "Conv2D")
#: `pit.cost_layers`: every layer of the network, or the searchable (PIT) layers only.
COST_LAYERS = ("all", "searchable")


def regularizer_choices() -> list[str]:
    """Every registered cost model, plus PIT's alias `size` (= params)."""
    from lightnas_cli.costs import available_cost_models
    return sorted(set(available_cost_models()) | set(REGULARIZER_ALIASES))


def regularizer_cost_model(spec: str) -> str:
    """The cost-model spec a `pit.regularizer` value stands for: `size` -> `params`, options
    kept (`systolic:s1=16,s2=16` as it is)."""
    name, sep, options = str(spec).partition(":")
    return REGULARIZER_ALIASES.get(name.strip(), name.strip()) + sep + options


@dataclass
class PitModelConfig(ModelSection):
    # Seed network from the zoo (`bmxnet_models.get_model`): tcn | resnet8 | dscnn |
    # mobilenet_v1 | fc_autoencoder (MLPerf Tiny references, bmxnet_models/tinyml.py), or any
    # other registered Gluon model built from Conv1D/Conv2D/Dense/BatchNorm layers.
    # (ResNet-E's stem/base_channels/... options of the ENAS model section do not apply here.)
    name: str = "tcn"
    # Extra constructor options of the model, e.g. {channels: [16, 16, 32], kernel_size: 9}
    # for tcn or {width_multiplier: 0.25} for mobilenet_v1. `classes`, `in_channels` and (for
    # the autoencoder) `inputs` come from the data set and need not be given.
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PitConfig:
    # Cost the regularizer counts: any registered cost model of lightnas_cli.costs, e.g. size
    # (= params: parameters, biases included) | macs | flops (2 x MACs) | binary_memory |
    # systolic, with options as name:key=value,... (e.g. systolic:s1=16,s2=16). Computed from
    # the continuous masks, so it is differentiable (Risso et al. 2021; PLiNIO's params / ops
    # cost specs).
    regularizer: str = "size"
    # λ: loss = task loss + strength * regularizer.
    strength: float = setting(0.1, ge=0, le=1e12)
    # Divide the regularizer by the unpruned network's cost, so `strength` is relative: 0.1
    # means "the whole network's cost weighs as much as 0.1 of task loss", whatever its size.
    # false uses the raw count (then strength must be tiny, e.g. 1e-7 for MACs).
    normalize: bool = True
    # First epochs train the weights only: masks frozen at 1 and no regularizer.
    warmup_epochs: int = setting(0, ge=0, le=1_000_000)
    # Last epochs train the weights of the pruned network: masks frozen, no regularizer.
    # The search runs in the epochs between (train.epochs - warmup - finetune of them).
    finetune_epochs: int = setting(0, ge=0, le=1_000_000)
    # Binarization threshold of the masks (PIT: 0.5).
    threshold: float = setting(0.5, gt=0, lt=1)
    # Which layers the regularizer counts. all: the whole network (PLiNIO's full_cost=True);
    # layers PIT does not search add their cost, which shrinks with the pruned channels they
    # read, and `normalize` divides by the whole seed network's cost. searchable: the PIT layers
    # only (PLiNIO's default, full_cost=False). Reported costs always count the whole network.
    # Default all: it is what is reported and exported, so λ weighs the network's real cost.
    cost_layers: str = setting("all", choices=COST_LAYERS)
    # Count the cost on the binarized masks (0/1, straight-through gradient) instead of the
    # continuous ones (PLiNIO's discrete_cost): the regularizer then equals the pruned
    # network's cost at every step.
    discrete_cost: bool = False
    # Search output channels (α), receptive fields (β) and dilations (γ); false freezes them.
    train_channels: bool = True
    train_rf: bool = True
    train_dilation: bool = True
    # Layer types whose channels / receptive field / dilation are searched when the flag above
    # is true; other types keep theirs. PLiNIO searches receptive field and dilation of Conv1D
    # only: set train_rf_types and train_dilation_types to [Conv1D] for that. A channel mask
    # shared by layers whose outputs are added is searched only if all their types are listed.
    train_channels_types: List[str] = setting(factory=lambda: list(SEARCHABLE_TYPES),
                                              choices=SEARCHABLE_TYPES)
    train_rf_types: List[str] = setting(factory=lambda: list(KERNEL_TYPES), choices=KERNEL_TYPES)
    train_dilation_types: List[str] = setting(factory=lambda: list(KERNEL_TYPES),
                                              choices=KERNEL_TYPES)
    # Optimizer (adam | sgd) and learning rate of the masks; null lr uses train.lr.
    arch_optimizer: str = setting("adam", choices=("adam", "sgd"))
    arch_lr: Optional[float] = setting(None, gt=0)
    # Layers left out of the search: block paths such as "0" or "2.conv1", or block names.
    exclude_names: List[str] = field(default_factory=list)
    # Layer types left out of the search: Conv1D | Conv2D | Dense | BatchNorm.
    exclude_types: List[str] = setting(factory=list, choices=EXCLUDABLE_TYPES)
    # Task loss: classification (softmax cross-entropy on the labels, accuracy reported) |
    # reconstruction (mean squared error between the output and the flattened input, labels
    # ignored, no accuracy: the anomaly-detection autoencoder). auto: reconstruction for
    # models registered as autoencoders (fc_autoencoder), classification otherwise.
    task: str = setting("auto", choices=("auto", "classification", "reconstruction"))


@dataclass
class PitSearchConfig(BaseConfig):
    method: str = "pit"
    model: PitModelConfig = field(default_factory=PitModelConfig)  # type: ignore[assignment]
    pit: PitConfig = field(default_factory=PitConfig)

    @staticmethod
    def check(cfg: Any) -> None:
        from lightnas_cli.costs import cost_model_from_spec
        name = str(cfg.pit.regularizer).partition(":")[0].strip()
        if name not in regularizer_choices():
            raise ConfigError(f"'pit.regularizer': unknown cost model {name!r}; choose one of "
                              f"{', '.join(regularizer_choices())} (options as "
                              f"name:key=value, e.g. systolic:s1=16,s2=16)")
        try:
            cost_model_from_spec(regularizer_cost_model(cfg.pit.regularizer))
        except ConfigError as exc:
            raise ConfigError(f"'pit.regularizer': {exc}") from None
        phases, epochs = cfg.pit.warmup_epochs + cfg.pit.finetune_epochs, cfg.train.epochs
        if phases > epochs:
            raise ConfigError(f"pit.warmup_epochs ({cfg.pit.warmup_epochs}) + "
                              f"pit.finetune_epochs ({cfg.pit.finetune_epochs}) exceed "
                              f"train.epochs ({epochs}); the search runs in the epochs left "
                              f"between them")
