"""The `pit` search method: Pruning In Time on a zoo network, inside the shared runner.

Risso et al. (2021), PLiNIO's training recipe: the seed network is converted to PIT layers and
trained with

    loss = task loss + λ · regularizer

where the regularizer is the network's size, MACs or FLOPs computed from the continuous masks
(`pit.regularizer`, `pit.strength` = λ; `pit.normalize` divides it by the seed's cost so λ is
relative; `pit.cost_layers` and `pit.discrete_cost` are PLiNIO's `full_cost` and
`discrete_cost`). Weights and masks have separate optimizers (the masks: one parameter, the
model's mask bank). Epochs run in three phases:

1. warm-up (`pit.warmup_epochs`): weights only, masks frozen at 1, no regularizer;
2. search: weights and masks (with λ = 0 the task loss alone trains the masks), regularizer;
3. fine-tuning (`pit.finetune_epochs`): masks frozen at their binarized values, weights only.

Which masks are searched at all comes from `pit.train_channels/train_rf/train_dilation` and
their per-layer-type lists (`pit.train_*_types`); the phases freeze masks on top of that and
never change it.

Tasks: `classification` (softmax cross-entropy, accuracy reported) or `reconstruction` (mean
squared error between the output and the flattened input, labels ignored, no accuracy), which
is how the anomaly-detection autoencoder is searched; `auto` picks reconstruction for models
whose constructor takes no `classes` (an autoencoder's output is its input).

`derive()` records, per layer, the kept output channels and (for searched kernel axes) the
kept taps and dilation; `build()` returns the plain pruned network with the masked network's
weights, which computes the same function.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import mxnet as mx
import numpy as np
from mxnet import gluon, nd
from mxnet.gluon import nn
from omegaconf import OmegaConf

import bmxnet_models
from lightnas_cli.checkpoint import load_trainer_state, trainer_state
from lightnas_cli.errors import ArchitectureError, ConfigError
from lightnas_cli.search.base import Architecture, Decision, SearchMethod
from lightnas_cli.search.pit.config import regularizer_cost_model
from lightnas_cli.search.pit.conv import PITConvBase
from lightnas_cli.search.pit.conv1d import PITConv1D
from lightnas_cli.search.pit.conv2d import PITConv2D
from lightnas_cli.search.pit.dense import PITDense
from lightnas_cli.search.pit.model import PITModel
from lightnas_cli.search.pit.regularizers import REPORTED_COSTS
from lightnas_cli.search.pit.step import SearchStep
from lightnas_cli.search.training import (TASKS, evaluate, hybridize_for_training,
                                          make_trainer, parameter_arrays, restore_parameters,
                                          structural_params, weight_trainer)
from lightnas_cli.seeding import seed_everything

#: The Gluon classes `pit.exclude_types` names (the schema lists the allowed names).
EXCLUDABLE_TYPES = {"Conv1D": nn.Conv1D, "Conv2D": nn.Conv2D, "Dense": nn.Dense,
                    "BatchNorm": nn.BatchNorm}
#: The layer-type names `pit.train_*_types` use, by PIT layer class.
LAYER_TYPE_NAMES = {PITConv1D: "Conv1D", PITConv2D: "Conv2D", PITDense: "Dense"}


def apply_type_flags(model: PITModel, channels: Sequence[str], rf: Sequence[str],
                     dilation: Sequence[str]) -> None:
    """Stop searching the masks of layer types not listed (per-layer flags, which the search
    phases keep). A channel mask shared by several layers (outputs added) is searched only
    when all their types are listed."""
    for _, layer in model.pit_layers:
        name = LAYER_TYPE_NAMES.get(type(layer))
        if name is None:
            continue
        if name not in channels:
            layer.train_features = False
        if isinstance(layer, PITConvBase):
            if name not in rf:
                layer.train_rf = False
            if name not in dilation:
                layer.train_dilation = False


def decision_kind(value: int, full: int) -> str:
    """How graphs colour a PIT decision: "pruned" when it cut something, else "keep"."""
    return "pruned" if value != full else "keep"


class PitSearch(SearchMethod):
    """PIT over the Conv/Dense layers of a zoo model (see the module docstring)."""

    def __init__(self, config, data, contexts, logger):
        self.pit_cfg = config.pit
        super().__init__(config, data, contexts, logger)
        self.task = TASKS[self.task_name]()
        seed_everything(config.seed, "init")
        net = bmxnet_models.get_model(self.model_name, prefix=f"{self.model_name}_",
                                      **self.model_options)
        net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2),
                       ctx=contexts)
        try:
            self.model = PITModel(
                net, self.input_shape,
                exclude_names=list(self.pit_cfg.exclude_names),
                exclude_types=tuple(EXCLUDABLE_TYPES[t] for t in self.pit_cfg.exclude_types),
                threshold=float(self.pit_cfg.threshold),
                train_channels=bool(self.pit_cfg.train_channels),
                train_rf=bool(self.pit_cfg.train_rf),
                train_dilation=bool(self.pit_cfg.train_dilation))
        except ValueError as exc:
            raise ConfigError(f"pit: cannot convert model {self.model_name!r}: {exc}") from None
        apply_type_flags(self.model, self.pit_cfg.train_channels_types,
                         self.pit_cfg.train_rf_types, self.pit_cfg.train_dilation_types)
        self.cost_name = regularizer_cost_model(self.pit_cfg.regularizer)
        self.cost_names = tuple(dict.fromkeys(REPORTED_COSTS + (self.cost_name,)))
        self.full_costs = self._discrete_costs()
        self.full_cost = float(self.full_costs[self.cost_name])
        # The regularizer's own normaliser: the seed's cost over the layers it counts.
        scoped = self.model.costs(soft=False, names=(self.cost_name,),
                                  scope=self.pit_cfg.cost_layers)[self.cost_name]
        self.regularizer_full = max(float(scoped), 1.0)
        hybridize_for_training(self.model, config.train.hybridize,
                               lambda: not self.model.hybrid_trainable, logger, "pit")
        self.weights = weight_trainer(self.model.net_parameters(), config.train, contexts,
                                     self.task)
        nas = self.model.nas_parameters()
        arch_lr = self.pit_cfg.arch_lr if self.pit_cfg.arch_lr is not None else config.train.lr
        self.arch_trainer = make_trainer(nas, self.pit_cfg.arch_optimizer, float(arch_lr),
                                         contexts) if nas else None

    def model_options_from(self, config) -> dict:
        """The model's `model.options`, plus classes / in_channels / inputs from the data when
        its constructor takes them; also settles the task (`pit.task: auto` picks
        reconstruction for models that take no `classes`: an autoencoder's output is its
        input)."""
        factory = bmxnet_models.get_model_factory(config.model.name)
        accepted = inspect.signature(factory).parameters
        self.task_name = self.pit_cfg.task
        if self.task_name == "auto":
            self.task_name = "classification" if "classes" in accepted else "reconstruction"
        options = dict(OmegaConf.to_container(config.model.options, resolve=True))
        if "classes" in accepted and self.task_name == "classification":
            options.setdefault("classes", self.classes)
        if "in_channels" in accepted:
            options.setdefault("in_channels", self.input_shape[0])
        if "inputs" in accepted:
            options.setdefault("inputs", int(np.prod(self.input_shape)))
        return options

    # --- phases and costs ---------------------------------------------------------------
    def phase(self, epoch: int) -> str:
        """warmup | search | finetune for a (1-based) epoch."""
        if epoch <= self.pit_cfg.warmup_epochs:
            return "warmup"
        if epoch > int(self.config.train.epochs) - self.pit_cfg.finetune_epochs:
            return "finetune"
        return "search"

    def _discrete_costs(self) -> dict:
        """The pruned network's reported costs and the regularizer's, by cost-model name."""
        found = self.model.costs(soft=False, names=self.cost_names)
        return {name: found[name] for name in self.cost_names}

    def search_step(self, phase: str) -> SearchStep:
        """The hooks of one epoch in `phase`: in the search phase the masks train (whenever
        some mask is trainable, λ = 0 included) and λ > 0 adds the regularizer."""
        search = phase == "search"
        self.model.freeze_masks(not search)
        strength = float(self.pit_cfg.strength) if search else 0.0
        weight = strength / (self.regularizer_full if self.pit_cfg.normalize else 1.0)
        return SearchStep(self.model, self.arch_trainer if search else None, self.cost_name,
                          weight, bool(self.pit_cfg.discrete_cost), self.pit_cfg.cost_layers)

    # --- training -----------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        config = self.config
        phase = self.phase(epoch)
        step = self.search_step(phase)
        loader = self.data.train
        loader.set_epoch(config.seed, epoch)
        with self.logger.epoch_progress(epoch, config.train.epochs, len(loader),
                                        config.train.batch_size) as progress:
            metrics = self.weights.train_epoch(step.net, loader, progress, **step.hooks())
        derived = self._discrete_costs()
        scale = 1.0 / self.regularizer_full if self.pit_cfg.normalize else 1.0
        metrics.update(phase=phase, strength=float(self.pit_cfg.strength)
                       if step.graph is not None else 0.0,
                       regularizer=step.mean_cost() * scale,
                       masks_updated=bool(step.also_step),
                       params=derived["params"], macs=derived["macs"])
        self._log_layers(epoch)
        return metrics

    def _log_layers(self, epoch: int) -> None:
        """TensorBoard scalars of what each layer keeps (channels, taps, dilation)."""
        values = {}
        for row in self.model.summary():
            values[f"pit/{row['path']}/channels"] = row["out_features"]
            for axis, (k, d) in enumerate(zip(row.get("kernel_size", ()),
                                              row.get("dilation", ()))):
                values[f"pit/{row['path']}/kernel{axis}"] = k
                values[f"pit/{row['path']}/dilation{axis}"] = d
        self.logger.scalars(values, epoch)

    def evaluate(self, split: str) -> dict:
        loader = self.split_loader(split)
        return evaluate(self.model, loader, self.task, self.contexts, split)

    # --- architectures ------------------------------------------------------------------
    def derive(self) -> Architecture:
        per_layer = {path: (int(p), int(m)) for path, p, m in
                     self.model.costs(soft=False, names=())["layers"]}
        decisions = []
        for entry in self.model.layers:
            params, macs = per_layer[entry.path]
            cost = {"params": params, "macs": macs}
            layer = entry.block
            if entry.role != "pit":
                channels = int(entry.output_shape[1]) if len(entry.output_shape) > 1 else 1
                decisions.append(Decision(entry.path, "channels", channels, [channels],
                                          "keep", cost))
                continue
            full = layer.output_features_calculator.size
            masker = layer.out_features_masker
            options = list(range(1, full + 1)) if masker is not None else [full]
            value = int(layer.out_features_opt)
            decisions.append(Decision(entry.path, "channels", value, options,
                                      decision_kind(value, full), cost))
            if isinstance(layer, PITConvBase):
                for axis in range(layer.ndim):
                    if not layer.time_searchable(axis):
                        continue
                    suffix = "" if layer.ndim == 1 else ("_h" if axis == 0 else "_w")
                    taps, step = layer.tap_choice(axis)
                    k_full = layer.kernel_size[axis]
                    dilation = 1 if taps == 1 else step * layer.dilation[axis]
                    decisions.append(Decision(entry.path, f"kernel{suffix}", taps,
                                              list(range(1, k_full + 1)),
                                              decision_kind(taps, k_full)))
                    options = sorted(set(layer.dilation_options(axis)) | {1})
                    decisions.append(Decision(entry.path, f"dilation{suffix}", dilation, options,
                                              decision_kind(dilation, layer.dilation[axis])))
        derived = self._discrete_costs()
        costs = dict(derived)
        costs.update({f"{k}_full": v for k, v in self.full_costs.items()})
        costs.update(cost_name=self.cost_name, cost=float(derived[self.cost_name]),
                     cost_ratio=float(derived[self.cost_name]) / max(self.full_cost, 1.0))
        return self.make_architecture(decisions, costs)

    def build(self, architecture: Architecture) -> gluon.HybridBlock:
        self.check_architecture(architecture)
        layers = {path: layer for path, layer in self.model.pit_layers}
        known = {entry.path for entry in self.model.layers}
        counts: dict[int, int] = {}
        owner: dict[int, str] = {}
        taps: dict[str, dict[str, int]] = {}
        for decision in architecture.decisions:
            if decision.name not in known:
                raise ArchitectureError(f"architecture names layer {decision.name!r}, which the "
                                        f"model {self.model_name!r} does not have")
            layer = layers.get(decision.name)
            if layer is None:
                continue
            value = int(decision.value)
            if decision.choice == "channels":
                masker = layer.out_features_masker
                full = layer.output_features_calculator.size
                if not 1 <= value <= full or (masker is None and value != full):
                    raise ArchitectureError(f"{decision.name}: {value} channels is not possible "
                                            f"(1..{full}, or exactly {full} when not searched)")
                if masker is None:
                    continue
                if id(masker) in counts and counts[id(masker)] != value:
                    raise ArchitectureError(
                        f"{decision.name} and {owner[id(masker)]} share their channels (outputs "
                        f"added, or a depthwise layer) but ask for {value} and "
                        f"{counts[id(masker)]}")
                counts[id(masker)] = value
                owner[id(masker)] = decision.name
            else:
                taps.setdefault(decision.name, {})[decision.choice] = value
        tap_choices = {}
        for path, chosen in taps.items():
            layer = layers[path]
            kernel, dilation = list(layer.kernel_size_opt), list(layer.dilation_opt)
            for axis in range(layer.ndim):
                suffix = "" if layer.ndim == 1 else ("_h" if axis == 0 else "_w")
                kernel[axis] = chosen.get(f"kernel{suffix}", kernel[axis])
                dilation[axis] = chosen.get(f"dilation{suffix}", dilation[axis])
                if kernel[axis] == 1:
                    dilation[axis] = layer.dilation[axis]
            tap_choices[path] = (tuple(kernel), tuple(dilation))
        try:
            net = self.model.export(counts, tap_choices)
        except ValueError as exc:
            raise ArchitectureError(f"cannot build the architecture: {exc}") from None
        net(nd.zeros((1, *self.input_shape)))
        return net

    @classmethod
    def config_for_architecture(cls, architecture: Architecture) -> dict:
        """model.options back from the record (classes, input channels and inputs come from
        the data)."""
        options = {k: v for k, v in architecture.model_options.items()
                   if k not in ("classes", "in_channels", "inputs")}
        return {"method": cls.name, "model": {"name": architecture.base_model,
                                               "options": options}}

    # --- state --------------------------------------------------------------------------
    def _state_params(self) -> dict[str, gluon.Parameter]:
        """What a checkpoint holds of the model: weights, statistics and the mask bank, not
        the constants rebuilt from the network's structure."""
        return {k: p for k, p in structural_params(self.model).items()
                if not isinstance(p, gluon.Constant)}

    def state(self) -> tuple[dict, dict]:
        arrays = parameter_arrays(self._state_params())
        weight_arrays, weight_state = self.weights.state("weights_opt")
        arrays.update(weight_arrays)
        json_state = {"global_step": self.weights.global_step, "weights_opt": weight_state,
                      "parameters": len(arrays)}
        if self.arch_trainer is not None:
            arch_arrays, arch_state = trainer_state(self.arch_trainer, "arch_opt")
            arrays.update(arch_arrays)
            json_state["arch_opt"] = arch_state
        return arrays, json_state

    def load_state(self, arrays: dict, json_state: dict) -> None:
        def missing(name: str) -> str:
            if name.endswith("/masks") and any(k.endswith("alpha") for k in arrays):
                return (f"checkpoint lacks {name}: written by an older LightNAS, which kept one "
                        f"parameter per mask; start the search again with this version")
            return f"checkpoint lacks {name}: written by another model"
        restore_parameters(self._state_params(), arrays, missing=missing)
        self.weights.load_state("weights_opt", arrays, json_state["weights_opt"],
                                json_state["global_step"])
        if self.arch_trainer is not None and "arch_opt" in json_state:
            load_trainer_state(self.arch_trainer, "arch_opt", arrays, json_state["arch_opt"])

