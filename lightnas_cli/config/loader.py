"""Load, merge, override, validate and save configs.

YAML is read with `yaml.safe_load` only (the original used an unsafe loader). The file is merged
onto the method's structured schema (registered with the method, found by the `method` key),
then dotlist overrides on top; OmegaConf rejects unknown keys and wrong types, and we turn its
errors into one-line `ConfigError`s that name the key and suggest the closest valid one. Allowed
values and ranges are then checked as the schema declares them (`validation.py`).
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue,
                              OmegaConfBaseException, ValidationError)

from lightnas_cli.config.validation import validate
from lightnas_cli.errors import ConfigError


def _schema_for(method: Any, source: str) -> type:
    from lightnas_cli.search.base import available_methods, method_schema
    if method is None:
        raise ConfigError(f"{source}: the config names no search method; add a top-level "
                          f"`method:` key (one of {', '.join(available_methods())}) or "
                          f"override it with method=NAME")
    try:
        return method_schema(method)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing YAML file with "
                          f"-c (examples are in configs/, e.g. configs/demo.yml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got "
                          f"{type(data).__name__}")
    return data


def _keys_at(schema_cfg: DictConfig, dotted_parent: str) -> list[str]:
    node = OmegaConf.select(schema_cfg, dotted_parent) if dotted_parent else schema_cfg
    if isinstance(node, DictConfig):
        return [str(k) for k in node.keys()]
    return []


def _friendly(exc: OmegaConfBaseException, schema_cfg: DictConfig, source: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or ""
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        parent, _, leaf = key.rpartition(".")
        valid = _keys_at(schema_cfg, parent)
        close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.5)
        hint = f" Did you mean '{(parent + '.') if parent else ''}{close[0]}'?" if close else ""
        where = f"in section '{parent}'" if parent else "at the top level"
        return ConfigError(f"{source}: unknown config key '{key}'.{hint} Valid keys {where}: "
                           f"{', '.join(valid)}")
    if isinstance(exc, ValidationError):
        msg = str(exc).splitlines()[0]
        return ConfigError(f"{source}: wrong type for '{key}': {msg}; fix the value in the "
                           f"file or override it as {key}=...")
    if isinstance(exc, MissingMandatoryValue):
        return ConfigError(f"{source}: '{key}' is required; set it in the file or as {key}=...")
    return ConfigError(f"{source}: {str(exc).splitlines()[0]}")


def read_config_file(path: Path) -> dict:
    """A config file's top-level mapping, read safely (what `load_config` merges)."""
    return _read_yaml(Path(path))


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = (),
                data: dict | None = None) -> DictConfig:
    """The resolved, validated config of a file plus dotlist overrides (`train.epochs=3`).

    `data` stands in for the file's content when the caller has read it already (a sweep
    takes its own section out first); `path` then only names the source in messages."""
    source = str(path) if path else "config"
    file_data = data if data is not None else (_read_yaml(Path(path)) if path else {})
    if "sweep" in file_data:
        raise ConfigError(f"{source} has a `sweep:` section: run it with `lightnas sweep -c "
                          f"{source}`, or remove the section to run one search")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value "
                              f"(e.g. train.epochs=3)")
    try:
        override_cfg = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"overrides: {str(exc).splitlines()[0]}") from None
    method = OmegaConf.select(override_cfg, "method", default=file_data.get("method"))
    schema = OmegaConf.structured(_schema_for(method, source))
    try:
        cfg = OmegaConf.merge(schema, file_data)
    except OmegaConfBaseException as exc:
        raise _friendly(exc, schema, source) from None
    try:
        cfg = OmegaConf.merge(cfg, override_cfg)
    except OmegaConfBaseException as exc:
        raise _friendly(exc, schema, "overrides") from None
    try:
        OmegaConf.to_container(cfg, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise _friendly(exc, schema, source) from None
    validate(cfg, source)
    OmegaConf.set_readonly(cfg, False)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def save_config(cfg: DictConfig, path: Path) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(to_yaml(cfg), encoding="utf-8")
    os.replace(tmp, path)
