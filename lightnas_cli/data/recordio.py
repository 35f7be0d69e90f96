"""RecordIO (.rec + .idx) as MXNet's im2rec writes it, read by offset, never loaded whole.

Format facts (dmlc-core `include/dmlc/recordio.h`, `python/mxnet/recordio.py`):
- a record is a uint32 magic number 0xced7230a, a uint32 `lrec` (upper 3 bits: cflag, lower
  29 bits: payload length), the payload, and zero padding up to a multiple of 4 bytes;
- cflag 0 is a whole record. A payload holding the magic number at a 4-byte-aligned position is
  split there by the writer into parts flagged 1 (first), 2 (middle), 3 (last); a reader puts
  the magic number back between the parts;
- an image record's payload starts with IRHeader, struct "IfQQ" (uint32 flag, float32 label,
  uint64 id, uint64 id2); when flag > 0, `flag` float32 labels follow; then the encoded image;
- the .idx file holds one "key<TAB>offset" line per record.

Reading uses `os.pread` on a file descriptor opened lazily per process, so a reader handed to
forked DataLoader workers works there without sharing a file position.
"""
from __future__ import annotations

import contextlib

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from lightnas_cli.errors import DataError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_MASK = (1 << 29) - 1
IR_FORMAT = "IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24

# Leading bytes of the image formats MXNet's decoder (OpenCV) reads.
SIGNATURES = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"P5", "pgm"),
    (b"P6", "ppm"),
)

PACK_HINT = ("re-create it with `lightnas data pack IMAGE_FOLDER OUT` (or MXNet's im2rec), which "
             "writes the .rec and its .idx together")


def image_kind(head: bytes) -> Optional[str]:
    """The image format its first bytes announce (jpeg, png, ...), or None if unknown."""
    for signature, kind in SIGNATURES:
        if head.startswith(signature):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def index_path(rec_path: Path) -> Path:
    """The .idx beside a .rec, as im2rec names it."""
    return rec_path.with_suffix(".idx")


