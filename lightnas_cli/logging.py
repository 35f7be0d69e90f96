"""Run logging: TensorBoard event files through mxboard, and the console.

One object per run, so methods and the runner log the same way: scalars, an image of the
architecture probabilities (blocks x choices), text, a progress bar per epoch when a person is
watching (a TTY), and exactly one plain line per epoch otherwise (CI logs, `nohup`, pipes).

This module shadows the standard `logging` only inside the package; it does not use it.
"""
from __future__ import annotations

import math
import numbers
import re
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Iterator

import numpy as np
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

_MXBOARD_WARNED = False
#: Characters TensorBoard accepts in a tag; mxboard replaces the others with "_" and warns on
#: every call (cost names carry options, e.g. "systolic:s1=8,s2=8").
_TAG_UNSAFE = re.compile(r"[^-/\w.]")

# Dark to bright (viridis anchors); the sum of R+G+B rises monotonically along it.
_COLORMAP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98],
                      [253, 231, 37]], dtype=np.float64)
_MISSING_CELL = np.array([0, 0, 0], dtype=np.uint8)


def format_metric(value: Any) -> str:
    """One metric for the epoch line: 0.523, 12.3, 1.23e5, 4.56e-4, 17."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral) and abs(int(value)) < 10**6:
        return str(int(value))
    number = float(value)
    if not math.isfinite(number):
        return str(number)
    if number == 0:
        return "0"
    magnitude = abs(number)
    if magnitude >= 1e4 or magnitude < 1e-3:
        mantissa, exponent = f"{number:.2e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    if magnitude >= 100:
        return f"{number:.1f}"
    return f"{number:.3f}"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def probability_image(values: list[list[float]], cell: int = 16) -> np.ndarray:
    """A (rows x cols) matrix as an RGB uint8 CHW image, `cell` pixels a side per entry.

    Values already in [0, 1] (probabilities) keep their absolute scale so images from different
    epochs compare; anything else is min-max scaled. Ragged rows (blocks with fewer choices)
    are padded with black cells.
    """
    rows = len(values)
    cols = max((len(row) for row in values), default=0)
    if rows == 0 or cols == 0:
        raise ValueError("heatmap needs at least one row and one column")
    matrix = np.full((rows, cols), np.nan)
    for r, row in enumerate(values):
        matrix[r, :len(row)] = np.asarray(row, dtype=np.float64)
    finite = np.isfinite(matrix)
    scaled = np.zeros_like(matrix)
    if finite.any():
        low, high = matrix[finite].min(), matrix[finite].max()
        if low >= 0.0 and high <= 1.0:
            scaled[finite] = matrix[finite]
        elif high > low:
            scaled[finite] = (matrix[finite] - low) / (high - low)
    position = scaled * (len(_COLORMAP) - 1)
    lower = np.clip(np.floor(position).astype(int), 0, len(_COLORMAP) - 2)
    fraction = (position - lower)[..., None]
    colours = _COLORMAP[lower] * (1 - fraction) + _COLORMAP[lower + 1] * fraction
    colours = np.rint(colours).astype(np.uint8)
    colours[~finite] = _MISSING_CELL
    image = np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1)  # H x W x 3
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def _load_summary_writer() -> tuple[Any, str | None]:
    """(mxboard's SummaryWriter class, None), or (None, why it cannot be used)."""
    try:
        with warnings.catch_warnings():
            # mxboard's generated protobuf code triggers DeprecationWarnings on import.
            warnings.simplefilter("ignore", DeprecationWarning)
            from mxboard import SummaryWriter
        return SummaryWriter, None
    except Exception as exc:  # ImportError, or protobuf refusing mxboard's generated code
        return None, (f"mxboard is unusable ({type(exc).__name__}: {exc}); no TensorBoard "
                      f"event files will be written. Install it with "
                      f"`pip install mxboard==0.1.0 protobuf==3.20.3`.")


class EpochProgress:
    """Counts batches and samples of one epoch; drives a rich bar when one is shown."""

    def __init__(self, progress: Progress | None, total_batches: int, batch_size: int,
                 description: str):
        self.batches = 0
        self.samples = 0
        self.metrics: dict[str, Any] = {}
        self.batch_size = batch_size
        self._progress = progress
        self._start = time.perf_counter()
        self._task = None
        if progress is not None:
            self._task = progress.add_task(description, total=total_batches, speed="",
                                           metrics="")

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start

    @property
    def images_per_second(self) -> float:
        seconds = self.seconds
        return self.samples / seconds if seconds > 0 else 0.0

    def update(self, batches: int = 1, samples: int | None = None,
               metrics: dict | None = None) -> None:
        """Advance by `batches` (of `samples` images; default batches x batch_size)."""
        self.batches += batches
        self.samples += batches * self.batch_size if samples is None else samples
        if metrics:
            self.metrics.update(metrics)
        if self._progress is not None:
            shown = " ".join(f"{k}={format_metric(v)}" for k, v in self.metrics.items()
                             if _is_number(v))
            self._progress.update(self._task, advance=batches,
                                  speed=f"{self.images_per_second:,.0f} img/s", metrics=shown)


def _warn_mxboard_once(logger: "RunLogger", problem: str) -> None:
    # Once per process: every run in a sweep would otherwise repeat the same message.
    global _MXBOARD_WARNED
    if not _MXBOARD_WARNED:
        _MXBOARD_WARNED = True
        logger.warn(problem)


class RunLogger:
    """TensorBoard event files (mxboard) plus console output for one run."""

    def __init__(self, log_dir: Path, tensorboard: bool = True, console: Console | None = None,
                 plain: bool | None = None):
        self.log_dir = Path(log_dir)
        self.console = console if console is not None else Console()
        # Warnings share an injected console (tests capture one stream), else go to stderr.
        self.err_console = console if console is not None else Console(stderr=True)
        self.plain = (not self.console.is_terminal) if plain is None else plain
        self.writer = None
        self._last_progress: tuple[int, EpochProgress] | None = None
        if tensorboard:
            writer_class, problem = _load_summary_writer()
            if problem is not None:
                _warn_mxboard_once(self, problem)
            else:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                self.writer = writer_class(logdir=str(self.log_dir), verbose=False)
                # mxboard's background thread writes the events; if it dies (a full disk), a
                # bounded queue would block the next add forever and flush would wait forever.
                # An unbounded queue and a liveness check before each use keep the run going to
                # its own, clear error.
                queue = getattr(self._event_writer(), "_event_queue", None)
                if queue is not None:
                    queue.maxsize = 0

    # -- TensorBoard -------------------------------------------------------------------------

    def _event_writer(self) -> Any:
        file_writer = getattr(self.writer, "_file_writer", None)
        return getattr(file_writer, "_event_writer", None)

    def _writer_usable(self) -> bool:
        """Whether TensorBoard events can still be written; a writer whose background thread
        died is dropped (without the flush or close that would wait on it), with one warning."""
        if self.writer is None:
            return False
        worker = getattr(self._event_writer(), "_worker", None)
        if worker is not None and not worker.is_alive():
            self.writer = None
            self.warn(f"TensorBoard logging stopped: the event writer for {self.log_dir} "
                      f"failed (is the disk full?); the run goes on without it")
            return False
        return True

    def scalars(self, metrics: dict[str, Any], step: int, prefix: str = "") -> None:
        """One scalar per numeric metric, tagged "prefix/key"; other values are skipped."""
        if not self._writer_usable():
            return
        for key, value in metrics.items():
            if _is_number(value):
                tag = f"{prefix.rstrip('/')}/{key}" if prefix else str(key)
                self.writer.add_scalar(_TAG_UNSAFE.sub("_", tag), float(value),
                                       global_step=step)

    def heatmap(self, tag: str, values: list[list[float]], step: int,
                row_labels: list[str] | None = None,
                option_labels: list[list[str]] | None = None, cell: int = 16) -> np.ndarray:
        """Log a decisions x options probability matrix as an image; returns it (3, H, W)
        uint8. Rows may differ in length (decisions with fewer options are padded).

        The labelled numbers go alongside as text (`<tag>/values`), since the image has none;
        `option_labels[r]` names row r's options.
        """
        image = probability_image(values, cell)
        if self._writer_usable():
            self.writer.add_image(tag, image, global_step=step)
            self.text(f"{tag}/values", _matrix_markdown(values, row_labels, option_labels),
                      step)
        return image

    def image_file(self, tag: str, path: Path, step: int) -> None:
        """An image file (e.g. the architecture graph's PNG) as a TensorBoard image."""
        if not self._writer_usable():
            return
        from PIL import Image
        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB"), dtype=np.uint8)
        self.writer.add_image(tag, np.ascontiguousarray(pixels.transpose(2, 0, 1)),
                              global_step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        """Markdown text (the decision table, the config) in TensorBoard's text tab.

        Written as our own summary: mxboard 0.1.0's `add_text` leaves the summary's tag empty
        (it sets `node_name`), which makes TensorBoard's text plugin fail with HTTP 500 under
        `--load_fast=false` (ENVIRONMENT.md)."""
        if self._writer_usable():
            self.writer._file_writer.add_summary(_text_summary(tag, text), step)

    def _drained(self, events: Any) -> bool:
        """Wait until mxboard's event thread has written every queued event, or has died
        (mxboard's own flush, `queue.join()`, would wait forever for a thread that died
        with events still queued: a full disk at the wrong moment hung a run). True when
        everything was written."""
        queue, worker = events._event_queue, events._worker
        with queue.all_tasks_done:
            while queue.unfinished_tasks and worker.is_alive():
                queue.all_tasks_done.wait(0.1)
            return not queue.unfinished_tasks

    def flush(self) -> None:
        """Push pending events to disk (e.g. before a checkpoint, so logs match it)."""
        if not self._writer_usable():
            return
        events = self._event_writer()
        if not hasattr(events, "_event_queue"):  # another mxboard: its own flush
            self.writer.flush()
        elif self._drained(events):
            events._ev_writer.flush()
        else:
            self._writer_usable()  # the thread died: drop the writer, with its warning

    def close(self) -> None:
        if self._writer_usable():
            events = self._event_writer()
            if not hasattr(events, "_event_queue"):
                self.writer.close()
            else:
                events.add_event(events._sentinel_event)
                if self._drained(events):
                    events._worker.join()
                    events._ev_writer.close()
                    events._closed = True
        self.writer = None

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # -- console -----------------------------------------------------------------------------

    def info(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.err_console.print(f"warning: {message}", style="yellow", markup=False,
                               highlight=False, soft_wrap=True)

    @contextmanager
    def epoch_progress(self, epoch: int, epochs: int, total_batches: int,
                       batch_size: int) -> Iterator[EpochProgress]:
        """Progress of one epoch: a transient bar on a TTY, silent in plain mode."""
        if self.plain:
            tracker = EpochProgress(None, total_batches, batch_size, "")
            yield tracker
        else:
            progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("{task.fields[speed]}"),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                TextColumn("{task.fields[metrics]}"),
                                console=self.console, transient=True)
            with progress:
                tracker = EpochProgress(progress, total_batches, batch_size,
                                        f"epoch {epoch}/{epochs}")
                yield tracker
        self._last_progress = (epoch, tracker)

    def epoch_summary(self, epoch: int, epochs: int, metrics: dict[str, Any], seconds: float,
                      samples: int | None = None) -> str:
        """Print (and return) the one line per epoch; img/s comes from `samples` or, when not
        given, from the last epoch_progress of the same epoch."""
        if samples is None and self._last_progress and self._last_progress[0] == epoch:
            samples = self._last_progress[1].samples
        shown = " ".join(f"{key}={format_metric(value)}" for key, value in metrics.items()
                         if _is_number(value) or isinstance(value, str))
        line = f"epoch {epoch}/{epochs}"
        if shown:
            line += f"  {shown}"
        line += f"  {seconds:.1f}s"
        if samples and seconds > 0:
            line += f"  ({samples / seconds:,.0f} img/s)"
        self.info(line)
        return line


def _text_summary(tag: str, text: str) -> Any:
    """A TensorBoard text summary (plugin "text", one string tensor) with its tag set."""
    from mxboard.proto.summary_pb2 import Summary, SummaryMetadata
    from mxboard.proto.tensor_pb2 import TensorProto
    from mxboard.proto.tensor_shape_pb2 import TensorShapeProto
    metadata = SummaryMetadata(plugin_data=[SummaryMetadata.PluginData(plugin_name="text")])
    tensor = TensorProto(dtype="DT_STRING", string_val=[text.encode("utf-8")],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])


def _matrix_markdown(values: list[list[float]], row_labels: list[str] | None,
                     option_labels: list[list[str]] | None) -> str:
    """A markdown table, one row per decision, each cell "option: probability"."""
    cols = max((len(row) for row in values), default=0)
    row_labels = list(row_labels) if row_labels else [str(r) for r in range(len(values))]
    option_labels = list(option_labels) if option_labels else [
        [str(c) for c in range(len(row))] for row in values]
    lines = ["| decision | " + " | ".join(f"option {c}" for c in range(cols)) + " |",
             "|---" * (cols + 1) + "|"]
    for label, row, options in zip(row_labels, values, option_labels):
        cells = [f"{option}: {float(v):.3f}" for option, v in zip(options, row)]
        cells += [""] * (cols - len(cells))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
