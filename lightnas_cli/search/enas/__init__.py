"""ENAS (Pham et al. 2018): an LSTM controller trained by REINFORCE samples paths through a
supernet of the zoo's `enas_unit` blocks (ResNet-E: 1 or 32 bits per block; MeliusNet: keep or
skip each dense/improvement block). Registers the `enas` method; its implementation
(`method.py`) is imported only when a run needs it."""
from lightnas_cli.search.base import register_method
from lightnas_cli.search.enas.config import EnasSearchConfig

register_method("enas", schema=EnasSearchConfig,
                implementation="lightnas_cli.search.enas.method:EnasSearch")
