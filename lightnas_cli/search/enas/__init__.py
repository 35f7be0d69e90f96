"""ENAS: `enas_unit` search spaces, the LSTM controller and the REINFORCE search method."""
from lightnas_cli.search.enas.method import EnasSearch
from lightnas_cli.search.enas.unit import enas_unit, fixed_choices

__all__ = ["EnasSearch", "enas_unit", "fixed_choices"]
