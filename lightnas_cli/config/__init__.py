"""Configs: the shared schema sections (schema.py), validation of declared allowed values
(validation.py) and the loader (loader.py). Each method's own sections live in its folder."""
from lightnas_cli.config.loader import (load_config, read_config_file, save_config,
                                       save_new_config, to_yaml)
from lightnas_cli.config.schema import BaseConfig, setting

__all__ = ["load_config", "read_config_file", "save_config", "save_new_config", "to_yaml",
           "BaseConfig", "setting"]
