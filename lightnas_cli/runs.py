"""Run folders: layout, run.json, metrics.jsonl, listing and locking.

```
trainings/<run>/
  config.yaml  run.json  metrics.jsonl
  checkpoints/epoch-0007/ ... latest
  logs/  logs/architectures/epoch_7.{json,txt,dot,png}
  exported_models/inference_only/  exported_models/trainable/
```
Every file is written atomically (temporary file + rename) so a killed process never leaves a
half-written record behind. An existing run is never overwritten: `create` refuses the name.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from lightnas_cli.errors import RunError
from lightnas_cli.files import atomic_write

STATUSES = ("running", "finished", "failed", "interrupted")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def versions() -> dict:
    import mxnet
    import numpy

    from lightnas_cli import __version__
    return {"lightnas": __version__, "mxnet": mxnet.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


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

    # --- creation and lookup ------------------------------------------------------------
    @classmethod
    def create(cls, root: Path, name: str) -> "RunDir":
        """Make a new run folder; refuse (without touching anything) if the name exists."""
        if not name or "/" in name or name in (".", ".."):
            raise RunError(f"invalid run name {name!r}: use letters, digits, '-', '_' and '.'")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        path = root / name
        try:
            path.mkdir()
        except FileExistsError:
            raise RunError(f"a run named {name!r} already exists at {path}; choose another "
                           f"name with run.name=NEW_NAME, or continue it with "
                           f"`lightnas resume {name}`") from None
        run = cls(path)
        for folder in (run.checkpoints, run.architectures, run.exported):
            folder.mkdir(parents=True, exist_ok=True)
        return run

    @classmethod
    def open(cls, reference: str, root: Path = Path("trainings")) -> "RunDir":
        """A run by name (under root) or by path to its folder."""
        candidates = [Path(reference), Path(root) / reference]
        for path in candidates:
            if (path / "run.json").is_file() or (path / "config.yaml").is_file():
                return cls(path)
        known = ", ".join(sorted(r.name for r in list_runs(Path(root)))[:10]) or "none"
        raise RunError(f"no run {reference!r} found (looked for {candidates[0]} and "
                       f"{candidates[1]}); runs under {root}: {known}. List them with "
                       f"`lightnas runs`")

    @staticmethod
    def default_name(model: str, dataset: str) -> str:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return f"{model}_{dataset}_{stamp}".replace(":", "-").replace("/", "-")

    # --- run.json -----------------------------------------------------------------------
    def read_status(self) -> dict:
        try:
            return json.loads(self.run_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise RunError(f"{self.run_file} is not valid JSON ({exc}); restore it or start a "
                           f"new run") from None

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
        for line in self.metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write carries no complete epoch
        return records

    def rewrite_metrics(self, records: list[dict]) -> None:
        atomic_write(self.metrics_file,
                          "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    # --- locking ------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """One process per run. A lock left by a killed process is taken over."""
        lock_file = self.path / ".lock"
        for _ in range(2):
            try:
                fd = os.open(lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                try:
                    owner = int(lock_file.read_text().strip() or 0)
                except (OSError, ValueError):
                    owner = 0
                if owner and owner != os.getpid() and _pid_alive(owner):
                    raise RunError(f"run {self.name!r} is in use by process {owner}; wait for "
                                   f"it to finish or stop it first") from None
                lock_file.unlink(missing_ok=True)
        else:
            raise RunError(f"could not lock run {self.name!r} ({lock_file})")
        try:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            yield
        finally:
            lock_file.unlink(missing_ok=True)


def list_runs(root: Path) -> list[RunDir]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((RunDir(p) for p in root.iterdir()
                   if p.is_dir() and (p / "run.json").is_file()), key=lambda r: r.name)
