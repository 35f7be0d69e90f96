"""Numpy-only image transforms: resize, per-channel normalization, random crop + flip.

Everything here works on whole batches `(N, C, *spatial)` at once, so the loaders stay fast on
a 2-core CPU without per-sample Python loops.
"""
from __future__ import annotations

import numpy as np


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Linear map (n_out, n_in) along one axis: bilinear when enlarging, area mean when shrinking.

    Bilinear uses half-pixel centres (as OpenCV/PIL do), so resizing to the same size is the
    identity. Shrinking with area weights avoids the aliasing plain bilinear would cause.
    """
    m = np.zeros((n_out, n_in), dtype=np.float64)
    if n_out >= n_in:
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0.0, n_in - 1)
        i0 = np.floor(src).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w = src - i0
        rows = np.arange(n_out)
        np.add.at(m, (rows, i0), 1.0 - w)
        np.add.at(m, (rows, i1), w)
    else:
        scale = n_in / n_out
        for i in range(n_out):
            lo, hi = i * scale, (i + 1) * scale
            for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
                overlap = min(hi, j + 1) - max(lo, j)
                if overlap > 0:
                    m[i, j] = overlap / scale
    return m.astype(np.float32)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize float images (N, C, H, W) to (N, C, size, size) with separable linear maps."""
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images.astype(np.float32, copy=False)
    my = _resize_matrix(h, size)
    mx = _resize_matrix(w, size)
    out = np.matmul(images.astype(np.float32, copy=False), mx.T)  # (N, C, H, size)
    return np.matmul(my, out)  # (N, C, size, size)


def channel_stats(data: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of (N, C, ...) data; a constant channel gets std 1 (no blow-up).

    Two passes over chunks in float64: exact enough, and no full-size temporary (a float64
    copy of CIFAR-10 would be 1.2 GB).
    """
    n, c = data.shape[:2]
    count = n * int(np.prod(data.shape[2:], dtype=np.int64))
    axes = (0,) + tuple(range(2, data.ndim))
    total = np.zeros(c, dtype=np.float64)
    for start in range(0, n, chunk):
        total += data[start : start + chunk].sum(axis=axes, dtype=np.float64)
    mean = total / count
    shape = (1, c) + (1,) * (data.ndim - 2)
    squares = np.zeros(c, dtype=np.float64)
    for start in range(0, n, chunk):
        centred = data[start : start + chunk].astype(np.float64) - mean.reshape(shape)
        squares += np.square(centred).sum(axis=axes)
    std = np.sqrt(squares / count)
    std = np.where(std < 1e-8, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def normalize_(data: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Normalize float32 (N, C, ...) data in place (CIFAR at 32x32 is 600 MB; avoid copies)."""
    shape = (1, -1) + (1,) * (data.ndim - 2)
    data -= mean.reshape(shape)
    data /= std.reshape(shape)
    return data


def random_crop_flip(
    batch: np.ndarray, rng: np.random.RandomState, pad: int = 4, flip: bool = True
) -> np.ndarray:
    """Random crop after zero padding by `pad` on each spatial side, then optional mirror.

    Works for images (N, C, H, W) and 1-D signals (N, C, L); the flip mirrors the last axis.
    Padding happens on normalized data, so "zero" is the training-set mean of each channel.
    The draws come from `rng` only, so a batch is reproduced exactly from its seed.
    """
    n, c = batch.shape[:2]
    spatial = batch.shape[2:]
    out = batch
    if pad > 0:
        padded = np.pad(batch, [(0, 0), (0, 0)] + [(pad, pad)] * len(spatial))
        offsets = [rng.randint(0, 2 * pad + 1, size=n) for _ in spatial]
        index: list[np.ndarray] = [
            np.arange(n).reshape((n,) + (1,) * (len(spatial) + 1)),
            np.arange(c).reshape((1, c) + (1,) * len(spatial)),
        ]
        for axis, (size, off) in enumerate(zip(spatial, offsets)):
            pos = off[:, None] + np.arange(size)[None, :]  # (N, size)
            shape = [n, 1] + [1] * len(spatial)
            shape[2 + axis] = size
            index.append(pos.reshape(shape))
        out = padded[tuple(index)]
    if flip:
        mirror = rng.rand(n) < 0.5
        if mirror.any():
            out = out.copy() if out is batch else out
            out[mirror] = out[mirror][..., ::-1]
    return out
