"""The `train` method: a fixed plain network trained to completion by the shared runner.

The network is the one the architecture's own method builds (`SearchMethod.build`: ENAS's
fixed-choice network, PIT's pruned network, FBNet's or DMasking's derived one), or a zoo model
as it is. It starts from fresh seeded weights (`init: scratch`) or from the search's weights of
the source epoch (`init: search`, taken when the first epoch starts, so a resumed run never
needs its source run again). Optional: label smoothing, knowledge distillation from a teacher
export. Everything else (trainer, schedule, data-parallel loop, evaluation) is the shared code.
"""
from __future__ import annotations

import inspect
from typing import Any

import mxnet as mx
from mxnet import gluon, nd
from omegaconf import OmegaConf

import bmxnet_models
from lightnas_cli import costs as cost_models
from lightnas_cli.errors import ArchitectureError, ConfigError
from lightnas_cli.search.base import Architecture, SearchMethod, get_method
from lightnas_cli.search.training import (ClassificationTask, DistillationTask, evaluate,
                                          hybridize_for_training, parameter_arrays,
                                          restore_parameters, structural_params,
                                          weight_trainer)
from lightnas_cli.seeding import seed_everything

#: Costs a train run records for its network (cost-model names).
RECORDED = ("params", "macs", "flops", "binary_memory")


def _initializer() -> mx.init.Initializer:
    return mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)


def copy_parameters(source: gluon.Block, target: gluon.Block) -> None:
    """Give `target` the values of `source`, parameter by parameter in structural order (two
    networks built the same way); a different structure is an ArchitectureError."""
    src = list(structural_params(source).values())
    dst = list(structural_params(target).values())
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src, dst)):
        raise ArchitectureError("the network to copy from is built differently (parameters "
                                "differ in number or shape)")
    for a, b in zip(src, dst):
        b.set_data(a._reduce())


def _normalises_1d(net: gluon.Block, input_shape: list[int], ctx: mx.Context) -> bool:
    """Whether a BatchNorm of `net` sees N x C x L data (see `hybridize_for_training`)."""
    ranks: list[int] = []

    def hook(block: gluon.Block, inputs: Any) -> None:
        ranks.append(len(inputs[0].shape))

    handles = []

    def attach(block: gluon.Block) -> None:
        if isinstance(block, gluon.nn.BatchNorm):
            handles.append(block.register_forward_pre_hook(hook))
        for child in block._children.values():
            attach(child)

    attach(net)
    try:
        net(nd.zeros((1, *input_shape), ctx=ctx))
    finally:
        for handle in handles:
            handle.detach()
    return 3 in ranks


