"""ENAS variants of the zoo's blocks: searchable units declared with `enas_unit`.

Each module exposes the decorated block factories of one family; the block classes themselves
live beside their plain networks (one implementation per block). `meliusnet` also converts
derived MeliusNet architectures to custom strings and back.
"""
