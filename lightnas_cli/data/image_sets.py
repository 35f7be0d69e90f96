"""The streamed data sets `recordio` (.rec + .idx) and `image_folder` (root/<class>/*.jpg|png).

Both describe themselves from the config (plus a label scan when data.classes is null), check
the files before a run starts (data.verify), and build `StreamLoader`s over the same
`ImageDataset` pipeline. Splits: validation from `val_rec` / `val/`, else carved from train by
index (`eval_split_percentage`, seeded); test from `test_rec` / `test/`, else carved from train
(`test_split_percentage`, the same files whatever the seed), else none.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lightnas_cli.data.folders import scan_image_folder
from lightnas_cli.data.recordio import RecordFile, image_kind
from lightnas_cli.data.registry import (DataBundle, Dataset, DataSpec, choice, configured_stats,
                                        loader_options, option, register, split_indices)
from lightnas_cli.data.streaming import (CROPS, FileSource, ImageDataset, ImageSource,
                                         ImageTransform, RecordSource, StreamLoader,
                                         measure_stats)
from lightnas_cli.errors import ConfigError, DataError

VERIFY = ("headers", "decode", "none")
#: Training images (the first ones, validation transform) that data.mean/std are measured on.
STATS_SAMPLES = 512
#: Problems a scan lists before it only counts.
MAX_LISTED = 10
TAG_TEST_SPLIT = "test-split"
SPLIT_KEYS = {"train": "data.train_rec", "val": "data.val_rec", "test": "data.test_rec"}


# ------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class StreamOptions:
    """The image keys of a streamed data set, validated."""

    eval_transform: ImageTransform
    train_transform: ImageTransform
    augment: bool
    verify: str

    @property
    def shape(self) -> tuple[int, int, int]:
        t = self.eval_transform
        return (t.channels, t.size, t.size)


def _positive(cfg: Any, key: str, required_for: Optional[str] = None,
              meaning: str = "") -> Optional[int]:
    value = option(cfg, key)
    if value is None:
        if required_for:
            raise ConfigError(f"data.{key} is required for data.name={required_for}: {meaning}")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"data.{key} must be a positive integer, got {value!r}")
    return int(value)


def _range(cfg: Any, key: str, default: tuple[float, float], upper: float) -> tuple[float, float]:
    value = option(cfg, key, list(default))
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"data.{key} must be [min, max], got {value!r}") from None
    if not (0 < lo <= hi <= upper):
        raise ConfigError(f"data.{key} must be [min, max] with 0 < min <= max"
                          f"{' <= 1' if upper == 1 else ''}, got [{lo}, {hi}]")
    return lo, hi


def stream_options(cfg: Any) -> StreamOptions:
    """Transforms and checks of a streamed set from its data config (ConfigError if invalid)."""
    name = option(cfg, "name")
    size = _positive(cfg, "image_size", required_for=name,
                     meaning="the side of the square images the network sees, e.g. 224")
    channels = option(cfg, "channels", 3)
    if channels not in (1, 3):
        raise ConfigError(f"data.channels must be 3 (RGB) or 1 (grey), got {channels!r}")
    resize = _positive(cfg, "resize") or size
    crop = choice(cfg, "train_crop", CROPS, "random_resized")
    area = _range(cfg, "crop_area", (0.08, 1.0), 1.0)
    ratio = _range(cfg, "crop_ratio", (3 / 4, 4 / 3), math.inf)
    verify = choice(cfg, "verify", VERIFY, "headers")
    augment = bool(option(cfg, "augment", False))
    base = ImageTransform(size=size, channels=int(channels), resize=resize)
    train = ImageTransform(size=size, channels=int(channels), resize=resize, crop=crop,
                           area=area, ratio=ratio, flip=bool(option(cfg, "flip", True)))
    return StreamOptions(base, train if augment else base, augment, verify)


# -------------------------------------------------------------------------------------- scans


@dataclass
class Scan:
    """Labels and problems found by reading every record header (or file signature)."""

    labels: np.ndarray
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    flagged: set = field(default_factory=set)  # names (`where`) of the samples with a problem

    def copy(self) -> "Scan":
        """An independent copy (callers add label problems that depend on their config)."""
        return Scan(self.labels, list(self.problems), self.problem_count, set(self.flagged))

    def add(self, problem: str, where: Optional[str] = None) -> None:
        self.problem_count += 1
        if where is not None:
            self.flagged.add(where)
        if len(self.problems) < MAX_LISTED:
            self.problems.append(problem)


_SCANS: dict[tuple, Scan] = {}


def scan_records(records: RecordFile) -> Scan:
    """Every record's header: complete, a known image format, one whole non-negative label.
    Cached per file (path, size, modification time) for the life of the process."""
    stat = records.path.stat()
    key = (str(records.path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _SCANS:
        return _SCANS[key].copy()
    labels = np.full(len(records), np.nan)
    scan = Scan(labels)
    for position in range(len(records)):
        try:
            header = records.header(position)
        except DataError as exc:
            scan.add(str(exc))
            if "truncated" in str(exc):
                break
            continue
        where = records.where(position)
        if header.labels != 1:
            scan.add(f"{where} carries {header.labels} labels; LightNAS classifies with one "
                     f"label per image", where)
        elif not (math.isfinite(header.label) and header.label == int(header.label)
                  and header.label >= 0):
            scan.add(f"{where}: label {header.label} is not a class index (0, 1, 2, ...)", where)
        else:
            labels[position] = header.label
        if header.image_kind is None:
            scan.add(f"{where} does not hold an image of a known format (JPEG, PNG, BMP, TIFF, "
                     f"WebP, PPM); the image does not decode", where)
    _SCANS[key] = scan
    return scan.copy()


def scan_files(source: FileSource) -> Scan:
    """The first bytes of every file: readable and a known image format."""
    scan = Scan(source.labels.astype(np.float64))
    for path in source.files:
        try:
            with open(path, "rb") as handle:
                head = handle.read(16)
        except OSError as exc:
            scan.add(f"{path}: cannot be read ({exc.strerror})", path)
            continue
        if image_kind(head) is None:
            scan.add(f"{path}: not an image of a known format (JPEG, PNG); the image does not "
                     f"decode", path)
    return scan


def label_problems(scan: Scan, classes: int, where) -> None:
    """Add a problem for each label >= classes (`where(i)` names sample i)."""
    for i in np.nonzero(scan.labels >= classes)[0]:
        scan.add(f"{where(int(i))}: label {int(scan.labels[i])} is outside 0..{classes - 1} "
                 f"(data.classes={classes})", where(int(i)))


def damage(raw: bytes) -> Optional[str]:
    """Why a complete decode with Pillow fails, or None. MXNet's decoder (OpenCV) returns
    zeros or stale memory for some truncated PNGs and a grey-filled image for a truncated
    JPEG instead of failing, so checks decode with Pillow too."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(raw)) as image:
                image.load()
        except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for bad files
            text = str(exc).split(" <_io.BytesIO")[0]  # drop the buffer's address
            return text or type(exc).__name__
    return None


