"""How the zoo's `enas_unit` choices become architecture decisions, and back.

The zoo (`bmxnet_models.enas.unit`) only builds networks: supernets of `EnasUnit`s, or plain
networks under `fixed_choices`. This module names the units, colours their choices for graphs,
and converts MeliusNet custom strings into `Architecture` records the ENAS method accepts.
"""
from __future__ import annotations

from typing import Sequence

from mxnet import gluon

import bmxnet_models
from bmxnet_models.enas.meliusnet import (CHOICE, custom_string_from_values, size_of,
                                          values_from_custom_string)
from bmxnet_models.enas.unit import EnasUnit, find_units
from lightnas_cli.search.base import Architecture, Decision

METHOD = "enas"

# How graphs colour a decision, by (choice name, value).
_KINDS = {("bits", 1): "binary", ("bits", 32): "float",
          ("replace_by_skip_connection", True): "skip",
          ("replace_by_skip_connection", False): "keep"}


def decision_kind(choice: str, value) -> str:
    return _KINDS.get((choice, value), "other")


def unit_paths(net: gluon.Block) -> dict[int, str]:
    """Stable, human-readable names of the units: their path of child names ("stages.1.0")."""
    paths: dict[int, str] = {}

    def walk(block: gluon.Block, path: str) -> None:
        if isinstance(block, EnasUnit):
            paths[id(block)] = path or block.name
            return
        for key, child in block._children.items():
            walk(child, f"{path}.{key}" if path else str(key))

    walk(net, "")
    return paths


def is_meliusnet(base_model: str) -> bool:
    return base_model.startswith("meliusnet")


def architecture_to_custom_string(architecture: Architecture) -> str:
    """The ``meliusnetNN_custom:...`` string of a derived MeliusNet ENAS `Architecture`."""
    return custom_string_from_values(size_of(architecture.base_model), architecture.values())


def architecture_from_custom_string(name: str, classes: int, input_shape: Sequence[int],
                                    model_options: dict | None = None) -> Architecture:
    """An ENAS `Architecture` of ``meliusnetNN`` with the decisions a custom string encodes.

    Decision names are the supernet's unit paths, as `EnasSearch.derive` writes them, so
    `EnasSearch.build` (or ``fixed_choices``) accepts the record.
    """
    size, values = values_from_custom_string(name)
    # Constructor options as EnasSearch records them: no classes/enas (given separately).
    options = {k: v for k, v in (model_options or {}).items() if k not in ("classes", "enas")}
    options.setdefault("in_channels", int(input_shape[0]))
    supernet = bmxnet_models.get_model(f"meliusnet{size}", classes=int(classes), enas=True,
                                       **options)
    units = find_units(supernet)
    paths = unit_paths(supernet)
    decisions = []
    for unit, unit_values in zip(units, values):
        value = unit_values[CHOICE]
        decisions.append(Decision(name=paths[id(unit)], choice=CHOICE, value=value,
                                  options=list(unit.choices[CHOICE]),
                                  kind=decision_kind(CHOICE, value)))
    return Architecture(method=METHOD, base_model=f"meliusnet{size}", model_options=options,
                        input_shape=[int(v) for v in input_shape], classes=int(classes),
                        decisions=decisions)
