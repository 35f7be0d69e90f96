"""`PITModel`: a Gluon network made searchable by PIT, with its regularizers and export.

PLiNIO `methods/pit/pit.py` (class PIT): wraps the network, converts its layers (see graph.py),
exposes the architecture parameters apart from the weights, the `train_features` /
`train_rf` / `train_dilation` flags, differentiable cost regularizers and the pruned export.

Every mask of the model lives in one parameter, the mask bank (bank.py): the model computes all
masks at once before running the network, which is what makes a PIT training step cost little
more than a plain one. `search_graph` adds a regularizer to the same graph, so one search step
is one forward and one backward pass of one (hybridizable) graph, and one optimizer update of
one mask parameter.
"""
from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any, Iterable, Sequence

import mxnet as mx
import numpy as np
from mxnet import gluon, nd

from lightnas_cli.search.pit.bank import BankSlice, MaskBank
from lightnas_cli.search.pit.batchnorm import PITBatchNorm
from lightnas_cli.search.pit.binarizer import DEFAULT_THRESHOLD
from lightnas_cli.search.pit.config import regularizer_cost_model
from lightnas_cli.search.pit.conv import PITConvBase
from lightnas_cli.search.pit.export import export_pruned
from lightnas_cli.search.pit.features_calculator import default_theta
from lightnas_cli.search.pit.features_masker import PITMasker
from lightnas_cli.search.pit.graph import LayerEntry, convert
from lightnas_cli.search.pit.module import PITLayer
from lightnas_cli.search.pit.regularizers import (REPORTED_COSTS, StackedCost, binarized_theta,
                                                  model_costs, unit_norm)

#: Bank arrays the soft masks (theta) need; the layer masks need the `index_*` ones too.
THETA_KEYS = ("masks", "gate", "alpha_free", "alpha_keep", "tap_matrix", "tap_offset", "one")
TAP_KEYS = ("index_beta", "index_gamma")


