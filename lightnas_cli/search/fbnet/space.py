"""A config's FBNet space: the zoo constructor options, every searchable layer's shapes, and the
`LatencySpace` that `lightnas latency build|check` times (from the config and data spec alone,
so a table can be built before any search)."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import mxnet as mx
from mxnet import gluon, nd
from omegaconf import OmegaConf

import bmxnet_models
from bmxnet_models.fbnet import layer_specs
from lightnas_cli.costs.latency_table import LatencySpace, SpaceLayer
from lightnas_cli.errors import ConfigError
from lightnas_cli.search.fbnet.config import FBNET_ONLY, FBNET_SE_ONLY

#: Zoo options that do not change what a network computes per sample, nor its latency.
UNTIMED_OPTIONS = ("margin", "scale")


def zoo_options(config: Any, input_shape: Sequence[int], classes: int) -> dict:
    """The zoo constructor options of the config's networks (every model.* key that applies to
    the space, `model.options`, and in_channels / classes from the data)."""
    section = OmegaConf.to_container(config.model, resolve=True)
    extra = section.pop("options", None) or {}
    name = section.pop("name")
    for key in (FBNET_ONLY if name == "fbnet_se" else FBNET_SE_ONLY):
        section.pop(key, None)
    clash = sorted(set(extra) & (set(section) | {"in_channels", "classes", "choices"}))
    if clash:
        raise ConfigError(f"model.options repeats {clash}: set them as model.<key> (in_channels "
                          f"and classes come from the data, choices from the search)")
    section.update(extra)
    section["in_channels"] = int(input_shape[0])
    section["classes"] = int(classes)
    if len(input_shape) != 3:
        raise ConfigError(f"FBNet spaces take images (channels, height, width); the data has "
                          f"shape {list(input_shape)}")
    return section


def signature(name: str, options: dict, input_shape: Sequence[int]) -> dict:
    """What identifies a space for a latency table: model, structural options, input shape."""
    timed = {k: v for k, v in sorted(options.items()) if k not in UNTIMED_OPTIONS}
    return {"model": name, "options": timed, "input_shape": [int(v) for v in input_shape]}


def default_table_path(sig: dict) -> str:
    digest = hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:8]
    shape = "x".join(str(v) for v in sig["input_shape"])
    return f"latency_tables/{sig['model']}_{shape}_{digest}.json"


def table_path(config: Any, sig: dict) -> str:
    return config.fbnet.latency_table or default_table_path(sig)


class _TailAndHead(gluon.HybridBlock):
    """The fixed end of a network, timed as one part."""

    def __init__(self, tail: gluon.HybridBlock, head: gluon.HybridBlock, **kwargs: Any):
        super().__init__(**kwargs)
        with self.name_scope():
            self.tail, self.head = tail, head

    def hybrid_forward(self, F, x):
        return self.head(self.tail(x))


def specs_of(name: str, options: dict) -> list:
    """The searchable layers of the space the options describe (no network is built)."""
    return layer_specs(name, float(options.get("width_multiplier", 1.0)),
                       int(options.get("channel_divisor", 8)))


def plain_network(name: str, options: dict, choices: Sequence[str] | None = None,
                  prefix: str | None = None) -> gluon.HybridBlock:
    """An initialised network of the space (the first candidate everywhere by default)."""
    if choices is None:
        choices = [spec.candidates[0] for spec in specs_of(name, options)]
    net = bmxnet_models.get_model(name, choices=list(choices),
                                  prefix=f"{name}_" if prefix is None else prefix, **options)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    return net


def layer_shapes(name: str, options: dict, input_shape: Sequence[int]) -> dict:
    """Per-sample input/output shapes of the stem, every searchable layer and the tail+head,
    from one batch-1 pass through a plain network of the space (shapes do not depend on the
    chosen candidates)."""
    net = plain_network(name, options)
    seen: dict[str, tuple] = {}
    handles = []

    def record(key: str):
        def hook(block, inputs, output):
            seen[key] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))
        return hook

    handles.append(net.stem.register_forward_hook(record("stem")))
    for spec, layer in zip(net.specs, net.layers):
        handles.append(layer.register_forward_hook(record(spec.name)))
    try:
        out = net(nd.zeros((1, *input_shape)))
    finally:
        for handle in handles:
            handle.detach()
    seen["tail"] = (seen[net.specs[-1].name][1], tuple(out.shape[1:]))
    return seen


def latency_space(config: Any, spec: Any) -> LatencySpace:
    """The `LatencySpace` of a config: stem, tail (+ head) and every (layer, candidate)."""
    name = config.model.name
    input_shape = [int(v) for v in spec.shape]
    options = zoo_options(config, input_shape, int(spec.classes))
    shapes = layer_shapes(name, options, input_shape)
    specs = specs_of(name, options)
    layers = [SpaceLayer(s.name, *shapes[s.name], candidates=tuple(s.candidates)) for s in specs]
    fixed = [SpaceLayer("stem", *shapes["stem"]), SpaceLayer("tail", *shapes["tail"])]
    by_name = {s.name: s for s in specs}

    def make_block(layer: str, candidate: str) -> gluon.HybridBlock:
        if layer in ("stem", "tail"):
            net = plain_network(name, options)
            return net.stem if layer == "stem" else _TailAndHead(net.tail, net.head,
                                                                  prefix="timed_")
        block = template().chosen_layer(by_name[layer].index, candidate)
        block.initialize(mx.init.Xavier(), ctx=mx.cpu())
        return block

    built: list[gluon.HybridBlock] = []

    def template() -> gluon.HybridBlock:
        # One network of the space builds single layers (it holds the construction options).
        if not built:
            built.append(bmxnet_models.get_model(name, choices=[s.candidates[0] for s in specs],
                                                 **options))
        return built[0]

    def make_network(choices: Sequence[str]) -> gluon.HybridBlock:
        return plain_network(name, options, choices)

    sig = signature(name, options, input_shape)
    return LatencySpace(signature=sig, layers=layers, fixed=fixed, make_block=make_block,
                        make_network=make_network, default_table=table_path(config, sig))
