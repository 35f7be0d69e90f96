"""`PITModel`: a Gluon network made searchable by PIT, with its regularizers and export.

PLiNIO `methods/pit/pit.py` (class PIT): wraps the network, converts its layers (see graph.py),
exposes the architecture parameters apart from the weights, the `train_features` /
`train_rf` / `train_dilation` flags, differentiable cost regularizers and the pruned export.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Iterable, Sequence

import mxnet as mx
from mxnet import gluon, nd

from lightnas_cli.search.pit.batchnorm import PITBatchNorm
from lightnas_cli.search.pit.binarizer import DEFAULT_THRESHOLD
from lightnas_cli.search.pit.conv import PITConvBase
from lightnas_cli.search.pit.export import export_pruned
from lightnas_cli.search.pit.features_calculator import default_theta
from lightnas_cli.search.pit.features_masker import PITMasker
from lightnas_cli.search.pit.graph import LayerEntry, clear_cached_graphs, convert
from lightnas_cli.search.pit.module import PITLayer
from lightnas_cli.search.pit.config import regularizer_cost_model
from lightnas_cli.search.pit.regularizers import REPORTED_COSTS, CostGraph, model_costs


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
        # Regularizer graphs by name, their (1,) dummy inputs by context and one network
        # parameter for the contexts; kept outside Gluon's child registry (their norm
        # constants are no part of the network's graph).
        first_param = next(iter(net.collect_params().values()))
        self._cost_graphs = SimpleNamespace(graphs={}, dummies={}, context_param=first_param)
        self.train_channels = train_channels
        self.train_rf = train_rf
        self.train_dilation = train_dilation

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.seed(x)

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
        """The architecture parameters (α, β, γ), each once."""
        return [m.nas_parameter for m in self.all_maskers()]

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
    @property
    def train_channels(self) -> bool:
        return self._train_channels

    @train_channels.setter
    def train_channels(self, value: bool) -> None:
        self._train_channels = bool(value)
        for masker in self.maskers:
            masker.trainable = self._train_channels
        self._clear_graphs()

    @property
    def train_rf(self) -> bool:
        return self._train_rf

    @train_rf.setter
    def train_rf(self, value: bool) -> None:
        self._train_rf = bool(value)
        for _, layer in self.pit_layers:
            if isinstance(layer, PITConvBase):
                layer.train_rf = self._train_rf
        self._clear_graphs()

    @property
    def train_dilation(self) -> bool:
        return self._train_dilation

    @train_dilation.setter
    def train_dilation(self, value: bool) -> None:
        self._train_dilation = bool(value)
        for _, layer in self.pit_layers:
            if isinstance(layer, PITConvBase):
                layer.train_dilation = self._train_dilation
        self._clear_graphs()

    def freeze_masks(self, frozen: bool) -> None:
        """Stop (or restore, per the flags) the gradient of every mask: warm-up, fine-tuning."""
        for masker in self.maskers:
            masker.trainable = (not frozen) and self._train_channels
        for _, layer in self.pit_layers:
            if isinstance(layer, PITConvBase):
                layer.train_rf = (not frozen) and self._train_rf
                layer.train_dilation = (not frozen) and self._train_dilation
        self._clear_graphs()

    def _clear_graphs(self) -> None:
        """Masks frozen or not changes the traced graphs (a stop-gradient): re-trace them."""
        clear_cached_graphs(self)
        for graph in self._cost_graphs.graphs.values():
            graph._clear_cached_op()

    # --- costs --------------------------------------------------------------------------
    def costs(self, soft: bool = True, ctx: mx.Context | None = None,
              names: Sequence[str] = REPORTED_COSTS) -> dict[str, Any]:
        """Costs of the whole network by cost-model name (params also as `size`), and per
        layer (soft: differentiable in the masks)."""
        return model_costs(self.layers, soft, default_theta(ctx), self.threshold, names=names)

    def size(self, soft: bool = True, ctx: mx.Context | None = None) -> Any:
        return self.costs(soft, ctx)["size"]

    def macs(self, soft: bool = True, ctx: mx.Context | None = None) -> Any:
        return self.costs(soft, ctx)["macs"]

    def flops(self, soft: bool = True, ctx: mx.Context | None = None) -> Any:
        return self.costs(soft, ctx)["flops"]

    def regularizer(self, name: str = "size", ctx: mx.Context | None = None) -> Any:
        """The differentiable regularization term `name` (any registered cost model, or
        `size` = params), shape (1,).

        Evaluated by a cached graph of the masker parameters (`CostGraph`); equal to
        `costs(soft=True)[name]`, which evaluates the same formulas operation by operation.
        """
        name = regularizer_cost_model(name)
        graph = self._cost_graphs.graphs.get(name)
        if graph is None:
            if not self.all_maskers():
                value = self.costs(False, names=(name,))[name]
                return nd.array([float(value)], ctx=ctx or self._contexts()[0])
            graph = CostGraph(self.layers, self.all_maskers(), name, self.threshold,
                              self._contexts())
            graph.hybridize()
            self._cost_graphs.graphs[name] = graph
        ctx = ctx or self._contexts()[0]
        return graph(self._dummy_input(ctx))

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
