"""Atomic checkpoints of NDArray dicts plus JSON, without pickle.

A checkpoint is a folder `epoch-NNNN/` with `arrays.params` (mx.nd.save of a dict) and
`state.json` (the JSON state plus the SHA-256 of the arrays file). It is written into a
temporary folder and renamed into place; then the file `latest` is replaced atomically. A
checkpoint whose files are missing, truncated or fail their checksum is skipped in favour of
the previous complete one, and moved aside (never deleted) so nothing is lost.

Also here: exact save/restore of a Gluon Trainer's optimizer state without `Trainer.save_states`
(which pickles). See ENVIRONMENT.md for the MXNet 1.9.1 details this relies on.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import mxnet as mx
from mxnet import gluon

from lightnas_cli.errors import CheckpointError
from lightnas_cli.files import fsync_dir, sha256_file

ARRAYS = "arrays.params"
STATE = "state.json"
LATEST = "latest"


@dataclass
class Checkpoint:
    epoch: int
    path: Path
    arrays: dict
    state: dict


def _name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def save(directory: Path, epoch: int, arrays: dict, state: dict, keep: int,
         protect: tuple[int, ...] = ()) -> Path:
    """Write checkpoint `epoch` atomically, point `latest` at it, keep the newest `keep`.

    Epochs in `protect` (e.g. the best one) survive pruning.
    """
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / _name(epoch)
    tmp = directory / f".tmp-{_name(epoch)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    arrays_file = tmp / ARRAYS
    mx.nd.save(str(arrays_file), {k: v.as_in_context(mx.cpu()) for k, v in arrays.items()})
    with open(arrays_file, "rb") as handle:
        os.fsync(handle.fileno())
    record = {"epoch": epoch, "arrays_sha256": sha256_file(arrays_file), "state": state}
    with open(tmp / STATE, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_dir(tmp)
    if final.exists():
        # Re-running an epoch after a resume: the old copy is superseded by an identical one.
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = directory / f".{LATEST}.tmp-{os.getpid()}"
    latest_tmp.write_text(_name(epoch) + "\n")
    os.replace(latest_tmp, directory / LATEST)
    fsync_dir(directory)
    _prune(directory, keep, protect + (epoch,))
    return final


def complete_epochs(directory: Path) -> list[int]:
    """Epochs with a checkpoint folder (complete or not), newest first."""
    if not directory.is_dir():
        return []
    epochs = []
    for path in directory.iterdir():
        if path.is_dir() and path.name.startswith("epoch-"):
            try:
                epochs.append(int(path.name.split("-", 1)[1]))
            except ValueError:
                continue
    return sorted(epochs, reverse=True)


def _prune(directory: Path, keep: int, protect: tuple[int, ...]) -> None:
    for index, epoch in enumerate(complete_epochs(directory)):
        if index >= keep and epoch not in protect:
            shutil.rmtree(directory / _name(epoch), ignore_errors=True)


def _read(directory: Path, epoch: int) -> Checkpoint:
    path = directory / _name(epoch)
    state_file, arrays_file = path / STATE, path / ARRAYS
    try:
        record = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{state_file} is missing") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{state_file} is not valid JSON ({exc})") from None
    if not arrays_file.is_file():
        raise CheckpointError(f"{arrays_file} is missing")
    if sha256_file(arrays_file) != record.get("arrays_sha256"):
        raise CheckpointError(f"{arrays_file} is truncated or changed (checksum mismatch)")
    try:
        arrays = mx.nd.load(str(arrays_file))
    except mx.base.MXNetError as exc:
        raise CheckpointError(f"{arrays_file} cannot be read ({str(exc).splitlines()[0]})") from None
    return Checkpoint(epoch=epoch, path=path, arrays=arrays, state=record.get("state", {}))


def load(directory: Path, epoch: int | None = None, warn=None) -> Checkpoint:
    """Load checkpoint `epoch`, or the newest complete one when `epoch` is None.

    A newest checkpoint that fails to load is moved to `corrupt-epoch-NNNN/` and the previous
    complete one is used; `warn(message)` says so. Raises CheckpointError if none is usable.
    """
    available = complete_epochs(directory)
    if epoch is not None:
        if epoch not in available:
            raise CheckpointError(
                f"run has no checkpoint for epoch {epoch} in {directory}; available epochs: "
                f"{sorted(available) or 'none'} (older ones are pruned: raise checkpoint.keep)")
        return _read(directory, epoch)
    problems = []
    for candidate in available:
        try:
            checkpoint = _read(directory, candidate)
        except CheckpointError as exc:
            problems.append(str(exc))
            aside = directory / f"corrupt-{_name(candidate)}"
            if not aside.exists():
                os.replace(directory / _name(candidate), aside)
            if warn:
                warn(f"checkpoint {_name(candidate)} is incomplete or corrupt ({exc}); moved it "
                     f"to {aside.name} and falling back to the previous complete checkpoint")
            continue
        if problems:
            latest_tmp = directory / f".{LATEST}.tmp-{os.getpid()}"
            latest_tmp.write_text(_name(candidate) + "\n")
            os.replace(latest_tmp, directory / LATEST)
        return checkpoint
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise CheckpointError(f"no complete checkpoint in {directory}{detail}; the run cannot be "
                          f"resumed or exported - start a new run with `lightnas search`")


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