class TrainMethod(SearchMethod):
    """Train one fixed network (see the module docstring)."""

    def __init__(self, config, data, contexts, logger):
        self.source_cfg = config.source
        self.record: Architecture | None = None
        if config.source.kind != "zoo":
            self.record = Architecture.from_dict(
                OmegaConf.to_container(config.source.architecture, resolve=True),
                source=f"source.architecture of this train run")
        super().__init__(config, data, contexts, logger)
        if self.record is not None:
            if self.record.input_shape != self.input_shape or \
                    self.record.classes != self.classes:
                raise ArchitectureError(
                    f"the architecture was derived for input {self.record.input_shape} with "
                    f"{self.record.classes} classes, but this run's data has input "
                    f"{self.input_shape} and {self.classes} classes; train it on data like "
                    f"the search's (or give -c a config whose data section matches)")
        self._source_method = None
        seed_everything(config.seed, "init")
        self.net = self._fresh_network()
        self.net.initialize(_initializer(), ctx=contexts, force_reinit=True)
        self.costs = self._measure(self.net)
        hybridize_for_training(self.net, config.train.hybridize,
                               lambda: _normalises_1d(self.net, self.input_shape, contexts[0]),
                               logger, "train")
        base = ClassificationTask(config.label_smoothing)
        self.task = base
        if config.distill.teacher:
            teacher = self._teacher(config.distill.teacher)
            self.task = DistillationTask(base, teacher, config.distill.temperature,
                                         config.distill.weight)
        self.eval_task = ClassificationTask()
        self.weights = weight_trainer(list(structural_params(self.net).values()), config.train,
                                      contexts, self.task)
        self._search_weights_pending = config.init == "search"

    # --- the network ----------------------------------------------------------------------
    def model_options_from(self, config) -> dict:
        """The architecture's constructor options, or a zoo model's options with classes and
        input channels from the data (when its constructor takes them)."""
        if self.record is not None:
            return dict(self.record.model_options)
        accepted = inspect.signature(bmxnet_models.get_model_factory(config.model.name)
                                     ).parameters
        options = dict(OmegaConf.to_container(config.model.options, resolve=True))
        if "classes" in accepted:
            options.setdefault("classes", self.classes)
        if "in_channels" in accepted:
            options.setdefault("in_channels", self.input_shape[0])
        return options

    def _source(self) -> SearchMethod:
        """The method that derived the architecture, built from its saved config for this
        data's shapes (no data read): what knows how to build its plain network."""
        if self._source_method is None:
            from lightnas_cli import config as config_mod
            from lightnas_cli.runner import SpecOnly

            method_config = OmegaConf.to_container(self.source_cfg.method_config, resolve=True)
            if not method_config:
                raise ConfigError("source.method_config is empty: this train run does not "
                                  "know how to build its architecture")
            cfg = config_mod.load_config(None, (), data=method_config)
            self._source_method = get_method(self.record.method)(
                cfg, SpecOnly(self.data.spec), [mx.cpu()], self.logger)
        return self._source_method

    def _fresh_network(self, ctx: list | None = None) -> gluon.HybridBlock:
        """The plain network with initial values on `ctx` (default: the run's contexts); the
        caller replaces the values."""
        if self.record is None:
            net = bmxnet_models.get_model(self.model_name, prefix=f"{self.model_name}_",
                                          **self.model_options)
            net.initialize(_initializer())
        else:
            net = self._source().build(self.record)
        net(nd.zeros((1, *self.input_shape)))
        net.collect_params().reset_ctx(ctx or self.contexts)
        return net

    def _measure(self, net: gluon.HybridBlock) -> dict:
        """The network's costs by the registered cost models (what the search recorded)."""
        layers = cost_models.profile(net, self.input_shape, self.contexts[0])
        measured = {name: cost_models.get_cost_model(name).total(layers) for name in RECORDED}
        measured.update(cost_name="params", cost=measured["params"])
        return measured

    def _teacher(self, reference: str) -> Any:
        from pathlib import Path

        from lightnas_cli.export import MANIFEST, load_exported
        from lightnas_cli.runs import RunDir

        folder = Path(reference)
        if not (folder / MANIFEST).is_file():
            try:
                run = RunDir.open(reference)
            except Exception:  # a RunError or an unreadable run: say what a teacher is
                run = None
            exported = run.read_status().get("exported") if run is not None else None
            folder = run.path / exported / "inference_only" if exported else folder
        if not (folder / MANIFEST).is_file():
            raise ConfigError(f"distill.teacher {reference!r} is neither an export folder (with "
                              f"{MANIFEST}) nor a finished run with an export; give e.g. "
                              f"trainings/RUN/exported_models/epoch-0010/inference_only")
        teacher = load_exported(folder, ctx=self.contexts)
        probe = teacher(nd.zeros((1, *self.input_shape), ctx=self.contexts[0]))
        if probe.shape[-1] != self.classes:
            raise ConfigError(f"distill.teacher {reference!r} predicts {probe.shape[-1]} "
                              f"classes, this run's data has {self.classes}")
        return teacher

    def _take_search_weights(self) -> None:
        """init: search: the derived network built from the source run's checkpoint."""
        from lightnas_cli import runner
        from lightnas_cli.runs import RunDir

        if not self.source_cfg.run:
            raise ConfigError("init: search needs the search run the architecture comes from; "
                              "this source has none (train from scratch instead)")
        method, _ = runner.restore_method(RunDir(self.source_cfg.run), self.logger,
                                          self.source_cfg.epoch)
        copy_parameters(method.build(self.record), self.net)
        self._search_weights_pending = False

    # --- SearchMethod -----------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        if self._search_weights_pending:
            self._take_search_weights()
        loader = self.data.train
        loader.set_epoch(self.config.seed, epoch)
        with self.logger.epoch_progress(epoch, self.config.train.epochs, len(loader),
                                        self.config.train.batch_size) as progress:
            return self.weights.train_epoch(self.net, loader, progress)

    def evaluate(self, split: str) -> dict:
        loader = self.split_loader(split)
        return evaluate(self.net, loader, self.eval_task, self.contexts, split)

    def derive(self) -> Architecture:
        """The trained architecture: the source record (a zoo model: none) with the costs of
        the network as built."""
        if self.record is None:
            return self.make_architecture([], dict(self.costs))
        record = Architecture.from_dict(self.record.to_dict())
        record.costs = dict(self.costs)
        return record

    def build(self, architecture: Architecture) -> gluon.HybridBlock:
        """A copy of the trained network (export and summaries take it)."""
        if architecture.base_model != self.model_name or \
                [d.value for d in architecture.decisions] != \
                [d.value for d in self.derive().decisions]:
            raise ArchitectureError("a train run builds only the architecture it trains")
        net = self._fresh_network([mx.cpu()])
        copy_parameters(self.net, net)
        return net

    def describe(self, architecture: Architecture) -> dict[str, str]:
        source = self.source_cfg
        where = source.reference if source.epoch is None else \
            f"{source.reference} (epoch {source.epoch})"
        return {"trained_from": f"{source.kind} {where}, init {self.config.init}"}

    def state(self) -> tuple[dict, dict]:
        arrays = parameter_arrays(structural_params(self.net))
        weight_arrays, weight_state = self.weights.state("weights_opt")
        arrays.update(weight_arrays)
        return arrays, {"global_step": self.weights.global_step, "weights_opt": weight_state,
                        "search_weights_pending": self._search_weights_pending}

    def load_state(self, arrays: dict, json_state: dict) -> None:
        restore_parameters(structural_params(self.net), arrays)
        self.weights.load_state("weights_opt", arrays, json_state["weights_opt"],
                                json_state["global_step"])
        self._search_weights_pending = bool(json_state.get("search_weights_pending", False))
