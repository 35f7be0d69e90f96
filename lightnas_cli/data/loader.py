"""In-memory batch loader with exactly reproducible shuffling and augmentation.

Every random draw of an epoch comes from a `np.random.RandomState` seeded from
`(seed, epoch)` (the shuffle order) or `(seed, epoch, batch index)` (the augmentation of one
batch). Nothing depends on global random state, on how many epochs ran before in the process,
or on the number of worker threads, so a run resumed at epoch k sees the very batches the
uninterrupted run would have seen.

Workers of a launched run each read their own shard (`set_shard(rank, count)`): every
worker walks the same epoch order in the same global batches (`train.batch_size` samples,
what one process would see) and keeps every `count`-th sample of each, starting at its rank.
A shard is therefore a pure function of (seed, epoch, rank, count), the shards of a batch
partition it, and all workers take the same number of steps.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import mxnet as mx
import numpy as np
from mxnet.ndarray.ndarray import array as dense_array  # mx.nd.array warns per call (scipy check)

from lightnas_cli.data.transforms import random_crop_flip
from lightnas_cli.errors import ConfigError, DataError
from lightnas_cli.seeding import derive_seed

# Stream tags keep the derived seeds of different uses apart.
TAG_SHUFFLE = "shuffle"
TAG_AUGMENT = "augment"
TAG_SPLIT = "split"
TAG_MOCK = "mock"


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Sample indices of one epoch, a pure function of (seed, epoch): every loader (in memory
    or streamed) visits its samples in this order, so a resumed run sees the same batches."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.RandomState(derive_seed(seed, TAG_SHUFFLE, epoch)).permutation(num_samples)


def batch_count(num_samples: int, batch_size: int, last_batch: str) -> int:
    """Batches one pass yields: a partial last batch is kept or discarded."""
    if last_batch == "discard":
        return num_samples // batch_size
    return -(-num_samples // batch_size)


@dataclass(frozen=True)
class Shard:
    """Which part of every batch this process reads: samples rank, rank + count, ..."""

    rank: int = 0
    count: int = 1


def batch_bounds(num_samples: int, batch_size: int, last_batch: str,
                 shards: int = 1) -> list[tuple[int, int]]:
    """(start, stop) in the epoch order of each batch of one pass. With `shards` > 1, a
    partial last batch too small to give every shard a sample joins the batch before it, so
    no worker ever has an empty batch (every worker must take every step)."""
    bounds = [(index * batch_size, min((index + 1) * batch_size, num_samples))
              for index in range(batch_count(num_samples, batch_size, last_batch))]
    if shards > 1 and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < shards:
        start = bounds[-2][0]
        bounds[-2:] = [(start, bounds[-1][1])]
    return bounds


def make_shard(loader: object, rank: int, count: int) -> Shard:
    """Shard `rank` of `count` of every batch of `loader` (a ValueError where it cannot be:
    `check_shard` tells a user why first)."""
    shard = Shard(int(rank), int(count))
    if not 0 <= shard.rank < shard.count or (
            shard.count > 1 and shard.count > min(loader.num_samples, loader.batch_size)):
        raise ValueError(f"cannot split {loader!r} into {shard.count} shards")
    return shard


def step_samples(bounds: list[tuple[int, int]], index: int) -> int:
    """Samples of batch `index` over all shards: what a step's gradient averages over."""
    start, stop = bounds[index]
    return stop - start


def check_shard(split: str, num_samples: int, batch_size: int, shard: Shard) -> None:
    """Refuse a sharding that would leave a worker without samples."""
    if shard.count < 1 or not 0 <= shard.rank < shard.count:
        raise ValueError(f"bad shard {shard}")
    if shard.count > 1 and batch_size < shard.count:
        raise ConfigError(f"train.batch_size ({batch_size}) is the global batch, split over "
                          f"the {shard.count} workers: set it to at least {shard.count}")
    if shard.count > num_samples:
        raise DataError(f"the {split} split has {num_samples} sample(s), fewer than the "
                        f"{shard.count} workers that read it; use fewer workers or more data")


