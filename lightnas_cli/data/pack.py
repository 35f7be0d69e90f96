"""`lightnas data pack`: an image folder to RecordIO (.rec + .idx + im2rec-style .lst).

MXNet's wheel ships `mxnet/tools/im2rec.py`, but it imports OpenCV's Python module (`cv2`),
which is not part of LightNAS's pinned environment (`python -m mxnet.tools.im2rec` fails with
"No module named 'cv2'"), so LightNAS packs folders itself with `mx.recordio`.

Records hold the image files' bytes unchanged (no re-encoding, nothing lost) unless `resize`
asks for the shorter side scaled and re-encoded as JPEG (Pillow). Labels are the indices of the
sorted class folder names, as `data.name: image_folder` assigns them. Every image is decoded
once (MXNet's decoder) to check it. Outputs are written to temporary files and renamed at the
end, so a failure leaves nothing behind.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import mxnet as mx
from mxnet.base import MXNetError

from lightnas_cli.data.folders import scan_image_folder
from lightnas_cli.errors import DataError


@dataclass
class PackedSplit:
    """One written .rec and its companions."""

    split: str
    rec: Path
    idx: Path
    lst: Path
    images: int
    bytes: int


@dataclass
class PackResult:
    classes: list[str]
    splits: list[PackedSplit]


def _encode(path: str, resize: Optional[int], quality: int) -> bytes:
    raw = Path(path).read_bytes()
    try:
        mx.image.imdecode(raw).wait_to_read()
    except MXNetError:
        raise DataError(f"{path}: the image does not decode; replace or remove it, then pack "
                        f"again (nothing was written)") from None
    if resize is None:
        return raw
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as image:
        image = image.convert("L" if image.mode in ("L", "I;16", "1") else "RGB")
        width, height = image.size
        scale = resize / min(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if size != image.size:
            image = image.resize(size, Image.BILINEAR)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def pack_folder(folder: str | os.PathLike, out: str | os.PathLike, *,
                resize: Optional[int] = None, quality: int = 95, force: bool = False,
                progress: Optional[Callable[[str, int, int], None]] = None) -> PackResult:
    """Pack `folder` (root/<class>/*, or root/train|val|test/<class>/*) into `out`.rec/.idx/.lst
    (`out`_train.rec, `out`_val.rec, ... for the split layout)."""
    if resize is not None and resize < 1:
        raise DataError(f"--resize must be a positive number of pixels, got {resize}")
    if not 1 <= quality <= 100:
        raise DataError(f"--quality must be in 1..100, got {quality}")
    layout = scan_image_folder(folder, what="FOLDER")
    prefix = Path(out).expanduser()
    if prefix.suffix == ".rec":
        prefix = prefix.with_suffix("")
    if not prefix.parent.is_dir():
        raise DataError(f"output folder {str(prefix.parent)!r} does not exist; create it first")
    targets = {}
    for split in layout.splits:
        stem = prefix.name + (f"_{split}" if layout.by_folders else "")
        base = prefix.parent / stem
        targets[split] = tuple(base.with_suffix(ext) for ext in (".rec", ".idx", ".lst"))
    existing = [str(p) for paths in targets.values() for p in paths if p.exists()]
    if existing and not force:
        raise DataError(f"{existing[0]} already exists; choose another OUT or pass --force to "
                        f"replace it")
    temporary: list[tuple[Path, Path]] = []
    written: list[PackedSplit] = []
    try:
        for split, images in layout.splits.items():
            rec, idx, lst = targets[split]
            tmp = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in (rec, idx, lst)]
            temporary.extend(zip(tmp, (rec, idx, lst)))
            writer = mx.recordio.MXIndexedRecordIO(str(tmp[1]), str(tmp[0]), "w")
            lines = []
            try:
                for i, (path, label) in enumerate(zip(images.files, images.labels)):
                    data = _encode(path, resize, quality)
                    header = mx.recordio.IRHeader(0, float(label), i, 0)
                    writer.write_idx(i, mx.recordio.pack(header, data))
                    lines.append(f"{i}\t{float(label)}\t{os.path.relpath(path, layout.root)}\n")
                    if progress is not None:
                        progress(split, i + 1, len(images))
            finally:
                writer.close()
            tmp[2].write_text("".join(lines), encoding="utf-8")
            written.append(PackedSplit(split, rec, idx, lst, len(images), tmp[0].stat().st_size))
        for tmp_path, final in temporary:
            os.replace(tmp_path, final)
    except BaseException:
        for tmp_path, _ in temporary:
            tmp_path.unlink(missing_ok=True)
        raise
    return PackResult(layout.classes, written)
