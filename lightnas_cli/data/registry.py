"""The data set registry: `describe` (shapes without reading files) and `load` (loaders).

Each data set registers two functions: one that tells its `DataSpec` from the config alone
(export and summaries need shapes without the data present), and one that reads the raw train
and test arrays. Everything after reading (validation split, `limit_train`, normalization,
loaders) is shared here so every data set behaves the same.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import numpy as np

from lightnas_cli.data.loader import TAG_SPLIT, ArrayLoader, Shard, check_shard, derive_seed
from lightnas_cli.data.transforms import channel_stats, normalize_
from lightnas_cli.errors import ConfigError, DataError

LAYOUTS = {3: "NCHW", 2: "NCW"}


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its input: per-sample shape (C, H, W) or (C, L), classes."""

    name: str
    shape: tuple[int, ...]
    classes: int
    layout: str

    def batch_shape(self, batch_size: int) -> tuple[int, ...]:
        """Shape of one batch in this layout, e.g. for export or cost models."""
        return (int(batch_size), *self.shape)

    def as_dict(self) -> dict:
        """JSON-friendly form (lists, not tuples) for run.json and architecture records."""
        return {"name": self.name, "shape": list(self.shape), "classes": self.classes, "layout": self.layout}


@dataclass
class RawSplits:
    """A data set as read: float32 samples (N, *shape), not normalized, and int labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class Loader(Protocol):
    """What search methods use of a loader (ArrayLoader in memory, StreamLoader streamed)."""

    batch_size: int

    @property
    def num_samples(self) -> int: ...

    def __len__(self) -> int: ...

    def set_epoch(self, seed: int, epoch: int) -> None: ...

    def set_shard(self, rank: int, count: int) -> None: ...

    def step_samples(self, index: int) -> int: ...

    def __iter__(self) -> Iterator: ...


@dataclass(frozen=True)
class Dataset:
    """A registered data set: how to describe it from the config and how to read it.

    In-memory sets give `read` (raw arrays; `load` does the rest). Streamed sets give `build`
    instead, which makes the loaders itself from `(data config, seed, batch size)`.
    """

    name: str
    describe: Callable[[Any], DataSpec]
    read: Optional[Callable[[Any, int], RawSplits]]
    summary: str
    build: Optional[Callable[[Any, int, int], "DataBundle"]] = None


@dataclass
class DataBundle:
    """Loaders of one data set. `val` is the `test` loader itself when no split is held out;
    `test` is None for a streamed set without a test split."""

    spec: DataSpec
    train: Loader
    val: Loader
    test: Optional[Loader]
    mean: np.ndarray
    std: np.ndarray

    @property
    def val_is_test(self) -> bool:
        """True when eval_split_percentage is 0 and validation metrics come from the test split."""
        return self.val is self.test

    def shard(self, rank: int, count: int) -> "DataBundle":
        """Make every loader read only shard `rank` of `count` of each batch (a launched
        worker's part); refuses, with a message, splits or batches too small to share."""
        loaders = {"training": self.train, "validation": self.val, "test": self.test}
        for split, loader in loaders.items():
            if loader is not None:
                check_shard(split, loader.num_samples, loader.batch_size, Shard(rank, count))
        for loader in {id(x): x for x in loaders.values() if x is not None}.values():
            loader.set_shard(rank, count)
        return self


DATASETS: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
    """Add a data set under `dataset.name` (later entries replace earlier ones)."""
    DATASETS[dataset.name] = dataset
    return dataset


def option(cfg: Any, key: str, default: Any = None) -> Any:
    """`cfg.key` for a DictConfig or a dataclass, or `default` where an older config lacks it."""
    try:
        value = getattr(cfg, key)
    except (AttributeError, KeyError):
        return default
    return default if value is None and default is not None else value


def _dataset(cfg: Any) -> Dataset:
    raw = option(cfg, "name", "mock")
    name = str(raw).strip().lower()
    if name in DATASETS:
        return DATASETS[name]
    names = list(DATASETS)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DataError(
        f"Unknown data set {raw!r} (data.name). Available: {', '.join(names)}.{hint}"
    )


def describe(data_cfg: Any) -> DataSpec:
    """The DataSpec of the configured data set, without reading any data file."""
    return _dataset(data_cfg).describe(data_cfg)


def choice(cfg: Any, key: str, allowed: Sequence[str], default: str) -> str:
    """`data.<key>` checked against its allowed values (ConfigError naming them)."""
    value = option(cfg, key, default)
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"'data.{key}' is {value!r}; allowed: {', '.join(allowed)}.{hint}")
    return str(value)


