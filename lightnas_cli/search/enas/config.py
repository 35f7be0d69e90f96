"""Config schema of the `enas` method: the binary zoo model's options, the reward and the
controller. Every key is documented here; the shared sections are `BaseConfig`'s."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from lightnas_cli.config.schema import BaseConfig, ModelSection, setting
from lightnas_cli.errors import ConfigError


@dataclass
class EnasModelConfig(ModelSection):
    # Base model from the zoo (`bmxnet_models.get_model`): resnet_e18 | resnet_e34 |
    # resnet18_v1 ... resnet152_v1 | resnet18_v2 ... resnet152_v2 | meliusnet22 | meliusnet29 |
    # meliusnet42 | meliusnet59 (`lightnas summary` also takes custom strings such as
    # meliusnet_custom:DTSI).
    name: str = "resnet_e18"
    # Initial layers: thumbnail (3x3 conv, for small images) | imagenet (ResNet-E: 7x7/2 conv +
    # max-pool; MeliusNet: the paper's grouped stem, needs base_channels divisible by 16).
    stem: str = setting("thumbnail", choices=("thumbnail", "imagenet"))
    # ResNet-E: width of the first stage (64 in the paper). ResNet V1/V2: stem width (64); the
    # stages are 1x-8x it (basic blocks) or 4x-32x (bottlenecks). MeliusNet: growth rate and stem
    # width (64 in the paper); transition widths scale with it. Smaller values make tiny nets.
    base_channels: int = setting(64, ge=1, le=4096)
    # Gradient cancelling of the straight-through sign: gradient is zero where |x| > clip.
    grad_cancel: float = setting(1.0, gt=0, le=1e6)
    # Scale binary weights per output channel: none | mean (mean |W|, as in XNOR-Net).
    weight_scaling: str = setting("none", choices=("none", "mean"))
    # Sign of binary activations: det_sign (straight-through gradient) | approx_sign (Bi-Real
    # Net's gradient 2 - 2|x| inside +-1).
    activation: str = setting("det_sign", choices=("det_sign", "approx_sign"))
    # Padding of binarized inputs: zero | minus_one (BMXNet-v2: every input stays +-1).
    binary_padding: str = setting("zero", choices=("zero", "minus_one"))
    # Further constructor options of the chosen zoo model, e.g. for resnetNN_v1/v2
    # {fp_shortcut: true, bottleneck_binary: 3x3} (`lightnas summary MODEL -o key=value` takes
    # the same). An option the model does not take is refused with the list it does take.
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class EnasConfig:
    # Cost of an architecture in the reward: any registered cost model, params | macs | flops |
    # binary_memory | ops | systolic ..., with its options as name:key=value,... (e.g.
    # systolic:s1=32,s2=32,batch=1), the syntax of `lightnas summary --cost`.
    cost: str = "binary_memory"
    # Exponent w in reward = accuracy * (cost_target / cost) ** w; 0 turns the cost off.
    cost_weight: float = setting(0.0, ge=0, le=100)
    # null: halfway between the cheapest and the most expensive architecture of the space.
    cost_target: Optional[float] = setting(None, gt=0)
    # true: train the weights for the whole epoch first, then run all controller updates
    # (controller.steps_after_epoch of them); false: interleave (every controller.update_every).
    only_post_training_eval: bool = False

    @staticmethod
    def check(section: Any) -> None:
        from lightnas_cli.costs import cost_model_from_spec
        try:
            cost_model_from_spec(section.cost)
        except ConfigError as exc:
            raise ConfigError(f"'enas.cost': {exc}") from None


@dataclass
class ControllerConfig:
    # LSTM controller (Pham et al., ENAS, 2018): embedding and hidden size.
    hidden_size: int = setting(100, ge=1, le=4096)
    # Architectures sampled per controller update; the policy gradient sums over all of them.
    batch_size: int = setting(8, ge=1, le=10_000)
    # Training steps of the supernet between controller updates (interleaved mode).
    update_every: int = setting(20, ge=1, le=1_000_000)
    # Controller updates after the epoch when enas.only_post_training_eval is true.
    steps_after_epoch: int = setting(10, ge=1, le=1_000_000)
    lr: float = setting(3e-3, gt=0)
    # logits = tanh_constant * tanh(logits / temperature); null disables either.
    temperature: Optional[float] = setting(5.0, gt=0, le=1e6)
    tanh_constant: Optional[float] = setting(2.5, gt=0, le=1e6)
    entropy_weight: float = setting(1e-4, ge=0, le=1e6)
    # Exponential moving average of the reward used as the REINFORCE baseline.
    baseline_decay: float = setting(0.95, ge=0, le=1)


@dataclass
class EnasSearchConfig(BaseConfig):
    method: str = "enas"
    model: EnasModelConfig = field(default_factory=EnasModelConfig)  # type: ignore[assignment]
    enas: EnasConfig = field(default_factory=EnasConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
