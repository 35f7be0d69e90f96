"""Run folders: layout, run.json, metrics.jsonl, names, listing and locking.

```
trainings/<run>/
  config.yaml  run.json  metrics.jsonl  .lock
  checkpoints/epoch-0007/ ... latest
  logs/  logs/architectures/epoch_7.{json,txt,dot,png}
  exported_models/epoch-0007/inference_only/  exported_models/epoch-0007/trainable/
```
Every file is written atomically (temporary file + rename) so a killed process never leaves a
half-written record behind. An existing run is never overwritten: `create` refuses the name.
A run belongs to one process at a time: `lock` takes an OS lock (`flock`) on `.lock`, a file
that is never deleted, so a lock left by a killed process is simply free again and two
processes can never both hold it. `run.json` is checked when read: a damaged one is reported
as such, never trusted and never overwritten.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import platform
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from lightnas_cli.errors import ConfigError, RunError
from lightnas_cli.files import (atomic_write, describe_os_error, fsync_dir,
                                is_environment_error, remove_stale_temporaries, unused_name)

STATUSES = ("running", "finished", "failed", "interrupted")
LOCK_FILE = ".lock"
#: Names of runs (and of exported models): what every file system and shell takes as is.
NAME_RULE = ("ASCII letters, digits, '.', '_' and '-', not starting with '.' or '-', at most "
             "100 characters")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
#: Temporaries a writer of this package leaves when killed or stopped by a full disk
#: (files.atomic_write's `.*.tmp`, checkpoint and export staging folders `.tmp-*`, swapped-out
#: exports `.old-*`, and `.NAME.tmp-PID` files of earlier versions).
TEMPORARY_PATTERNS = (".*.tmp", ".tmp-*", ".old-*", ".*.tmp-*")
#: Per-epoch entries: `checkpoints/epoch-NNNN`, `exported_models/epoch-NNNN`, and the
#: architecture files `logs/architectures/epoch_N.json|.png|.dot|.txt`.
_EPOCH_ENTRY = re.compile(r"epoch-(\d+)\Z")
_ARCHITECTURE_ENTRY = re.compile(r"epoch_(\d+)\.")

_INT, _NUMBER, _NONE = (int,), (int, float), (type(None),)
#: Types of the run.json fields LightNAS reads; other fields (test metrics) are free.
_FIELD_TYPES: dict[str, tuple] = {
    "status": (str,), "pid": _INT, "epoch": _INT, "epochs": _INT,
    "best_epoch": _INT + _NONE, "best_val_accuracy": _NUMBER + _NONE, "cost": _NUMBER + _NONE,
    "cost_name": (str,) + _NONE, "method": (str,), "model": (str,), "dataset": (str,),
    "final_architecture": (str,) + _NONE, "exported": (str,) + _NONE, "versions": (dict,),
    "created": (str,), "finished": (str,), "updated": (str,)}


def check_name(name: Any, key: str = "run.name") -> str:
    """Refuse a name outside the allow-list (`NAME_RULE`); returns it."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name) if not isinstance(name, str) or len(name) <= 40 else \
            repr(name[:40]) + f"... ({len(name)} characters)"
        raise ConfigError(f"{key} {shown} is not a valid name: use {NAME_RULE}")
    return name


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def versions() -> dict:
    import mxnet
    import numpy

    from lightnas_cli import __version__
    return {"lightnas": __version__, "mxnet": mxnet.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def _check_status_record(data: Any) -> str | None:
    """What is wrong with a parsed run.json, or None."""
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    for key, types in _FIELD_TYPES.items():
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, types):
            return f"'{key}' is {value!r}"
    if "status" in data and data["status"] not in STATUSES:
        return f"'status' is {data['status']!r}, not one of {', '.join(STATUSES)}"
    for key in ("epoch", "epochs", "pid"):
        if data.get(key, 0) < 0:
            return f"'{key}' is negative"
    return None


