"""Model zoo: binary networks built from stock MXNet operators, looked up by name.

Like GluonCV's model zoo, every family lives in one module with one constructor per size, and
`get_model(name, **kwargs)` builds any registered model. Families register their constructors
at the bottom of this file.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from mxnet import gluon

from lightnas_cli.errors import ConfigError

ModelFactory = Callable[..., gluon.HybridBlock]

_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator (or ``register_model(name)(factory)``) adding a constructor to the registry."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        existing = _MODELS.get(name)
        if existing is not None and existing is not factory:
            raise ValueError(f"model name {name!r} is already registered to {existing!r}")
        _MODELS[name] = factory
        return factory

    return decorate


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def get_model_factory(name: str) -> ModelFactory:
    """The constructor registered as ``name``; unknown names raise `ConfigError`."""
    try:
        return _MODELS[name]
    except KeyError:
        pass
    close = difflib.get_close_matches(str(name), available_models(), n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"unknown model {name!r}.{hint} Available models: "
                      f"{', '.join(available_models())}")


def get_model(name: str, **kwargs: Any) -> gluon.HybridBlock:
    """Build the model registered as ``name`` with the given constructor options.

    Unknown names and unknown options raise `ConfigError` (a config typo, not a bug).
    """
    factory = get_model_factory(name)
    signature = inspect.signature(factory)
    accepted = [p.name for p in signature.parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
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

__all__ = ["get_model", "get_model_factory", "register_model", "available_models"]
