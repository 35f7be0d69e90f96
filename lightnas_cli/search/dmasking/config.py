"""Config schema of the `dmasking` method (FBNetV2 channel masking, U-Boost's systolic-array
latency). Every key is documented here; the shared sections are `BaseConfig`'s, and
`relaxation` is the shared Gumbel-softmax section (`search/relaxation.py`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from omegaconf import OmegaConf

from lightnas_cli.config.schema import BaseConfig, ModelSection, TrainConfig, setting
from lightnas_cli.errors import ConfigError
from lightnas_cli.search.dmasking.space import SearchSpace, default_arch_def
from lightnas_cli.search.relaxation import RelaxationConfig


@dataclass
class DmaskingModelConfig(ModelSection):
    # Name of the searched network (run names, exports, `lightnas runs`). The network itself
    # is `dmasking.arch_def`; the default arch_def is LeNet-5 (`bmxnet_models/lenet.py`), and a
    # derived network is the zoo's `plain_stack` of the chosen widths.
    name: str = "lenet"


@dataclass
class DmaskingTrainConfig(TrainConfig):
    # Seed 004: the weights are trained with SGD (the architecture parameters with Adam).
    optimizer: str = setting("sgd", choices=("sgd", "nag", "adam"))
    lr: float = setting(0.05, gt=0)


@dataclass
class SystolicConfig:
    # The systolic array of the latency model (`systolic` cost model): s1 rows (the reduction
    # axis k1·k2·c is tiled over them) x s2 columns (filters). U-Boost NAS: 128 x 128.
    s1: int = setting(128, ge=1)
    s2: int = setting(128, ge=1)
    # B, samples per inference run on the array (U-Boost: 64).
    batch: int = setting(64, ge=1)
    # T of the smooth ceiling f_T(x) = sum_i sigmoid(T (x - i)) used by the search's latency
    # term: larger is closer to the exact steps, smaller gives gradients further from them.
    # The first step sits at x = 0: a layer of c channels on an s-wide array has x = c/s, so
    # f_T counts it as the one tile it is only when T * c / s >> 1; with s = 128 and layers of
    # a few channels that needs T in the hundreds (200: configs/dmasking/lenet_digits.yml).
    # Small arrays, where steps come every few channels, work with small T (5 on an 8 x 8).
    sharpness: float = setting(200.0, gt=0)


@dataclass
class DmaskingConfig:
    # The search space: a plain conv/dense stack, layer by layer; conv/dense layers may list
    # channel options (`channels: [2, 4, 6]`) and convolutions kernel options (`kernel:
    # [3, 5]`, odd, same padding). Keys per layer: type (conv|dense|pool|dropout), name,
    # channels, kernel, stride, padding (null = same), activation (relu|tanh|sigmoid|softrelu|
    # none), batchnorm; pools: kernel, stride, mode (max|avg); dropout: rate. A classifier for
    # the data's classes is appended. Default: LeNet-5 with conv1 {2,4,6}, conv2 {8,12,16},
    # fc1 {60,90,120} (seed 004).
    arch_def: List[Dict[str, Any]] = field(default_factory=default_arch_def)
    # λ in L = L_data + λ · L_latency, where L_latency is the smooth systolic latency of the
    # relaxed network divided by the exact latency of the largest network of the space (so
    # λ is relative: λ = 1 weighs the whole largest network like one unit of cross-entropy).
    latency_weight: float = setting(0.5, ge=0)
    # Adam learning rate of the architecture parameters α (trained on the validation split).
    arch_lr: float = setting(0.01, gt=0)
    # First epochs train the weights only (masks sampled from the initial, uniform α).
    warmup_epochs: int = setting(0, ge=0)
    systolic: SystolicConfig = field(default_factory=SystolicConfig)


@dataclass
class DmaskingSearchConfig(BaseConfig):
    method: str = "dmasking"
    model: DmaskingModelConfig = field(  # type: ignore[assignment]
        default_factory=DmaskingModelConfig)
    train: DmaskingTrainConfig = field(  # type: ignore[assignment]
        default_factory=DmaskingTrainConfig)
    dmasking: DmaskingConfig = field(default_factory=DmaskingConfig)
    # Gumbel softmax of the channel/kernel choices: g = softmax((α + noise) / τ), τ annealed
    # per epoch. Noise per batch by default, as U-Boost NAS draws it: one mask per batch folds
    # into the weights (cheap); per_sample multiplies every activation by its own mask.
    # Kernel choices always draw one noise per batch (one weight tensor serves the batch).
    relaxation: RelaxationConfig = field(
        default_factory=lambda: RelaxationConfig(noise="per_batch"))

    @staticmethod
    def check(cfg: Any) -> None:
        SearchSpace(OmegaConf.to_container(cfg.dmasking.arch_def, resolve=True))
        if not cfg.data.eval_split_percentage > 0:
            raise ConfigError("dmasking trains α on a held-out validation split: set "
                              "data.eval_split_percentage above 0 (seed 004: 20)")
        if cfg.dmasking.warmup_epochs >= cfg.train.epochs:
            raise ConfigError(f"dmasking.warmup_epochs ({cfg.dmasking.warmup_epochs}) must be "
                              f"below train.epochs ({cfg.train.epochs}): α is trained in the "
                              f"epochs after the warm-up")
