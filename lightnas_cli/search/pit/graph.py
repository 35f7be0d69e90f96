"""Model conversion: trace a Gluon network's symbol graph and make it PIT-searchable.

PLiNIO `methods/pit/graph.py` traces PyTorch models with torch.fx; here the network is called on
`mx.sym.var("data")` and its JSON graph is read. From the graph:

- layer order, and which Gluon block each Convolution / FullyConnected / BatchNorm node belongs
  to (found through the parameter variables the node reads);
- "components": tensors whose channels must be pruned together. An element-wise op (ReLU,
  pooling, add, ...) keeps the channels of its inputs, so an add joins the components of its
  operands (residuals share one α); a convolution, a dense layer, a concatenation or a flatten
  starts a new component. Depthwise convolutions and batch norms keep their input's channels;
- which components must never be pruned (frozen): the network input, the network outputs,
  components touched by an op PIT cannot see through (e.g. a sigmoid: f(0) != 0, so a pruned
  channel would not stay zero), or by layers the user excluded;
- the features calculator of every layer's input (constant, a masker, a concatenation, a
  flatten), and the output shapes the MAC counts need.

Then Conv1D / Conv2D / Dense / BatchNorm blocks are replaced in place by PIT layers
(`autoconvert_layers=True`), honouring `exclude_names` / `exclude_types`; PIT layers already in
the network are kept and wired like converted ones.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.gluon import nn

from lightnas_cli.search.pit.batchnorm import PITBatchNorm
from lightnas_cli.search.pit.conv import PITConvBase
from lightnas_cli.search.pit.conv1d import PITConv1D
from lightnas_cli.search.pit.conv2d import PITConv2D
from lightnas_cli.search.pit.dense import PITDense
from lightnas_cli.search.pit.features_calculator import (ConcatFeaturesCalculator,
                                                         ConstFeaturesCalculator,
                                                         FeaturesCalculator,
                                                         FlattenFeaturesCalculator,
                                                         MaskerFeaturesCalculator)
from lightnas_cli.search.pit.features_masker import PITFeaturesMasker
from lightnas_cli.search.pit.module import PITLayer

#: Plain Gluon layers PIT can convert, and their PIT versions.
PIT_LAYER_MAP: dict[type, type] = {nn.Conv1D: PITConv1D, nn.Conv2D: PITConv2D,
                                   nn.Dense: PITDense, nn.BatchNorm: PITBatchNorm}
PLAIN_WEIGHT_LAYERS = (nn.Conv1D, nn.Conv2D, nn.Dense)

# Ops that keep the channel axis and map zeros to zeros, so a pruned (all-zero) channel stays
# zero through them and can be removed without changing the function.
_UNARY_OPS = {"relu", "tanh", "LeakyReLU", "Dropout", "Pooling", "_copy", "identity",
              "BlockGrad", "stop_gradient", "_mul_scalar", "_div_scalar", "negative", "abs",
              "square", "sqrt", "softsign", "_contrib_BatchNormWithReLU"}
_ZERO_PRESERVING_ACTIVATIONS = {"relu", "tanh", "softsign"}
_ADD_OPS = {"elemwise_add", "broadcast_add", "_plus", "_Plus", "_add", "elemwise_sub",
            "broadcast_sub", "_minus", "_Minus", "_sub", "add_n", "ElementWiseSum",
            "broadcast_maximum", "broadcast_minimum", "_maximum", "_minimum", "_Maximum",
            "_Minimum"}
_MUL_OPS = {"elemwise_mul", "broadcast_mul", "_mul", "_Mul"}


@dataclass
class Node:
    """One op of the traced graph that lies on the data path."""

    index: int
    op: str
    name: str
    attrs: dict
    inputs: list[int]
    shape: tuple[int, ...]
    kind: str = "opaque"
    block: gluon.Block | None = None
    path: str | None = None
    consumers: list[int] = field(default_factory=list)


@dataclass
class LayerEntry:
    """A weight layer of the converted network, in graph order.

    `role` is "pit" (a PIT layer), "fixed" (a plain Conv/Dense left as it is, whose input may
    still shrink) or "opaque" (any other block with weights: counted at its full cost). A block
    called more than once (shared weights) is one opaque entry whose `calls` lists the output
    shape of every call, so its weights are counted once and its operations at every call.
    """

    path: str
    block: gluon.Block
    role: str
    output_shape: tuple[int, ...]
    input_calculator: FeaturesCalculator | None = None
    calls: list[tuple[int, ...]] = field(default_factory=list)


@dataclass
class ConvertedGraph:
    """What conversion learnt about the network (kept by `PITModel`)."""

    layers: list[LayerEntry]
    batchnorms: list[tuple[str, PITBatchNorm]]
    maskers: list[PITFeaturesMasker]
    paths: dict[int, str]
    # Ranks of the tensors plain (not PIT) batch norms normalise (3 = 1-D data, N x C x L).
    batchnorm_ranks: set[int] = field(default_factory=set)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def index_blocks(net: gluon.Block) -> tuple[dict[int, str], dict[str, tuple[gluon.Block, str]]]:
    """Structural paths of all blocks ("features.3"), and each path's (parent, child key)."""
    paths: dict[int, str] = {id(net): ""}
    parents: dict[str, tuple[gluon.Block, str]] = {}

    def walk(block: gluon.Block, path: str) -> None:
        for key, child in block._children.items():
            child_path = _join(path, key)
            if id(child) not in paths:
                paths[id(child)] = child_path
                parents[child_path] = (block, key)
                walk(child, child_path)

    walk(net, "")
    return paths, parents


