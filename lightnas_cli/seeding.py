"""Deterministic seeds. Each epoch re-seeds from (seed, epoch) so a resumed run continues
exactly as the uninterrupted one would (ARCHITECTURE.md, conventions)."""
from __future__ import annotations

import hashlib
import random

import mxnet as mx
import numpy as np


def derive_seed(seed: int, *keys: object) -> int:
    """A 31-bit seed from the run seed and any keys (epoch, purpose), stable across processes."""
    text = repr((int(seed),) + tuple(keys)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int, *keys: object) -> int:
    value = derive_seed(seed, *keys)
    random.seed(value)
    np.random.seed(value)
    mx.random.seed(value)
    return value
