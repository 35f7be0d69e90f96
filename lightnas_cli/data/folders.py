"""Image folders: `root/<class>/*.jpg|jpeg|png`, or `root/train|val|test/<class>/...`.

Classes are the sorted names of the class folders (of `train/` in the split layout), so the
same folder always gives the same labels; files within a class are taken in sorted order.
Both `lightnas data pack` and `data.name: image_folder` read folders through `scan_image_folder`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from lightnas_cli.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLIT_FOLDERS = ("train", "val", "test")


@dataclass
class ImageList:
    """Files of one split and their class indices."""

    files: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class FolderLayout:
    """What a scan of an image folder found."""

    root: Path
    classes: list[str]
    splits: dict[str, ImageList]  # "train" always; "val" / "test" when they are folders
    by_folders: bool  # True: train/ [val/] [test/] layout
    ignored: list[str] = field(default_factory=list)  # files that are not .jpg/.jpeg/.png


def _visible_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _scan_split(folder: Path, classes: list[str], known: Optional[list[str]],
                ignored: list[str]) -> ImageList:
    names = _visible_dirs(folder)
    if known is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise DataError(f"{str(folder)!r} has class folder(s) {unknown} that "
                            f"{str(folder.parent / 'train')!r} lacks; every split must use the "
                            f"class folders of train/ (labels come from their sorted names)")
    files: list[str] = []
    labels: list[int] = []
    for name in names:
        class_dir = folder / name
        found = []
        for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(entry.path)
            else:
                ignored.append(entry.path)
        if not found:
            raise DataError(f"class folder {str(class_dir)!r} holds no .jpg/.jpeg/.png image; add "
                            f"images or remove the folder (an empty class cannot be learned)")
        files.extend(found)
        labels.extend([classes.index(name)] * len(found))
    return ImageList(files, np.asarray(labels, dtype=np.int64))


def scan_image_folder(root: str | os.PathLike | None, what: str = "data.dir") -> FolderLayout:
    """Classes and files of an image folder; DataError for a missing root, no class folders or
    an empty class folder."""
    if root is None or str(root).strip() == "":
        raise DataError(f"{what} is not set: point it at a folder of <class>/ image folders "
                        f"(or of train/ [val/] [test/] folders holding them)")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise DataError(f"{what}: {str(path)!r} is not a folder; point it at a folder of "
                        f"<class>/ image folders (or of train/ [val/] [test/] folders)")
    top = _visible_dirs(path)
    ignored: list[str] = []
    by_folders = "train" in top and set(top) <= set(SPLIT_FOLDERS)
    base = path / "train" if by_folders else path
    classes = _visible_dirs(base)
    if not classes:
        raise DataError(f"{str(base)!r} has no class folders: expected {str(base)}/<class>/*.jpg "
                        f"(one folder per class, named after it)")
    splits = {"train": _scan_split(base, classes, None, ignored)}
    if by_folders:
        for name in ("val", "test"):
            if name in top:
                splits[name] = _scan_split(path / name, classes, classes, ignored)
    return FolderLayout(path, classes, splits, by_folders, ignored)