def replace_child(parent: gluon.Block, key: str, new: gluon.Block) -> None:
    """Put `new` where child `key` of `parent` was (registry and attribute alike)."""
    old = parent._children[key]
    parent._children[key] = new
    for attr, value in list(parent.__dict__.items()):
        if value is old:
            object.__setattr__(parent, attr, new)


def clear_cached_graphs(net: gluon.Block) -> None:
    """Forget every cached (hybridized) graph below `net`, so changed blocks are re-traced."""
    if isinstance(net, gluon.HybridBlock):
        net._clear_cached_op()
    for child in net._children.values():
        clear_cached_graphs(child)


def _owners(net: gluon.Block) -> dict[tuple[str, str], list[gluon.Block]]:
    """(parameter role, parameter name) -> blocks registering it ("weight", "running_mean")."""
    owners: dict[tuple[str, str], list[gluon.Block]] = {}
    seen: set[int] = set()

    def walk(block: gluon.Block) -> None:
        if id(block) in seen:
            return
        seen.add(id(block))
        for key, param in block._reg_params.items():
            if key in ("weight", "running_mean"):
                owners.setdefault((key, param.name), []).append(block)
        for child in block._children.values():
            walk(child)

    walk(net)
    return owners


def trace(net: gluon.HybridBlock, input_shape: Sequence[int]) -> tuple[list[Node], list[int], dict]:
    """The data-path nodes of `net`'s symbol graph (topological order), the head node indices,
    and the raw JSON nodes."""
    data = mx.sym.var("data")
    out = net(data)
    if isinstance(out, (list, tuple)):
        out = mx.sym.Group(list(out))
    graph = json.loads(out.tojson())
    raw = graph["nodes"]
    internals = out.get_internals()
    _, out_shapes, _ = internals.infer_shape(data=(1, *[int(v) for v in input_shape]))
    shapes = dict(zip(internals.list_outputs(), out_shapes))
    on_path = [False] * len(raw)
    nodes: dict[int, Node] = {}
    for index, item in enumerate(raw):
        if item["op"] == "null":
            on_path[index] = item["name"] == "data"
            if on_path[index]:
                nodes[index] = Node(index, "input", "data", {}, [],
                                    (1, *[int(v) for v in input_shape]), kind="input")
            continue
        inputs = [entry[0] for entry in item["inputs"]]
        if not any(on_path[i] for i in inputs):
            continue
        on_path[index] = True
        name = item["name"]
        shape = shapes.get(f"{name}_output")
        if shape is None:
            shape = next((s for key, s in shapes.items() if key.startswith(f"{name}_output")), ())
        nodes[index] = Node(index, item["op"], name, dict(item.get("attrs", {})),
                            [i for i in inputs if on_path[i]], tuple(int(v) for v in shape))
    for node in nodes.values():
        for source in node.inputs:
            nodes[source].consumers.append(node.index)
    heads = [entry[0] for entry in graph["heads"]]
    return [nodes[i] for i in sorted(nodes)], heads, {"raw": raw, "on_path": on_path}


