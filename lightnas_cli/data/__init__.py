"""Data sets for LightNAS: a registry of named data sets and reproducible in-memory loaders.

    spec = describe(cfg.data)                      # shapes and classes, no image decoded
    data = load(cfg.data, cfg.seed, cfg.train.batch_size)
    for epoch in range(epochs):
        data.train.set_epoch(cfg.seed, epoch)      # exact shuffle/augmentation for resume
        for x, y in data.train: ...
"""
from lightnas_cli.data.cifar import CIFAR10, CIFAR100, read_cifar, read_cifar_file
from lightnas_cli.data.loader import ArrayLoader, derive_seed
from lightnas_cli.data.registry import (
    DATASETS,
    DataBundle,
    Dataset,
    DataSpec,
    RawSplits,
    describe,
    load,
    register,
    split_indices,
)
from lightnas_cli.data.transforms import channel_stats, random_crop_flip, resize_images

# Registers the built-in data sets (mock, digits, cifar10, cifar100).
from lightnas_cli.data import datasets as _datasets  # noqa: F401,E402
from lightnas_cli.data import mnist1d as _mnist1d  # noqa: F401,E402  (registers "mnist1d")
from lightnas_cli.data import arrays as _arrays  # noqa: F401,E402  (registers "arrays")
from lightnas_cli.data import image_sets as _image_sets  # noqa: F401,E402  (recordio, image_folder)

__all__ = [
    "ArrayLoader",
    "CIFAR10",
    "CIFAR100",
    "DATASETS",
    "DataBundle",
    "DataSpec",
    "Dataset",
    "RawSplits",
    "channel_stats",
    "derive_seed",
    "describe",
    "load",
    "random_crop_flip",
    "read_cifar",
    "read_cifar_file",
    "register",
    "resize_images",
    "split_indices",
]