def check_can_create(root: Path, name: str) -> Path:
    """The folder a new run would get; refuse (creating nothing) a bad name, a taken name or
    a run root that cannot be written."""
    check_name(name)
    root = Path(root)
    path = root / name
    if os.path.lexists(path):
        raise RunError(f"a run named {name!r} already exists at {path}; choose another "
                       f"name with run.name=NEW_NAME, or continue it with "
                       f"`lightnas resume {name}`")
    existing = root
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunError(f"run.root {str(root)!r} cannot hold runs: {existing} is not a folder; "
                       f"set run.root=FOLDER")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"run.root {str(root)!r} is not writable ({existing} refuses new "
                       f"files); set run.root to a folder you can write, e.g. "
                       f"run.root=$HOME/trainings")
    return path


class RunDir:
    """One run folder. Create with `RunDir.create`, open an existing one with `RunDir.open`."""

    def __init__(self, path: Path):
        self.path = Path(path)

    # --- layout -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def run_file(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def architectures(self) -> Path:
        return self.logs / "architectures"

    @property
    def exported(self) -> Path:
        return self.path / "exported_models"

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    # --- creation and lookup ------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, name: str) -> "RunDir":
        """Make a new run folder; refuse (without touching anything) if the name exists.
        If the folder cannot be completed (disk full, permissions) it is removed again."""
        path = check_can_create(root, name)
        try:
            Path(root).mkdir(parents=True, exist_ok=True)
            path.mkdir()
        except FileExistsError:
            raise RunError(f"a run named {name!r} already exists at {path}; choose another "
                           f"name with run.name=NEW_NAME, or continue it with "
                           f"`lightnas resume {name}`") from None
        except OSError as exc:  # the checks above passed: whatever this is, it is the disk's
            raise RunError(f"cannot create the run folder {path} "
                           f"({describe_os_error(exc)}); set run.root to a writable folder "
                           f"with free space") from None
        run = cls(path)
        try:
            for folder in (run.checkpoints, run.architectures, run.exported):
                folder.mkdir(parents=True, exist_ok=True)
            run.lock_file.touch()
        except OSError as exc:
            shutil.rmtree(path, ignore_errors=True)
            raise RunError(f"cannot create the run folder {path} "
                           f"({describe_os_error(exc)}); nothing was kept") from None
        return run

    @classmethod
    def open(cls, reference: str, root: Path = Path("trainings")) -> "RunDir":
        """A run by name (under root) or by path to its folder."""
        candidates = [Path(reference), Path(root) / reference]
        for path in candidates:
            try:
                if (path / "run.json").is_file() or (path / "config.yaml").is_file():
                    return cls(path)
            except OSError:  # a name too long for the file system, say: not a run
                continue
        known = ", ".join(sorted(r.name for r in list_runs(Path(root)))[:10]) or "none"
        raise RunError(f"no run {reference!r} found (looked for {candidates[0]} and "
                       f"{candidates[1]}); runs under {root}: {known}. List them with "
                       f"`lightnas runs`")

    @staticmethod
    def default_name(model: str, dataset: str) -> str:
        """<model>_<dataset>_<YYYYmmdd-HHMMSS>, made to follow the name rule whatever the
        model is called (custom strings hold ':' and can be long)."""
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        prefix = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}_{dataset}").lstrip(".-") or "run"
        return f"{prefix[:100 - len(stamp) - 1]}_{stamp}"

    # --- run.json -----------------------------------------------------------------------
    def read_status(self) -> dict:
        """The run's record ({} before it has one); a damaged one raises RunError."""
        try:
            text = self.run_file.read_bytes().decode("utf-8")
            data = json.loads(text)
        except FileNotFoundError:
            return {}
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise RunError(self._damaged(f"not valid UTF-8 JSON: {exc}")) from None
        except OSError as exc:
            raise RunError(self._damaged(describe_os_error(exc))) from None
        problem = _check_status_record(data)
        if problem:
            raise RunError(self._damaged(problem))
        return data

    def _damaged(self, problem: str) -> str:
        return (f"{self.run_file} is unreadable ({problem}); LightNAS leaves this run alone. "
                f"Restore the file from a backup, or move the run folder out of the way")

    def update_status(self, **fields: Any) -> dict:
        status = self.read_status()
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"bad status {fields['status']}")
        status.update(fields)
        status["updated"] = _dt.datetime.now().isoformat(timespec="seconds")
        atomic_write(self.run_file, json.dumps(status, indent=2, sort_keys=True) + "\n")
        return status

    def effective_status(self) -> str:
        """The recorded status, or 'interrupted' for a 'running' run whose process is gone."""
        status = self.read_status()
        state = status.get("status", "unknown")
        if state == "running" and not _pid_alive(int(status.get("pid", 0) or 0)):
            return "interrupted"
        return state

    # --- metrics.jsonl ------------------------------------------------------------------
    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_metrics(self) -> list[dict]:
        if not self.metrics_file.is_file():
            return []
        records = []
        text = self.metrics_file.read_bytes().decode("utf-8", errors="replace")
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write carries no complete epoch
            if isinstance(record, dict):
                records.append(record)
        return records

    def rewrite_metrics(self, records: list[dict]) -> None:
        atomic_write(self.metrics_file,
                     "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    # --- locking ------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """One process per run: an exclusive `flock` on `.lock`, released when the holder
        exits in any way (kill -9 included). The file itself is never deleted or written."""
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            if not is_environment_error(exc):
                raise
            raise RunError(f"cannot lock run {self.name!r}: {describe_os_error(exc)}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunError(f"run {self.name!r} is in use by another LightNAS "
                               f"process{self._owner()}; wait for it to finish or stop it "
                               f"first") from None
            yield
        finally:
            os.close(fd)

    def _owner(self) -> str:
        try:
            pid = int(self.read_status().get("pid", 0) or 0)
        except RunError:
            return ""
        return f" (pid {pid})" if _pid_alive(pid) and pid != os.getpid() else ""

    @property
    def superseded(self) -> Path:
        return self.path / "superseded"

    def set_aside_after(self, epoch: int) -> Path | None:
        """Move everything the run wrote for epochs after `epoch` (checkpoints, per-epoch
        exports, architecture files) and a copy of metrics.jsonl into a fresh
        `superseded/from-epoch-NNNN[-K]/`, keeping their relative paths: `resume --from-epoch`
        goes on from `epoch` without deleting what it replaces. Call under `lock`.
        Returns the folder, or None when nothing was newer."""
        newer: list[Path] = []
        for folder, entry in ((self.checkpoints, _EPOCH_ENTRY), (self.exported, _EPOCH_ENTRY),
                              (self.architectures, _ARCHITECTURE_ENTRY)):
            if folder.is_dir():
                for path in folder.iterdir():
                    found = entry.match(path.name)
                    if found and int(found.group(1)) > epoch:
                        newer.append(path)
        if not newer:
            return None
        target = unused_name(self.superseded / f"from-epoch-{epoch:04d}")
        target.mkdir(parents=True)
        if self.metrics_file.is_file():
            shutil.copy2(self.metrics_file, target / self.metrics_file.name)
        for path in sorted(newer):
            destination = target / path.relative_to(self.path)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, destination)
        if self.checkpoints.is_dir():
            fsync_dir(self.checkpoints)
        return target

    def remove_temporaries(self) -> list[Path]:
        """Delete what killed or failed writers left (any process's); call under `lock`."""
        return remove_stale_temporaries(self.path, TEMPORARY_PATTERNS)


def list_runs(root: Path) -> list[RunDir]:
    """Every run folder under root (one with run.json or config.yaml), by name; whether its
    files are readable is for the caller to find out (`read_status`)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        try:
            if path.is_dir() and ((path / "run.json").is_file()
                                  or (path / "config.yaml").is_file()):
                found.append(RunDir(path))
        except OSError:
            continue
    return sorted(found, key=lambda r: r.name)
