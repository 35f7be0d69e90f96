"""Streamed image data: records or files decoded and augmented batch by batch, never held whole.

The pipeline is a Gluon `Dataset` (read bytes, decode with MXNet's image decoder, crop and
scale, flip) behind a Gluon `DataLoader` with worker processes. It was chosen over
`mx.io.ImageRecordIter` after measuring both (benchmarks/data_pipeline.py; README "Data"):
the C++ iterator decodes faster per core, but this pipeline
- makes every batch a pure function of (seed, epoch, position): the order comes from
  `epoch_order`, each sample's crop and flip from its own seed drawn from (seed, epoch), so
  batches do not depend on `num_workers` or on which worker made them, and resume is exact;
- reads any subset of records (validation carved from train by index, `limit_train`);
- reads image folders through the same code;
- reports an undecodable image or a bad label as a `DataError` naming the record, where the C++
  iterator aborts the process.
"""
from __future__ import annotations

import abc

import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.base import MXNetError
from mxnet.ndarray.ndarray import array as dense_array  # mx.nd.array warns per call (scipy check)

from lightnas_cli.data.loader import (TAG_AUGMENT, Shard, batch_bounds, epoch_order, make_shard,
                                      step_samples)
from lightnas_cli.data.recordio import RecordFile, check_label
from lightnas_cli.errors import DataError
from lightnas_cli.seeding import derive_seed

CROPS = ("random_resized", "random", "center")
#: Interpolation of MXNet's image resize (OpenCV): 1 = bilinear, as ImageRecordIter's default.
INTERPOLATION = 1
#: Attempts at a random-resized crop that fits before falling back to the center crop.
CROP_ATTEMPTS = 10
#: Seconds a worker may take for one batch before the loader gives up.
WORKER_TIMEOUT = 600


# ------------------------------------------------------------------------------- transforms


@dataclass(frozen=True)
class ImageTransform:
    """Decode, crop and scale one image to (size, size, channels) uint8, maybe mirrored.

    `crop`: center (scale the shorter side to `resize`, take the central size x size);
    random (the same scale, a random place); random_resized (Inception-style, Szegedy et al.
    2015: a random `area` fraction of the image with a random aspect ratio in `ratio`, log-
    uniform, scaled to size x size). Every crop is cut from the decoded image and scaled in one
    resize. `rng` None means no randomness (validation / test).
    """

    size: int
    channels: int = 3
    resize: Optional[int] = None
    crop: str = "center"
    area: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False

    def _center_side(self, height: int, width: int) -> int:
        short = min(height, width)
        resize = self.resize or self.size
        return max(1, min(short, int(round(self.size * short / resize))))

    def box(self, height: int, width: int,
            rng: Optional[np.random.RandomState]) -> tuple[int, int, int, int]:
        """(x0, y0, crop width, crop height) in the decoded image."""
        if rng is not None and self.crop == "random_resized":
            for _ in range(CROP_ATTEMPTS):
                target = height * width * rng.uniform(*self.area)
                aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
                w = int(round(math.sqrt(target * aspect)))
                h = int(round(math.sqrt(target / aspect)))
                if 0 < w <= width and 0 < h <= height:
                    return rng.randint(0, width - w + 1), rng.randint(0, height - h + 1), w, h
        side = self._center_side(height, width)
        if rng is not None and self.crop == "random":
            return rng.randint(0, width - side + 1), rng.randint(0, height - side + 1), side, side
        return (width - side) // 2, (height - side) // 2, side, side

    def __call__(self, raw: bytes, rng: Optional[np.random.RandomState], where: str) -> np.ndarray:
        try:
            image = mx.image.imdecode(raw, flag=1 if self.channels == 3 else 0)
            x0, y0, w, h = self.box(image.shape[0], image.shape[1], rng)
            out = mx.image.fixed_crop(image, x0, y0, w, h, size=(self.size, self.size),
                                      interp=INTERPOLATION).asnumpy()
        except MXNetError as exc:
            reason = next((line.split("Check failed:")[-1].strip() for line in str(exc).splitlines()
                           if "Check failed" in line), str(exc).splitlines()[0])
            raise DataError(f"{where}: the image does not decode ({reason}). Replace or remove "
                            f"it and re-create the data (`lightnas data check -c CONFIG` lists "
                            f"every such image)") from None
        if out.ndim == 2:
            out = out[:, :, None]
        if rng is not None and self.flip and rng.rand() < 0.5:
            out = out[:, ::-1]
        return out


# ---------------------------------------------------------------------------------- sources


