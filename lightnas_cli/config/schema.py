"""Typed config schemas. Every key is documented here; this file is the config reference.

The sections shared by all methods live in `BaseConfig`; each method adds its own sections in
a subclass registered in `SCHEMAS` under the value of the top-level `method` key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class RunConfig:
    # Run folder name under `root`. Default: <model>_<dataset>_<YYYYmmdd-HHMMSS>.
    name: Optional[str] = None
    # Folder that holds run folders.
    root: str = "trainings"


@dataclass
class MockDataConfig:
    # Synthetic, class-separable images: one fixed random prototype per class plus noise.
    num_classes: int = 10
    # Input shape as [channels, height, width] (or [channels, length] for 1-D models).
    shape: List[int] = field(default_factory=lambda: [3, 32, 32])
    num_train: int = 512
    num_test: int = 128
    # Standard deviation of the per-sample noise relative to the prototypes (higher = harder).
    noise: float = 1.0


@dataclass
class DataConfig:
    # Data set: mock | digits | cifar10 | cifar100 | mnist1d (in memory) | arrays (a .npz file,
    # in memory) | recordio (.rec + .idx files, streamed) | image_folder (root/<class>/*.jpg|png,
    # streamed). See the README's "Data" section.
    name: str = "mock"
    # Folder with the data files (cifar10/cifar100: the standard *binary* release files;
    # image_folder: the root holding <class>/ folders, or train/ [val/] [test/] with <class>/
    # folders inside).
    dir: Optional[str] = None
    # recordio: the training .rec file; its index must sit beside it with the same stem (.idx),
    # as MXNet's im2rec and `lightnas data pack` write them.
    train_rec: Optional[str] = None
    # recordio: validation .rec; null carves eval_split_percentage% out of train_rec by index.
    val_rec: Optional[str] = None
    # recordio: test .rec; null = no test split (validation stands in where one is needed).
    test_rec: Optional[str] = None
    # arrays: .npz file with x_train, y_train, x_test, y_test (read without pickle).
    file: Optional[str] = None
    # arrays: how one stored sample is laid out: auto (1-D -> W, 2-D -> CW, 3-D -> CHW) | W |
    # CW | WC | HW | CHW | HWC (C channels, H/W height/width or length). Converted to CW / CHW.
    array_layout: str = "auto"
    # Number of classes; null takes it from the data (folder names, or the largest label + 1).
    classes: Optional[int] = None
    # Percentage of the training set held out as the validation split (controller rewards,
    # validation metrics). 0 uses the test split for validation.
    eval_split_percentage: float = 20.0
    # image_folder without train/val/test folders: percentage held out as the test split
    # (the same files whatever the seed). 0 = no test split.
    test_split_percentage: float = 0.0
    # Resize images to this side length (digits: 8 -> e.g. 32). null keeps the native size.
    # recordio / image_folder: required, the side of the square crops the network sees.
    image_size: Optional[int] = None
    # recordio / image_folder: decode as 3 (RGB) or 1 (grey) channels.
    channels: int = 3
    # recordio / image_folder: shorter side the image is scaled to before a center crop of
    # image_size (validation, test, and training without augment) or a random crop
    # (train_crop=random). null = image_size. ImageNet habit: 256 for 224.
    resize: Optional[int] = None
    # Random crop (4-pixel zero padding) and horizontal flip on training batches
    # (recordio / image_folder: the crop chosen by train_crop, and the flip).
    augment: bool = False
    # recordio / image_folder training crop when augment is true: random_resized (a random
    # area and aspect ratio, scaled to image_size) | random (scale the shorter side to resize,
    # crop image_size at a random place) | center.
    train_crop: str = "random_resized"
    # random_resized: fraction of the image area a crop covers, [min, max].
    crop_area: List[float] = field(default_factory=lambda: [0.08, 1.0])
    # random_resized: aspect ratio (width / height) range of a crop, [min, max].
    crop_ratio: List[float] = field(default_factory=lambda: [0.75, 1.3333333])
    # Horizontal flip is part of augmentation unless this is false (digits should not flip).
    flip: bool = True
    # Per-channel mean and standard deviation used to normalise inputs, in the data's units
    # (images: pixels scaled to [0, 1]; e.g. ImageNet [0.485, 0.456, 0.406] / [0.229, 0.224,
    # 0.225]). null = measured on the training split (streamed sets: its first 512 images).
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    # recordio / image_folder, checked before a run starts: headers (every record's or file's
    # header: complete records, labels in range, a known image format) | decode (also decode
    # every image; slow on large sets) | none (only the index and the first batch).
    verify: str = "headers"
    # Workers that prepare batches ahead (0 = in the training process). In-memory sets use
    # threads; recordio / image_folder use processes (decoding runs in parallel). Batches are
    # identical for any value.
    num_workers: int = 0
    # Use only the first N training samples (after the validation split); null = all.
    limit_train: Optional[int] = None
    mock: MockDataConfig = field(default_factory=MockDataConfig)


@dataclass
class ModelConfig:
    # Base model from the zoo (`bmxnet_models.get_model`): resnet_e18 | resnet_e34 |
    # meliusnet22 | meliusnet29 | meliusnet42 | meliusnet59 (`lightnas summary` also takes
    # custom strings such as meliusnet_custom:DTSI).
    name: str = "resnet_e18"
    # Initial layers: thumbnail (3x3 conv, for small images) | imagenet (ResNet-E: 7x7/2 conv +
    # max-pool; MeliusNet: the paper's grouped stem, needs base_channels divisible by 16).
    stem: str = "thumbnail"
    # ResNet-E: width of the first stage (64 in the paper). MeliusNet: growth rate and stem width
    # (64 in the paper); transition widths scale with it. Smaller values make tiny test nets.
    base_channels: int = 64
    # Gradient cancelling of the straight-through sign: gradient is zero where |x| > clip.
    grad_cancel: float = 1.0
    # Scale binary weights per output channel: none | mean (mean |W|, as in XNOR-Net).
    weight_scaling: str = "none"
    # Sign of binary activations: det_sign (straight-through gradient) | approx_sign (Bi-Real
    # Net's gradient 2 - 2|x| inside +-1).
    activation: str = "det_sign"
    # Padding of binarized inputs: zero | minus_one (BMXNet-v2: every input stays +-1).
    binary_padding: str = "zero"


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    # Devices, data-parallel: [cpu] | [cpu:0, cpu:1] | [gpu:0, gpu:1] ...
    contexts: List[str] = field(default_factory=lambda: ["cpu"])
    # Optimizer of the network weights: sgd | nag | adam.
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    # Learning-rate schedule over all epochs: constant | cosine.
    lr_schedule: str = "cosine"
    # Hybridize (cache graphs of) every block that holds no searchable choice.
    hybridize: bool = True


@dataclass
class CheckpointConfig:
    # Complete checkpoints to keep (newest first); the best epoch's is kept in addition.
    keep: int = 3


@dataclass
class ExportConfig:
    # Export the derived architecture after every epoch (always done at the end).
    every_epoch: bool = False
    # File prefix of exported models; null uses the base model name.
    name: Optional[str] = None


@dataclass
class BaseConfig:
    # Search method: enas (more to come: fbnet, pit, dmasking).
    method: str = "enas"
    # One seed for everything; each epoch re-seeds from (seed, epoch) so resume is exact.
    seed: int = 0
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


@dataclass
class EnasConfig:
    # Cost of an architecture in the reward: params | binary_memory | macs.
    cost: str = "binary_memory"
    # Exponent w in reward = accuracy * (cost_target / cost) ** w; 0 turns the cost off.
    cost_weight: float = 0.0
    # null: halfway between the cheapest and the most expensive architecture of the space.
    cost_target: Optional[float] = None
    # true: train the weights for the whole epoch first, then run all controller updates
    # (controller.steps_after_epoch of them); false: interleave (every controller.update_every).
    only_post_training_eval: bool = False


@dataclass
class ControllerConfig:
    # LSTM controller (Pham et al., ENAS, 2018): embedding and hidden size.
    hidden_size: int = 100
    # Architectures sampled per controller update; the policy gradient sums over all of them.
    batch_size: int = 8
    # Training steps of the supernet between controller updates (interleaved mode).
    update_every: int = 20
    # Controller updates after the epoch when enas.only_post_training_eval is true.
    steps_after_epoch: int = 10
    lr: float = 3e-3
    # logits = tanh_constant * tanh(logits / temperature); null disables either.
    temperature: Optional[float] = 5.0
    tanh_constant: Optional[float] = 2.5
    entropy_weight: float = 1e-4
    # Exponential moving average of the reward used as the REINFORCE baseline.
    baseline_decay: float = 0.95


@dataclass
class EnasSearchConfig(BaseConfig):
    enas: EnasConfig = field(default_factory=EnasConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)


SCHEMAS: dict[str, type] = {"enas": EnasSearchConfig}

# Method schemas in their own modules import BaseConfig from here, so they come last.
from lightnas_cli.config.pit_schema import PitSearchConfig  # noqa: E402

SCHEMAS["pit"] = PitSearchConfig
