"""`enas_unit`: declare a searchable block whose constructor takes categorical choices.

This is zoo machinery (it builds networks), so it lives in `bmxnet_models` and imports nothing
of the search package; `lightnas_cli.search.enas` turns the units' choices into architecture
records. Choices are given as `autogluon.common.space.Categorical` (seed 000) or as a plain
list/tuple; the zoo uses tuples so that importing it does not import autogluon.

Usage (seed 000)::

    @enas_unit(bits=Categorical(1, 32), share_parameters=True)
    class BasicBlockEnas(HybridBlock):
        def __init__(self, channels, stride, bits=1, **kwargs): ...

Calling the decorated class without the choice keywords returns an `EnasUnit`: a block that
holds one candidate per combination of choices and runs the active one. Calling it with every
choice keyword given (``BasicBlockEnas(64, 1, bits=32)``) returns the plain block, so models
can be built as a supernet or as a fixed network from the same constructor code.

Within ``fixed_choices(values)`` every unit constructed consumes the next dict of values and
is built as a plain block: this is how a derived architecture becomes a plain network with no
search machinery left in it (`build`).

With ``share_parameters=True`` all candidates share one set of parameters (ResNet-E: the
full-precision weights are always trained and binarized when 1 bit is chosen); otherwise each
candidate has its own (MeliusNet: a dense block or its 1x1 replacement).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from typing import Any, Iterator, Sequence

from mxnet import gluon

from lightnas_cli.errors import ArchitectureError

_fixed = threading.local()


@contextlib.contextmanager
def fixed_choices(values: Sequence[dict]) -> Iterator[None]:
    """Build every `enas_unit` created inside as a plain block with the next dict of values.

    Raises `ArchitectureError` if the model consumes a different number of units than given.
    """
    queue = list(values)
    previous = getattr(_fixed, "queue", None)
    _fixed.queue = queue
    try:
        yield
        if queue:
            raise ArchitectureError(
                f"the architecture has {len(values)} decisions but the model only has "
                f"{len(values) - len(queue)} searchable units; check that it was derived from "
                f"the same base model and model options")
    finally:
        _fixed.queue = previous


def _next_fixed(unit_name: str) -> dict | None:
    queue = getattr(_fixed, "queue", None)
    if queue is None:
        return None
    if not queue:
        raise ArchitectureError(
            f"the model has more searchable units than the architecture has decisions (ran out "
            f"at {unit_name}); check that it was derived from the same base model and options")
    return queue.pop(0)


class EnasUnit(gluon.HybridBlock):
    """A searchable block: one candidate per combination of choices, one of them active.

    It is never hybridized as a whole (the active candidate changes between steps); its
    candidates are, see `hybridize_supernet`.
    """

    def __init__(self, block_class: type, args: tuple, kwargs: dict, choices: dict[str, list],
                 share_parameters: bool, prefix: str | None = None):
        super().__init__(prefix=prefix)
        self.block_class = block_class
        self.choices = choices
        self.share_parameters = share_parameters
        self.combinations = list(itertools.product(*choices.values()))
        self._candidates: list[gluon.HybridBlock] = []
        with self.name_scope():
            shared = None
            for index, combo in enumerate(self.combinations):
                values = dict(zip(choices, combo))
                if share_parameters:
                    extra = {"prefix": "shared_"}
                    if shared is not None:
                        extra["params"] = shared
                else:
                    extra = {"prefix": f"choice{index}_"}
                candidate = block_class(*args, **kwargs, **values, **extra)
                if share_parameters and shared is None:
                    shared = candidate.collect_params()
                self.register_child(candidate, f"choice{index}")
                self._candidates.append(candidate)
        self._active = 0

    @property
    def candidates(self) -> list[gluon.HybridBlock]:
        return list(self._candidates)

    @property
    def active_candidate(self) -> gluon.HybridBlock:
        return self._candidates[self._active]

    @property
    def active_values(self) -> dict:
        return dict(zip(self.choices, self.combinations[self._active]))

    def select(self, values: dict) -> None:
        """Make the candidate with these choice values the active one."""
        unknown = set(values) - set(self.choices)
        if unknown:
            raise ArchitectureError(f"{self.name}: unknown choice(s) {sorted(unknown)}; "
                                    f"this unit has {list(self.choices)}")
        try:
            combo = tuple(values[key] for key in self.choices)
            self._active = self.combinations.index(combo)
        except (KeyError, ValueError):
            raise ArchitectureError(
                f"{self.name}: {values} is not a valid choice; options are "
                f"{ {k: list(v) for k, v in self.choices.items()} }") from None

    def forward(self, *args: Any) -> Any:  # dispatch, not a graph of its own
        return self._candidates[self._active](*args)

    def hybrid_forward(self, F, *args, **kwargs):  # pragma: no cover - forward is overridden
        raise RuntimeError("EnasUnit dispatches in forward()")


def _choice_values(key: str, space: Any) -> list:
    """The options of one choice: a Categorical's `.data` (duck-typed) or a list/tuple."""
    values = getattr(space, "data", space)
    if not isinstance(values, (list, tuple)) or not values:
        raise TypeError(f"enas_unit choice {key!r} must be a Categorical or a non-empty "
                        f"list/tuple of options, got {space!r}")
    return list(values)


