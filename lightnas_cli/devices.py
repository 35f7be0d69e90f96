"""Device contexts from config strings (`cpu`, `cpu:1`, `gpu:0`)."""
from __future__ import annotations

import mxnet as mx

from lightnas_cli.errors import ConfigError


def parse_contexts(names: list[str]) -> list[mx.Context]:
    """`[cpu]`, `[cpu:0, cpu:1]`, `[gpu:0, gpu:1]` -> MXNet contexts, with a clear error."""
    contexts = []
    for name in names:
        kind, _, index = str(name).strip().lower().partition(":")
        if kind not in ("cpu", "gpu") or (index and not index.isdigit()):
            raise ConfigError(f"train.contexts: {name!r} is not a device; use cpu, cpu:N or "
                              f"gpu:N")
        number = int(index or 0)
        if kind == "gpu" and number >= mx.context.num_gpus():
            raise ConfigError(f"train.contexts: {name!r} requested but this machine has "
                              f"{mx.context.num_gpus()} GPU(s) visible to MXNet; use [cpu]")
        contexts.append(mx.gpu(number) if kind == "gpu" else mx.cpu(number))
    if len(set(contexts)) != len(contexts):
        raise ConfigError(f"train.contexts lists a device twice: {names}")
    return contexts
