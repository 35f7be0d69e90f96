"""`lightnas data check`: what a config's data looks like and what is wrong with it, no run.

Reports, per split: samples, samples per class, the sample shape, value ranges (raw and
normalised), and for streamed sets the decoding speed (images/s in one process, validation
transform) and the decoded image sizes; then the first problems found (unreadable or
undecodable images, labels out of range, damaged records), with a count of all of them.
Files missing altogether, or an index that does not match its .rec, stop the check with a
DataError as they would stop a search.
"""
from __future__ import annotations

import contextlib

import io
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from lightnas_cli.data.image_sets import (MAX_LISTED, STATS_SAMPLES, Scan, carve, damage,
                                          open_sources, stream_options)
from lightnas_cli.data.registry import configured_stats, describe, load, loader_options, option
from lightnas_cli.data.streaming import FileSource, ImageDataset, RecordSource, measure_stats
from lightnas_cli.errors import DataError

STREAMED = ("recordio", "image_folder")


@dataclass
class SplitReport:
    """One split as the check saw it."""

    name: str
    samples: int
    origin: str
    class_counts: Optional[list[int]] = None
    raw_range: Optional[list[float]] = None
    normalised_range: Optional[list[float]] = None
    decoded: int = 0
    images_per_s: Optional[float] = None
    image_sizes: Optional[list[int]] = None  # min height, min width, max height, max width


