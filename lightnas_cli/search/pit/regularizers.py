"""Differentiable cost regularizers: any registered cost model of `lightnas_cli.costs`.

Risso et al. (2021) and PLiNIO `cost/params.py`, `cost/ops.py`: the cost of a layer is its
cost with the channel and kernel sizes replaced by the sums of the *continuous* masks (theta,
not binarized), so its gradient reaches every α, β and γ. Each layer is described as a
`costs.Layer` whose channel counts and kernel sizes are those soft sums, and the registered
cost model computes from it: the regularizer and every report count alike, and with binarized
masks (`soft=False`) the same code gives the pruned network's exact cost.

Two evaluations of the same descriptions:

- `model_costs`: layer by layer on NDArrays (reports, and the reference the tests hold the
  fast one to);
- `StackedCost`: the training regularizer. Layers whose descriptions differ only in their soft
  counts are stacked, so a cost model computes a whole group with vector operations, and all
  soft counts come from one matrix product with the mask bank's theta (bank.py). A few dozen
  graph nodes instead of a few hundred. A cost model that does not compute element by element
  (checked once on random counts) is evaluated layer by layer instead.

Options (PLiNIO's): `scope` "all" counts every layer (`full_cost=True`; layers PIT does not
search add their cost, which changes with the channels they read), "searchable" only the PIT
layers; `discrete` counts binarized masks (straight-through gradient) instead of continuous
ones (`discrete_cost`). Shared weights (a block called several times) are described once, with
the output positions of all its calls: per-weight costs (params) count them once, per-position
costs (MACs) every call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from mxnet import nd

from lightnas_cli import costs
from lightnas_cli.search.pit.config import REGULARIZER_ALIASES, regularizer_cost_model
from lightnas_cli.search.pit.conv import PITConvBase
from lightnas_cli.search.pit.dense import PITDense
from lightnas_cli.search.pit.features_calculator import NormFn, ThetaFn, default_theta
from lightnas_cli.search.pit.graph import LayerEntry

if TYPE_CHECKING:
    from lightnas_cli.search.pit.bank import MaskBank

#: What `PITModel.costs` reports by default (cost-model names).
REPORTED_COSTS = ("params", "macs", "flops")
#: `pit.cost_layers` values: every layer, or the searchable (PIT) layers only.
COST_SCOPES = ("all", "searchable")


def in_scope(entry: LayerEntry, scope: str) -> bool:
    """Whether a layer counts in a regularizer of `scope` (all | searchable)."""
    if scope not in COST_SCOPES:
        raise ValueError(f"unknown cost scope {scope!r}; one of {COST_SCOPES}")
    return scope == "all" or entry.role == "pit"


def shared_description(entry: LayerEntry) -> costs.Layer | None:
    """One description of a block called several times (shared weights): its weights once,
    applied at the output positions of all its calls.

    A convolution's output positions are summed over the calls (laid out on the first spatial
    axis); a dense layer applied k times is the pointwise convolution over k positions it
    computes (same parameters, k times the MACs).
    """
    first = costs.describe_block(entry.block, (), entry.calls[0], entry.path)
    if first is None:
        return None
    positions = sum(int(np.prod(shape[2:] or (1,))) for shape in entry.calls)
    if first.op == "conv":
        spatial = (positions,) + (1,) * (len(first.kernel) - 1)
        first.output_shape = tuple(first.output_shape[:2]) + spatial
        return first
    return costs.Layer(op="conv", in_channels=first.in_channels,
                       out_channels=first.out_channels, kernel=(),
                       output_shape=(1, first.out_channels, len(entry.calls)),
                       bias=first.bias, bits=first.bits, name=first.name, path=first.path)


def layer_description(entry: LayerEntry, soft: bool = True, theta: ThetaFn | None = None,
                      threshold: float = 0.5, norm: NormFn | None = None,
                      F: Any = None) -> costs.Layer | None:
    """The cost-model description of one layer: soft counts (NDArrays or Symbols) when
    `soft`, ints from the binarized masks otherwise; None for a layer without weights."""
    theta = theta or default_theta()
    block = entry.block
    shape = tuple(entry.output_shape)
    if entry.role == "pit" and isinstance(block, PITConvBase):
        terms = block.cost_terms(soft, theta, norm)
        return costs.Layer(op="conv", in_channels=terms["in_channels"],
                           out_channels=terms["out_channels"], kernel=tuple(terms["kernel"]),
                           groups=terms["groups"], bias=terms["bias"],
                           output_shape=shape[:2] + tuple(terms["output_positions"]),
                           name=block.name, path=entry.path, F=F)
    if entry.role == "pit" and isinstance(block, PITDense):
        terms = block.cost_terms(soft, theta)
        return costs.Layer(op="dense", in_channels=terms["in_units"],
                           out_channels=terms["out_units"], bias=terms["bias"],
                           output_shape=shape, name=block.name, path=entry.path, F=F)
    if entry.role == "fixed":
        in_features = entry.input_calculator.features(soft, threshold, theta)
        bias = block.bias is not None
        if hasattr(block, "_units"):
            return costs.Layer(op="dense", in_channels=in_features,
                               out_channels=int(block._units), bias=bias, output_shape=shape,
                               name=block.name, path=entry.path, F=F)
        kwargs = block._kwargs
        return costs.Layer(op="conv", in_channels=in_features,
                           out_channels=int(kwargs["num_filter"]),
                           kernel=tuple(int(k) for k in kwargs["kernel"]),
                           stride=tuple(int(v) for v in kwargs["stride"]),
                           dilation=tuple(int(v) for v in kwargs["dilate"]),
                           groups=int(kwargs["num_group"]), bias=bias, output_shape=shape,
                           name=block.name, path=entry.path, F=F)
    if len(entry.calls) > 1:
        return shared_description(entry)
    return costs.describe_block(block, (), shape, entry.path)


def model_costs(layers: list[LayerEntry], soft: bool = True, theta: ThetaFn | None = None,
                threshold: float = 0.5, norm: NormFn | None = None,
                names: Sequence[str] = REPORTED_COSTS, F: Any = None,
                scope: str = "all") -> dict[str, Any]:
    """Whole-network costs by cost-model name (PIT's alias `size` too, when `params` is
    asked for), plus `layers`: per layer (path, params, macs). `scope` "searchable" counts
    the PIT layers only."""
    theta = theta or default_theta()
    models = {name: costs.cost_model_from_spec(name) for name in names}
    params, macs = costs.get_cost_model("params"), costs.get_cost_model("macs")
    totals: dict[str, Any] = {name: 0 for name in names}
    per_layer = []
    for entry in layers:
        if not in_scope(entry, scope):
            continue
        described = layer_description(entry, soft, theta, threshold, norm, F)
        if described is None:
            per_layer.append((entry.path, 0, 0))
            continue
        for name, model in models.items():
            totals[name] = totals[name] + model.layer(described)
        per_layer.append((entry.path, params.layer(described), macs.layer(described)))
    for alias, name in REGULARIZER_ALIASES.items():
        if name in totals:
            totals[alias] = totals[name]
    totals["layers"] = per_layer
    return totals




@dataclass
class _Template:
    """One layer's description with its soft fields as rows of the counts matrix."""

    op: str
    fields: list[np.ndarray]  # rows over y for in, out and each kernel axis
    static: dict
    depthwise: bool
    groups: int
    #: Per field, its value when no mask can change it (an int), else None.
    constants: tuple = ()

    def key(self, fine: bool) -> tuple:
        """Layers with equal keys may stack: the same operation, field layout and constant
        fields (coarse), and the same static description as well (fine)."""
        coarse = (self.op, len(self.fields), self.depthwise, self.groups, self.constants)
        if not fine:
            return coarse
        static = {k: v for k, v in self.static.items() if k not in ("name", "path")}
        return coarse + (tuple(sorted((k, repr(v)) for k, v in static.items())),)