def read_index(idx_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of an .idx file, both int64, in file order. Raises DataError on a
    missing, empty or malformed index (naming the first bad line)."""
    try:
        text = idx_path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise DataError(f"{str(idx_path)!r} is not a RecordIO index (not text); "
                        f"{PACK_HINT}") from None
    tokens = text.split()
    try:
        values = np.array(tokens, dtype=np.int64)
    except ValueError:
        values = None
    if values is None or values.size % 2 or (values.size and values[1::2].min() < 0):
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not all(f.lstrip("-").isdigit() for f in fields) \
                    or int(fields[1]) < 0:
                raise DataError(f"{str(idx_path)!r} line {number} is {line.strip()!r}, not "
                                f"'key<TAB>offset'; the index is damaged: {PACK_HINT}")
        raise DataError(f"{str(idx_path)!r} is not a valid RecordIO index; {PACK_HINT}")
    if values.size == 0:
        raise DataError(f"{str(idx_path)!r} lists no records: the .rec is empty or its index "
                        f"was not written; {PACK_HINT}")
    pairs = values.reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


@dataclass(frozen=True)
class RecordHeader:
    """What a scan learns of one record without reading its image."""

    label: float
    id: int
    image_kind: Optional[str]
    labels: int  # number of labels stored (1 for classification records)


class RecordFile:
    """Random access to the records of one .rec through its .idx (records in .idx order).

    Opening checks what is cheap: the .idx exists and parses, every offset lies inside the
    .rec, and the record at the largest offset is complete (a truncated copy fails here).
    """

    def __init__(self, rec_path: str | os.PathLike, what: str = "data.train_rec") -> None:
        self.path = Path(rec_path).expanduser()
        self.what = what
        if not self.path.is_file():
            hint = (" (it is a folder)" if self.path.is_dir() else "")
            raise DataError(f"{what}: {str(self.path)!r} does not exist{hint}; point {what} at "
                            f"a .rec file (make one with `lightnas data pack`)")
        self.idx_path = index_path(self.path)
        if not self.idx_path.is_file():
            raise DataError(f"{what}: the index {str(self.idx_path)!r} of {str(self.path)!r} is "
                            f"missing; LightNAS reads records by offset and needs it: {PACK_HINT}")
        self.keys, self.offsets = read_index(self.idx_path)
        self.size = self.path.stat().st_size
        self._fd: Optional[int] = None
        self._pid: Optional[int] = None
        beyond = np.nonzero(self.offsets >= self.size)[0]
        if beyond.size:
            first = int(beyond[0])
            raise DataError(
                f"{str(self.path)!r} is truncated: its index lists {len(self.offsets)} records "
                f"but record {first} (key {int(self.keys[first])}) starts at byte "
                f"{int(self.offsets[first])}, past the end of the {self.size}-byte file "
                f"({beyond.size} record(s) missing). Copy the file again or {PACK_HINT}")
        last = int(np.argmax(self.offsets))
        self.read_payload(last)  # raises on a truncated last record

    def __len__(self) -> int:
        return len(self.offsets)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None  # a descriptor does not travel to other processes
        return state

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def where(self, position: int) -> str:
        """Human name of a record, for messages."""
        return f"{self.path.name} record {position} (key {int(self.keys[position])})"

    def _truncated(self, position: int) -> DataError:
        return DataError(f"{str(self.path)!r} is truncated or damaged: {self.where(position)} "
                         f"at byte {int(self.offsets[position])} runs past the end of the "
                         f"{self.size}-byte file. Copy the file again or {PACK_HINT}")

    def _part(self, fd: int, pos: int, position: int) -> tuple[int, int]:
        head = os.pread(fd, 8, pos)
        if len(head) < 8:
            raise self._truncated(position)
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise DataError(f"{self.where(position)}: no record starts at byte {pos} of "
                            f"{str(self.path)!r}: the .idx does not belong to this .rec or the "
                            f"file is damaged; {PACK_HINT}")
        return lrec >> 29, lrec & LENGTH_MASK

    def read_payload(self, position: int) -> bytes:
        """The whole payload of record `position` (parts of a split record joined)."""
        fd = self._descriptor()
        pos = int(self.offsets[position])
        parts: list[bytes] = []
        while True:
            cflag, length = self._part(fd, pos, position)
            if (cflag in (2, 3)) != bool(parts):
                raise DataError(f"{self.where(position)}: broken record continuation flags in "
                                f"{str(self.path)!r}; the file is damaged: {PACK_HINT}")
            data = os.pread(fd, length, pos + 8)
            if len(data) < length:
                raise self._truncated(position)
            parts.append(data)
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):
                return b"".join(parts)
            parts.append(MAGIC_BYTES)

    def read(self, position: int) -> tuple[RecordHeader, bytes]:
        """(header, encoded image bytes) of record `position`."""
        payload = self.read_payload(position)
        header, start = self._parse(payload, position)
        return header, payload[start:]

    def _parse(self, payload: bytes, position: int) -> tuple[RecordHeader, int]:
        if len(payload) < IR_SIZE:
            raise DataError(f"{self.where(position)} holds {len(payload)} bytes, too few for an "
                            f"image record header; was this .rec made by im2rec / "
                            f"`lightnas data pack`?")
        flag, label, rid, _ = struct.unpack_from(IR_FORMAT, payload)
        start = IR_SIZE
        count = 1
        if flag > 0:
            if len(payload) < IR_SIZE + 4 * flag:
                raise DataError(f"{self.where(position)}: its header announces {flag} labels "
                                f"but the record is shorter; the file is damaged: {PACK_HINT}")
            labels = struct.unpack_from(f"{flag}f", payload, IR_SIZE)
            label, count = labels[0], flag
            start += 4 * flag
        kind = image_kind(payload[start:start + 16])
        return RecordHeader(float(label), int(rid), kind, count), start

    def header(self, position: int) -> RecordHeader:
        """Header of record `position` from its first bytes (the whole record if it is split).
        Also checks the record lies wholly inside the file."""
        fd = self._descriptor()
        pos = int(self.offsets[position])
        head = os.pread(fd, 8 + IR_SIZE + 64, pos)
        if len(head) < 8:
            raise self._truncated(position)
        magic, lrec = struct.unpack_from("<II", head)
        cflag, length = lrec >> 29, lrec & LENGTH_MASK
        if magic != MAGIC or cflag != 0:
            return self._parse(self.read_payload(position), position)[0]
        if pos + 8 + length > self.size:
            raise self._truncated(position)
        payload = head[8:8 + length]
        flag = struct.unpack_from("<I", payload)[0] if len(payload) >= 4 else 0
        need = IR_SIZE + 4 * flag + 16
        if need > len(payload) and length > len(payload):
            payload = os.pread(fd, min(length, need), pos + 8)
        return self._parse(payload, position)[0]

    def headers(self, positions: Optional[np.ndarray] = None) -> Iterator[tuple[int, RecordHeader]]:
        """(position, header) of each record (all, in .idx order, unless `positions`)."""
        for position in (range(len(self)) if positions is None else positions):
            yield int(position), self.header(int(position))


def check_label(label: float, classes: int, where: str) -> int:
    """A record's label as a class index; DataError unless it is an integer in [0, classes)."""
    whole = math.isfinite(label) and label == int(label)
    if not (whole and 0 <= label < classes):
        shown = int(label) if whole else label
        raise DataError(f"{where}: label {shown} is outside 0..{classes - 1} (data.classes="
                        f"{classes}); set data.classes to the real number of classes, or fix the "
                        f"labels the .rec was written with")
    return int(label)