def _scope(cost_spec: str) -> str:
    """A cost spec (`systolic:s1=16`) as a Gluon name-scope word (`systolic_s1_16`)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", cost_spec)

class PITModel(gluon.HybridBlock):
    """A network converted for PIT. Call it like the network; it computes the masked network.

    `net` must be initialised. `input_shape` is one sample's shape, e.g. (1, 40) or (3, 32, 32).
    `exclude_names` takes block paths ("features.0") or block names; `exclude_types` Gluon
    classes (e.g. `nn.Dense`). With `autoconvert_layers=False` only PIT layers already in `net`
    are searched.
    """

    def __init__(self, net: gluon.HybridBlock, input_shape: Sequence[int],
                 autoconvert_layers: bool = True, exclude_names: Iterable[str] = (),
                 exclude_types: Iterable[type] = (), threshold: float = DEFAULT_THRESHOLD,
                 train_channels: bool = True, train_rf: bool = True,
                 train_dilation: bool = True):
        super().__init__(prefix=f"{net.prefix}pit_")
        self.input_shape = tuple(int(v) for v in input_shape)
        self.threshold = float(threshold)
        try:
            ctx = next(iter(net.collect_params().values())).list_ctx()[0]
            net(nd.zeros((1, *self.input_shape), ctx=ctx))  # resolves deferred shapes
        except (RuntimeError, StopIteration) as exc:
            raise ValueError(f"PITModel needs an initialised network with parameters "
                             f"({exc})") from None
        self._graph = convert(net, self.input_shape, autoconvert_layers, exclude_names,
                              exclude_types, self.threshold)
        with self.name_scope():
            self.seed = net
        # Cost graphs by (name, discrete, scope), search graphs likewise, their (1,) dummy
        # inputs by context and one network parameter for the contexts; kept outside Gluon's
        # child registry (they are no part of the network's graph).
        first_param = next(iter(net.collect_params().values()))
        self._cost_graphs = SimpleNamespace(graphs={}, searches={}, dummies={},
                                            context_param=first_param, gate_state=None)
        self._phase_frozen = False
        self._build_bank(first_param.list_ctx())
        self.train_channels = train_channels
        self.train_rf = train_rf
        self.train_dilation = train_dilation

    def _build_bank(self, ctx: list[mx.Context]) -> None:
        """Move every trainable mask into the bank and bind the layers to it (bank.py)."""
        bound = [e.block for e in self._graph.layers if e.role == "pit"]
        bank = MaskBank(self.all_maskers(), bound, [bn for _, bn in self.batchnorms],
                        self.threshold)
        params: dict[str, gluon.Parameter] = {}
        if bank.size:
            masks = gluon.Parameter(f"{self.prefix}masks", shape=(bank.size,),
                                    init=mx.init.One(), dtype="float32")
            masks.initialize(ctx=ctx)
            masks.set_data(nd.array(bank.initial_values()))
            params["masks"] = masks
        for key, value in bank.constant_values.items():
            constant = gluon.Constant(f"{self.prefix}{key}", nd.array(value, dtype=value.dtype))
            constant.initialize(ctx=ctx)
            params[key] = constant
        for masker in bank.maskers:
            start, stop = bank.param_range[id(masker)]
            masker.bind(BankSlice(params["masks"], start, stop,
                                  masker.nas_parameter.name))
        for layer in bank.bound:
            layer.bind_to_bank()
        self._bank = bank
        self._bank_params = params
        # The network's own graph reads the bank only when some layer has masks to apply.
        if bank.feeds:
            _register(self, self.bank_parameters(params))

    def bank_parameters(self, keys: Iterable[str]) -> dict[str, gluon.Parameter]:
        """The bank's parameter and constants by key (those that exist; the gate only while
        the graphs use it)."""
        return {key: self._bank_params[key] for key in keys if key in self._bank_params
                and (key != "gate" or self._bank.gate_mode == "mixed")}

    def forward(self, x: Any, *args: Any) -> Any:
        self.sync_gate()
        return super().forward(x, *args)

    def hybrid_forward(self, F: Any, x: Any, **params: Any) -> Any:
        bank = self._bank
        masks = bank.layer_masks(F, bank.bits(F, bank.theta(F, params)), params, x) \
            if bank.feeds else {}
        with bank.feeding(masks):
            return self.seed(x)

    def sync_gate(self) -> None:
        """Let the gradient reach exactly the masks trainable now (flags and phase). Called
        before every forward pass; cheap unless a flag or the phase changed. A change of
        gate mode (bank.MaskBank.gate_mode_of) re-traces the graphs."""
        gate = self._bank_params.get("gate")
        if gate is None:
            return
        state = (self._phase_frozen, tuple(m.trainable for m in self._bank.maskers))
        if state == self._cost_graphs.gate_state:
            return
        values = self._bank.gate_values(self._phase_frozen)
        gate.set_data(nd.array(values))
        self._cost_graphs.gate_state = state
        mode = self._bank.gate_mode_of(values)
        if mode != self._bank.gate_mode:
            self._bank.gate_mode = mode
            users = ([self] if self._bank.feeds else []) + \
                list(self._cost_graphs.graphs.values()) + list(self._cost_graphs.searches.values())
            for block in users:
                if mode == "mixed":
                    _register(block, {"gate": gate})
                else:
                    block._reg_params.pop("gate", None)
                    block._params._params.pop(gate.name, None)
            self._clear_graphs()

    # --- structure ----------------------------------------------------------------------
    @property
    def layers(self) -> list[LayerEntry]:
        """Weight layers in graph order (PIT, fixed and opaque)."""
        return self._graph.layers

    @property
    def pit_layers(self) -> list[tuple[str, PITLayer]]:
        """(path, layer) of the searchable Conv/Dense layers, in graph order."""
        return [(e.path, e.block) for e in self._graph.layers if e.role == "pit"]

    @property
    def hybrid_trainable(self) -> bool:
        """False when a plain batch norm normalises 3-D (N x C x L) tensors: MXNet 1.9.1's
        oneDNN backward of such a batch norm can fail ("Check failed: !is_view"), more often in
        hybridized graphs. PIT batch norms avoid it (they normalise N x C x L x 1)."""
        return 3 not in self._graph.batchnorm_ranks

    @property
    def batchnorms(self) -> list[tuple[str, PITBatchNorm]]:
        return self._graph.batchnorms

    @property
    def maskers(self) -> list[PITMasker]:
        """The channel (α) maskers, one per prunable component (shared by residual adds)."""
        return self._graph.maskers

    def all_maskers(self) -> list[PITMasker]:
        """Every non-frozen masker (α, β, γ), each once."""
        seen: dict[int, PITMasker] = {id(m): m for m in self.maskers}
        for _, layer in self.pit_layers:
            if isinstance(layer, PITConvBase):
                for masker in layer.timestep_maskers + layer.dilation_maskers:
                    if not masker.frozen:
                        seen.setdefault(id(masker), masker)
        return list(seen.values())

    def nas_parameters(self) -> list[gluon.Parameter]:
        """The architecture parameters: the mask bank, one parameter holding every α, β and
        γ (each masker's `nas_parameter` is its slice of it)."""
        return [self._bank_params["masks"]] if "masks" in self._bank_params else []

    def net_parameters(self) -> list[gluon.Parameter]:
        """Trainable weights (everything with a gradient that is not a mask)."""
        nas = {id(p) for p in self.nas_parameters()}
        out, seen = [], set()
        for param in self.seed.collect_params().values():
            if id(param) in nas or id(param) in seen or param.grad_req == "null":
                continue
            seen.add(id(param))
            out.append(param)
        return out

    # --- flags --------------------------------------------------------------------------
    # The model-wide setters set every layer's flag (PLiNIO); layers may differ afterwards
    # (`layer.train_rf = False`), and the search phases never touch these flags.
    @property
    def train_channels(self) -> bool:
        return self._train_channels

    @train_channels.setter
    def train_channels(self, value: bool) -> None:
        self._train_channels = bool(value)
        for masker in self.maskers:
            masker.trainable = self._train_channels

    @property
    def train_rf(self) -> bool:
        return self._train_rf

    @train_rf.setter
    def train_rf(self, value: bool) -> None:
        self._train_rf = bool(value)
        for _, layer in self.pit_layers:
            if isinstance(layer, PITConvBase):
                layer.train_rf = self._train_rf

    @property
    def train_dilation(self) -> bool:
        return self._train_dilation

    @train_dilation.setter
    def train_dilation(self, value: bool) -> None:
        self._train_dilation = bool(value)
        for _, layer in self.pit_layers:
            if isinstance(layer, PITConvBase):
                layer.train_dilation = self._train_dilation

    @property
    def masks_frozen(self) -> bool:
        """True in the warm-up and fine-tuning phases: no mask gets a gradient."""
        return self._phase_frozen

    def freeze_masks(self, frozen: bool) -> None:
        """Stop (or restore) the gradient of every mask: warm-up, fine-tuning. Per-layer and
        per-type flags are left as they are, so a layer that does not search its receptive
        field still does not after the warm-up."""
        self._phase_frozen = bool(frozen)

    def trainable_masks(self) -> bool:
        """Whether any mask receives a gradient now (some flag set, not frozen by a phase)."""
        return not self._phase_frozen and any(m.trainable for m in self._bank.maskers)

    def _clear_graphs(self) -> None:
        """Forget the traced graphs (of the model, its search and cost graphs): re-traced at
        their next call."""
        self._clear_cached_op()
        for graph in list(self._cost_graphs.graphs.values()) + \
                list(self._cost_graphs.searches.values()):
            graph._clear_cached_op()

    # --- costs --------------------------------------------------------------------------
    def costs(self, soft: bool = True, ctx: mx.Context | None = None,
              names: Sequence[str] = REPORTED_COSTS, discrete: bool = False,
              scope: str = "all") -> dict[str, Any]:
        """Costs of the whole network (or its searchable layers, `scope`) by cost-model name
        (params also as `size`), and per layer. `soft`: differentiable in the masks,
        evaluated layer by layer (the reference of the fast regularizer); with `discrete`
        the soft counts are sums of binarized masks (straight-through)."""
        if soft and discrete:
            return model_costs(self.layers, True, binarized_theta(self.threshold, ctx),
                               self.threshold, unit_norm, names=names, scope=scope)
        return model_costs(self.layers, soft, default_theta(ctx), self.threshold,
                           names=names, scope=scope)

    def size(self, soft: bool = True, ctx: mx.Context | None = None) -> Any:
        return self.costs(soft, ctx)["size"]

    def macs(self, soft: bool = True, ctx: mx.Context | None = None) -> Any:
        return self.costs(soft, ctx)["macs"]

    def flops(self, soft: bool = True, ctx: mx.Context | None = None) -> Any:
        return self.costs(soft, ctx)["flops"]

    def stacked_cost(self, name: str = "size", discrete: bool = False,
                     scope: str = "all") -> StackedCost:
        """The vectorised regularizer `name` over the mask bank (regularizers.StackedCost)."""
        return StackedCost(self.layers, self._bank, name, discrete, scope)

    def regularizer(self, name: str = "size", ctx: mx.Context | None = None,
                    discrete: bool = False, scope: str = "all") -> Any:
        """The differentiable regularization term `name` (any registered cost model, or
        `size` = params), shape (1,), from a cached graph of the mask bank (`CostGraph`);
        equal to `costs(soft=True, discrete=discrete, scope=scope)[name]`."""
        key = (regularizer_cost_model(name), bool(discrete), scope)
        graph = self._cost_graphs.graphs.get(key)
        if graph is None:
            graph = CostGraph(self, self.stacked_cost(*key), self._contexts())
            graph.hybridize()
            self._cost_graphs.graphs[key] = graph
        ctx = ctx or self._contexts()[0]
        return graph(self._dummy_input(ctx))

    def search_graph(self, name: str = "size", discrete: bool = False,
                     scope: str = "all") -> "SearchGraph":
        """The network and the regularizer `name` in one graph: `graph(x)` returns (output,
        cost). Hybridized like the model (with its flags) when the model is."""
        key = (regularizer_cost_model(name), bool(discrete), scope)
        graph = self._cost_graphs.searches.get(key)
        if graph is None:
            graph = SearchGraph(self, self.stacked_cost(*key))
            if self._active:
                graph.hybridize(**dict(self._flags))
            self._cost_graphs.searches[key] = graph
        return graph

    def _dummy_input(self, ctx: mx.Context) -> nd.NDArray:
        """The cost graphs' (1,) zero input on `ctx`, made once."""
        dummies = self._cost_graphs.dummies
        if ctx not in dummies:
            dummies[ctx] = nd.zeros((1,), ctx=ctx)
        return dummies[ctx]

    def _contexts(self) -> list[mx.Context]:
        # One parameter of the network, found once (collect_params walks every block: too slow
        # for a call made every training step); its contexts follow reset_ctx.
        return self._cost_graphs.context_param.list_ctx()

    # --- results ------------------------------------------------------------------------
    def summary(self) -> list[dict[str, Any]]:
        """Per searchable layer: kept input/output features, kernel size and dilation."""
        rows = []
        for path, layer in self.pit_layers:
            row = {"path": path, "type": type(layer).__name__,
                   "in_features": layer.in_features_opt, "out_features": layer.out_features_opt}
            if isinstance(layer, PITConvBase):
                row.update(kernel_size=layer.kernel_size_opt, dilation=layer.dilation_opt)
            rows.append(row)
        return rows

    def export(self, counts: dict[int, int] | None = None,
               taps: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None
               ) -> gluon.HybridBlock:
        """The plain pruned network (see `export.export_pruned`)."""
        return export_pruned(self, counts, taps)


def _register(block: gluon.HybridBlock, params: dict[str, gluon.Parameter]) -> None:
    for key, param in params.items():
        block._reg_params[key] = param
        block._params._params[param.name] = param


def _constants(block: gluon.HybridBlock, values: dict[str, np.ndarray],
               ctx: list[mx.Context]) -> None:
    for key, value in values.items():
        constant = gluon.Constant(f"{block.prefix}{key}", nd.array(value, dtype=value.dtype))
        constant.initialize(ctx=ctx)
        _register(block, {key: constant})


def _cost_keys(model: PITModel, cost: StackedCost) -> list[str]:
    keys = list(THETA_KEYS)
    if cost.groups and model._bank.n_tap_products:
        keys += list(TAP_KEYS)
    return keys


class CostGraph(gluon.HybridBlock):
    """One regularizer of a model as a hybridizable block of the mask bank.

    Called with a dummy input (Gluon blocks need one) that adds exactly zero. The model is no
    child of it: the graph reads the bank and the cost's constants only.
    """

    def __init__(self, model: PITModel, cost: StackedCost, ctx: list[mx.Context]):
        super().__init__(prefix=f"{model.prefix}cost_{_scope(cost.cost_name)}_")
        self._owner = SimpleNamespace(model=model, cost=cost)
        _register(self, model.bank_parameters(_cost_keys(model, cost)))
        _constants(self, cost.constants(), ctx)

    def forward(self, x: Any, *args: Any) -> Any:
        self._owner.model.sync_gate()
        return super().forward(x, *args)

    def hybrid_forward(self, F: Any, x: Any, **v: Any) -> Any:
        bank, cost = self._owner.model._bank, self._owner.cost
        theta = bank.theta(F, v)
        bits = bank.bits(F, theta) if cost.discrete else None
        return F.sum(x) * 0 + cost.expr(F, theta, bits, v)


class SearchGraph(gluon.HybridBlock):
    """A PIT model and one regularizer in one graph: `graph(x)` returns (output, cost).

    What a search step runs: the masks, the network and the cost share one forward and one
    backward pass (and the theta they all come from).
    """

    def __init__(self, model: PITModel, cost: StackedCost):
        super().__init__(prefix=f"{model.prefix}search_{_scope(cost.cost_name)}_")
        self.cost = cost
        with self.name_scope():
            self.model = model
        keys = list(THETA_KEYS) + list(TAP_KEYS) + [k for k in model._bank_params
                                                    if k.startswith("index_")]
        _register(self, model.bank_parameters(dict.fromkeys(keys)))
        _constants(self, cost.constants(), model._contexts())

    def forward(self, x: Any, *args: Any) -> Any:
        self.model.sync_gate()
        return super().forward(x, *args)

    def hybrid_forward(self, F: Any, x: Any, **v: Any) -> Any:
        bank = self.model._bank
        theta = bank.theta(F, v)
        bits = bank.bits(F, theta)
        masks = bank.layer_masks(F, bits, v, x) if bank.feeds else {}
        with bank.feeding(masks):
            out = self.model.seed(x)
        return out, self.cost.expr(F, theta, bits, v)