def _param_ancestors(raw: list, on_path: list, start: int) -> list[str]:
    """Names of the variables feeding node `start` off the data path (weights, masks)."""
    names, stack, seen = [], [start], set()
    while stack:
        index = stack.pop()
        if index in seen or on_path[index]:
            continue
        seen.add(index)
        item = raw[index]
        if item["op"] == "null":
            names.append(item["name"])
        else:
            stack.extend(entry[0] for entry in item["inputs"])
    return names


def _attr(node: Node, key: str, default: str) -> str:
    return str(node.attrs.get(key, default))


def _classify(nodes: list[Node], raw: list, on_path: list, owners: dict,
              paths: dict[int, str]) -> None:
    """Set each node's kind and owning block."""
    by_index = {node.index: node for node in nodes}
    for node in nodes:
        if node.kind == "input":
            continue
        item = raw[node.index]
        if node.op in ("Convolution", "FullyConnected"):
            block = None
            if len(item["inputs"]) > 1:
                for name in _param_ancestors(raw, on_path, item["inputs"][1][0]):
                    found = owners.get(("weight", name))
                    if found:
                        block = found[0] if len(found) == 1 else None
                        break
            node.block = block
            node.kind = "layer" if block is not None else "opaque"
        elif node.op == "BatchNorm":
            block = None
            if len(item["inputs"]) > 3:
                found = owners.get(("running_mean", raw[item["inputs"][3][0]]["name"]))
                block = found[0] if found and len(found) == 1 else None
            node.block = block
            node.kind = "bn" if block is not None and int(_attr(node, "axis", "1")) == 1 \
                else "opaque"
        elif node.op in ("Concat", "concat"):
            node.kind = "concat" if int(_attr(node, "dim", "1")) == 1 else "opaque"
        elif node.op in ("Flatten", "flatten", "Reshape", "reshape"):
            source = by_index[node.inputs[0]] if node.inputs else None
            flat = (source is not None and len(source.shape) > 2 and len(node.shape) == 2
                    and node.shape[1] == int(np.prod(source.shape[1:])))
            node.kind = "flatten" if flat else "opaque"
        elif node.op in _ADD_OPS:
            node.kind = "add"
        elif node.op in _MUL_OPS:
            node.kind = "mul"
        elif node.op == "Activation":
            act = _attr(node, "act_type", "relu")
            node.kind = "propagate" if act in _ZERO_PRESERVING_ACTIVATIONS else "opaque"
        elif node.op == "clip":
            low, high = float(_attr(node, "a_min", "0")), float(_attr(node, "a_max", "0"))
            node.kind = "propagate" if low <= 0.0 <= high else "opaque"
        elif node.op == "slice_axis":
            node.kind = "propagate" if int(_attr(node, "axis", "0")) not in (1, -len(node.shape) + 1) \
                else "opaque"
        elif node.op in _UNARY_OPS:
            node.kind = "propagate"
        else:
            node.kind = "opaque"
        if node.kind in ("propagate", "add", "mul") and node.inputs:
            # Anything that changes the channel count is not element-wise after all.
            first = by_index[node.inputs[0]]
            if len(first.shape) < 2 or len(node.shape) < 2 or first.shape[1] != node.shape[1]:
                if node.kind == "propagate":
                    node.kind = "opaque"
        if node.block is not None:
            node.path = paths.get(id(node.block))


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _excluded(block: gluon.Block, path: str, exclude_names: set[str],
              exclude_types: tuple[type, ...], matched: set[str]) -> bool:
    hit = {path, block.name, block.prefix, block.prefix.rstrip("_")} & exclude_names
    matched.update(hit)
    return bool(hit) or (bool(exclude_types) and isinstance(block, exclude_types))