class ImageSource(abc.ABC):
    """Encoded images and their labels, addressed 0..len-1."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    @abc.abstractmethod
    def fetch(self, i: int) -> tuple[bytes, float]:
        """(encoded image, label) of sample i."""

    @abc.abstractmethod
    def where(self, i: int) -> str:
        """Human name of sample i for messages."""


class RecordSource(ImageSource):
    """Some records of a .rec file (`positions` in .idx order)."""

    def __init__(self, records: RecordFile, positions: Optional[np.ndarray] = None) -> None:
        self.records = records
        self.positions = np.arange(len(records)) if positions is None else np.asarray(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def fetch(self, i: int) -> tuple[bytes, float]:
        header, image = self.records.read(int(self.positions[i]))
        return image, header.label

    def where(self, i: int) -> str:
        return self.records.where(int(self.positions[i]))


class FileSource(ImageSource):
    """Image files with known labels."""

    def __init__(self, files: Sequence[str], labels: np.ndarray) -> None:
        self.files = list(files)
        self.labels = np.asarray(labels)

    def __len__(self) -> int:
        return len(self.files)

    def fetch(self, i: int) -> tuple[bytes, float]:
        try:
            return Path(self.files[i]).read_bytes(), float(self.labels[i])
        except OSError as exc:
            raise DataError(f"{self.files[i]}: cannot be read ({exc.strerror}); the image folder "
                            f"changed after it was scanned?") from None

    def where(self, i: int) -> str:
        return self.files[i]


class ImageDataset(gluon.data.Dataset):
    """Gluon dataset of decoded images; an item key is (sample index, augmentation seed).

    A seed < 0 (or `augment` false) means the deterministic validation transform.
    """

    def __init__(self, source: ImageSource, transform: ImageTransform, classes: int,
                 augment: bool) -> None:
        self.source = source
        self.transform = transform
        self.classes = int(classes)
        self.augment = bool(augment)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.float32]:
        index, seed = key
        raw, label = self.source.fetch(index)
        where = self.source.where(index)
        check_label(label, self.classes, where)
        rng = np.random.RandomState(seed) if self.augment and seed >= 0 else None
        return self.transform(raw, rng, where), np.float32(label)


class Normalize:
    """Worker-side batchify: stack HWC uint8 images into NCHW float32, (x / 255 - mean) / std."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, shared: bool) -> None:
        std = np.asarray(std, dtype=np.float32)
        self.scale = (1.0 / (255.0 * std)).reshape(1, -1, 1, 1).astype(np.float32)
        self.shift = (-np.asarray(mean, dtype=np.float32) / std).reshape(1, -1, 1, 1)
        self.shared = shared

    def stack(self, items: list) -> tuple[np.ndarray, np.ndarray]:
        """(data, label) numpy arrays of a list of dataset items."""
        images = np.stack([image for image, _ in items]).transpose(0, 3, 1, 2)
        data = images.astype(np.float32)
        data *= self.scale
        data += self.shift
        return data, np.asarray([lab for _, lab in items], dtype=np.float32)

    def __call__(self, items: list) -> tuple:
        data, label = self.stack(items)
        if not self.shared:
            return data, label
        ctx = mx.Context("cpu_shared", 0)  # passed on as a shared-memory handle
        return dense_array(data, ctx=ctx, dtype=np.float32), dense_array(label, ctx=ctx,
                                                                        dtype=np.float32)


# ---------------------------------------------------------------------------------- loaders


class EpochBatchSampler:
    """Gluon batch sampler: lists of (sample index, augmentation seed) for the current epoch
    (of this worker's shard of each batch, in a launched run; seeds are per sample, so a
    sample is augmented alike whichever worker reads it)."""

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool, last_batch: str,
                 augment: bool) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.last_batch = last_batch
        self.augment = augment
        self.seed = 0
        self.epoch = 0
        self.shard = Shard()
        self.bounds = batch_bounds(num_samples, batch_size, last_batch)

    def set_shard(self, shard: Shard) -> None:
        self.shard = shard
        self.bounds = batch_bounds(self.num_samples, self.batch_size, self.last_batch,
                                   shard.count)

    def __len__(self) -> int:
        return len(self.bounds)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.num_samples, self.seed, self.epoch, self.shuffle)
        if self.augment:
            rng = np.random.RandomState(derive_seed(self.seed, TAG_AUGMENT, self.epoch))
            seeds = rng.randint(0, 2**31 - 1, size=self.num_samples)
        else:
            seeds = np.full(self.num_samples, -1)
        rank, count = self.shard.rank, self.shard.count
        for start, stop in self.bounds:
            yield [(int(i), int(s)) for i, s in zip(order[start:stop][rank::count],
                                                    seeds[start:stop][rank::count])]


