"""Check a merged config against the allowed values its schema declares (`schema.setting`).

Walks the schema's dataclasses beside the config: every key's `choices` and bounds, NaN and
infinities for floats, then each section's own `check(section)` for rules over several keys.
The first problem raises one `ConfigError` naming the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lightnas_cli.errors import ConfigError

_BOUNDS = (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
           ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b))


def _check_value(key: str, value: Any, metadata: Any) -> None:
    if value is None:
        return
    values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    choices = metadata.get("choices")
    if callable(choices):
        choices = choices()
    if choices is not None:
        for item in values:
            if item not in choices:
                close = difflib.get_close_matches(str(item), [str(c) for c in choices], n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"'{key}' is {item!r}; allowed: "
                                  f"{', '.join(str(c) for c in choices)}.{hint}")
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if isinstance(item, float) and metadata.get("finite", True) and not math.isfinite(item):
            raise ConfigError(f"'{key}' is {item}; it must be a finite number")
        for name, symbol, holds in _BOUNDS:
            bound = metadata.get(name)
            if bound is not None and not holds(item, bound):
                raise ConfigError(f"'{key}' must be {symbol} {bound}, got {item}")


def _walk(node: DictConfig, schema: type, prefix: str) -> None:
    for spec in dataclasses.fields(schema):
        key = f"{prefix}{spec.name}"
        value = node.get(spec.name)
        section_type = OmegaConf.get_type(value) if isinstance(value, DictConfig) else None
        if section_type is not None and dataclasses.is_dataclass(section_type):
            _walk(value, section_type, key + ".")
        else:
            _check_value(key, value, spec.metadata)
    check = getattr(schema, "check", None)
    if callable(check):
        check(node)


def validate(cfg: DictConfig, source: str, prefix: str = "") -> None:
    """Raise ConfigError (prefixed with `source`) at the first value the schema refuses;
    `prefix` names where `cfg` sits in a larger file (e.g. "sweep.")."""
    schema = OmegaConf.get_type(cfg)
    if schema is None or not dataclasses.is_dataclass(schema):
        raise TypeError("validate() needs a config built from a structured schema")
    try:
        _walk(cfg, schema, prefix)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
