"""What a worker of a launched run sees: its rank, the number of workers, and one kvstore.

A process that `lightnas launch` started as a worker (`DMLC_ROLE=worker`) joins MXNet's
parameter server the first time it asks for its world (`connect` or `current`); any other
process is a world of one, and every function here is then a no-op returning its input.

Everything distributed goes through the one kvstore of the process: ps-lite servers key
their arrays by integer, so two kvstores (or two Trainers numbering their parameters from 0
on one kvstore) would overwrite each other's arrays. Hence:

- each Trainer gets its own range of keys on it (`trainer_store`: a `KeyRange`);
- the collectives (`allgather`, `sum`, `broadcast`, `average_parameters`) use keys of their
  own, one per worker, so a worker's contribution is pulled back exactly and combined in
  rank order: every worker computes the same float64 result, bit for bit, in every run.

Every worker must make the same sequence of collective calls (the same code does): a call
carries a tag, and workers that disagree on it fail loudly instead of mixing arrays.
"""
from __future__ import annotations

import hashlib
import json
import os
import zlib
from typing import Any, Iterable, Sequence

import mxnet as mx
import numpy as np
from mxnet.ndarray.ndarray import array as dense_array  # mx.nd.array warns per call

from lightnas_cli.config.schema import KVSTORES
from lightnas_cli.errors import ConfigError, RunError
from lightnas_cli.launch.launcher import STATE_LINE

#: Of `train.kvstore` (KVSTORES): device / local say how one process sums the gradients of its
#: own devices (on a device or on the CPU); these two use MXNet's parameter server.
DISTRIBUTED = ("dist_sync", "dist_async")
#: Keys reserved per Trainer (a Trainer numbers its parameters 0, 1, ...).
TRAINER_BLOCK = 1 << 20
#: First key of the collectives; Trainer ranges stay below it.
COLLECTIVE_BASE = 1 << 30


def launched() -> bool:
    """Whether this process is a worker that `lightnas launch` started."""
    return os.environ.get("DMLC_ROLE") == "worker"


def _tag_value(tag: str) -> float:
    return float(zlib.crc32(tag.encode("utf-8")))


def init_keys(store: Any, keys: Any, values: Any) -> None:
    """`store.init`, safe for an immediate push or pull by any worker.

    In MXNet 1.9.1's dist kvstore, `init` is rank 0's push followed by a barrier, but rank 0
    does not wait for the server to have stored the value: another worker's pull could reach
    the server first (seen: the server aborts with "init K first"), and its push would be
    taken for the initial value. Rank 0 therefore pulls the keys back and waits (its requests
    reach the server in order) before a second barrier lets the others go on.

    The values are copied to plain arrays first: a weight a oneDNN convolution has used is
    held in oneDNN's layout, which the push of `init` cannot send (its engine error would be
    lost, leaving the key uninitialised)."""
    many = isinstance(keys, (list, tuple))
    plain = [dense_array(v.asnumpy(), ctx=mx.cpu(), dtype=v.dtype)
             for v in (values if many else [values])]
    store.init(keys, plain if many else plain[0])
    if store.rank == 0:
        back = [mx.nd.zeros(v.shape, dtype=v.dtype) for v in plain]
        store.pull(keys, out=back if many else back[0])
        mx.nd.waitall()
    store._barrier()


class KeyRange(mx.kvstore.KVStoreBase):
    """One Trainer's view of the shared kvstore: its keys 0, 1, ... become offset, offset+1, ...

    A Gluon Trainer accepts any `KVStoreBase`; it calls `broadcast` once per parameter
    before its first step and `pushpull` per step (gradients summed over the workers). The
    broadcasts are gathered and initialise their keys together at the next other call: each
    initialisation waits at two barriers, which one at a time cost seconds for a supernet of
    a thousand parameters."""

    def __init__(self, store: Any, offset: int):
        self._store = store
        self._offset = int(offset)
        self._pending: dict[int, Any] = {}

    def _keys(self, key: Any) -> Any:
        if self._pending:
            keys = sorted(self._pending)
            init_keys(self._store, keys, [self._pending[k] for k in keys])
            self._pending.clear()
        if isinstance(key, (list, tuple)):
            return [self._offset + int(k) for k in key]
        return self._offset + int(key)

    def broadcast(self, key, value, out, priority=0):
        # A Trainer's first step: the keys get rank 0's values. The workers' own values are
        # those already: every worker builds the same network from the same seed, or loads
        # the same checkpoint (and a pull could not write into a oneDNN-layout array). The
        # workers' final states are compared at the end of a launch (`announce_state`).
        keys = key if isinstance(key, (list, tuple)) else [key]
        values = value if isinstance(value, (list, tuple)) else [value]
        for k, v in zip(keys, values):
            self._pending[self._offset + int(k)] = v.copy()

    def pushpull(self, key, value, out=None, priority=0):
        self._store.pushpull(self._keys(key), value, out=out, priority=priority)

    def init(self, key, value):
        init_keys(self._store, self._keys(key), value)

    def push(self, key, value, priority=0):
        self._store.push(self._keys(key), value, priority=priority)

    def pull(self, key, out=None, priority=0, ignore_sparse=True):
        self._store.pull(self._keys(key), out=out, priority=priority,
                         ignore_sparse=ignore_sparse)

    def set_optimizer(self, optimizer):
        raise RunError("LightNAS Trainers sum gradients through the kvstore and update on "
                       "each worker (update_on_kvstore=False); an optimizer on the servers "
                       "is not supported")

    def is_capable(self, capability):
        # False keeps Trainers updating on the workers, where checkpoints can read the states.
        return False

    @property
    def type(self):
        return self._store.type

    @property
    def rank(self):
        return self._store.rank

    @property
    def num_workers(self):
        return self._store.num_workers