def convert(net: gluon.HybridBlock, input_shape: Sequence[int], autoconvert_layers: bool = True,
            exclude_names: Iterable[str] = (), exclude_types: Iterable[type] = (),
            threshold: float = 0.5) -> ConvertedGraph:
    """Convert `net` in place (see the module docstring); returns what the conversion found."""
    exclude_names = {str(n) for n in exclude_names}
    exclude_types = tuple(exclude_types)
    paths, parents = index_blocks(net)
    owners = _owners(net)
    nodes, heads, extra = trace(net, input_shape)
    by_index = {node.index: node for node in nodes}
    _classify(nodes, extra["raw"], extra["on_path"], owners, paths)

    # A block called from several places (shared weights) cannot be pruned per call.
    calls: dict[int, int] = {}
    for node in nodes:
        if node.block is not None:
            calls[id(node.block)] = calls.get(id(node.block), 0) + 1
    matched: set[str] = set()
    for node in nodes:
        if node.block is None:
            continue
        if calls[id(node.block)] > 1 or node.path is None:
            node.kind = "opaque"
            continue
        block = node.block
        excluded = _excluded(block, node.path, exclude_names, exclude_types, matched)
        if node.kind == "layer":
            if isinstance(block, (PITConvBase, PITDense)):
                node.attrs["role"] = "pit"
            elif type(block) in PIT_LAYER_MAP and type(block) is not nn.BatchNorm:
                convertible = autoconvert_layers and not excluded and _convertible(block)
                node.attrs["role"] = "convert" if convertible else "fixed"
            else:
                node.kind = "opaque"
        elif node.kind == "bn":
            if isinstance(block, PITBatchNorm):
                node.attrs["role"] = "pit"
            elif type(block) in (nn.BatchNorm, getattr(nn, "BatchNormReLU", nn.BatchNorm)):
                node.attrs["role"] = "convert" if autoconvert_layers and not excluded else "fixed"
            else:
                node.kind = "opaque"
    unknown = exclude_names - matched
    if unknown:
        raise ValueError(f"exclude_names {sorted(unknown)} match no layer; use block paths such "
                         f"as {sorted(p for p in parents)[:5]} or block names")

    def depthwise(node: Node) -> bool:
        block = node.block
        if isinstance(block, PITConvBase):
            return block.depthwise
        if isinstance(block, (nn.Conv1D, nn.Conv2D)):
            groups = int(block._kwargs["num_group"])
            return groups > 1 and groups == int(block._kwargs["num_filter"]) == \
                int(block.weight.shape[1]) * groups
        return False

    def grouped(node: Node) -> bool:
        """A grouped convolution that is not depthwise (PIT cannot prune its inputs)."""
        block = node.block
        if isinstance(block, (nn.Conv1D, nn.Conv2D)) and not depthwise(node):
            return int(block._kwargs["num_group"]) > 1
        return False

    # --- components ---------------------------------------------------------------------
    uf = _UnionFind()
    definers: dict[int, list[int]] = {}
    frozen: set[int] = set()
    to_freeze: list[int] = []
    for node in nodes:
        uf.find(node.index)
        data_inputs = node.inputs
        if node.kind == "input":
            definers.setdefault(node.index, []).append(node.index)
            to_freeze.append(node.index)
        elif node.kind == "layer" and depthwise(node):
            uf.union(node.index, data_inputs[0])
            if node.attrs.get("role") == "fixed":
                to_freeze.append(node.index)
        elif node.kind in ("layer", "concat", "flatten"):
            definers.setdefault(node.index, []).append(node.index)
            if node.kind == "layer" and node.attrs.get("role") == "fixed":
                to_freeze.append(node.index)
                if grouped(node):
                    # A grouped convolution mixes channels within fixed groups: removing some
                    # of its inputs would regroup the rest, so its producer keeps them all.
                    to_freeze.extend(data_inputs)
        elif node.kind == "bn":
            uf.union(node.index, data_inputs[0])
            if node.attrs.get("role") == "fixed":
                to_freeze.append(node.index)
        elif node.kind in ("propagate", "add", "mul"):
            channels = node.shape[1] if len(node.shape) > 1 else None
            for source in data_inputs:
                src = by_index[source]
                if len(src.shape) > 1 and src.shape[1] == channels:
                    uf.union(node.index, source)
                elif node.kind == "add":
                    # Broadcasting a value over channels makes pruned channels non-zero.
                    to_freeze.append(node.index)
                    to_freeze.append(source)
        else:  # opaque: its own frozen component, and its inputs may not shrink
            definers.setdefault(node.index, []).append(node.index)
            to_freeze.append(node.index)
            to_freeze.extend(data_inputs)
    to_freeze.extend(heads)

    comp_definers: dict[int, list[Node]] = {}
    for index, items in definers.items():
        for item in items:
            comp_definers.setdefault(uf.find(index), []).append(by_index[item])
    for index in to_freeze:
        if index in by_index:
            frozen.add(uf.find(index))
    for root, items in comp_definers.items():
        if len(items) > 1 and any(item.kind != "layer" for item in items):
            frozen.add(root)
    changed = True
    while changed:
        changed = False
        for root in list(frozen):
            for item in comp_definers.get(root, []):
                if item.kind in ("concat", "flatten"):
                    for source in item.inputs:
                        source_root = uf.find(source)
                        if source_root not in frozen:
                            frozen.add(source_root)
                            changed = True

    # --- maskers and calculators ----------------------------------------------------------
    maskers: dict[int, PITFeaturesMasker] = {}
    for root, items in comp_definers.items():
        if root in frozen:
            continue
        layers = [item for item in items if item.kind == "layer"]
        if len(layers) != len(items):
            continue
        existing = {}
        for item in layers:
            if item.attrs.get("role") == "pit":
                masker = item.block.out_features_masker
                if masker is not None and not masker.frozen:
                    existing[id(masker)] = masker
        if len(existing) > 1:
            names = [item.path for item in layers]
            raise ValueError(f"layers {names} add their outputs, so they must share one channel "
                             f"masker, but they hold {len(existing)} different ones")
        if existing:
            maskers[root] = next(iter(existing.values()))
        else:
            first = layers[0].block
            maskers[root] = PITFeaturesMasker(layers[0].shape[1], prefix=f"{first.prefix}out_")

    calculators: dict[int, FeaturesCalculator] = {}

    def calculator(index: int) -> FeaturesCalculator:
        root = uf.find(index)
        if root in calculators:
            return calculators[root]
        node = by_index[index]
        channels = node.shape[1] if len(node.shape) > 1 else 1
        items = comp_definers.get(root, [])
        if root in frozen or not items:
            calc: FeaturesCalculator = ConstFeaturesCalculator(channels)
        elif root in maskers:
            calc = MaskerFeaturesCalculator(maskers[root])
        elif items[0].kind == "concat":
            calc = ConcatFeaturesCalculator([calculator(i) for i in items[0].inputs])
        else:  # flatten
            source = by_index[items[0].inputs[0]]
            calc = FlattenFeaturesCalculator(calculator(source.index),
                                             int(np.prod(source.shape[2:])))
        calculators[root] = calc
        return calc

    # --- replace blocks and wire calculators ---------------------------------------------
    layers: list[LayerEntry] = []
    batchnorms: list[tuple[str, PITBatchNorm]] = []
    shared: dict[int, LayerEntry] = {}
    ctx = _contexts(net)
    for node in nodes:
        if node.kind not in ("layer", "bn", "opaque") or node.block is None:
            continue
        if id(node.block) in shared:  # a further call of a block with shared weights
            shared[id(node.block)].calls.append(node.shape)
            continue
        role = node.attrs.get("role")
        block = node.block
        out_calc = calculator(node.index)
        in_calc = calculator(node.inputs[0]) if node.inputs else None
        if node.kind == "layer" and isinstance(block, (nn.Dense, PITDense)) and in_calc is not None:
            source = by_index[node.inputs[0]]
            flatten = block.flatten if isinstance(block, PITDense) else block._flatten
            if flatten and len(source.shape) > 2:
                in_calc = FlattenFeaturesCalculator(in_calc, int(np.prod(source.shape[2:])))
        if node.kind == "opaque":
            entry = LayerEntry(node.path, block, "opaque", node.shape, calls=[node.shape])
            if calls[id(block)] > 1:
                shared[id(block)] = entry
            layers.append(entry)
            continue
        if role == "convert":
            if node.kind == "bn" and isinstance(out_calc, ConstFeaturesCalculator):
                continue  # nothing to mask: a plain batch norm does the same
            new = _make_pit_layer(block, threshold)
            parent, key = parents[node.path]
            replace_child(parent, key, new)
            block = new
            node.block = new
        if role in ("convert", "pit"):
            block.threshold = float(threshold)
            block.input_features_calculator = in_calc
            block.output_features_calculator = out_calc if (node.kind == "layer" and
                                                            block.features_defining) else in_calc
            block.output_shape = node.shape
            block.mask_output = True
            if node.kind == "bn":
                batchnorms.append((node.path, block))
            else:
                layers.append(LayerEntry(node.path, block, "pit", node.shape, in_calc))
        elif node.kind == "layer":
            layers.append(LayerEntry(node.path, block, "fixed", node.shape, in_calc))
    # A layer whose only consumer is its PIT batch norm lets the batch norm apply α (PLiNIO).
    for node in nodes:
        if node.kind != "layer" or not isinstance(node.block, (PITConvBase, PITDense)):
            continue
        if len(node.consumers) == 1 and node.index not in heads:
            consumer = by_index[node.consumers[0]]
            if consumer.kind == "bn" and isinstance(consumer.block, PITBatchNorm) and \
                    consumer.block.output_features_calculator is \
                    node.block.output_features_calculator:
                node.block.mask_output = False
    for layer in layers:
        if isinstance(layer.block, PITLayer):
            _initialize(layer.block, ctx)
    for _, bn in batchnorms:
        _initialize(bn, ctx)
    clear_cached_graphs(net)
    paths, _ = index_blocks(net)
    for entry in layers:
        entry.path = paths.get(id(entry.block), entry.path)
    unique = {id(m): m for m in maskers.values()}
    ranks = {len(node.shape) for node in nodes
             if node.op == "BatchNorm" and not isinstance(node.block, PITBatchNorm)}
    return ConvertedGraph(layers=layers, batchnorms=batchnorms, maskers=list(unique.values()),
                          paths=paths, batchnorm_ranks=ranks)


def _convertible(block: gluon.Block) -> bool:
    if isinstance(block, nn.Dense):
        return True
    kwargs = block._kwargs
    groups = int(kwargs["num_group"])
    in_channels = int(block.weight.shape[1]) * groups
    full_or_depthwise = groups == 1 or groups == in_channels == int(kwargs["num_filter"])
    return full_or_depthwise and kwargs.get("layout") in ("NCW", "NCHW")


def _make_pit_layer(block: gluon.Block, threshold: float) -> PITLayer:
    cls = PIT_LAYER_MAP.get(type(block), PITBatchNorm)
    if cls is PITBatchNorm:
        return PITBatchNorm(block, threshold=threshold)
    return cls(block, threshold=threshold, default_masker=False)


def _contexts(net: gluon.Block) -> list[mx.Context]:
    for param in net.collect_params().values():
        try:
            return param.list_ctx()
        except RuntimeError:
            continue
    return [mx.cpu()]


def _initialize(block: gluon.Block, ctx: list[mx.Context]) -> None:
    for param in block.collect_params().values():
        if param._data is None and not param._deferred_init:
            param.initialize(ctx=ctx)

