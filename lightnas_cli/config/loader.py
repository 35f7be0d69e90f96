"""Load, merge, override, validate and save configs.

YAML is read with PyYAML's safe loader only (the original used an unsafe loader), and within
limits, so no file can hang or exhaust the tool: at most `MAX_CONFIG_BYTES`, at most
`MAX_CONFIG_VALUES` values once anchors/aliases are expanded (aliases are allowed within that
budget; the check runs on the composed node graph, before anything is expanded), nesting at
most `MAX_CONFIG_DEPTH` deep, and no key twice in one mapping. Override values pass the same
checks. The file is merged onto the method's structured schema (registered with the method,
found by the `method` key), then dotlist overrides on top; `${...}` interpolations are resolved
once, so a saved config is what ran. OmegaConf rejects unknown keys and wrong types, and we turn
its errors into one-line `ConfigError`s that name the key and suggest the closest valid one.
Allowed values and ranges are then checked as the schema declares them (`validation.py`).
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
from lightnas_cli.files import atomic_write, write_new_file

#: Largest config file read (configs are a few hundred bytes to a few kB).
MAX_CONFIG_BYTES = 1 << 20
#: Most values (scalars, lists, mappings) a file or an override may hold, aliases expanded.
MAX_CONFIG_VALUES = 10_000
#: Deepest nesting of lists and mappings.
MAX_CONFIG_DEPTH = 32
_MERGE_TAG = "tag:yaml.org,2002:merge"
#: Keys whose explicit empty value (`run.name=~`) would silently mean "the default".
_NAMED_KEYS = ("run.name", "export.name")


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


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: `line 3, column 5: found undefined alias 'x'`."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + problem


def _expanded_size(node: yaml.Node, source: str, depth: int, sizes: dict[int, int],
                   open_nodes: set[int]) -> int:
    """How many values `node` stands for once every alias is expanded, computed on the
    composed graph (each node once), refusing duplicate keys, recursion and excess."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise ConfigError(f"{source}: an alias refers to a mapping or list that contains it "
                          f"(line {node.start_mark.line + 1}); recursive structures are not "
                          f"allowed in configs")
    if depth > MAX_CONFIG_DEPTH:
        raise ConfigError(f"{source}: nested more than {MAX_CONFIG_DEPTH} levels deep (line "
                          f"{node.start_mark.line + 1}); configs are shallow mappings")
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                if (key.tag, key.value) in seen:
                    raise ConfigError(
                        f"{source}: key {key.value!r} appears twice in one mapping (lines "
                        f"{seen[(key.tag, key.value)]} and {key.start_mark.line + 1}); YAML "
                        f"would silently keep the last one - remove one of them")
                seen[(key.tag, key.value)] = key.start_mark.line + 1
            children += [key, value]
    open_nodes.add(id(node))
    total = 1
    for child in children:
        total += _expanded_size(child, source, depth + 1, sizes, open_nodes)
        if total > MAX_CONFIG_VALUES:
            raise _too_many(source)
    open_nodes.discard(id(node))
    sizes[id(node)] = total
    return total


def _too_many(source: str) -> ConfigError:
    return ConfigError(f"{source}: holds more than {MAX_CONFIG_VALUES:,} values once its "
                       f"anchors and aliases (&name / *name) are expanded; configs are small - "
                       f"write the values out, or use fewer aliases")


class _CountingLoader(yaml.SafeLoader):
    """A safe loader that stops composing once a document has more nodes than the budget,
    so a huge list is refused before all of it is parsed (PyYAML composed about 20,000
    values a second on the 2-core development machine)."""

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.nodes = 0
        self.source = source

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.nodes += 1
        if self.nodes > MAX_CONFIG_VALUES:
            raise _too_many(self.source)
        return super().compose_node(parent, index)


def parse_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load(text)` within the limits of this module (see its docstring)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {len(text):,} characters is more than a config may hold "
                          f"({MAX_CONFIG_BYTES:,})")
    loader = _CountingLoader(text, source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, source, 0, {}, set())
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({_yaml_problem(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read; configs are shallow "
                          f"mappings") from None
    finally:
        loader.dispose()


def _read_yaml(path: Path) -> dict:
    try:
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found; pass an existing YAML "
                              f"file with -c (examples are in configs/, e.g. configs/demo.yml)")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size:,} bytes is more than a config file may hold "
                              f"({MAX_CONFIG_BYTES:,}); is this the right file?")
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read "
                          f"({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as "
                          f"UTF-8 YAML") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got "
                          f"{type(data).__name__}")
    return data


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """Dotlist overrides as a config; each value is checked like a file first."""
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value "
                              f"(e.g. train.epochs=3)")
        try:
            parsed = parse_yaml(value, f"override {key}")
        except ConfigError as exc:
            raise ConfigError(f"{exc}; quote a value that starts with YAML punctuation "
                              f"(* & ! [ {{ ' \"), e.g. {key}='*'") from None
        if key.strip() in _NAMED_KEYS and (parsed is None or parsed == ""):
            raise ConfigError(f"override {item!r} gives no name; write one (ASCII letters, "
                              f"digits, '.', '_', '-') or leave {key.strip()} out to get the "
                              f"default")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except yaml.YAMLError as exc:
        raise ConfigError(f"overrides: not valid YAML ({_yaml_problem(exc)})") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"overrides: {str(exc).splitlines()[0]}") from None


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
    override_cfg = _parse_overrides(overrides)
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
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        raise ConfigError(f"{source}: cannot resolve the interpolation in '{key}' "
                          f"({str(exc).splitlines()[0]}); write the value itself, or a "
                          f"${{section.key}} that exists") from None
    validate(cfg, source)
    OmegaConf.set_readonly(cfg, False)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def save_config(cfg: DictConfig, path: Path) -> None:
    """Write atomically (a temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, to_yaml(cfg))


def save_new_config(cfg: DictConfig, path: Path) -> Path:
    """Write to `path`, or `stem-2.yml`, `stem-3.yml`... if taken: never overwrites (an
    autosaved config of another run may share the name). Returns the path written."""
    return write_new_file(path, to_yaml(cfg))
