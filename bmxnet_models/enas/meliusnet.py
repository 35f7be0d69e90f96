"""ENAS view of MeliusNet, and conversion between per-unit choice values and custom strings.

The blocks are implemented once, in `bmxnet_models.meliusnet`: `DenseBlockEnas` (skipped: a
binary 1x1 convolution, still adding the growth channels) and `ImprovementBlockEnas` (skipped:
the identity), each ``@enas_unit(replace_by_skip_connection=(True, False))`` with
separate parameters per candidate (seed 000). A supernet is ``meliusnet22(enas=True, ...)``:
one unit per dense and per improvement block, so MeliusNet-22 (4 + 5 + 4 + 4 blocks) has 34
decisions.

Per-unit choice values of ``meliusnetNN`` (as a derived architecture lists them) convert to
the string of ``meliusnetNN_custom`` (seed 000): ``D`` for a kept dense block, ``S`` for a
skipped one, ``I`` for a kept improvement block, nothing for a skipped one (the identity),
``T`` between stages. Built from that string, the network has the derived network's layers and
parameter count; and the string converts back into the same values. Turning values into
architecture records is the search package's job (`lightnas_cli.search.enas.space`).
"""
from __future__ import annotations

import re
from typing import Sequence

from bmxnet_models.meliusnet import (MELIUSNET_SPEC, DenseBlock, DenseBlockEnas, ImprovementBlock,
                                     ImprovementBlockEnas, meliusnet22, meliusnet29, meliusnet42,
                                     meliusnet59, parse_custom_string)
from lightnas_cli.errors import ArchitectureError

__all__ = ["DenseBlockEnas", "ImprovementBlockEnas", "DenseBlock", "ImprovementBlock",
           "meliusnet22", "meliusnet29", "meliusnet42", "meliusnet59", "CHOICE",
           "custom_string_from_values", "values_from_custom_string", "size_of"]

#: The one choice of every MeliusNet unit.
CHOICE = "replace_by_skip_connection"
_BASE = re.compile(r"^meliusnet(\d+)$")
_CUSTOM = re.compile(r"^meliusnet(\d+)_custom:(.*)$", re.S)


def size_of(base_model: str) -> int:
    match = _BASE.match(base_model)
    if not match or int(match.group(1)) not in MELIUSNET_SPEC:
        raise ArchitectureError(f"{base_model!r} is not a MeliusNet ENAS base model; custom "
                                f"strings exist for meliusnet{'/'.join(map(str, MELIUSNET_SPEC))}")
    return int(match.group(1))


def custom_string_from_values(size: int, values: Sequence[dict]) -> str:
    """``meliusnetNN_custom:...`` for the per-unit choice values of a MeliusNet-NN supernet.

    ``values`` alternate dense and improvement units in network order (as `fixed_choices` and
    `Architecture.values` give them).
    """
    blocks, _ = MELIUSNET_SPEC[size]
    expected = 2 * sum(blocks)
    if len(values) != expected:
        raise ArchitectureError(f"MeliusNet-{size} has {expected} searchable units (a dense and "
                                f"an improvement block per block), got {len(values)} values")
    stages, position = [], 0
    for count in blocks:
        letters = []
        for _ in range(count):
            dense, improvement = values[position], values[position + 1]
            position += 2
            for unit in (dense, improvement):
                if set(unit) != {CHOICE} or not isinstance(unit[CHOICE], bool):
                    raise ArchitectureError(f"a MeliusNet unit's values must be "
                                            f"{{'{CHOICE}': True|False}}, got {unit}")
            letters.append("S" if dense[CHOICE] else "D")
            if not improvement[CHOICE]:
                letters.append("I")
        stages.append("".join(letters))
    return f"meliusnet{size}_custom:" + "T".join(stages)


def values_from_custom_string(name: str) -> tuple[int, list[dict]]:
    """(size, per-unit values) of a ``meliusnetNN_custom:...`` string an NN supernet can express.

    Each stage must hold as many dense blocks (``D``/``S``) as MeliusNet-NN's stage, each
    followed by at most one ``I``; anything else names the offending position.
    """
    match = _CUSTOM.match(name)
    if not match or int(match.group(1)) not in MELIUSNET_SPEC:
        raise ArchitectureError(f"{name!r} is not a sized custom MeliusNet string "
                                f"(meliusnet22_custom:..., 29, 42 or 59); a "
                                f"meliusnet_custom:... string has no ENAS search space")
    size, text = int(match.group(1)), match.group(2)
    blocks, _ = MELIUSNET_SPEC[size]
    stages = parse_custom_string(text, len(blocks) - 1, f"meliusnet{size}_custom")
    values: list[dict] = []
    offset = 0
    for stage_index, (tokens, count) in enumerate(zip(stages, blocks)):
        dense_seen = 0
        for index, letter in enumerate(tokens):
            where = f"position {offset + index + 1}"
            if letter in "DS":
                dense_seen += 1
                values.append({CHOICE: letter == "S"})
                values.append({CHOICE: True})  # the improvement unit, skipped unless "I" follows
            elif index == 0 or tokens[index - 1] not in "DS":
                raise ArchitectureError(f"{name}: 'I' at {where} does not follow a dense block; "
                                        f"MeliusNet-{size} has at most one improvement block "
                                        f"after each dense block")
            else:
                values[-1] = {CHOICE: False}
        if dense_seen != count:
            raise ArchitectureError(f"{name}: stage {stage_index + 1} has {dense_seen} dense "
                                    f"blocks (D or S) but MeliusNet-{size} has {count} there")
        offset += len(tokens) + 1
    return size, values
