"""The built-in data sets: mock (synthetic), digits (scikit-learn), cifar10 / cifar100 (local files).

Each one registers a `describe` (shape and classes from the config alone) and a `read` (raw
float32 train/test arrays). Splitting, normalization and loaders are shared (registry.py).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lightnas_cli.data.cifar import CIFAR10, CIFAR100, CifarFormat, read_cifar
from lightnas_cli.data.loader import TAG_MOCK, derive_seed
from lightnas_cli.data.registry import LAYOUTS, Dataset, DataSpec, RawSplits, option, register
from lightnas_cli.data.transforms import resize_images
from lightnas_cli.errors import DataError

DIGITS_TEST_FRACTION = 0.2


def _image_size(cfg: Any, native: int) -> int:
    size = option(cfg, "image_size")
    if size is None:
        return native
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise DataError(f"data.image_size must be a positive integer or null, got {size!r}.")
    return int(size)


# --------------------------------------------------------------------------------------- mock


def _mock_cfg(cfg: Any) -> tuple[tuple[int, ...], int, int, int, float]:
    mock = option(cfg, "mock")
    if mock is None:
        raise DataError("data.mock is missing: data.name=mock needs data.mock.shape and friends.")
    try:
        shape = tuple(int(v) for v in option(mock, "shape", [3, 32, 32]))
    except (TypeError, ValueError):
        raise DataError(
            f"data.mock.shape must be a list of integers like [3, 32, 32] or [3, 100], "
            f"got {option(mock, 'shape')!r}."
        ) from None
    if len(shape) not in LAYOUTS or min(shape) < 1:
        raise DataError(
            f"data.mock.shape must be [channels, height, width] or [channels, length] with "
            f"positive sizes, got {list(shape)}."
        )
    classes = int(option(mock, "num_classes", 10))
    num_train = int(option(mock, "num_train", 512))
    num_test = int(option(mock, "num_test", 128))
    noise = float(option(mock, "noise", 1.0))
    if classes < 1:
        raise DataError(f"data.mock.num_classes must be >= 1, got {classes}.")
    if num_train < 1 or num_test < 1:
        raise DataError(
            f"data.mock.num_train and data.mock.num_test must be >= 1, got {num_train} and {num_test}."
        )
    if noise < 0:
        raise DataError(f"data.mock.noise must be >= 0, got {noise}.")
    return shape, classes, num_train, num_test, noise


def _describe_mock(cfg: Any) -> DataSpec:
    shape, classes, *_ = _mock_cfg(cfg)
    return DataSpec("mock", shape, classes, LAYOUTS[len(shape)])


def _read_mock(cfg: Any, seed: int) -> RawSplits:
    """One fixed N(0, 1) prototype per class; a sample is its prototype plus noise * N(0, 1).

    Labels cycle through all classes (then shuffled), so every class appears whenever there
    are at least as many samples as classes.
    """
    shape, classes, num_train, num_test, noise = _mock_cfg(cfg)
    rng = np.random.RandomState(derive_seed(seed, TAG_MOCK))
    prototypes = rng.standard_normal((classes, *shape)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n, dtype=np.int64) % classes
        rng.shuffle(labels)
        data = prototypes[labels] + np.float32(noise) * rng.standard_normal((n, *shape)).astype(np.float32)
        return data.astype(np.float32, copy=False), labels

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    return RawSplits(x_train, y_train, x_test, y_test)


# ------------------------------------------------------------------------------------- digits


def _describe_digits(cfg: Any) -> DataSpec:
    size = _image_size(cfg, 8)
    return DataSpec("digits", (1, size, size), 10, "NCHW")


def _read_digits(cfg: Any, seed: int) -> RawSplits:
    """scikit-learn's 1,797 real 8x8 digits, pixels scaled to [0, 1].

    The test split is fixed whatever the seed: the last 20% of the samples in scikit-learn's
    order (359 samples), the first 1,438 form the training set.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    labels = digits.target.astype(np.int64)
    size = _image_size(cfg, 8)
    if size != 8:
        images = resize_images(images, size)
    n_test = int(len(images) * DIGITS_TEST_FRACTION)
    cut = len(images) - n_test
    return RawSplits(images[:cut], labels[:cut], images[cut:], labels[cut:])


# -------------------------------------------------------------------------------------- cifar


def _cifar(fmt: CifarFormat, name: str) -> Dataset:
    def describe(cfg: Any) -> DataSpec:
        size = _image_size(cfg, 32)
        return DataSpec(name, (3, size, size), fmt.classes, "NCHW")

    def read(cfg: Any, seed: int) -> RawSplits:
        size = _image_size(cfg, 32)
        x_train, y_train, x_test, y_test = read_cifar(option(cfg, "dir"), fmt)

        def to_float(images: np.ndarray) -> np.ndarray:
            out = images.astype(np.float32)
            out /= np.float32(255.0)
            return resize_images(out, size) if size != 32 else out

        return RawSplits(to_float(x_train), y_train, to_float(x_test), y_test)

    return Dataset(
        name, describe, read,
        f"{fmt.title} from the binary release files in data.dir ({fmt.classes} classes, 32x32 RGB)",
    )


register(Dataset("mock", _describe_mock, _read_mock, "synthetic class-separable data, any shape and class count"))
register(Dataset("digits", _describe_digits, _read_digits, "scikit-learn 8x8 digits (offline, 1,797 samples)"))
register(_cifar(CIFAR10, "cifar10"))
register(_cifar(CIFAR100, "cifar100"))