class World:
    """Rank, size and kvstore of this process (rank 0 of 1 without a launcher)."""

    def __init__(self, rank: int = 0, size: int = 1, mode: str | None = None,
                 store: Any = None):
        self.rank = int(rank)
        self.size = int(size)
        self.mode = mode
        self.store = store
        self._next_trainer = 0
        self._collective_keys: dict[int, list[int]] = {}
        self._next_collective = COLLECTIVE_BASE

    @property
    def distributed(self) -> bool:
        return self.store is not None

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder (rank 0 alone does)."""
        return self.rank == 0

    # --- Trainers -------------------------------------------------------------------------
    def trainer_store(self) -> KeyRange | None:
        """A key range of its own for the next Trainer (None without a launcher). Workers
        build their Trainers in the same order, so the same Trainer gets the same keys."""
        if not self.distributed:
            return None
        offset = self._next_trainer * TRAINER_BLOCK
        self._next_trainer += 1
        if offset + TRAINER_BLOCK > COLLECTIVE_BASE:
            raise RunError("too many Trainers for one launched run")
        return KeyRange(self.store, offset)

    # --- collectives ----------------------------------------------------------------------
    def _keys_for(self, length: int) -> list[int]:
        keys = self._collective_keys.get(length)
        if keys is None:
            keys = list(range(self._next_collective, self._next_collective + self.size))
            self._next_collective += self.size
            # Collective: kvstore.init waits for every worker.
            init_keys(self.store, keys,
                      [mx.nd.zeros((length,), dtype="float64") for _ in keys])
            self._collective_keys[length] = keys
        return keys

    def allgather(self, tag: str, values: Any) -> np.ndarray:
        """Every worker's `values` (a 1-D float64 array each), as rows in rank order."""
        own = np.asarray(values, dtype=np.float64).reshape(-1)
        if not self.distributed:
            return own[None, :].copy()
        row = np.concatenate([[_tag_value(tag)], own])
        keys = self._keys_for(row.size)
        # Each worker pushes its row to its own key and zeros to the others': the servers sum
        # the pushes of a key, so every key ends up holding one worker's row, exactly.
        pushed = [dense_array(row if r == self.rank else np.zeros_like(row), ctx=mx.cpu(),
                              dtype=np.float64) for r in range(self.size)]
        pulled = [mx.nd.zeros((row.size,), dtype="float64") for _ in keys]
        self.store.push(keys, pushed)
        self.store.pull(keys, out=pulled)
        rows = np.stack([array.asnumpy() for array in pulled])
        if not (rows[:, 0] == rows[self.rank, 0]).all():
            raise RuntimeError(f"launched workers are out of step: this worker (rank "
                               f"{self.rank}) gathered {tag!r} while others gathered something "
                               f"else; every worker must run the same collectives in order")
        return rows[:, 1:]

    def sum(self, tag: str, values: Any) -> np.ndarray:
        """The sum over workers of `values` (float64, added in rank order)."""
        rows = self.allgather(tag, values)
        total = rows[0].copy()
        for row in rows[1:]:
            total += row
        return total

    def broadcast(self, tag: str, values: Any) -> np.ndarray:
        """Rank 0's `values` on every worker (the others' `values` only give the length)."""
        return self.allgather(tag, values)[0]

    def broadcast_json(self, tag: str, value: Any) -> Any:
        """Rank 0's JSON-serialisable `value` on every worker."""
        if not self.distributed:
            return value
        data = json.dumps(value, sort_keys=True).encode("utf-8") if self.writes else b""
        length = int(self.broadcast(f"{tag}/length", [len(data)])[0])
        body = np.frombuffer(data, dtype=np.uint8) if self.writes else np.zeros(length)
        got = self.broadcast(tag, body.astype(np.float64))
        return json.loads(bytes(got.astype(np.uint8)).decode("utf-8"))

    def average_parameters(self, tag: str, params: Iterable[Any]) -> None:
        """Replace each parameter by its mean over the workers (e.g. batch-norm running
        statistics, which each worker estimates on its own shard). The mean is taken in
        float64 in rank order, so equal values stay exactly equal."""
        params = list(params)
        if not self.distributed or not params:
            return
        values = [p._reduce().asnumpy() for p in params]
        flat = np.concatenate([v.reshape(-1).astype(np.float64) for v in values])
        mean = self.sum(tag, flat) / self.size
        start = 0
        for param, value in zip(params, values):
            part = mean[start:start + value.size].reshape(value.shape).astype(value.dtype)
            start += value.size
            param.set_data(dense_array(part, ctx=mx.cpu(), dtype=value.dtype))

    def barrier(self) -> None:
        if self.distributed:
            self.store._barrier()