def decode_problems(dataset: ImageDataset, limit: Optional[int] = None) -> tuple[Scan, int]:
    """Decode samples (all, or the first `limit`) with the validation transform, and with
    Pillow (see `damage`); returns the problems and how many were decoded."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    scan = Scan(np.zeros(0))
    for i in range(count):
        try:
            dataset[(i, -1)]
        except DataError as exc:
            scan.add(str(exc))
            continue
        reason = damage(dataset.source.fetch(i)[0])
        if reason is not None:
            scan.add(f"{dataset.source.where(i)}: the image is damaged ({reason}); MXNet's decoder "
                     f"would read it as a blank or garbled image. Replace or remove it")
    return scan, count


def _raise_first(scan: Scan, fix: str) -> None:
    if scan.problem_count:
        more = f" ({scan.problem_count - 1} more problem(s) of this kind)" \
            if scan.problem_count > 1 else ""
        raise DataError(f"{scan.problems[0]}{more}. {fix}")


# ------------------------------------------------------------------------------------ sources


@dataclass
class Sources:
    """The splits of a streamed set as found on disk, before carving; labels where known."""

    classes: int
    train: ImageSource
    val: Optional[ImageSource]
    test: Optional[ImageSource]
    scans: dict[str, Scan]
    class_names: Optional[list[str]] = None


def _subset(source: ImageSource, indices: np.ndarray) -> ImageSource:
    if isinstance(source, RecordSource):
        return RecordSource(source.records, source.positions[indices])
    assert isinstance(source, FileSource)
    return FileSource([source.files[int(i)] for i in indices], source.labels[indices])


def _configured_classes(cfg: Any) -> Optional[int]:
    return _positive(cfg, "classes")


def record_sources(cfg: Any, scan: bool = True) -> Sources:
    """Open data.train_rec / val_rec / test_rec; scan their headers when `scan` (or when the
    number of classes must come from the labels)."""
    paths = {split: option(cfg, key[len("data."):]) for split, key in SPLIT_KEYS.items()}
    if paths["train"] is None:
        raise ConfigError("data.train_rec is required for data.name=recordio: the training .rec "
                          "file (its .idx beside it), e.g. data.train_rec=~/data/train.rec")
    files = {split: RecordFile(path, SPLIT_KEYS[split])
             for split, path in paths.items() if path is not None}
    classes = _configured_classes(cfg)
    scans: dict[str, Scan] = {}
    if scan or classes is None:
        for split, records in files.items():
            scans[split] = scan_records(records)
    if classes is None:
        found = [np.nanmax(s.labels) for s in scans.values() if np.isfinite(s.labels).any()]
        if not found:
            raise DataError(f"no record of {paths['train']!r} has a usable label; set "
                            f"data.classes and check the file with `lightnas data check`")
        classes = int(max(found)) + 1
    for split, records in files.items():
        if split in scans:
            label_problems(scans[split], classes, records.where)
    sources = {split: RecordSource(records) for split, records in files.items()}
    return Sources(classes, sources["train"], sources.get("val"), sources.get("test"), scans)


def folder_sources(cfg: Any, scan: bool = True) -> Sources:
    """Scan data.dir; check each file's signature when `scan`."""
    layout = scan_image_folder(option(cfg, "dir"))
    classes = _configured_classes(cfg)
    if classes is None:
        classes = len(layout.classes)
    elif classes < len(layout.classes):
        raise DataError(f"{str(layout.root)!r} has {len(layout.classes)} class folders but "
                        f"data.classes={classes}: labels would run beyond the classes; set "
                        f"data.classes={len(layout.classes)} (or null to count the folders)")
    sources = {split: FileSource(images.files, images.labels)
               for split, images in layout.splits.items()}
    scans = {split: scan_files(src) for split, src in sources.items()} if scan else {}
    return Sources(classes, sources["train"], sources.get("val"), sources.get("test"), scans,
                   class_names=layout.classes)


