"""`arrays`: a user's own samples in one `.npz` (x_train, y_train, x_test, y_test), in memory.

The natural format for sensor data (PIT's use case): any sample shape of 1 to 3 axes, laid out
as data.array_layout says and converted to channels-first (CW or CHW). Read with
`allow_pickle=False` (an object array could run code). After reading, the shared in-memory path
(registry.load: validation split, limit_train, normalisation, ArrayLoader) does the rest.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lightnas_cli.data.registry import (LAYOUTS, Dataset, DataSpec, RawSplits, choice, option,
                                        register)
from lightnas_cli.errors import ConfigError, DataError

KEYS = ("x_train", "y_train", "x_test", "y_test")
ARRAY_LAYOUTS = ("auto", "W", "CW", "WC", "HW", "CHW", "HWC")
_AUTO = {1: "W", 2: "CW", 3: "CHW"}


def _path(cfg: Any) -> Path:
    value = option(cfg, "file")
    if value is None or str(value).strip() == "":
        raise ConfigError("data.file is required for data.name=arrays: a .npz file holding "
                          "x_train, y_train, x_test, y_test (numpy.savez)")
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise DataError(f"data.file: {str(path)!r} does not exist; save your arrays with "
                        f"numpy.savez({path.name!r}, x_train=..., y_train=..., x_test=..., "
                        f"y_test=...)")
    return path


def _headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array in a .npz, read from the .npy headers (no data loaded)."""
    found = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
                found[member[:-4]] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DataError(f"data.file: {str(path)!r} is not a readable .npz ({exc}); write it "
                        f"with numpy.savez") from None
    missing = [k for k in KEYS if k not in found]
    if missing:
        raise DataError(f"data.file: {str(path)!r} lacks {', '.join(missing)} (it has "
                        f"{', '.join(sorted(found)) or 'no arrays'}); save x_train, y_train, "
                        f"x_test, y_test")
    for key, (shape, dtype) in found.items():
        if key in KEYS and dtype.hasobject:
            raise DataError(f"data.file: {key} in {str(path)!r} holds Python objects, which "
                            f"LightNAS does not unpickle; save plain numeric arrays")
    return found


def _layout(cfg: Any, ndim: int) -> str:
    layout = choice(cfg, "array_layout", ARRAY_LAYOUTS, "auto")
    if layout == "auto":
        if ndim not in _AUTO:
            raise DataError(f"data.file: samples have {ndim} axes; arrays takes samples of 1 to "
                            f"3 axes (length; channels x length; channels x height x width)")
        return _AUTO[ndim]
    if len(layout) != ndim:
        raise ConfigError(f"data.array_layout={layout!r} describes {len(layout)}-axis samples, "
                          f"but the samples in data.file have {ndim} axes")
    return layout


def _channels_first(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout in ("W", "HW"):
        return (1, *shape)
    if layout in ("WC", "HWC"):
        return (shape[-1], *shape[:-1])
    return tuple(shape)


def _convert(x: np.ndarray, layout: str) -> np.ndarray:
    if layout in ("W", "HW"):
        x = x[:, None]
    elif layout in ("WC", "HWC"):
        x = np.moveaxis(x, -1, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: np.ndarray, key: str, n: int) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"data.file: {key} has shape {y.shape}; expected ({n},), one class "
                        f"index per sample of x_{key[2:]}")
    if y.size and not (np.isfinite(y).all() and (y == np.round(y)).all() and y.min() >= 0):
        raise DataError(f"data.file: {key} holds values that are not class indices (0, 1, 2, "
                        f"...), e.g. {y[~(np.isfinite(y) & (y == np.round(y)) & (y >= 0))][0]}")
    return y.astype(np.int64)


def _classes(cfg: Any, found: Optional[int]) -> int:
    configured = option(cfg, "classes")
    if configured is None:
        return int(found)
    if isinstance(configured, bool) or not isinstance(configured, int) or configured < 1:
        raise ConfigError(f"data.classes must be a positive integer or null, got {configured!r}")
    return configured


def _label_classes(path: Path) -> int:
    with np.load(path, allow_pickle=False) as archive:
        top = max(int(archive[key].max(initial=0)) for key in ("y_train", "y_test"))
    return top + 1


def _describe(cfg: Any) -> DataSpec:
    path = _path(cfg)
    headers = _headers(path)
    sample = headers["x_train"][0][1:]
    layout = _layout(cfg, len(sample))
    shape = _channels_first(sample, layout)
    classes = _classes(cfg, None if option(cfg, "classes") else _label_classes(path))
    return DataSpec("arrays", shape, classes, LAYOUTS[len(shape)])


def _read(cfg: Any, seed: int) -> RawSplits:
    path = _path(cfg)
    headers = _headers(path)
    train_shape, test_shape = headers["x_train"][0], headers["x_test"][0]
    if train_shape[1:] != test_shape[1:]:
        raise DataError(f"data.file: x_train samples have shape {train_shape[1:]} but x_test "
                        f"samples {test_shape[1:]}; both splits need the same sample shape")
    layout = _layout(cfg, len(train_shape) - 1)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in KEYS}
    y_train = _labels(arrays["y_train"], "y_train", len(arrays["x_train"]))
    y_test = _labels(arrays["y_test"], "y_test", len(arrays["x_test"]))
    classes = _classes(cfg, max(y_train.max(initial=0), y_test.max(initial=0)) + 1)
    for key, y in (("y_train", y_train), ("y_test", y_test)):
        if y.size and y.max() >= classes:
            where = int(np.argmax(y >= classes))
            raise DataError(f"data.file: {key}[{where}] is {int(y[where])}, outside "
                            f"0..{classes - 1} (data.classes={classes}); fix the labels or set "
                            f"data.classes (null counts them)")
    if len(arrays["x_train"]) == 0 or len(arrays["x_test"]) == 0:
        raise DataError("data.file: x_train and x_test must each hold at least one sample")
    return RawSplits(_convert(arrays["x_train"], layout), y_train,
                     _convert(arrays["x_test"], layout), y_test)


register(Dataset("arrays", _describe, _read,
                 "your own samples from a .npz (x_train, y_train, x_test, y_test), in memory"))