_WORLD: World | None = None


def _join(mode: str) -> World:
    store = mx.kv.create(mode)
    world = World(store.rank, store.num_workers, mode, store)
    print(f"lightnas: worker rank {world.rank} of {world.size} joined (kvstore {mode})",
          flush=True)
    return world


def resolve_kvstore(requested: str | None) -> str:
    """The kvstore a launched worker uses for `train.kvstore=requested`: dist_sync or
    dist_async as asked, and dist_sync for device / local (those name how one process sums its
    own devices' gradients; under `lightnas launch` the parameter server does it)."""
    return requested if requested in DISTRIBUTED else "dist_sync"


def connect(kvstore: str | None = None) -> World:
    """This process's world for `train.kvstore=kvstore`: a launched worker joins the
    parameter server (once); dist_sync / dist_async without a launcher is a user error."""
    global _WORLD
    if kvstore is not None and kvstore not in KVSTORES:
        raise ConfigError(f"train.kvstore {kvstore!r} is not one of {', '.join(KVSTORES)}")
    if kvstore == "dist_async":
        # MXNet's async servers must run the optimizer themselves (a push replaces the value
        # instead of adding to it): the optimizer states would live on the servers, out of
        # reach of the checkpoints, and the workers would hold different weights and
        # architecture parameters at any moment - neither exact resume nor one architecture.
        raise ConfigError("train.kvstore=dist_async is not supported: asynchronous updates "
                          "happen on the parameter servers, where checkpoints cannot read the "
                          "optimizer states and the workers' architecture parameters drift "
                          "apart; use train.kvstore=dist_sync (what `lightnas launch` uses "
                          "for device and local)")
    if not launched():
        if kvstore in DISTRIBUTED:
            raise ConfigError(f"train.kvstore={kvstore} needs the scheduler, servers and "
                              f"workers that `lightnas launch` starts: run `lightnas launch "
                              f"--workers N -- search -c CONFIG`, or set train.kvstore=device")
        if _WORLD is None:
            _WORLD = World()
        return _WORLD
    mode = resolve_kvstore(kvstore)
    if _WORLD is None:
        _WORLD = _join(mode)
    elif kvstore is not None and _WORLD.mode != mode:
        raise RunError(f"this worker already joined with kvstore {_WORLD.mode}; "
                       f"train.kvstore={kvstore} cannot change it within one process")
    return _WORLD


def current() -> World:
    """This process's world; a launched worker joins (dist_sync) if it has not yet."""
    return _WORLD if _WORLD is not None else connect(None)


def state_digest(arrays: dict, json_state: Any) -> str:
    """SHA-256 of a method's state (arrays by name, and its JSON), to compare workers."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = arrays[name].asnumpy()
        digest.update(name.encode("utf-8"))
        digest.update(str(value.dtype).encode() + str(value.shape).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    digest.update(json.dumps(json_state, sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()


def announce_state(method: Any) -> None:
    """Print the digest of `method.state()` (launched workers only): the launcher checks that
    every worker ends with the same weights, architecture parameters and optimizer states."""
    world = current()
    if not world.distributed:
        return
    arrays, json_state = method.state()
    print(STATE_LINE.format(rank=world.rank, digest=state_digest(arrays, json_state),
                            arrays=len(arrays)), flush=True)


def parameters_of(params: Any) -> Sequence[Any]:
    """A list of Gluon Parameters from a ParameterDict, a dict or a list."""
    if hasattr(params, "values"):
        return list(params.values())
    return list(params)