def enas_unit(share_parameters: bool = False, **choices: Any):
    """Class decorator that makes a HybridBlock searchable over the given categorical choices.

    Each choice is an `autogluon.common.space.Categorical` or a list/tuple of options. The
    decorated class must accept each choice name as a keyword argument and pass
    ``prefix``/``params`` through to `HybridBlock.__init__`.
    """
    options = {key: _choice_values(key, space) for key, space in choices.items()}

    def decorate(block_class: type):
        @functools.wraps(block_class, updated=())
        def factory(*args, **kwargs):
            given = {key: kwargs.pop(key) for key in options if key in kwargs}
            if len(given) == len(options):
                return block_class(*args, **kwargs, **given)
            fixed = _next_fixed(block_class.__name__)
            if fixed is not None:
                missing = set(options) - set(fixed) - set(given)
                if missing or set(fixed) - set(options):
                    raise ArchitectureError(
                        f"{block_class.__name__}: decision values {fixed} do not match the "
                        f"unit's choices {list(options)}")
                for key, value in fixed.items():
                    if value not in options[key]:
                        raise ArchitectureError(
                            f"{block_class.__name__}: {key}={value!r} is not one of "
                            f"{options[key]}")
                return block_class(*args, **kwargs, **{**fixed, **given})
            unit_choices = {k: v for k, v in options.items() if k not in given}
            return EnasUnit(functools.partial(block_class, **given), args, kwargs,
                            unit_choices, share_parameters)

        factory.enas_choices = options
        factory.share_parameters = share_parameters
        factory.block_class = block_class
        return factory

    return decorate


def find_units(net: gluon.Block) -> list[EnasUnit]:
    """All EnasUnits of a network in construction order (depth first)."""
    found: list[EnasUnit] = []

    def walk(block: gluon.Block) -> None:
        if isinstance(block, EnasUnit):
            found.append(block)
            return
        for child in block._children.values():
            walk(child)

    walk(net)
    return found


def contains_unit(block: gluon.Block) -> bool:
    return bool(find_units(block))


def hybridize_supernet(net: gluon.Block, **kwargs: Any) -> None:
    """Hybridize every sub-block that contains no EnasUnit, and every unit's candidates.

    The supernet's top level stays imperative so the active candidate can change per step;
    everything below runs as cached graphs, which keeps the supernet's step time close to
    that of the plain network (see benchmarks/enas_overhead.py).
    """
    if isinstance(net, EnasUnit):
        for candidate in net.candidates:
            candidate.hybridize(**kwargs)
        return
    if not contains_unit(net):
        if isinstance(net, gluon.HybridBlock):
            net.hybridize(**kwargs)
        return
    for child in net._children.values():
        hybridize_supernet(child, **kwargs)


def active_parameters(net: gluon.Block) -> list[gluon.Parameter]:
    """Parameters the active architecture uses, in a stable order.

    The same walk over a plain network built with `fixed_choices` gives the matching list, so
    weights are copied from the supernet to the derived network position by position.
    """
    result: list[gluon.Parameter] = []
    seen: set[int] = set()

    def walk(block: gluon.Block) -> None:
        if isinstance(block, EnasUnit):
            walk(block.active_candidate)
            return
        for param in block._reg_params.values():
            if id(param) not in seen:
                seen.add(id(param))
                result.append(param)
        for param in block.params.values():
            if id(param) not in seen:
                seen.add(id(param))
                result.append(param)
        for child in block._children.values():
            walk(child)

    walk(net)
    return result