@dataclass
class DataReport:
    """Everything `lightnas data check` prints."""

    name: str
    shape: list[int]
    classes: int
    layout: str
    mean: list[float]
    std: list[float]
    stats_origin: str
    splits: list[SplitReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for the error a failed check ends with."""
        return (f"{self.problem_count} problem(s) in the data of data.name={self.name}; first: "
                f"{self.problems[0]}")

    def lines(self) -> list[str]:
        """The report as plain text lines."""
        def numbers(values: list[float]) -> str:
            return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"

        out = [f"data set: {self.name}  shape {' x '.join(map(str, self.shape))} ({self.layout}), "
               f"{self.classes} classes",
               f"normalisation: mean {numbers(self.mean)}, std {numbers(self.std)} "
               f"({self.stats_origin})"]
        for split in self.splits:
            out.append(f"{split.name}: {split.samples:,} samples ({split.origin})")
            if split.class_counts is not None:
                out.append("  per class: " + _class_counts(split.class_counts))
            if split.image_sizes is not None:
                h0, w0, h1, w1 = split.image_sizes
                out.append(f"  decoded {split.decoded:,} image(s): {split.images_per_s:,.0f} "
                           f"images/s in one process (decode, crop, scale); stored sizes "
                           f"{h0}x{w0} to {h1}x{w1} (height x width)")
            if split.raw_range is not None:
                out.append(f"  values: raw {split.raw_range[0]:.4g}..{split.raw_range[1]:.4g}, "
                           f"normalised {split.normalised_range[0]:.4g}.."
                           f"{split.normalised_range[1]:.4g}")
        out.extend(f"note: {note}" for note in self.notes)
        if self.problem_count:
            out.append(f"problems: {self.problem_count} (first {len(self.problems)} listed)")
            out.extend(f"  - {p}" for p in self.problems)
        else:
            out.append("problems: none found")
        return out


def _class_counts(counts: list[int]) -> str:
    if len(counts) <= 20:
        return " ".join(f"{c}:{n}" for c, n in enumerate(counts))
    array = np.asarray(counts)
    empty = int((array == 0).sum())
    return (f"min {array.min():,} (class {int(array.argmin())}), max {array.max():,} (class "
            f"{int(array.argmax())}), {empty} class(es) without samples")


def _counts(labels: np.ndarray, classes: int) -> list[int]:
    known = labels[np.isfinite(labels) & (labels >= 0) & (labels < classes)].astype(np.int64)
    return np.bincount(known, minlength=classes).tolist()


def _merge(target: Scan, source: Scan) -> None:
    for problem in source.problems:
        if len(target.problems) < MAX_LISTED:
            target.problems.append(problem)
    target.problem_count += source.problem_count


def _split_labels(source: Any, split_scan_of: dict) -> np.ndarray:
    if isinstance(source, FileSource):
        return source.labels.astype(np.float64)
    scan = split_scan_of.get(id(source.records))
    return scan.labels[source.positions] if scan is not None else np.full(len(source), np.nan)


def _check_streamed(cfg: Any, max_decode: Optional[int]) -> DataReport:
    from PIL import Image

    data = cfg.data
    options = stream_options(data)
    loader_opts = loader_options(data, cfg.train.batch_size)
    sources = open_sources(data, scan=True)
    problems = Scan(np.zeros(0))
    flagged: set = set()
    for scan in sources.scans.values():
        _merge(problems, scan)
        flagged |= scan.flagged
    splits = carve(data, sources, int(cfg.seed), loader_opts.eval_percentage,
                   loader_opts.limit_train)
    scan_of = {}
    for split in ("train", "val", "test"):
        src = getattr(sources, split)
        if isinstance(src, RecordSource) and split in sources.scans:
            scan_of[id(src.records)] = sources.scans[split]
    stats = configured_stats(data, options.shape[0])
    train_plain = ImageDataset(splits.train, options.eval_transform, sources.classes, False)
    if stats is None:
        mean, std = measure_stats(train_plain, STATS_SAMPLES, skip_errors=True)
        origin = f"measured on the first {min(STATS_SAMPLES, len(train_plain))} training images"
    else:
        mean, std = stats
        origin = "data.mean / data.std"
    report = DataReport(str(data.name), list(options.shape), sources.classes, "NCHW",
                        mean.tolist(), std.tolist(), origin)
    for name in ("train", "val", "test"):
        src = getattr(splits, name)
        if src is None:
            continue
        carved = (name == "val" and splits.val_carved) or (name == "test" and splits.test_carved)
        origin = "carved from train by index" if carved else (
            getattr(getattr(src, "records", None), "path", None) or "folder")
        labels = _split_labels(src, scan_of)
        item = SplitReport(name, len(src), str(origin), _counts(labels, sources.classes))
        dataset = ImageDataset(src, options.eval_transform, sources.classes, False)
        count = len(src) if max_decode is None else min(max_decode, len(src))
        lo, hi, sizes, seconds, decoded = 255.0, 0.0, [], 0.0, 0
        decode_problems = Scan(np.zeros(0))
        for i in range(count):
            if src.where(i) in flagged:  # reported by the scan already
                continue
            raw, label = src.fetch(i)
            # PIL raises many kinds of errors; whether the image is usable MXNet decides below.
            with contextlib.suppress(Exception), Image.open(io.BytesIO(raw)) as image:
                sizes.append(image.size[::-1])
            started = time.perf_counter()
            try:
                image = dataset.transform(raw, None, src.where(i))
            except DataError as exc:
                decode_problems.add(str(exc))
                continue
            seconds += time.perf_counter() - started
            decoded += 1
            reason = damage(raw)
            if reason is not None:
                decode_problems.add(f"{src.where(i)}: the image is damaged ({reason})")
            lo, hi = min(lo, float(image.min())), max(hi, float(image.max()))
        _merge(problems, decode_problems)
        if decoded:
            item.decoded = decoded
            item.images_per_s = decoded / max(seconds, 1e-9)
            array = np.asarray(sizes) if sizes else np.zeros((1, 2), dtype=int)
            item.image_sizes = [int(array[:, 0].min()), int(array[:, 1].min()),
                                int(array[:, 0].max()), int(array[:, 1].max())]
            item.raw_range = [lo, hi]
            norm = [(lo / 255.0 - mean) / std, (hi / 255.0 - mean) / std]
            item.normalised_range = [float(np.min(norm)), float(np.max(norm))]
        if count < len(src):
            report.notes.append(f"{name}: decoded the first {count:,} of {len(src):,} images; "
                                f"--max-decode 0 decodes all")
        report.splits.append(item)
    if splits.val is None:
        report.notes.append("no validation split: the test split stands in for it")
    if splits.test is None:
        report.notes.append("no test split (data.test_rec / test/ folder / "
                            "data.test_split_percentage)")
    report.problems, report.problem_count = problems.problems, problems.problem_count
    return report


def _check_in_memory(cfg: Any) -> DataReport:
    started = time.perf_counter()
    bundle = load(cfg.data, int(cfg.seed), int(cfg.train.batch_size))
    seconds = time.perf_counter() - started
    spec = bundle.spec
    origin = "data.mean / data.std" if option(cfg.data, "mean") is not None else \
        "measured on the training split"
    report = DataReport(spec.name, list(spec.shape), spec.classes, spec.layout,
                        np.ravel(bundle.mean).tolist(), np.ravel(bundle.std).tolist(), origin)
    shape = (1, -1) + (1,) * (len(spec.shape) - 1)
    seen = []
    for name in ("train", "val", "test"):
        loader = getattr(bundle, name)
        if loader is None or any(loader is s for s in seen):
            continue
        seen.append(loader)
        item = SplitReport(name, loader.num_samples, "in memory",
                           _counts(loader.label.astype(np.float64), spec.classes))
        if loader.num_samples:
            normed = loader.data
            raw = normed * bundle.std.reshape(shape) + bundle.mean.reshape(shape)
            item.raw_range = [float(raw.min()), float(raw.max())]
            item.normalised_range = [float(normed.min()), float(normed.max())]
        report.splits.append(item)
    if bundle.val is bundle.test:
        report.notes.append("eval_split_percentage is 0: the test split is used for validation")
    report.notes.append(f"read whole into memory in {seconds:.2f} s")
    return report


def check_data(cfg: Any, max_decode: Optional[int] = 1000) -> DataReport:
    """Read the data of a resolved config and report on it (`max_decode` None: decode all)."""
    describe(cfg.data)  # unknown data set names and bad keys fail here, as in a search
    if str(cfg.data.name) in STREAMED:
        return _check_streamed(cfg, max_decode)
    return _check_in_memory(cfg)

