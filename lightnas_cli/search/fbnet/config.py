"""Config schema of the `fbnet` method (Wu et al., "FBNet", CVPR 2019; seed 003's MXNet port).
Every key is documented here; the shared sections are `BaseConfig`'s. Importing this module is
cheap (no MXNet): the config loader reads it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from lightnas_cli.config.schema import (OPTIMIZERS, SCHEDULES, BaseConfig, ModelSection,
                                        TrainConfig, setting)
from lightnas_cli.errors import ConfigError
from lightnas_cli.search.relaxation import RelaxationConfig

#: Spaces of the zoo this method searches (bmxnet_models/fbnet.py).
SPACES = ("fbnet", "fbnet_se")
HEADS = ("softmax", "amsoftmax", "arcface")
#: Model keys that only one space takes, with their defaults (a changed value for the other
#: space is refused).
FBNET_ONLY = {"last_kernel": 1, "bn": "inside"}
FBNET_SE_ONLY = {"groups": 2}


@dataclass
class FBNetModelConfig(ModelSection):
    # Search space: fbnet (paper Table 1: 22 layers of 9 candidates) | fbnet_se (seed 003: 16
    # ResNet-50 bottlenecks choosing SE, groups, channel shuffle, deformable convolution).
    name: str = setting("fbnet", choices=SPACES)
    # Every width times this (rounded to channel_divisor); 0.25 or less for tiny inputs.
    width_multiplier: float = setting(1.0, gt=0)
    # Widths are multiples of this (even: group-2 candidates split channels in two).
    channel_divisor: int = setting(8, ge=2)
    # Stride of the stem convolution: 2 (the paper, 224x224) | 1 (seed 003's 108x108 faces,
    # and small images such as 16x16 digits or 32x32 CIFAR).
    stem_stride: int = setting(2, ge=1)
    # Filters of the last convolution (fbnet; the paper: 1984) or of the feature layer
    # (fbnet_se; seed 003: 192). null: those defaults.
    feature_dim: Optional[int] = setting(None, ge=1)
    # fbnet: kernel of the last convolution: 1 (the paper) | 3 (seed 003).
    last_kernel: int = setting(1, choices=(1, 3))
    # fbnet: BatchNorm after each convolution inside blocks (inside, the paper) or one before
    # each searchable layer and none inside blocks (outside, seed 003).
    bn: str = setting("inside", choices=("inside", "outside"))
    # fbnet_se: groups of the group/shuffle candidates (seed 003: 2).
    groups: int = setting(2, ge=1)
    # Classifier: softmax (dense layer) | amsoftmax (cosine logits, additive margin) |
    # arcface (cosine logits, angular margin). The margin is applied in the loss only; the
    # exported network outputs s·cos.
    head: str = setting("softmax", choices=HEADS)
    # Margin m and scale s of the margin heads; null: amsoftmax 0.3 / 30, arcface 0.5 / 64.
    margin: Optional[float] = setting(None, ge=0)
    scale: Optional[float] = setting(None, gt=0)
    # Further constructor options of the zoo model (none needed today); an unknown one is
    # refused with the list the model takes.
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class FBNetConfig:
    # Epochs that train the weights only, θ fixed at its initial value (the paper: 10).
    warmup_epochs: int = setting(10, ge=0)
    # Last epochs that train the derived network alone (argmax θ, frozen), starting from the
    # supernet's weights, with the train.* optimizer and schedule run again over these epochs:
    # a supernet trained at τ ≈ 5 computes with the mixture of all its blocks, so one path
    # alone is near chance until it is trained (the paper trains the sampled architectures
    # from scratch afterwards). 0 = none.
    finetune_epochs: int = setting(0, ge=0)
    # Loss of the architecture step: multiply (the paper: CE · α · log(LAT)^β) | add (seed
    # 003: CE + α · log(LAT)^β). LAT is the expected latency in ms under the Gumbel-softmax
    # weights; log(LAT) is taken as log(1 + LAT / latency_unit_ms) so it stays defined (and
    # keeps pushing) for networks faster than one unit (README "FBNet").
    loss: str = setting("multiply", choices=("multiply", "add"))
    alpha: float = setting(0.2, ge=0)
    beta: float = setting(0.6, ge=0)
    latency_unit_ms: float = setting(1.0, gt=0)
    # Measured latency table (JSON from `lightnas latency build -c CONFIG`); null:
    # latency_tables/<model>_<input>.json. A table for another space or other shapes is refused.
    latency_table: Optional[str] = None
    # Before a derived network is evaluated, its BatchNorm statistics are re-estimated on this
    # many training batches (averaged): the supernet's statistics describe mixtures of blocks,
    # not the one block a derived layer keeps (as in one-shot NAS, e.g. Guo et al. 2019,
    # SPOS). The re-estimated statistics are kept with the weights (checkpoints, exports).
    # 0 = off.
    bn_recalibration_batches: int = setting(8, ge=0)
    # Initial value of every θ (the paper and seed 003: 1.0, i.e. uniform).
    theta_init: float = setting(1.0, ge=-100, le=100)
    # Optimizer of θ, on the validation split: adam | sgd (the paper: Adam, lr 0.01, wd 5e-4).
    arch_optimizer: str = setting("adam", choices=("adam", "sgd"))
    arch_lr: float = setting(0.01, gt=0)
    arch_weight_decay: float = setting(5e-4, ge=0)


@dataclass
class FBNetTrainConfig(TrainConfig):
    # The weights' defaults of the paper: SGD, lr 0.1, momentum 0.9, weight decay 1e-4,
    # cosine schedule, 90 epochs (10 of them warm-up, fbnet.warmup_epochs).
    epochs: int = setting(90, ge=1)
    optimizer: str = setting("sgd", choices=OPTIMIZERS)
    lr: float = setting(0.1, gt=0)
    weight_decay: float = setting(1e-4, ge=0)
    lr_schedule: str = setting("cosine", choices=SCHEDULES)


@dataclass
class FBNetSearchConfig(BaseConfig):
    method: str = "fbnet"
    model: FBNetModelConfig = field(default_factory=FBNetModelConfig)  # type: ignore[assignment]
    train: FBNetTrainConfig = field(default_factory=FBNetTrainConfig)  # type: ignore[assignment]
    fbnet: FBNetConfig = field(default_factory=FBNetConfig)
    # Gumbel softmax: τ starts at 5.0, times exp(-0.045) per search epoch; noise per_sample
    # (the PyTorch port) | per_batch (seed 003's MXNet port) | none.
    relaxation: RelaxationConfig = field(default_factory=RelaxationConfig)

    @staticmethod
    def check(cfg: Any) -> None:
        phases = cfg.fbnet.warmup_epochs + cfg.fbnet.finetune_epochs
        if phases >= cfg.train.epochs:
            raise ConfigError(f"fbnet.warmup_epochs ({cfg.fbnet.warmup_epochs}) + "
                              f"fbnet.finetune_epochs ({cfg.fbnet.finetune_epochs}) must be "
                              f"below train.epochs ({cfg.train.epochs}): θ is searched in the "
                              f"epochs between them")
        if cfg.data.eval_split_percentage <= 0:
            raise ConfigError("fbnet trains θ on a held-out validation split: set "
                              "data.eval_split_percentage above 0 (the paper: 20)")
        only = FBNET_ONLY if cfg.model.name == "fbnet_se" else FBNET_SE_ONLY
        for key, default in only.items():
            if cfg.model[key] != default:
                raise ConfigError(f"model.{key} does not apply to model {cfg.model.name!r} "
                                  f"(leave it at {default!r})")
