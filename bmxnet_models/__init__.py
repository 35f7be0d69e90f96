"""Model zoo: binary networks built from stock MXNet operators, looked up by name.

Like GluonCV's model zoo, every family lives in one module with one constructor per size, and
`get_model(name, **kwargs)` builds any registered model. Families register their constructors
at the bottom of this file.

Parametric families take their argument after a colon: ``meliusnet_custom:DTSI`` calls the
family constructor registered as ``meliusnet_custom`` with ``"DTSI"`` (`register_family`).
"""
from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any, Callable

from mxnet import gluon

from lightnas_cli.errors import ConfigError

ModelFactory = Callable[..., gluon.HybridBlock]

_MODELS: dict[str, ModelFactory] = {}
#: Parametric families: prefix -> (constructor taking the text after the colon, what it means).
_FAMILIES: dict[str, tuple[Callable[..., gluon.HybridBlock], str]] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator (or ``register_model(name)(factory)``) adding a constructor to the registry."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        existing = _MODELS.get(name)
        if existing is not None and existing is not factory:
            raise ValueError(f"model name {name!r} is already registered to {existing!r}")
        _MODELS[name] = factory
        return factory

    return decorate


def register_family(prefix: str, factory: Callable[..., gluon.HybridBlock],
                    argument: str) -> None:
    """Register a parametric family: ``prefix:ARG`` builds ``factory(ARG, **kwargs)``.

    ``argument`` names what ARG is (shown in `available_models`, e.g. "<DIST string>").
    """
    if prefix in _FAMILIES or prefix in _MODELS:
        raise ValueError(f"model family {prefix!r} is already registered")
    _FAMILIES[prefix] = (factory, argument)


def available_models() -> list[str]:
    """Registered model names and families (``prefix:<argument>``), sorted."""
    return sorted(list(_MODELS) + [f"{p}:{arg}" for p, (_, arg) in _FAMILIES.items()])


def get_model_factory(name: str) -> ModelFactory:
    """The constructor registered as ``name``; unknown names raise `ConfigError`.

    For a family name ``prefix:ARG`` it is the family constructor with ARG bound.
    """
    if name in _MODELS:
        return _MODELS[name]
    prefix, colon, argument = str(name).partition(":")
    if colon and prefix in _FAMILIES:
        factory, _ = _FAMILIES[prefix]
        return functools.partial(factory, argument)
    if colon:
        close = difflib.get_close_matches(prefix, list(_FAMILIES), n=1)
        hint = f" Did you mean {close[0] + ':' + argument!r}?" if close else ""
        raise ConfigError(f"unknown model family {prefix!r} in {name!r}.{hint} Families: "
                          f"{', '.join(f'{p}:{a}' for p, (_, a) in sorted(_FAMILIES.items()))}")
    close = difflib.get_close_matches(str(name), available_models(), n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"unknown model {name!r}.{hint} Available models: "
                      f"{', '.join(available_models())}")


def model_options(name: str) -> list[str]:
    """Names of the constructor options a model accepts (e.g. classes, stem, in_channels)."""
    factory = get_model_factory(name)
    signature = inspect.signature(factory)  # a family's partial: its bound argument is gone
    bound = set(factory.keywords) if isinstance(factory, functools.partial) else set()
    return [p.name for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in bound]


def get_model(name: str, **kwargs: Any) -> gluon.HybridBlock:
    """Build the model registered as ``name`` with the given constructor options.

    Unknown names and unknown options raise `ConfigError` (a config typo, not a bug).
    """
    factory = get_model_factory(name)
    accepted = model_options(name)
    takes_any = any(p.kind is p.VAR_KEYWORD
                    for p in inspect.signature(factory).parameters.values())
    # Extra keywords of a **kwargs constructor go to gluon's Block (prefix, params) only.
    allowed = set(accepted) | ({"prefix", "params"} if takes_any else set())
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ConfigError(f"model {name!r} has no option(s) {', '.join(unknown)}; its options "
                          f"are: {', '.join(accepted)}")
    return factory(**kwargs)


from bmxnet_models import resnet_e as _resnet_e  # noqa: E402  (registry must exist first)

register_model("resnet_e18")(_resnet_e.resnet_e18)
register_model("resnet_e34")(_resnet_e.resnet_e34)
from bmxnet_models import resnet as _resnet  # noqa: E402

for _depth in sorted(_resnet.RESNET_SPEC):
    for _version in _resnet.VERSIONS:
        register_model(f"resnet{_depth}_v{_version}")(
            getattr(_resnet, f"resnet{_depth}_v{_version}"))
from bmxnet_models import meliusnet as _meliusnet  # noqa: E402

for _size in sorted(_meliusnet.MELIUSNET_SPEC):
    register_model(f"meliusnet{_size}")(getattr(_meliusnet, f"meliusnet{_size}"))
    register_family(f"meliusnet{_size}_custom",
                    functools.partial(_meliusnet.meliusnet_sized_custom, _size),
                    "<DIST string with 3 T>")
register_family("meliusnet_custom", _meliusnet.meliusnet_custom, "<DIST string>")
from bmxnet_models import tinyml as _tinyml  # noqa: E402,F401  (MLPerf Tiny nets register themselves)
from bmxnet_models import lenet as _lenet  # noqa: E402,F401  (lenet, plain_stack register themselves)
from bmxnet_models import fbnet as _fbnet  # noqa: E402

register_model("fbnet")(_fbnet.FBNet)
register_model("fbnet_se")(_fbnet.FBNetSE)

__all__ = ["get_model", "get_model_factory", "model_options", "register_model",
           "register_family", "available_models"]
