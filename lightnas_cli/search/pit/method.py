"""The `pit` search method: Pruning In Time on a zoo network, inside the shared runner.

Risso et al. (2021), PLiNIO's training recipe: the seed network is converted to PIT layers and
trained with

    loss = task loss + λ · regularizer

where the regularizer is the network's size, MACs or FLOPs computed from the continuous masks
(`pit.regularizer`, `pit.strength` = λ; `pit.normalize` divides it by the seed's cost so λ is
relative). Weights and masks have separate optimizers. Epochs run in three phases:

1. warm-up (`pit.warmup_epochs`): weights only, masks frozen at 1, no regularizer;
2. search: weights and masks, with the regularizer;
3. fine-tuning (`pit.finetune_epochs`): masks frozen at their binarized values, weights only.

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
from lightnas_cli.search.pit.model import PITModel
from lightnas_cli.search.pit.regularizers import REPORTED_COSTS
from lightnas_cli.search.training import (TASKS, evaluate, make_trainer, structural_params,
                                          weight_trainer)
from lightnas_cli.seeding import seed_everything

#: The Gluon classes `pit.exclude_types` names (the schema lists the allowed names).
EXCLUDABLE_TYPES = {"Conv1D": nn.Conv1D, "Conv2D": nn.Conv2D, "Dense": nn.Dense,
                    "BatchNorm": nn.BatchNorm}


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
        self.cost_name = regularizer_cost_model(self.pit_cfg.regularizer)
        self.cost_names = tuple(dict.fromkeys(REPORTED_COSTS + (self.cost_name,)))
        self.full_costs = self._discrete_costs()
        self.full_cost = float(self.full_costs[self.cost_name])
        if config.train.hybridize and self.model.hybrid_trainable:
            self.model.hybridize()
        elif config.train.hybridize:
            logger.info("pit: training imperatively (not hybridized): MXNet 1.9.1 cannot "
                        "back-propagate a hybridized batch norm over 1-D (N x C x L) data")
        self._masks_frozen: bool | None = None
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

    def _set_masks_frozen(self, frozen: bool) -> None:
        if self._masks_frozen is not frozen:
            self.model.freeze_masks(frozen)
            self._masks_frozen = frozen

    def _discrete_costs(self) -> dict:
        """The pruned network's reported costs and the regularizer's, by cost-model name."""
        found = self.model.costs(soft=False, names=self.cost_names)
        return {name: found[name] for name in self.cost_names}

    def _regularizer(self, ctx: mx.Context) -> nd.NDArray:
        value = self.model.regularizer(self.pit_cfg.regularizer, ctx)
        if self.pit_cfg.normalize:
            value = value / self.full_cost
        return value

    # --- training -----------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        config = self.config
        phase = self.phase(epoch)
        self._set_masks_frozen(phase != "search")
        regularize = phase == "search" and self.pit_cfg.strength > 0
        loader = self.data.train
        loader.set_epoch(config.seed, epoch)
        strength = float(self.pit_cfg.strength)
        batch_regs: list = []
        reg_sum, seen = 0.0, 0

        def add_regularizer(x: nd.NDArray, batch: int, shards: int) -> nd.NDArray:
            # trainer.step(batch) divides by batch: add batch·λ·reg in all, split over devices
            # (their gradients are summed).
            reg = self._regularizer(x.context)
            batch_regs.append(reg)
            return (batch * strength / shards) * reg

        def after_step(result) -> None:
            nonlocal reg_sum, seen
            seen += result.size
            if batch_regs:
                reg_sum += float(batch_regs[0].asscalar()) * result.size
                batch_regs.clear()

        with self.logger.epoch_progress(epoch, config.train.epochs, len(loader),
                                        config.train.batch_size) as progress:
            metrics = self.weights.train_epoch(
                self.model, loader, progress,
                extra_loss=add_regularizer if regularize else None,
                also_step=(self.arch_trainer,) if regularize and self.arch_trainer else (),
                after_step=after_step)
        derived = self._discrete_costs()
        metrics.update(phase=phase, strength=strength if regularize else 0.0,
                       regularizer=reg_sum / max(seen, 1) if regularize else 0.0,
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
        loader = getattr(self.data, split, None)
        if loader is None:
            raise ConfigError(f"data set has no {split!r} split")
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

    # --- state --------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict]:
        arrays = {f"net/{k}": p._reduce() for k, p in structural_params(self.model).items()}
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
        for key, param in structural_params(self.model).items():
            name = f"net/{key}"
            if name not in arrays:
                raise ArchitectureError(f"checkpoint lacks {name}: written by another model")
            # Fresh buffers first: after an inference pass oneDNN may hold a weight in its own
            # layout, and copying into such a buffer fails ("Check failed: to.IsDefaultData").
            param.initialize(ctx=param.list_ctx(), force_reinit=True)
            param.set_data(arrays[name])
        self.weights.load_state("weights_opt", arrays, json_state["weights_opt"],
                                json_state["global_step"])
        if self.arch_trainer is not None and "arch_opt" in json_state:
            load_trainer_state(self.arch_trainer, "arch_opt", arrays, json_state["arch_opt"])

