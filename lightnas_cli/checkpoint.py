"""Atomic checkpoints of NDArray dicts plus JSON, without pickle.

A checkpoint is a folder `epoch-NNNN/` with `arrays.params` (mx.nd.save of a dict) and
`state.json` (the JSON state plus the SHA-256 of the arrays file). It is written into a
temporary folder and renamed into place; then the file `latest` is replaced atomically.

Loading only reads: a checkpoint whose files are missing, truncated, fail their checksum or
are not what a checkpoint holds is skipped in favour of the previous complete one and listed
in `Checkpoint.skipped`. Only a command that goes on to write the run (resume) moves those
aside, with `set_aside`, to a fresh `corrupt-epoch-NNNN[-K]` name: nothing that might be the
only copy of an epoch is ever deleted or replaced.

Also here: exact save/restore of a Gluon Trainer's optimizer state without `Trainer.save_states`
(which pickles). See ENVIRONMENT.md for the MXNet 1.9.1 details this relies on.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mxnet as mx
import numpy as np
from mxnet import gluon

from lightnas_cli.errors import CheckpointError
from lightnas_cli.files import atomic_write, free_bytes, fsync_dir, sha256_file, unused_name

ARRAYS = "arrays.params"
STATE = "state.json"
LATEST = "latest"
_EPOCH_NAME = re.compile(r"epoch-(\d+)")


@dataclass
class Checkpoint:
    epoch: int
    path: Path
    arrays: dict
    state: dict
    #: Newer checkpoints that could not be used, as (epoch, why), newest first.
    skipped: list = field(default_factory=list)


def _name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def save(directory: Path, epoch: int, arrays: dict, state: dict, keep: int,
         protect: tuple[int, ...] = ()) -> Path:
    """Write checkpoint `epoch` atomically, point `latest` at it, keep the newest `keep`.

    Epochs in `protect` (e.g. the best one) survive pruning. If writing fails (a full disk,
    say) the staging folder is removed and earlier checkpoints are untouched.
    """
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / _name(epoch)
    tmp = directory / f".tmp-{_name(epoch)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        arrays_file = tmp / ARRAYS
        _save_arrays(arrays_file, arrays)
        record = {"epoch": epoch, "arrays_sha256": sha256_file(arrays_file), "state": state}
        with open(tmp / STATE, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(tmp)
        if os.path.lexists(final):
            _replace_existing(directory, epoch)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write(directory / LATEST, _name(epoch) + "\n")
    fsync_dir(directory)
    _prune(directory, keep, protect + (epoch,))
    return final


def _save_arrays(path: Path, arrays: dict) -> None:
    """mx.nd.save, fsynced; its failed writes become OSErrors (ENOSPC when the arrays no
    longer fit on the disk), since MXNet reports them without an errno."""
    cpu = {k: v.as_in_context(mx.cpu()) for k, v in arrays.items()}
    try:
        mx.nd.save(str(path), cpu)
    except mx.base.MXNetError as exc:
        needed = sum(v.size * np.dtype(v.dtype).itemsize for v in cpu.values())
        full = free_bytes(path.parent) < needed
        raise OSError(errno.ENOSPC if full else errno.EIO,
                      "No space left on device" if full else
                      f"MXNet could not write the arrays ({str(exc).splitlines()[-1]})",
                      str(path)) from None
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _replace_existing(directory: Path, epoch: int) -> None:
    """Make room for a re-run epoch: a complete old copy is superseded by the new one (the
    run is deterministic), anything else there is moved aside under a fresh name."""
    final = directory / _name(epoch)
    try:
        _read(directory, epoch)
    except CheckpointError:
        os.replace(final, unused_name(directory / f"corrupt-{_name(epoch)}"))
        return
    shutil.rmtree(final)


def epochs_present(directory: Path) -> list[int]:
    """Epochs with an `epoch-NNNN` entry (complete or not, folder or not), newest first."""
    if not directory.is_dir():
        return []
    epochs = set()
    for path in directory.iterdir():
        match = _EPOCH_NAME.fullmatch(path.name)
        if match:
            epochs.add(int(match.group(1)))
    return sorted(epochs, reverse=True)


def complete_epochs(directory: Path) -> list[int]:
    """Epochs with a checkpoint folder (complete or not), newest first."""
    return [epoch for epoch in epochs_present(directory)
            if (directory / _name(epoch)).is_dir()]


def _prune(directory: Path, keep: int, protect: tuple[int, ...]) -> None:
    for index, epoch in enumerate(complete_epochs(directory)):
        if index >= keep and epoch not in protect:
            shutil.rmtree(directory / _name(epoch), ignore_errors=True)


def _read_record(state_file: Path) -> dict:
    try:
        record = json.loads(state_file.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{state_file} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{state_file} is not valid JSON ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{state_file} cannot be read ({exc.strerror})") from None
    if not isinstance(record, dict) or not isinstance(record.get("state"), dict) \
            or not isinstance(record.get("arrays_sha256"), str):
        raise CheckpointError(f"{state_file} is not a checkpoint record (it needs "
                              f"'arrays_sha256' and a 'state' object)")
    return record


def _read(directory: Path, epoch: int) -> Checkpoint:
    path = directory / _name(epoch)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder")
    state_file, arrays_file = path / STATE, path / ARRAYS
    record = _read_record(state_file)
    if not arrays_file.is_file():
        raise CheckpointError(f"{arrays_file} is missing")
    if sha256_file(arrays_file) != record["arrays_sha256"]:
        raise CheckpointError(f"{arrays_file} is truncated or changed (checksum mismatch)")
    try:
        arrays = mx.nd.load(str(arrays_file))
    except mx.base.MXNetError as exc:
        raise CheckpointError(f"{arrays_file} cannot be read ({str(exc).splitlines()[0]})") from None
    if not isinstance(arrays, dict):
        raise CheckpointError(f"{arrays_file} holds a list of arrays, not named arrays")
    return Checkpoint(epoch=epoch, path=path, arrays=arrays, state=record["state"])


def load(directory: Path, epoch: int | None = None, warn: Callable[[str], None] | None = None,
         check: Callable[[Checkpoint], None] | None = None) -> Checkpoint:
    """Load checkpoint `epoch`, or the newest usable one when `epoch` is None. Reads only.

    `check(checkpoint)` may raise CheckpointError to call a readable checkpoint unusable
    (e.g. arrays that do not fit the run's model). Without `epoch`, an unusable newer one
    is skipped, `warn(message)` says so, and it is listed in `skipped` (see `set_aside`).
    Raises CheckpointError if none is usable.
    """
    available = epochs_present(directory)
    if epoch is not None:
        if epoch not in available:
            raise CheckpointError(
                f"run has no checkpoint for epoch {epoch} in {directory}; available epochs: "
                f"{sorted(available) or 'none'} (older ones are pruned: raise checkpoint.keep)")
        checkpoint = _read(directory, epoch)
        if check is not None:
            check(checkpoint)
        return checkpoint
    skipped: list[tuple[int, str]] = []
    for candidate in available:
        try:
            checkpoint = _read(directory, candidate)
            if check is not None:
                check(checkpoint)
        except CheckpointError as exc:
            skipped.append((candidate, str(exc)))
            continue
        checkpoint.skipped = skipped
        for epoch, why in skipped if warn else ():
            warn(f"checkpoint {_name(epoch)} is incomplete or corrupt ({why}); falling back "
                 f"to {_name(candidate)}, the newest complete checkpoint")
        return checkpoint
    detail = f" ({'; '.join(why for _, why in skipped)})" if skipped else ""
    raise CheckpointError(f"no complete checkpoint in {directory}{detail}; the run cannot be "
                          f"resumed or exported - start a new run with `lightnas search`")


def set_aside(directory: Path, checkpoint: Checkpoint,
              warn: Callable[[str], None] | None = None) -> list[Path]:
    """Move the checkpoints `load` skipped to fresh `corrupt-epoch-NNNN[-K]` names (never
    over an earlier one) and point `latest` at `checkpoint`. For commands that go on to write
    the run; returns the new paths."""
    moved = []
    for epoch, _ in checkpoint.skipped:
        source = directory / _name(epoch)
        if not os.path.lexists(source):
            continue
        target = unused_name(directory / f"corrupt-{_name(epoch)}")
        os.replace(source, target)
        moved.append(target)
        if warn:
            warn(f"moved the unusable checkpoint {source.name} to {target.name}")
    if moved:
        point_latest(directory, checkpoint.epoch)
    return moved


def point_latest(directory: Path, epoch: int) -> None:
    """Make `latest` name checkpoint `epoch` (after newer ones were moved away)."""
    atomic_write(directory / LATEST, _name(epoch) + "\n")
    fsync_dir(directory)


# --- Gluon Trainer state without pickle -----------------------------------------------------

def _flatten_state(state) -> list:
    if state is None:
        return []
    if isinstance(state, (list, tuple)):
        out = []
        for item in state:
            out.extend(_flatten_state(item))
        return out
    return [state]


def trainer_state(trainer: gluon.Trainer, prefix: str) -> tuple[dict, dict]:
    """Optimizer states as NDArrays (`prefix/index:slot`) and update counts as JSON."""
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    arrays: dict = {}
    updater = trainer._updaters[0]
    layout: dict = {}
    for index, state in updater.states.items():
        flat = _flatten_state(state)
        layout[str(index)] = _structure(state)
        for slot, array in enumerate(flat):
            arrays[f"{prefix}/{index}:{slot}"] = array.as_in_context(mx.cpu())
    optimizer = trainer._optimizer
    counts = {str(k): int(v) for k, v in optimizer._all_index_update_counts[0].items()}
    json_state = {"counts": counts, "num_update": int(optimizer.num_update), "layout": layout,
                  "lr": float(optimizer.learning_rate)}
    return arrays, json_state


def _structure(state):
    if state is None:
        return None
    if isinstance(state, (list, tuple)):
        return [_structure(s) for s in state]
    return "a"


def _rebuild(structure, flat: list, ctx):
    if structure is None:
        return None
    if isinstance(structure, list):
        return tuple(_rebuild(s, flat, ctx) for s in structure)
    return flat.pop(0).as_in_context(ctx)


def load_trainer_state(trainer: gluon.Trainer, prefix: str, arrays: dict, json_state: dict) -> None:
    """Restore what `trainer_state` saved, so the next step equals the uninterrupted run's."""
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    # A Trainer numbers its parameters in the order of their names. Every state (momentum,
    # Adam's moments) has its parameter's shape: a state that does not fit the parameter now
    # at its index was written for another parameter, which must not load silently.
    for index_text, structure in json_state["layout"].items():
        index = int(index_text)
        if not 0 <= index < len(trainer._params):
            raise CheckpointError(f"optimizer state {prefix}/{index} has no parameter here "
                                  f"({len(trainer._params)} parameters): the checkpoint was "
                                  f"written for another network")
        wanted = tuple(trainer._params[index].shape)
        for slot in range(_leaves(structure)):
            found = tuple(arrays[f"{prefix}/{index}:{slot}"].shape)
            if found != wanted:
                raise CheckpointError(
                    f"optimizer state {prefix}/{index}:{slot} has shape {found} but parameter "
                    f"{trainer._params[index].name} has {wanted}: the checkpoint's optimizer "
                    f"states belong to other parameters (another network or parameter order)")
    for updater, ctx in zip(trainer._updaters, trainer._contexts):
        for index_text, structure in json_state["layout"].items():
            index = int(index_text)
            flat = [arrays[f"{prefix}/{index}:{slot}"] for slot in range(_leaves(structure))]
            updater.states[index] = _rebuild(structure, flat, ctx)
            updater.states_synced[index] = False
    optimizer = trainer._optimizer
    counts = {int(k): int(v) for k, v in json_state["counts"].items()}
    optimizer._all_index_update_counts[0].clear()
    optimizer._all_index_update_counts[0].update(counts)
    optimizer._index_update_count = optimizer._all_index_update_counts[0]
    optimizer.num_update = int(json_state["num_update"])


def _leaves(structure) -> int:
    if structure is None:
        return 0
    if isinstance(structure, list):
        return sum(_leaves(item) for item in structure)
    return 1
