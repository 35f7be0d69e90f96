"""MNIST-1D (Greydanus & Kobak, 2020): 10 classes of 1-D signals of length 40, made locally.

The `mnist1d` package's `make_dataset()` generates the data from its digit templates with
random padding, shear, translation and noise; its `get_dataset()` downloads a pickle, which
LightNAS never uses (offline, and no pickles). The generator is seeded from the run's seed,
and the global random state it touches is restored afterwards so nothing else changes.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np

from lightnas_cli.data.registry import Dataset, DataSpec, RawSplits, register
from lightnas_cli.errors import DataError

#: Signal length and classes of the standard MNIST-1D configuration.
LENGTH = 40
CLASSES = 10


def _describe(cfg: Any) -> DataSpec:
    return DataSpec("mnist1d", (1, LENGTH), CLASSES, "NCW")


def make_mnist1d(seed: int, num_samples: int = 5000) -> RawSplits:
    """Generate MNIST-1D with the package's default settings (80/20 train/test split)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DataError("data set 'mnist1d' needs the `mnist1d` package: "
                        "pip install mnist1d==0.0.2.post1") from None
    args = get_dataset_args()
    args.seed = int(seed)
    args.num_samples = int(num_samples)
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)  # seeds numpy's and Python's global generators itself
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)

    def split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x.astype(np.float32)[:, None, :], y.astype(np.int64)

    x_train, y_train = split(data["x"], data["y"])
    x_test, y_test = split(data["x_test"], data["y_test"])
    return RawSplits(x_train, y_train, x_test, y_test)


def _read(cfg: Any, seed: int) -> RawSplits:
    # The benchmark's 5,000 samples (4,000 train, 1,000 test); data.limit_train trims later.
    return make_mnist1d(seed)


register(Dataset("mnist1d", _describe, _read,
                 "MNIST-1D 1x40 signals, 10 classes (generated locally by the mnist1d package)"))