@dataclass
class _Group:
    """Layers computed together, soft fields stacked: the cost model sees them as one layer
    with vector counts (and the first one's static description), unless `stacked` is False
    (then layer by layer)."""

    templates: list[_Template] = field(default_factory=list)
    stacked: bool = True

    @property
    def size(self) -> int:
        return len(self.templates)

    def describe(self, values: list[Any], F: Any, index: int | None = None) -> costs.Layer:
        """The description with `values` (one per field) as its soft fields; `index` names
        the template whose name and path it carries (the first for a stack)."""
        template = self.templates[0 if index is None else index]
        # A constant field is given as the int the layer-by-layer description has, so cost
        # models that treat numbers and arrays differently (the systolic model's exact vs
        # smooth ceiling) see the same description in both evaluations.
        values = [value if constant is None else constant
                  for value, constant in zip(values, template.constants)]
        cin, cout, kernel = values[0], values[1], tuple(values[2:])
        groups = cin if template.depthwise else template.groups
        if template.depthwise:
            cout = cin
        extra = {"kernel": kernel} if template.op == "conv" else {}
        return costs.Layer(op=template.op, in_channels=cin, out_channels=cout, groups=groups,
                           F=F, **extra, **template.static)


class StackedCost:
    """A cost model over the model's layers as a few vector expressions of the mask bank.

    Every soft field (input and output channels, kernel size per axis) of every layer is one
    row of a matrix `M` over y = [z, t]: z is the bank's theta (or its bits with
    `discrete`) with the constant 1 at the end, t the per-tap products z_β z_γ (times PLiNIO's
    normalisation constants when soft). So `M y` is every field at once, split by group.
    """

    def __init__(self, entries: Sequence[LayerEntry], bank: "MaskBank", cost_name: str,
                 discrete: bool = False, scope: str = "all"):
        self.cost_name = regularizer_cost_model(cost_name)
        self.model = costs.cost_model_from_spec(self.cost_name)
        self.bank = bank
        self.discrete = bool(discrete)
        self.width = bank.n_theta + 1 + bank.n_tap_products
        self.constant = 0.0
        templates = []
        for entry in entries:
            if not in_scope(entry, scope):
                continue
            template = self._template(entry)
            if template is not None:
                template.constants = tuple(self._constant_value(row) for row in template.fields)
            if template is None:
                described = layer_description(entry, soft=False)
                if described is not None:
                    self.constant += float(self.model.layer(described))
                continue
            templates.append(template)
        self.groups = self._stack(templates)
        rows = [row for group in self.groups for f in range(len(group.templates[0].fields))
                for row in (t.fields[f] for t in group.templates)]
        self.sizes = [group.size for group in self.groups
                      for _ in range(len(group.templates[0].fields))]
        self.matrix = (np.stack(rows).astype(np.float32) if rows
                       else np.zeros((0, self.width), dtype=np.float32))

    @property
    def stacked(self) -> bool:
        """Whether every group is computed with vector operations."""
        return all(group.stacked for group in self.groups)

    def _stack(self, templates: list[_Template]) -> list[_Group]:
        """As few groups as the cost model allows: layers of one kind stack when the model's
        cost of the stack equals the sum of their own costs (on random counts, so a model
        that reads a field the layers differ in, e.g. output positions for MACs, is caught);
        otherwise those with equal static descriptions; otherwise layer by layer."""
        coarse: dict[tuple, _Group] = {}
        for template in templates:
            coarse.setdefault(template.key(False), _Group()).templates.append(template)
        groups = []
        for group in coarse.values():
            if self._stacks(group):
                groups.append(group)
                continue
            fine: dict[tuple, _Group] = {}
            for template in group.templates:
                fine.setdefault(template.key(True), _Group()).templates.append(template)
            for part in fine.values():
                part.stacked = self._stacks(part)
                groups.append(part)
        return groups

    # --- descriptions ---------------------------------------------------------------------
    def _row(self, slots: np.ndarray) -> np.ndarray:
        return np.bincount(np.asarray(slots, dtype=np.int64),
                           minlength=self.width)[:self.width].astype(np.float32)

    def _constant_value(self, row: np.ndarray) -> int | None:
        """The value of a field no mask can change (its row counts only the constant 1)."""
        if np.count_nonzero(row) == 1 and row[self.bank.one] != 0:
            return int(row[self.bank.one])
        return None

    def _constant_row(self, value: float) -> np.ndarray:
        row = np.zeros(self.width, dtype=np.float32)
        row[self.bank.one] = value
        return row

    def _channels_row(self, calculator: Any) -> np.ndarray:
        return self._row(calculator.slots(self.bank.slot_of, self.bank.one))

    def _template(self, entry: LayerEntry) -> _Template | None:
        block, shape = entry.block, tuple(entry.output_shape)
        common = {"bias": block.bias is not None, "name": block.name, "path": entry.path}
        if entry.role == "pit" and isinstance(block, PITConvBase):
            fields = [self._channels_row(block.input_features_calculator),
                      self._channels_row(block.output_features_calculator)]
            for axis in range(block.ndim):
                base = self.bank.tap_base.get((id(block), axis))
                if base is None:
                    fields.append(self._constant_row(block.kernel_size[axis]))
                else:
                    fields.append(self._row(base + np.arange(block.kernel_size[axis])))
            positions = tuple(int(v) for v in block.output_shape[2:]) if block.output_shape \
                else ()
            return _Template("conv", fields, dict(common, output_shape=shape[:2] + positions),
                             block.depthwise, 1)
        if entry.role == "pit" and isinstance(block, PITDense):
            fields = [self._channels_row(block.input_features_calculator),
                      self._channels_row(block.output_features_calculator)]
            return _Template("dense", fields, dict(common, output_shape=shape), False, 1)
        if entry.role == "fixed":
            if entry.input_calculator is None or entry.input_calculator.is_constant:
                return None  # a constant: counted once, as a number
            cin = self._channels_row(entry.input_calculator)
            if hasattr(block, "_units"):
                return _Template("dense", [cin, self._constant_row(int(block._units))],
                                 dict(common, output_shape=shape), False, 1)
            kwargs = block._kwargs
            fields = [cin, self._constant_row(int(kwargs["num_filter"]))]
            fields += [self._constant_row(int(k)) for k in kwargs["kernel"]]
            static = dict(common, output_shape=shape,
                          stride=tuple(int(v) for v in kwargs["stride"]),
                          dilation=tuple(int(v) for v in kwargs["dilate"]))
            return _Template("conv", fields, static, False, int(kwargs["num_group"]))
        return None

    def _stacks(self, group: _Group) -> bool:
        """Whether the cost model gives the stacked group (vector counts, the first layer's
        static description) the sum of its layers' own costs, on random soft counts."""
        rng = np.random.RandomState(len(group.templates))
        fields = len(group.templates[0].fields)
        values = rng.uniform(1.0, 8.0, (fields, group.size)).astype(np.float32)
        try:
            stacked = self.model.layer(group.describe([nd.array(v) for v in values], nd))
            stacked = float(stacked.sum().asscalar()) if isinstance(stacked, nd.NDArray) \
                else float(stacked) * group.size
            single = 0.0
            for i in range(group.size):
                value = self.model.layer(group.describe(
                    [nd.array(values[f, i:i + 1]) for f in range(fields)], nd, i))
                single += float(value.sum().asscalar()) if isinstance(value, nd.NDArray) \
                    else float(value)
        except Exception:  # noqa: BLE001 - a model that cannot take vectors: do not stack
            return False
        return bool(np.isclose(stacked, single, rtol=1e-4, atol=1e-3))

    # --- expression -----------------------------------------------------------------------
    def constants(self) -> dict[str, np.ndarray]:
        """Arrays the expression reads (besides the bank's), by key."""
        out = {"cost_matrix": self.matrix}
        if not self.discrete and self.bank.n_tap_products:
            out["cost_tap_norm"] = self.bank.tap_norm
        return out

    def expr(self, F: Any, theta: Any, bits: Any, v: dict) -> Any:
        """The cost, shape (1,), from the bank's theta (soft) or bits (discrete)."""
        z = bits if self.discrete else theta
        total: Any = self.constant
        if self.groups:
            taps = self.bank.tap_products(F, z, v, v.get("cost_tap_norm"))
            y = z if taps is None else F.concat(z, taps, dim=0)
            fields = F.dot(v["cost_matrix"], y)
            if len(self.sizes) == 1:
                chunks = [fields]
            else:
                chunks = F.split_v2(fields, tuple(int(b) for b in np.cumsum(self.sizes)[:-1]),
                                    axis=0)
            position = 0
            for group in self.groups:
                count = len(group.templates[0].fields)
                values = [chunks[position + f] for f in range(count)]
                position += count
                total = total + self._group_cost(F, group, values)
        if not isinstance(total, (int, float)):
            return total
        return v["one"] * float(total)

    def _group_cost(self, F: Any, group: _Group, values: list[Any]) -> Any:
        if group.stacked:
            cost = self.model.layer(group.describe(values, F))
            return F.sum(cost) if not isinstance(cost, (int, float)) else cost * group.size
        if group.size == 1:
            per_layer = [values]
        else:
            parts = [F.split(value, num_outputs=group.size, axis=0) for value in values]
            per_layer = [[part[i] for part in parts] for i in range(group.size)]
        total: Any = 0
        for index, fields in enumerate(per_layer):
            total = total + self.model.layer(group.describe(fields, F, index))
        return total


def binarized_theta(threshold: float, ctx: Any = None) -> ThetaFn:
    """theta functions giving each masker's *binarized* mask (straight-through), for the
    layer-by-layer reference of `discrete` costs (with unit normalisation)."""
    from lightnas_cli.search.pit.binarizer import binarize
    soft = default_theta(ctx)

    def theta(masker: Any) -> Any:
        return binarize(nd, soft(masker), threshold)
    return theta


def unit_norm(masker: Any) -> Any:
    """Normalisation constants of 1 (discrete costs count kept taps as they are)."""
    return nd.ones(len(masker.norm))
