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
from mxnet import autograd, gluon, nd
from mxnet.gluon import nn
from omegaconf import OmegaConf

import bmxnet_models
from lightnas_cli.checkpoint import load_trainer_state, trainer_state
from lightnas_cli.errors import ArchitectureError, ConfigError
from lightnas_cli.search.base import Architecture, Decision, SearchMethod, register_method
from lightnas_cli.search.enas.method import learning_rate, make_trainer, structural_params
from lightnas_cli.search.pit.conv import PITConvBase
from lightnas_cli.search.pit.model import PITModel
from lightnas_cli.seeding import seed_everything

EXCLUDABLE_TYPES = {"Conv1D": nn.Conv1D, "Conv2D": nn.Conv2D, "Dense": nn.Dense,
                    "BatchNorm": nn.BatchNorm}
#: Architecture cost names of the regularizers (as `lightnas_cli.costs` names them).
COST_NAMES = {"size": "params", "macs": "macs", "flops": "flops"}


def decision_kind(value: int, full: int) -> str:
    """How graphs colour a PIT decision: "pruned" when it cut something, else "keep"."""
    return "pruned" if value != full else "keep"


@register_method("pit")
class PitSearch(SearchMethod):
    """PIT over the Conv/Dense layers of a zoo model (see the module docstring)."""

    def __init__(self, config, data, contexts, logger):
        super().__init__(config, data, contexts, logger)
        self.pit_cfg = config.pit
        self._check_config()
        factory = bmxnet_models.get_model_factory(self.model_name)
        accepted = inspect.signature(factory).parameters
        self.task = self.pit_cfg.task
        if self.task == "auto":
            self.task = "classification" if "classes" in accepted else "reconstruction"
        options = dict(OmegaConf.to_container(config.model.options, resolve=True))
        if "classes" in accepted and self.task == "classification":
            options.setdefault("classes", self.classes)
        if "in_channels" in accepted:
            options.setdefault("in_channels", self.input_shape[0])
        if "inputs" in accepted:
            options.setdefault("inputs", int(np.prod(self.input_shape)))
        self.model_options = options
        seed_everything(config.seed, "init")
        net = bmxnet_models.get_model(self.model_name, prefix=f"{self.model_name}_", **options)
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
        self.full_costs = self._discrete_costs()
        self.cost_name = COST_NAMES[self.pit_cfg.regularizer]
        self.full_cost = float(self.full_costs[self.cost_name])
        if config.train.hybridize and self.model.hybrid_trainable:
            self.model.hybridize()
        elif config.train.hybridize:
            logger.info("pit: training imperatively (not hybridized): MXNet 1.9.1 cannot "
                        "back-propagate a hybridized batch norm over 1-D (N x C x L) data")
        self._masks_frozen: bool | None = None
        self.trainer = make_trainer(self.model.net_parameters(), config, contexts)
        nas = self.model.nas_parameters()
        arch_lr = self.pit_cfg.arch_lr if self.pit_cfg.arch_lr is not None else config.train.lr
        self.arch_trainer = gluon.Trainer(
            nas, self.pit_cfg.arch_optimizer, {"learning_rate": float(arch_lr)},
            kvstore="device" if len(contexts) > 1 else None,
            update_on_kvstore=False) if nas else None
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
        self.global_step = 0

    def _check_config(self) -> None:
        cfg, epochs = self.pit_cfg, int(self.config.train.epochs)
        if cfg.warmup_epochs < 0 or cfg.finetune_epochs < 0:
            raise ConfigError("pit.warmup_epochs and pit.finetune_epochs must be >= 0")
        if cfg.warmup_epochs + cfg.finetune_epochs > epochs:
            raise ConfigError(f"pit.warmup_epochs ({cfg.warmup_epochs}) + pit.finetune_epochs "
                              f"({cfg.finetune_epochs}) exceed train.epochs ({epochs}); the "
                              f"search runs in the epochs left between them")
        if not 0.0 < cfg.threshold < 1.0:
            raise ConfigError(f"pit.threshold must be in (0, 1), got {cfg.threshold}")
        if cfg.strength < 0:
            raise ConfigError(f"pit.strength (λ) must be >= 0, got {cfg.strength}")
        unknown = [t for t in cfg.exclude_types if t not in EXCLUDABLE_TYPES]
        if unknown:
            raise ConfigError(f"pit.exclude_types: unknown type(s) {unknown}; allowed: "
                              f"{', '.join(EXCLUDABLE_TYPES)}")

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
        found = self.model.costs(soft=False)
        return {"params": int(found["size"]), "macs": int(found["macs"]),
                "flops": int(found["flops"])}

    def _regularizer(self, ctx: mx.Context) -> nd.NDArray:
        value = self.model.regularizer(self.pit_cfg.regularizer, ctx)
        if self.pit_cfg.normalize:
            value = value / self.full_cost
        return value

    # --- training -----------------------------------------------------------------------
    def _task_loss(self, out: nd.NDArray, label: nd.NDArray, data: nd.NDArray) -> nd.NDArray:
        if self.task == "reconstruction":
            target = data.reshape((data.shape[0], -1))
            return ((out.reshape((out.shape[0], -1)) - target) ** 2).mean(axis=1)
        return self.loss_fn(out, label)

    def train_epoch(self, epoch: int) -> dict:
        config = self.config
        phase = self.phase(epoch)
        self._set_masks_frozen(phase != "search")
        regularize = phase == "search" and self.pit_cfg.strength > 0
        loader = self.data.train
        loader.set_epoch(config.seed, epoch)
        steps = len(loader)
        total_steps = steps * config.train.epochs
        loss_sum, reg_sum, correct, seen = 0.0, 0.0, 0, 0
        strength = float(self.pit_cfg.strength)
        with self.logger.epoch_progress(epoch, config.train.epochs, steps,
                                        config.train.batch_size) as progress:
            for data, label in loader:
                self.trainer.set_learning_rate(learning_rate(config, self.global_step,
                                                             total_steps))
                batch = data.shape[0]
                xs = gluon.utils.split_and_load(data, self.contexts, even_split=False)
                ys = gluon.utils.split_and_load(label, self.contexts, even_split=False)
                with autograd.record():
                    outputs = [self.model(x) for x in xs]
                    losses = [self._task_loss(o, y, x) for o, x, y in zip(outputs, xs, ys)]
                    totals = [loss.sum() for loss in losses]
                    if regularize:
                        regs = [self._regularizer(x.context) for x in xs]
                        # trainer.step(batch) divides by batch: add batch·λ·reg in all, split
                        # over devices (their gradients are summed).
                        share = batch * strength / len(xs)
                        totals = [t + share * r for t, r in zip(totals, regs)]
                autograd.backward(totals)
                self.trainer.step(batch)
                if regularize and self.arch_trainer is not None:
                    self.arch_trainer.step(batch)
                self.global_step += 1
                loss_sum += sum(float(loss.sum().asscalar()) for loss in losses)
                if regularize:
                    reg_sum += float(regs[0].asscalar()) * batch
                if self.task == "classification":
                    correct += sum(int((o.argmax(axis=1) == y).sum().asscalar())
                                   for o, y in zip(outputs, ys))
                seen += batch
                shown = {"loss": loss_sum / seen}
                if self.task == "classification":
                    shown["acc"] = correct / seen
                progress.update(batches=1, samples=batch, metrics=shown)
        metrics: dict = {"train_loss": loss_sum / max(seen, 1)}
        if self.task == "classification":
            metrics["train_accuracy"] = correct / max(seen, 1)
        derived = self._discrete_costs()
        metrics.update(lr=learning_rate(config, self.global_step, total_steps), phase=phase,
                       strength=strength if regularize else 0.0,
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
        loss_sum, correct, seen = 0.0, 0, 0
        for data, label in loader:
            for x, y in zip(gluon.utils.split_and_load(data, self.contexts, even_split=False),
                            gluon.utils.split_and_load(label, self.contexts, even_split=False)):
                out = self.model(x)
                loss_sum += float(self._task_loss(out, y, x).sum().asscalar())
                if self.task == "classification":
                    correct += int((out.argmax(axis=1) == y).sum().asscalar())
                seen += x.shape[0]
        result = {f"{split}_loss": loss_sum / max(seen, 1)}
        if self.task == "classification":
            result[f"{split}_accuracy"] = correct / max(seen, 1)
        return result

    # --- architectures ------------------------------------------------------------------
    def derive(self) -> Architecture:
        per_layer = {path: (int(p), int(m)) for path, p, m in
                     self.model.costs(soft=False)["layers"]}
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
        weight_arrays, weight_state = trainer_state(self.trainer, "weights_opt")
        arrays.update(weight_arrays)
        json_state = {"global_step": self.global_step, "weights_opt": weight_state,
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
        load_trainer_state(self.trainer, "weights_opt", arrays, json_state["weights_opt"])
        if self.arch_trainer is not None and "arch_opt" in json_state:
            load_trainer_state(self.arch_trainer, "arch_opt", arrays, json_state["arch_opt"])
        self.global_step = int(json_state["global_step"])