def open_sources(cfg: Any, scan: bool = True) -> Sources:
    """The on-disk splits of data.name (recordio or image_folder)."""
    return record_sources(cfg, scan) if option(cfg, "name") == "recordio" \
        else folder_sources(cfg, scan)


@dataclass
class Splits:
    """Train / val / test sources after carving, and what was carved."""

    train: ImageSource
    val: Optional[ImageSource]
    test: Optional[ImageSource]
    val_carved: bool
    test_carved: bool


def carve(cfg: Any, sources: Sources, seed: int, eval_percentage: float,
          limit: Optional[int]) -> Splits:
    """Carve missing test / validation splits out of train by index, then apply limit_train."""
    train, val, test = sources.train, sources.val, sources.test
    test_pct = float(option(cfg, "test_split_percentage", 0.0) or 0.0)
    test_carved = val_carved = False
    if test_pct:
        if test is not None:
            raise ConfigError("data.test_split_percentage is set but the data has its own test "
                              "split (data.test_rec or a test/ folder); set it to 0")
        keep, held = split_indices(len(train), test_pct, 0, TAG_TEST_SPLIT,
                                   "data.test_split_percentage")
        train, test, test_carved = _subset(train, keep), _subset(train, held), True
    if val is None and eval_percentage:
        keep, held = split_indices(len(train), eval_percentage, seed)
        train, val, val_carved = _subset(train, keep), _subset(train, held), True
    if limit is not None:
        train = _subset(train, np.arange(min(limit, len(train))))
    if val is None and test is None:
        raise ConfigError("no validation split: set data.eval_split_percentage > 0 to carve one "
                          "from the training data, or give data.val_rec / a val/ folder")
    return Splits(train, val, test, val_carved, test_carved)