class ArrayLoader:
    """Batches of an in-memory float32 array as `(data, label)` `mx.nd.NDArray` pairs on cpu.

    `last_batch` is "keep" (a smaller final batch) or "discard". Labels are float32, as Gluon
    losses expect. Call `set_epoch(seed, epoch)` before iterating each epoch; iterating twice
    without it repeats the same epoch.
    """

    def __init__(
        self,
        data: np.ndarray,
        label: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        last_batch: str = "keep",
        augment: bool = False,
        flip: bool = True,
        pad: int = 4,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        if len(data) != len(label):
            raise ValueError(f"data has {len(data)} samples but label has {len(label)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if last_batch not in ("keep", "discard"):
            raise ValueError(f"last_batch must be 'keep' or 'discard', got {last_batch!r}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.label = np.asarray(label, dtype=np.float32)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.last_batch = last_batch
        self.augment = bool(augment)
        self.flip = bool(flip)
        self.pad = int(pad)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.epoch = 0
        self.shard = Shard()
        self._bounds = batch_bounds(len(self.data), self.batch_size, last_batch)

    @property
    def num_samples(self) -> int:
        """Samples in this split (including those a discarded last batch leaves out)."""
        return len(self.data)

    def __len__(self) -> int:
        """Number of batches one iteration yields (the same on every shard)."""
        return len(self._bounds)

    def set_shard(self, rank: int, count: int) -> None:
        """Read only shard `rank` of `count` of every batch (a launched worker's part);
        `check_shard` first tells a user why a sharding cannot work."""
        self.shard = make_shard(self, rank, count)
        self._bounds = batch_bounds(self.num_samples, self.batch_size, self.last_batch,
                                    self.shard.count)

    def step_samples(self, index: int) -> int:
        """Samples of batch `index` over all shards: what a step's gradient averages over."""
        return step_samples(self._bounds, index)

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Select the shuffle order and augmentation of `epoch` (a pure function of both)."""
        self.seed = int(seed)
        self.epoch = int(epoch)

    def order(self) -> np.ndarray:
        """Sample indices of the current epoch, in the order batches take them."""
        return epoch_order(self.num_samples, self.seed, self.epoch, self.shuffle)

    def batch_numpy(self, order: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch `index` of `order` as numpy arrays, augmented as in the current epoch."""
        return self._batch(order, index, self.seed, self.epoch)

    def _batch(
        self, order: np.ndarray, index: int, seed: int, epoch: int
    ) -> tuple[np.ndarray, np.ndarray]:
        # A pure function of its arguments: safe to run in any thread, in any order.
        start, stop = self._bounds[index]
        take = order[start:stop][self.shard.rank::self.shard.count]
        data = self.data[take]
        if self.augment:
            keys: tuple = (epoch, index)
            if self.shard.count > 1:  # each shard its own draws; one process: as before
                keys += (self.shard.rank, self.shard.count)
            rng = np.random.RandomState(derive_seed(seed, TAG_AUGMENT, *keys))
            data = random_crop_flip(data, rng, pad=self.pad, flip=self.flip)
        return np.ascontiguousarray(data, dtype=np.float32), self.label[take]

    @staticmethod
    def _to_nd(batch: tuple[np.ndarray, np.ndarray]) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
        data, label = batch
        return (
            dense_array(data, ctx=mx.cpu(), dtype=np.float32),
            dense_array(label, ctx=mx.cpu(), dtype=np.float32),
        )

    def __iter__(self) -> Iterator[tuple[mx.nd.NDArray, mx.nd.NDArray]]:
        # Capture the epoch now: a later set_epoch must not change batches already under way.
        seed, epoch = self.seed, self.epoch
        order = self.order()
        count = len(self)
        if self.num_workers == 0:
            for index in range(count):
                yield self._to_nd(self._batch(order, index, seed, epoch))
            return
        # Workers build numpy batches only; NDArrays are made in the consuming thread.
        executor = ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="lightnas-data")
        pending: deque[Future] = deque()
        try:
            submitted = 0
            while submitted < min(self.num_workers, count):
                pending.append(executor.submit(self._batch, order, submitted, seed, epoch))
                submitted += 1
            while pending:
                batch = pending.popleft().result()
                if submitted < count:
                    pending.append(executor.submit(self._batch, order, submitted, seed, epoch))
                    submitted += 1
                yield self._to_nd(batch)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        return (
            f"ArrayLoader(samples={self.num_samples}, shape={self.data.shape[1:]}, "
            f"batch_size={self.batch_size}, batches={len(self)}, shuffle={self.shuffle}, "
            f"augment={self.augment}, last_batch={self.last_batch!r}, num_workers={self.num_workers})"
        )