def split_indices(n: int, percentage: float, seed: int, tag: str = TAG_SPLIT,
                  key: str = "data.eval_split_percentage") -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) indices, each sorted: `percentage`% of n held out by a permutation
    seeded from (seed, tag).

    Sorted so `limit_train` keeps a stable, seed-independent-in-order subset of the original
    sequence. At least one sample stays on each side whenever a split is asked for.
    """
    if not 0.0 <= percentage < 100.0:
        raise DataError(
            f"{key} must be in [0, 100), got {percentage}; "
            f"use e.g. 20 to hold out 20% of the training set, or 0 to validate on the test split."
        )
    if percentage == 0.0:
        return np.arange(n), np.arange(0)
    n_val = int(round(n * percentage / 100.0))
    n_val = min(max(n_val, 1), n - 1)
    if n_val < 1:
        raise DataError(
            f"The training set has {n} sample(s): too few to hold out a validation split. "
            f"Set data.eval_split_percentage=0 to validate on the test split."
        )
    perm = np.random.RandomState(derive_seed(seed, tag)).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _positive_int(value: Any, key: str, allow_none: bool = True) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{key} must be a positive integer{' or null' if allow_none else ''}, got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class LoaderOptions:
    """The data keys every data set shares, checked once."""

    batch_size: int
    limit_train: Optional[int]
    num_workers: int
    eval_percentage: float


def loader_options(data_cfg: Any, batch_size: int) -> LoaderOptions:
    """Validated batch size, limit_train, num_workers and eval_split_percentage."""
    batch_size = _positive_int(batch_size, "train.batch_size", allow_none=False)
    limit = _positive_int(option(data_cfg, "limit_train"), "data.limit_train")
    workers = option(data_cfg, "num_workers", 0)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise DataError(f"data.num_workers must be an integer >= 0, got {workers!r}.")
    percentage = float(option(data_cfg, "eval_split_percentage", 0.0))
    return LoaderOptions(batch_size, limit, int(workers), percentage)


def configured_stats(data_cfg: Any, channels: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(mean, std) from data.mean / data.std, or None when both are null (then measured)."""
    mean, std = option(data_cfg, "mean"), option(data_cfg, "std")
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ConfigError("set both data.mean and data.std (one value per channel), or neither "
                          "to measure them on the training split")
    arrays = []
    for key, values in (("mean", mean), ("std", std)):
        try:
            values = np.asarray(list(values), dtype=np.float32)
        except (TypeError, ValueError):
            raise ConfigError(f"data.{key} must be a list of numbers, got {values!r}") from None
        if values.shape != (channels,):
            raise ConfigError(f"data.{key} has {values.size} value(s); the data has {channels} "
                              f"channel(s): give one value per channel")
        arrays.append(values)
    if (arrays[1] <= 0).any():
        raise ConfigError(f"data.std values must be > 0, got {list(map(float, arrays[1]))}")
    return arrays[0], arrays[1]


def load(data_cfg: Any, seed: int, batch_size: int) -> DataBundle:
    """Read the configured data set and build its train / val / test loaders.

    In-memory sets: the validation split is `eval_split_percentage`% of the training set
    (seeded by `seed`); `limit_train` then keeps the first N remaining training samples.
    Per-channel mean/std (data.mean/std, or computed on that final training split) are applied
    to all splits. Only the training loader shuffles and augments; it drops a partial last
    batch unless the set fits in one batch. Streamed sets build their loaders themselves.
    In a launched worker every loader then reads only that worker's shard.
    """
    bundle = _read_and_split(data_cfg, int(seed), batch_size)
    # A worker of `lightnas launch` reads its own shard of every split (loader.py).
    from lightnas_cli.launch.world import current
    world = current()
    return bundle.shard(world.rank, world.size) if world.size > 1 else bundle


def _read_and_split(data_cfg: Any, seed: int, batch_size: int) -> DataBundle:
    dataset = _dataset(data_cfg)
    if dataset.build is not None:
        return dataset.build(data_cfg, int(seed), batch_size)
    spec = dataset.describe(data_cfg)
    opts = loader_options(data_cfg, batch_size)
    stats = configured_stats(data_cfg, spec.shape[0])

    raw = dataset.read(data_cfg, int(seed))
    for part in ("x_train", "x_test"):
        got = getattr(raw, part).shape[1:]
        if tuple(got) != spec.shape:
            raise AssertionError(f"{dataset.name}: {part} has sample shape {got}, describe() says {spec.shape}")

    train_idx, val_idx = split_indices(len(raw.x_train), opts.eval_percentage, int(seed))
    if opts.limit_train is not None:
        train_idx = train_idx[:opts.limit_train]
    # Take the splits out of the raw arrays, then let those go (CIFAR: 600 MB as float32).
    x_train, y_train = raw.x_train[train_idx], raw.y_train[train_idx]
    x_val, y_val = raw.x_train[val_idx], raw.y_train[val_idx]
    x_test, y_test = raw.x_test.astype(np.float32, copy=False), raw.y_test
    del raw
    mean, std = stats if stats is not None else channel_stats(x_train)
    for part in (x_train, x_val, x_test):
        normalize_(part, mean, std)

    common = dict(batch_size=opts.batch_size, num_workers=opts.num_workers, seed=int(seed))
    train = ArrayLoader(
        x_train,
        y_train,
        shuffle=True,
        last_batch="discard" if len(x_train) > opts.batch_size else "keep",
        augment=bool(option(data_cfg, "augment", False)),
        flip=bool(option(data_cfg, "flip", True)),
        **common,
    )
    test = ArrayLoader(x_test, y_test, **common)
    val = ArrayLoader(x_val, y_val, **common) if len(x_val) else test
    return DataBundle(spec=spec, train=train, val=val, test=test, mean=mean, std=std)