# ----------------------------------------------------------------------------- describe/build


def _describe(cfg: Any) -> DataSpec:
    options = stream_options(cfg)
    classes = _configured_classes(cfg)
    if classes is None:
        classes = open_sources(cfg, scan=False).classes
    return DataSpec(str(option(cfg, "name")), options.shape, classes, "NCHW")


def _build(cfg: Any, seed: int, batch_size: int) -> DataBundle:
    """Check the files (data.verify), carve the splits and make the loaders; fails before any
    training (and before a run folder exists) on missing or damaged data."""
    name = str(option(cfg, "name"))
    options = stream_options(cfg)
    loader_opts = loader_options(cfg, batch_size)
    stats = configured_stats(cfg, options.shape[0])
    sources = open_sources(cfg, scan=options.verify != "none")
    fix = "Run `lightnas data check -c CONFIG` to list every problem."
    for scan in sources.scans.values():
        _raise_first(scan, fix)
    splits = carve(cfg, sources, seed, loader_opts.eval_percentage, loader_opts.limit_train)
    plain = {split: ImageDataset(src, options.eval_transform, sources.classes, False)
             for split, src in (("train", splits.train), ("val", splits.val),
                                ("test", splits.test)) if src is not None}
    if options.verify == "decode":
        for dataset in plain.values():
            _raise_first(decode_problems(dataset)[0], fix)
    if stats is None:
        mean, std = measure_stats(plain["train"], STATS_SAMPLES)
    else:
        mean, std = stats
    # The first batch, checked: it decodes, has the configured shape, labels are in range.
    first, _ = plain["train"][(0, -1)]
    expected = options.shape[1:] + (options.shape[0],)
    if first.shape != expected:
        raise AssertionError(f"{name}: first image has shape {first.shape}, expected {expected}")
    _raise_first(decode_problems(plain["train"], loader_opts.batch_size)[0], fix)

    common = dict(batch_size=loader_opts.batch_size, num_workers=loader_opts.num_workers,
                  seed=int(seed), mean=mean, std=std)
    train_set = ImageDataset(splits.train, options.train_transform, sources.classes,
                             options.augment)
    train = StreamLoader(train_set, shuffle=True,
                         last_batch="discard" if len(train_set) > loader_opts.batch_size
                         else "keep", **common)
    test = StreamLoader(plain["test"], **common) if "test" in plain else None
    val = StreamLoader(plain["val"], **common) if "val" in plain else test
    spec = DataSpec(name, options.shape, sources.classes, "NCHW")
    return DataBundle(spec=spec, train=train, val=val, test=test, mean=mean, std=std)


register(Dataset("recordio", _describe, None,
                 "images streamed from RecordIO .rec/.idx files (im2rec, `lightnas data pack`)",
                 build=_build))
register(Dataset("image_folder", _describe, None,
                 "images streamed from root/<class>/*.jpg|png (or train/ val/ test/ folders)",
                 build=_build))
