"""Typed config schemas: the sections every method shares. Every key is documented here.

Each search method adds its own sections in a `BaseConfig` subclass that lives in its folder
(`lightnas_cli/search/<method>/config.py`) and is registered with the method, so this file
never names a method.

Allowed values and ranges are declared beside each key with `setting(...)` and checked in one
place (`lightnas_cli.config.validation`) after merging, before any work starts. A section may
also define `check(section)` for rules that involve several of its keys.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, List, Optional, Sequence

#: Optimizers of the network weights (`train.optimizer`); momentum applies to sgd and nag.
OPTIMIZERS = ("sgd", "nag", "adam")
#: Learning-rate schedules (`train.lr_schedule`).
SCHEDULES = ("constant", "cosine", "cosine_restarts")
#: Where gradients are summed (`train.kvstore`); see lightnas_cli/launch/world.py.
KVSTORES = ("device", "local", "dist_sync", "dist_async")


def setting(default: Any = MISSING, *, factory: Callable[[], Any] | None = None,
            choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
            ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, finite: bool = True) -> Any:
    """A schema field with its allowed values: `choices` (a sequence, or a function returning
    one, for registries filled at run time), bounds `ge`/`gt`/`le`/`lt` (applied to every
    element of a list), and `finite` (NaN and infinities refused for floats). None is always
    allowed where the type is Optional."""
    metadata = {"choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "finite": finite}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


#: Largest mock data set, in array elements over both splits (1 GiB of float32).
MAX_MOCK_ELEMENTS = 1 << 28


@dataclass
class RunConfig:
    # Run folder name under `root`: ASCII letters, digits, '.', '_' and '-', not starting with
    # '.' or '-', at most 100 characters. Default: <model>_<dataset>_<YYYYmmdd-HHMMSS>.
    name: Optional[str] = None
    # Folder that holds run folders.
    root: str = "trainings"

    @staticmethod
    def check(section: Any) -> None:
        from lightnas_cli.runs import check_name
        if section.name is not None:
            check_name(section.name, "run.name")
        if not str(section.root).strip():
            from lightnas_cli.errors import ConfigError
            raise ConfigError("'run.root' is empty; name the folder that holds runs, e.g. "
                              "run.root=trainings")


@dataclass
class MockDataConfig:
    # Synthetic, class-separable images: one fixed random prototype per class plus noise.
    num_classes: int = setting(10, ge=1, le=100_000)
    # Input shape as [channels, height, width] (or [channels, length] for 1-D models).
    shape: List[int] = setting(factory=lambda: [3, 32, 32], ge=1, le=4096)
    num_train: int = setting(512, ge=1, le=1_000_000)
    num_test: int = setting(128, ge=1, le=1_000_000)
    # Standard deviation of the per-sample noise relative to the prototypes (higher = harder).
    noise: float = setting(1.0, ge=0, le=1e6)

    @staticmethod
    def check(section: Any) -> None:
        from lightnas_cli.errors import ConfigError
        if not 1 <= len(section.shape) <= 3:
            raise ConfigError(f"'data.mock.shape' has {len(section.shape)} dimensions; give "
                              f"[channels, height, width] or [channels, length]")
        elements = section.num_train + section.num_test
        for size in section.shape:
            elements *= size
        if elements > MAX_MOCK_ELEMENTS:
            raise ConfigError(f"mock data of (data.mock.num_train + num_test) x shape = "
                              f"{elements:,} values is more than {MAX_MOCK_ELEMENTS:,} (1 GiB); "
                              f"use fewer samples or a smaller shape")


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
    array_layout: str = setting("auto", choices=("auto", "W", "CW", "WC", "HW", "CHW", "HWC"))
    # Number of classes; null takes it from the data (folder names, or the largest label + 1).
    classes: Optional[int] = setting(None, ge=1, le=100000)
    # Percentage of the training set held out as the validation split (controller rewards,
    # validation metrics). 0 uses the test split for validation.
    eval_split_percentage: float = setting(20.0, ge=0, lt=100)
    # image_folder without train/val/test folders: percentage held out as the test split
    # (the same files whatever the seed). 0 = no test split.
    test_split_percentage: float = setting(0.0, ge=0, lt=100)
    # Resize images to this side length (digits: 8 -> e.g. 32). null keeps the native size.
    # recordio / image_folder: required, the side of the square crops the network sees.
    image_size: Optional[int] = setting(None, ge=1, le=4096)
    # recordio / image_folder: decode as 3 (RGB) or 1 (grey) channels.
    channels: int = setting(3, choices=(1, 3))
    # recordio / image_folder: shorter side the image is scaled to before a center crop of
    # image_size (validation, test, and training without augment) or a random crop
    # (train_crop=random). null = image_size. ImageNet habit: 256 for 224.
    resize: Optional[int] = setting(None, ge=1, le=8192)
    # Random crop (4-pixel zero padding) and horizontal flip on training batches
    # (recordio / image_folder: the crop chosen by train_crop, and the flip).
    augment: bool = False
    # recordio / image_folder training crop when augment is true: random_resized (a random
    # area and aspect ratio, scaled to image_size) | random (scale the shorter side to resize,
    # crop image_size at a random place) | center.
    train_crop: str = setting("random_resized", choices=("random_resized", "random", "center"))
    # random_resized: fraction of the image area a crop covers, [min, max].
    crop_area: List[float] = setting(factory=lambda: [0.08, 1.0], gt=0, le=1)
    # random_resized: aspect ratio (width / height) range of a crop, [min, max].
    crop_ratio: List[float] = setting(factory=lambda: [0.75, 1.3333333], gt=0, le=100)
    # Horizontal flip is part of augmentation unless this is false (digits should not flip).
    flip: bool = True
    # Per-channel mean and standard deviation used to normalise inputs, in the data's units
    # (images: pixels scaled to [0, 1]; e.g. ImageNet [0.485, 0.456, 0.406] / [0.229, 0.224,
    # 0.225]). null = measured on the training split (streamed sets: its first 512 images).
    mean: Optional[List[float]] = setting(None, ge=-1e6, le=1e6)
    std: Optional[List[float]] = setting(None, gt=0, le=1e6)
    # recordio / image_folder, checked before a run starts: headers (every record's or file's
    # header: complete records, labels in range, a known image format) | decode (also decode
    # every image; slow on large sets) | none (only the index and the first batch).
    verify: str = setting("headers", choices=("headers", "decode", "none"))
    # Workers that prepare batches ahead (0 = in the training process). In-memory sets use
    # threads; recordio / image_folder use processes (decoding runs in parallel). Batches are
    # identical for any value.
    num_workers: int = setting(0, ge=0, le=64)
    # Use only the first N training samples (after the validation split); null = all.
    limit_train: Optional[int] = setting(None, ge=1)
    mock: MockDataConfig = field(default_factory=MockDataConfig)


@dataclass
class ModelSection:
    # Base model from the zoo (`bmxnet_models.get_model`); each method's schema says which
    # models and options it takes.
    name: str = ""


@dataclass
class TrainConfig:
    epochs: int = setting(10, ge=1, le=1_000_000)
    batch_size: int = setting(64, ge=1, le=1_000_000)
    # Devices, data-parallel: [cpu] | [cpu:0, cpu:1] | [gpu:0, gpu:1] ...
    contexts: List[str] = field(default_factory=lambda: ["cpu"])
    # Where gradients are summed: device | local (one process: over its contexts, on a device
    # or on the CPU) | dist_sync (MXNet's parameter server, workers started by `lightnas
    # launch`; there device and local mean dist_sync too) | dist_async (refused with the reason:
    # its updates run on the servers). batch_size is then the global batch, split over the
    # workers, and lr keeps its one-machine meaning (README, "Multi-machine launch").
    kvstore: str = setting("device", choices=KVSTORES)
    # Optimizer of the network weights: sgd | nag | adam.
    optimizer: str = setting("adam", choices=OPTIMIZERS)
    lr: float = setting(1e-3, gt=0)
    # Momentum of sgd and nag (adam ignores it).
    momentum: float = setting(0.9, ge=0, lt=1)
    weight_decay: float = setting(0.0, ge=0, lt=1)
    # Clip every gradient element to [-c, c] (MXNet's optimizer `clip_gradient`); null = off.
    clip_gradient: Optional[float] = setting(None, gt=0)
    # Learning-rate schedule over all epochs, per step: constant | cosine (to 0 at the end) |
    # cosine_restarts (seed 003: cosine decay with restarts and a gradient-rising stage, keys
    # below).
    lr_schedule: str = setting("cosine", choices=SCHEDULES)
    # cosine_restarts: the first period lasts restart_epochs (may be fractional); each restart
    # multiplies the period by restart_period_mul and the peak by restart_peak_mul; the rate
    # never falls below lr_floor x its period's peak; after each restart it rises linearly
    # from that floor to the new peak over rise_steps steps (at most half the period), then
    # decays along a half cosine. Defaults: seed 003's port (x2, x0.95, 0.001, 300 steps).
    restart_epochs: float = setting(1.0, gt=0)
    restart_period_mul: float = setting(2.0, ge=1)
    restart_peak_mul: float = setting(0.95, gt=0)
    lr_floor: float = setting(0.001, ge=0, lt=1)
    rise_steps: int = setting(300, ge=0)
    # Linear warm-up over the first N epochs (may be fractional): the rate rises from lr/steps
    # to lr, then the schedule takes over. 0 = none.
    warmup_epochs: float = setting(0.0, ge=0, le=1_000_000)
    # Hybridize (cache graphs of) every block that holds no searchable choice.
    hybridize: bool = True

    @staticmethod
    def check(section: Any) -> None:
        from lightnas_cli.errors import ConfigError
        if not section.contexts:
            raise ConfigError("'train.contexts' must name at least one device, e.g. [cpu]")
        if section.warmup_epochs >= section.epochs:
            raise ConfigError(f"'train.warmup_epochs' ({section.warmup_epochs}) must be below "
                              f"'train.epochs' ({section.epochs})")


@dataclass
class CheckpointConfig:
    # Complete checkpoints to keep (newest first); the best epoch's is kept in addition.
    keep: int = setting(3, ge=1, le=100_000)


@dataclass
class ExportConfig:
    # Export the derived architecture after every epoch (always done at the end). Each export
    # is its own folder, exported_models/epoch-NNNN/.
    every_epoch: bool = False
    # File prefix of exported models (same rule as run.name); null uses the base model name.
    name: Optional[str] = None

    @staticmethod
    def check(section: Any) -> None:
        from lightnas_cli.runs import check_name
        if section.name is not None:
            check_name(section.name, "export.name")


@dataclass
class BaseConfig:
    # Search method; `lightnas config show` lists the registered ones on a typo.
    method: str = ""
    # One seed for everything; each epoch re-seeds from (seed, epoch) so resume is exact.
    seed: int = setting(0, ge=0, le=2**32 - 1)
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # Every method's schema replaces this with its own model section (it keeps `name`).
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
