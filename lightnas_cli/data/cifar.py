"""Reader for the standard *binary* CIFAR-10 / CIFAR-100 release files.

LightNAS reads these itself: `gluon.data.vision.CIFAR10` checks fixed SHA-1 sums and downloads
when they differ, which fails offline and on small test files. The python-version files are
pickles and are refused (a pickle from elsewhere can run code when loaded).

Binary record layout (https://www.cs.toronto.edu/~kriz/cifar.html):
  CIFAR-10:  1 label byte, then 3072 pixel bytes;
  CIFAR-100: 1 coarse label byte, 1 fine label byte, then 3072 pixel bytes.
The pixels are the red, green and blue 32x32 planes, each row-major, so a record's pixels reshape
directly to (3, 32, 32).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from lightnas_cli.errors import DataError

IMAGE_SHAPE = (3, 32, 32)
PIXELS = 3 * 32 * 32
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class CifarFormat:
    """Where one CIFAR variant's binary files live and how its records are laid out."""

    title: str
    train_files: tuple[str, ...]
    test_file: str
    subfolder: str
    label_bytes: int
    label_index: int
    classes: int
    archive: str
    python_markers: tuple[str, ...]


CIFAR10 = CifarFormat(
    title="CIFAR-10",
    train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test_file="test_batch.bin",
    subfolder="cifar-10-batches-bin",
    label_bytes=1,
    label_index=0,
    classes=10,
    archive="cifar-10-binary.tar.gz",
    python_markers=("cifar-10-batches-py", "data_batch_1", "cifar-10-python.tar.gz"),
)

CIFAR100 = CifarFormat(
    title="CIFAR-100",
    train_files=("train.bin",),
    test_file="test.bin",
    subfolder="cifar-100-binary",
    label_bytes=2,
    label_index=1,  # fine label
    classes=100,
    archive="cifar-100-binary.tar.gz",
    python_markers=("cifar-100-python", "cifar-100-python.tar.gz"),
)


def _expected(fmt: CifarFormat) -> list[str]:
    return [*fmt.train_files, fmt.test_file]


def find_cifar_folder(directory: Optional[str], fmt: CifarFormat) -> Path:
    """The folder holding all binary files of `fmt`: `directory` itself or its standard subfolder.

    Raises DataError naming the expected files, the folders searched and where to get them.
    """
    files = _expected(fmt)
    listing = ", ".join(files)
    how = (
        f'Download the "{fmt.title} binary version (suitable for C programs)" from {CIFAR_URL}, '
        f"extract it, and set data.dir to the folder that holds these files "
        f"(or its parent; e.g. data.dir=/data/{fmt.subfolder})."
    )
    if directory is None or str(directory).strip() == "":
        raise DataError(
            f"data.dir is not set: {fmt.title} is read from local files ({listing}). {how}"
        )
    root = Path(str(directory)).expanduser()
    if not root.exists():
        raise DataError(
            f"{fmt.title} folder {str(root)!r} (data.dir) does not exist; "
            f"expected {listing} there. {how}"
        )
    if not root.is_dir():
        raise DataError(f"data.dir {str(root)!r} is a file, not a folder holding {listing}. {how}")
    candidates = [root, root / fmt.subfolder]
    for folder in candidates:
        if all((folder / name).is_file() for name in files):
            return folder
    searched = " and ".join(repr(str(c)) for c in candidates)
    for folder in candidates:
        if any((folder / marker).exists() for marker in fmt.python_markers):
            raise DataError(
                f"Found the python (pickle) version of {fmt.title} in {str(folder)!r}; LightNAS "
                f"reads only the binary version (pickles can run code when loaded). {how}"
            )
    for folder in candidates:
        if (folder / fmt.archive).is_file():
            raise DataError(
                f"Found {str(folder / fmt.archive)!r} but not its extracted files: extract it "
                f"(tar -xzf {fmt.archive}) and point data.dir at the folder it creates "
                f"({fmt.subfolder}/)."
            )
    best = max(candidates, key=lambda c: sum((c / n).is_file() for n in files))
    missing = [n for n in files if not (best / n).is_file()]
    partial = (
        f" ({str(best)!r} lacks {', '.join(missing)})" if len(missing) < len(files) else ""
    )
    raise DataError(
        f"{fmt.title} binary files not found: expected {listing} in {searched}{partial}. {how}"
    )


def read_cifar_file(path: Path, fmt: CifarFormat) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one binary CIFAR file.

    Raises DataError when the size is not a whole number of records or a label is out of range
    (a truncated download or the wrong variant).
    """
    record = fmt.label_bytes + PIXELS
    raw = np.fromfile(str(path), dtype=np.uint8)
    if raw.size == 0 or raw.size % record != 0:
        raise DataError(
            f"{str(path)!r} is not a complete {fmt.title} binary file: its size ({raw.size} bytes) "
            f"is not a positive multiple of the {record}-byte record. The file is truncated or "
            f"corrupt: download and extract the {fmt.title} binary version again ({CIFAR_URL})."
        )
    rows = raw.reshape(-1, record)
    labels = rows[:, fmt.label_index].astype(np.int64)
    if labels.max() >= fmt.classes:
        raise DataError(
            f"{str(path)!r} holds label {int(labels.max())}, but {fmt.title} has {fmt.classes} "
            f"classes: is this a file of another data set (CIFAR-10 vs CIFAR-100)? "
            f"Set data.name to match the files in data.dir."
        )
    images = rows[:, fmt.label_bytes :].reshape((-1,) + IMAGE_SHAPE)
    return images, labels


def read_cifar(
    directory: Optional[str], fmt: CifarFormat
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) of a CIFAR variant, uint8 images."""
    folder = find_cifar_folder(directory, fmt)
    parts = [read_cifar_file(folder / name, fmt) for name in fmt.train_files]
    x_train = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y_train = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    x_test, y_test = read_cifar_file(folder / fmt.test_file, fmt)
    return x_train, y_train, x_test, y_test
