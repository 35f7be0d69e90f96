"""ENAS: the LSTM controller and the REINFORCE search method over the zoo's `enas_unit` spaces."""
from lightnas_cli.search.enas.method import EnasSearch

__all__ = ["EnasSearch"]