_STARTING_WORKERS = False


def _after_fork_in_child() -> None:
    # Runs in every forked child; only data workers (forked while a loader starts its pool)
    # act. The training process turns SIGTERM into KeyboardInterrupt (runner.py); a worker
    # must simply end when its pool is terminated. (Workers also end when the training process
    # dies, even by SIGKILL: multiprocessing's pool workers read their tasks from a pipe whose
    # writing end only the parent holds, and stop at its end.)
    if _STARTING_WORKERS:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_after_fork_in_child)


class StreamLoader:
    """Batches `(data, label)` of an `ImageDataset`, with the interface of `ArrayLoader`.

    `num_workers` > 0 decodes in that many worker processes (a Gluon DataLoader, started at the
    first iteration and kept); they end with the training process, even after a SIGKILL.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, *, shuffle: bool = False,
                 last_batch: str = "keep", num_workers: int = 0, seed: int = 0,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.last_batch = last_batch
        self.num_workers = int(num_workers)
        self.sampler = EpochBatchSampler(len(dataset), self.batch_size, self.shuffle, last_batch,
                                         dataset.augment)
        self.sampler.seed = int(seed)
        self.normalize = Normalize(np.asarray(mean), np.asarray(std), shared=self.num_workers > 0)
        self._loader: Optional[gluon.data.DataLoader] = None

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    @property
    def augment(self) -> bool:
        return self.dataset.augment

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Select the order and augmentation of `epoch` (a pure function of both)."""
        self.sampler.seed = int(seed)
        self.sampler.epoch = int(epoch)

    def set_shard(self, rank: int, count: int) -> None:
        """Read (and decode) only shard `rank` of `count` of every batch."""
        shard = make_shard(self, rank, count)
        if self._loader is not None:
            raise RuntimeError("set_shard must come before the first iteration")
        self.sampler.set_shard(shard)

    def step_samples(self, index: int) -> int:
        """Samples of batch `index` over all shards: what a step's gradient averages over."""
        return step_samples(self.sampler.bounds, index)

    def _data_loader(self) -> gluon.data.DataLoader:
        global _STARTING_WORKERS
        if self._loader is None:
            _STARTING_WORKERS = True
            try:
                self._loader = gluon.data.DataLoader(
                    self.dataset, batch_sampler=self.sampler, batchify_fn=self.normalize,
                    num_workers=self.num_workers, timeout=WORKER_TIMEOUT)
            finally:
                _STARTING_WORKERS = False
        return self._loader

    def __iter__(self) -> Iterator[tuple[mx.nd.NDArray, mx.nd.NDArray]]:
        cpu = mx.cpu()
        for data, label in self._data_loader():
            if isinstance(data, np.ndarray):
                yield (dense_array(data, ctx=cpu, dtype=np.float32),
                       dense_array(label, ctx=cpu, dtype=np.float32))
            else:
                yield data.as_in_context(cpu), label.as_in_context(cpu)

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is collected)."""
        if self._loader is not None and self._loader._worker_pool is not None:
            self._loader._worker_pool.terminate()
        self._loader = None

    def __repr__(self) -> str:
        return (f"StreamLoader(samples={self.num_samples}, batch_size={self.batch_size}, "
                f"batches={len(self)}, shuffle={self.shuffle}, augment={self.augment}, "
                f"num_workers={self.num_workers})")


def measure_stats(dataset: ImageDataset, count: int,
                  skip_errors: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std, pixels in [0, 1], of the first `count` samples as validation
    would see them (a fixed subset, so every run and resume gets the same numbers).
    `skip_errors` leaves out samples that fail (for `data check`, which reports them)."""
    n = min(count, len(dataset))
    total = np.zeros(dataset.transform.channels)
    squares = np.zeros(dataset.transform.channels)
    pixels = 0
    for i in range(n):
        try:
            image, _ = dataset[(i, -1)]
        except DataError:
            if skip_errors:
                continue
            raise
        values = image.reshape(-1, image.shape[-1]).astype(np.float64) / 255.0
        total += values.sum(axis=0)
        squares += np.square(values).sum(axis=0)
        pixels += values.shape[0]
    if not pixels:
        raise DataError(f"none of the first {n} training images could be read; run "
                        f"`lightnas data check -c CONFIG`")
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - np.square(mean), 0.0))
    std = np.where(std < 1e-6, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)
