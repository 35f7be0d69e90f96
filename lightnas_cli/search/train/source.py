"""What `lightnas train SOURCE` trains, turned into the train run's self-contained config.

SOURCE is, in this order of lookup:
- a search run (a name under the run root, or a folder): its derived architecture of the best
  epoch (or `--epoch N|latest`), and its config (how to build it, what data it used);
- an architecture JSON file (`exported_models/.../*-architecture.json`, `logs/architectures/
  epoch_N.json`, or one a user edited): when it lies inside a run folder, that run's config
  and checkpoints come with it; on its own, the method's `config_for_architecture` rebuilds it;
- a zoo model name (`resnet_e18`, `meliusnet_custom:DTSI`, `resnet8`, ...): trained as it is.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from lightnas_cli import config as config_mod
from lightnas_cli.errors import ArchitectureError, ConfigError, RunError
from lightnas_cli.files import sha256_file
from lightnas_cli.runs import RunDir
from lightnas_cli.search.base import Architecture, get_method

_EPOCH_IN_NAME = re.compile(r"(?:-(\d{4})-architecture|epoch_(\d+))\.json$")


def _enclosing_run(path: Path) -> RunDir | None:
    """The run folder a file lies in (a folder with run.json and config.yaml above it)."""
    for folder in Path(path).resolve().parents:
        if (folder / "run.json").is_file() and (folder / "config.yaml").is_file():
            return RunDir(folder)
    return None


def _run_config_data(run: RunDir) -> dict:
    return OmegaConf.to_container(config_mod.load_config(run.config_file), resolve=True)


def _record(path: Path) -> Architecture:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArchitectureError(f"cannot read {path}: {exc}") from None
    return Architecture.from_json(text, source=str(path))


def _from_run(run: RunDir, epoch: str | None) -> dict:
    status = run.read_status()
    if epoch in (None, "best"):
        chosen = status.get("best_epoch")
    elif epoch == "latest":
        chosen = status.get("epoch")
    else:
        try:
            chosen = int(epoch)
        except ValueError:
            raise ConfigError(f"--epoch must be a number, 'latest' or 'best', got {epoch!r}") \
                from None
    if not chosen:
        raise RunError(f"run {run.name!r} has no derived architecture yet (no epoch finished); "
                       f"train it after its first epoch, or give an architecture file")
    path = run.architectures / f"epoch_{int(chosen)}.json"
    if not path.is_file():
        raise RunError(f"run {run.name!r} has no derived architecture for epoch {chosen} "
                       f"({path} is missing)")
    record = _record(path)
    return {"kind": "run", "reference": str(run.path), "epoch": int(chosen),
            "sha256": sha256_file(path), "run": str(run.path.resolve()),
            "architecture": record.to_dict(), "method_config": _run_config_data(run)}


def _from_file(path: Path) -> dict:
    record = _record(path)
    run = _enclosing_run(path)
    match = _EPOCH_IN_NAME.search(path.name)
    epoch = int(next(g for g in match.groups() if g)) if match else None
    if run is not None:
        method_config = _run_config_data(run)
    else:
        method_class = get_method(record.method)
        method_config = method_class.config_for_architecture(record)
    return {"kind": "architecture", "reference": str(path), "epoch": epoch,
            "sha256": sha256_file(path), "run": str(run.path.resolve()) if run else None,
            "architecture": record.to_dict(), "method_config": method_config}


def resolve_source(reference: str, root: Path = Path("trainings"),
                   epoch: str | None = None) -> dict:
    """The `source:` section for what `reference` names (see the module docstring)."""
    path = Path(reference)
    for folder in (path, Path(root) / reference):
        if (folder / "run.json").is_file() and (folder / "config.yaml").is_file():
            return _from_run(RunDir(folder), epoch)
    if path.is_file():
        if epoch is not None:
            raise ConfigError("--epoch applies to a run; an architecture file is one epoch's")
        return _from_file(path)
    import bmxnet_models
    try:
        bmxnet_models.get_model_factory(reference)
    except ConfigError:
        raise ConfigError(f"{reference!r} is neither a run (under {root} or a folder), an "
                          f"architecture JSON file nor a zoo model; see `lightnas runs` for "
                          f"runs") from None
    if epoch is not None:
        raise ConfigError("--epoch applies to a run, not to a zoo model")
    return {"kind": "zoo", "reference": reference}


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def train_config(reference: str, config_path: str | None = None,
                 overrides: Sequence[str] = (), epoch: str | None = None,
                 init: str | None = None, root: Path = Path("trainings")) -> DictConfig:
    """The validated config of a train run: the source, then what the source run used for its
    data (on the full training split: eval_split_percentage 0) and training schedule, then the
    `-c` file, then overrides."""
    source = resolve_source(reference, root, epoch)
    file_data: dict[str, Any] = config_mod.read_config_file(Path(config_path)) \
        if config_path else {}
    if file_data.get("method", "train") != "train":
        raise ConfigError(f"{config_path}: a train config has `method: train` (or none), not "
                          f"{file_data['method']!r}; the search config is the source's")
    method_config = source.get("method_config") or {}
    data: dict[str, Any] = {"method": "train", "seed": method_config.get("seed", 0)}
    if "data" in method_config:
        data["data"] = _merge(method_config["data"], {"eval_split_percentage": 0})
    if "train" in method_config:
        data["train"] = dict(method_config["train"])
    if source["kind"] == "zoo":
        data["model"] = {"name": reference}
    else:
        data["model"] = {"name": source["architecture"]["base_model"]}
    data = _merge(data, {k: v for k, v in file_data.items() if k != "method"})
    data["source"] = source
    if init is not None:
        data["init"] = init
    run = data.setdefault("run", {})
    if not run.get("name") and not any(o.startswith("run.name=") for o in overrides):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(source["reference"]).name if source["kind"] == "run" else \
            str(data["model"]["name"]).replace(":", "-").replace("/", "-")
        run["name"] = f"train_{base}_{stamp}"[:100]
    cfg = config_mod.load_config(config_path or "train config", overrides, data=data)
    if cfg.init == "search" and not cfg.source.run:
        raise ConfigError("init: search needs the search run whose weights to start from; "
                          f"{reference!r} has none (train it from scratch)")
    return cfg


def source_status(cfg: DictConfig) -> dict:
    """What run.json records about a train run's source."""
    return {"kind": "train", "source": {key: cfg.source[key] for key in
                                        ("kind", "reference", "epoch", "sha256", "run")},
            "init": cfg.init}
