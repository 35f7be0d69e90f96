"""Configs: structured schemas (schema.py) and the loader (loader.py)."""
from lightnas_cli.config.loader import load_config, save_config, to_yaml
from lightnas_cli.config.schema import SCHEMAS, BaseConfig

__all__ = ["load_config", "save_config", "to_yaml", "SCHEMAS", "BaseConfig"]
