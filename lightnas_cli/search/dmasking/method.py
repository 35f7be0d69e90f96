"""The `dmasking` search method: FBNetV2 channel masking with U-Boost's systolic latency.

Seed 004 (DmaskingNAS), U-Boost NAS (arXiv 2203.12412), FBNetV2 (Wan et al. 2020):

    L = L_data + λ · L_latency,   L_latency = smooth systolic latency of the relaxed network
                                              / exact systolic latency of the largest network

Each epoch trains the weights with SGD on the training split (masks drawn from the Gumbel
softmax of α at the epoch's τ; no latency term: it does not depend on the weights), then α
with Adam on the held-out validation split (`data.eval_split_percentage`, 20 in the seed)
with the latency term. The first `dmasking.warmup_epochs` epochs skip the α pass. When the
stack has batch norms, their running statistics are then re-estimated for the derived
network (one forward pass over the training split), which evaluation and export use.

derive() takes the argmax of α per decision; its costs are the *exact* systolic latency
(cycles for a batch of `dmasking.systolic.batch`), with the largest and smallest networks
of the space beside it, and parameters/MACs. build() returns the zoo's `plain_stack` of the
chosen widths and kernels with the supernet's weights (the first channels, the centre of the
kernel), which computes what the masked supernet computes with one-hot gates.
"""
from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from omegaconf import OmegaConf

import bmxnet_models
from lightnas_cli import costs
from lightnas_cli.errors import ArchitectureError, ConfigError
from lightnas_cli.search.base import Architecture, Decision, SearchMethod
from lightnas_cli.search.dmasking.space import OUTPUT_NAME, SearchSpace
from lightnas_cli.search.dmasking.supernet import LatencyTap, MaskedNet, layer_descriptions
from lightnas_cli.search.relaxation import temperature_at
from lightnas_cli.search.training import (ClassificationTask, EpochTrainer,
                                          LearningRateSchedule, average_statistics, evaluate,
                                          make_trainer, parameter_arrays, restore_parameters,
                                          structural_params, weight_trainer)
from lightnas_cli.seeding import seed_everything

#: The zoo model every derived network is (bmxnet_models/lenet.py).
PLAIN_MODEL = "plain_stack"


def decision_kind(value: int, largest: int) -> str:
    """Graph colour of a decision: "pruned" when narrower than the largest option."""
    return "pruned" if value < largest else "keep"


class DMaskingSearch(SearchMethod):
    """DMasking over a plain stack (module docstring)."""

    def __init__(self, config, data, contexts, logger):
        self.dm = config.dmasking
        super().__init__(config, data, contexts, logger)
        self.space = SearchSpace(OmegaConf.to_container(self.dm.arch_def, resolve=True))
        if self.space.has_conv and len(self.input_shape) != 3:
            raise ConfigError(f"dmasking: arch_def has convolutions (2-D) but the data's "
                              f"samples have shape {self.input_shape}; use image data (C, H, W) "
                              f"or only dense layers")
        self.task = ClassificationTask()
        array = self.dm.systolic
        options = dict(s1=int(array.s1), s2=int(array.s2), batch=int(array.batch))
        self.exact = costs.get_cost_model("systolic", ceiling="exact", **options)
        self.smooth = costs.get_cost_model("systolic", ceiling="smooth",
                                           sharpness=float(array.sharpness), **options)
        self.templates, self.scales = self._templates()
        self.latency_largest = self.latency_of(self.space.extreme(largest=True))
        self.latency_smallest = self.latency_of(self.space.extreme(largest=False))
        seed_everything(config.seed, "init")
        self.supernet = MaskedNet(self.space, self.input_shape[0], self.classes, self.templates,
                                  self.scales, self.smooth, prefix=f"{self.model_name}_")
        self.supernet.initialize(ctx=contexts)
        if config.train.hybridize:
            self.supernet.hybridize()
        self.tap = LatencyTap(self.supernet)
        self.weights = weight_trainer(self.supernet.weight_params(), config.train, contexts,
                                     self.task)
        arch_lr = float(self.dm.arch_lr)
        self.arch = EpochTrainer(make_trainer(self.supernet.architecture_params(), "adam",
                                              arch_lr, contexts),
                                 contexts, self.task, lambda steps: LearningRateSchedule(arch_lr))
        names = [layer.name for layer in self.space.weight_layers]
        self.console_hidden = ("arch_loss", "l_latency", "expected_latency", "latency",
                               *(f"ch_{n}" for n in names), *(f"k_{n}" for n in names))

    def model_options_from(self, config) -> dict:
        """The zoo `plain_stack` options besides its layers: the data's channels and classes."""
        return {"in_channels": self.input_shape[0], "classes": self.classes}

    # --- latency ------------------------------------------------------------------------
    def _templates(self) -> tuple[list[costs.Layer], list[int]]:
        """Descriptions of the largest network's weight layers (one forward pass) and, per
        layer, how many input features one input channel gives (positions a flatten folds)."""
        net = self._plain(self.space.extreme(largest=True))
        net.initialize(ctx=mx.cpu())
        templates = costs.profile(net, self.input_shape)
        widths = [self.input_shape[0]] + [layer.spec["channels"]
                                          for layer in self.space.weight_layers]
        scales = []
        for template, width in zip(templates, widths):
            if template.in_channels % width:
                raise ConfigError(f"dmasking: layer {template.path} takes {template.in_channels} "
                                  f"inputs, not a multiple of the {width} channels before it")
            scales.append(int(template.in_channels // width))
        return templates, scales

    def _layers(self, values: dict) -> list[costs.Layer]:
        """Exact (int) descriptions of the network taking `values` (layer -> {choice: v})."""
        channels = [values.get(layer.name, {}).get("channels", layer.spec["channels"])
                    for layer in self.space.weight_layers] + [self.classes]
        areas = [values[layer.name]["kernel"] ** 2 if "kernel" in values.get(layer.name, {})
                 else None for layer in self.space.weight_layers] + [None]
        return layer_descriptions(self.templates, self.scales, self.input_shape[0], channels,
                                  areas)

    def latency_of(self, values: dict) -> int:
        """Exact systolic latency (cycles) of the network taking `values`."""
        return int(self.exact.total(self._layers(values)))

    def expected_latency(self) -> float:
        """Smooth latency at the expected counts under softmax(α) (no noise)."""
        channels, areas = [], []
        for layer, masked in zip(self.space.weight_layers, self.supernet.masked_layers()):
            channels.append(self._expectation(masked, "alpha", layer.channels)
                            if len(layer.channels) > 1 else layer.spec["channels"])
            areas.append(self._expectation(masked, "kernel_alpha", [k * k for k in layer.kernels])
                         if len(layer.kernels) > 1 else None)
        channels.append(self.classes)
        areas.append(None)
        value = self.supernet.latency(nd, channels, areas)
        return float(value.asscalar()) if isinstance(value, nd.NDArray) else float(value)

    @staticmethod
    def _expectation(masked: Any, attribute: str, options: Any) -> nd.NDArray:
        probabilities = nd.softmax(getattr(masked, attribute)._reduce())
        return nd.sum(probabilities * nd.array(options, dtype=np.float32))

    # --- training -----------------------------------------------------------------------
    def temperature(self, epoch: int) -> float:
        relax = self.config.relaxation
        return temperature_at(epoch, relax.initial_temperature, relax.temperature_decay)

    def train_epoch(self, epoch: int) -> dict:
        config = self.config
        tau = self.temperature(epoch)
        search = epoch > int(self.dm.warmup_epochs)
        noise = self.config.relaxation.noise
        self.supernet.configure(mode="sample", temperature=tau, noise=noise, latency=False)
        loader = self.data.train
        loader.set_epoch(config.seed, epoch)
        with self.logger.epoch_progress(epoch, config.train.epochs, len(loader),
                                        config.train.batch_size) as progress:
            metrics = self.weights.train_epoch(self.tap, loader, progress)
        metrics.update(phase="search" if search else "warmup", tau=tau)
        if search:
            metrics.update(self._train_alpha(epoch))
        self._recalibrate(epoch)
        metrics.update(self._architecture_metrics())
        return metrics

    def _recalibrate(self, epoch: int) -> None:
        """Batch-norm running statistics of the derived network, for evaluation and export.

        Training mixes sub-networks, so the running statistics of a shared channel are those
        of the mixture, not of the derived network (seen: 98% validation accuracy with batch
        statistics, 79% with the running ones, on the VGG-style digits search). One pass over
        the training split with argmax gates in training mode re-estimates them (momentum 0.9:
        the last batches dominate); no parameter is updated.
        """
        if not any(layer.spec.get("batchnorm") for layer in self.space.layers):
            return
        self.supernet.configure(mode="argmax", latency=False)
        loader = self.data.train
        loader.set_epoch(self.config.seed, epoch)
        for data, _ in loader:
            # MXNet 1.9's BatchNorm updates its running statistics in the backward pass: a
            # backward it must be (the gradients are left unused; the next step overwrites them).
            with autograd.record():
                heads = [self.supernet(shard)[0].sum() for shard in
                         gluon.utils.split_and_load(data, self.contexts, even_split=False)]
            autograd.backward(heads)
        # Launched workers each measured their own shard: use the mean of their estimates.
        average_statistics(self.supernet.collect_params(), "dmasking/recalibration")

    def _train_alpha(self, epoch: int) -> dict:
        """One pass of Adam on α over the validation split, with λ · L_latency."""
        config = self.config
        strength = float(self.dm.latency_weight)
        self.supernet.configure(latency=True)
        taken: list = []
        total, seen = 0.0, 0

        def latency_term(x: nd.NDArray, batch: int, shards: int) -> nd.NDArray:
            # trainer.step(batch) divides by the batch: add batch·λ·L in all, split over devices.
            relative = self.tap.latest[x.context] / self.latency_largest
            taken.append(relative)
            return (batch * strength / shards) * relative

        def after_step(result) -> None:
            nonlocal total, seen
            total += float(taken[0].asscalar()) * result.size
            seen += result.size
            taken.clear()

        loader = self.data.val
        loader.set_epoch(config.seed, epoch)
        with self.logger.epoch_progress(epoch, config.train.epochs, len(loader),
                                        config.train.batch_size) as progress:
            found = self.arch.train_epoch(self.tap, loader, progress, extra_loss=latency_term,
                                          after_step=after_step, prefix="arch")
        found.pop("lr", None)
        found["l_latency"] = total / max(seen, 1)
        return found

    def _architecture_metrics(self) -> dict:
        values = self.derived_values()
        latency = self.latency_of(values)
        metrics: dict[str, Any] = {"expected_latency": self.expected_latency(),
                                   "latency": latency,
                                   "latency_ratio": latency / self.latency_largest}
        widths = []
        for layer in self.space.weight_layers:
            chosen = values[layer.name]
            metrics[f"ch_{layer.name}"] = chosen["channels"]
            widths.append(str(chosen["channels"]))
            if len(layer.kernels) > 1:
                metrics[f"k_{layer.name}"] = chosen["kernel"]
        metrics["widths"] = "/".join(widths)
        return metrics

    def evaluate(self, split: str) -> dict:
        loader = self.split_loader(split)
        self.supernet.configure(mode="argmax", latency=False)
        return evaluate(self.tap, loader, self.task, self.contexts, split)

    # --- architectures ------------------------------------------------------------------
    def probabilities(self) -> dict[tuple[str, str], list[float]]:
        """softmax(α) of every searched decision, by (layer, choice)."""
        found = {}
        for layer, masked in zip(self.space.weight_layers, self.supernet.masked_layers()):
            for choice, attribute in (("channels", "alpha"), ("kernel", "kernel_alpha")):
                if hasattr(masked, attribute):
                    alpha = getattr(masked, attribute)._reduce()
                    found[(layer.name, choice)] = nd.softmax(alpha).asnumpy().tolist()
        return found

    def derived_values(self) -> dict[str, dict[str, int]]:
        """The argmax of α per decision (fixed layers keep their one option)."""
        probabilities = self.probabilities()
        values = {}
        for layer in self.space.weight_layers:
            chosen = {"channels": layer.channels[-1]}
            if layer.kind == "conv":
                chosen["kernel"] = layer.kernels[-1]
            for choice, options in layer.choices():
                chosen[choice] = options[int(np.argmax(probabilities[(layer.name, choice)]))]
            values[layer.name] = chosen
        return values

    def derive(self) -> Architecture:
        values = self.derived_values()
        probabilities = self.probabilities()
        layers = self._layers(values)
        params, macs = costs.get_cost_model("params"), costs.get_cost_model("macs")
        decisions = []
        for index, layer in enumerate(self.space.weight_layers + [None]):
            name = OUTPUT_NAME if layer is None else layer.name
            options = [self.classes] if layer is None else list(layer.channels)
            described = layers[index]
            cost = {"latency": int(self.exact.layer(described)),
                    "params": int(params(described)), "macs": int(macs(described))}
            value = self.classes if layer is None else values[name]["channels"]
            decisions.append(Decision(name, "channels", value, options,
                                      decision_kind(value, options[-1]), cost,
                                      _rounded(probabilities.get((name, "channels")))))
            if layer is not None and len(layer.kernels) > 1:
                kernel = values[name]["kernel"]
                decisions.append(Decision(name, "kernel", kernel, list(layer.kernels),
                                          decision_kind(kernel, layer.kernels[-1]), {},
                                          _rounded(probabilities.get((name, "kernel")))))
        summary = costs.summarize(layers)
        latency = self.latency_of(values)
        architecture_costs = {
            "latency": latency, "latency_largest": self.latency_largest,
            "latency_smallest": self.latency_smallest,
            "latency_ratio": latency / self.latency_largest,
            "params": summary.params, "macs": summary.macs,
            "cost_name": "systolic", "cost": latency}
        return self.make_architecture(decisions, architecture_costs)

    def describe(self, architecture: Architecture) -> dict[str, str]:
        """The derived stack, layer by layer."""
        specs = self.space.plain_specs(self._values(architecture))
        parts = []
        for spec in specs:
            if spec["type"] == "conv":
                parts.append(f"{spec['name']} {spec['channels']} ({spec['kernel']}x"
                             f"{spec['kernel']})")
            elif spec["type"] == "dense":
                parts.append(f"{spec['name']} {spec['channels']}")
        return {"layers": ", ".join(parts)}

    def _values(self, architecture: Architecture) -> dict[str, dict[str, int]]:
        """Per layer, the architecture's choices; refuses unknown layers or options."""
        layers = {layer.name: layer for layer in self.space.weight_layers}
        values: dict[str, dict[str, int]] = {}
        for decision in architecture.decisions:
            if decision.name == OUTPUT_NAME:
                if decision.value != self.classes:
                    raise ArchitectureError(f"{OUTPUT_NAME} must keep the data's "
                                            f"{self.classes} classes, got {decision.value}")
                continue
            layer = layers.get(decision.name)
            if layer is None:
                raise ArchitectureError(f"architecture names layer {decision.name!r}, which the "
                                        f"arch_def does not have (layers: {', '.join(layers)})")
            allowed = {"channels": layer.channels, "kernel": layer.kernels}.get(decision.choice)
            if not allowed:
                raise ArchitectureError(f"{decision.name}: unknown choice {decision.choice!r}")
            if decision.value not in allowed:
                raise ArchitectureError(f"{decision.name}: {decision.choice} {decision.value!r} "
                                        f"is not one of the options {list(allowed)}")
            values.setdefault(decision.name, {})[decision.choice] = int(decision.value)
        missing = [layer.name for layer, choice, _ in self.space.decisions()
                   if choice not in values.get(layer.name, {})]
        if missing:
            raise ArchitectureError(f"architecture does not choose for layer(s) {missing}")
        return values

    def _plain(self, values: dict) -> gluon.HybridBlock:
        return bmxnet_models.get_model(PLAIN_MODEL, layers=self.space.plain_specs(values),
                                       classes=self.classes, in_channels=self.input_shape[0],
                                       prefix=f"{self.model_name}_")

    def build(self, architecture: Architecture) -> gluon.HybridBlock:
        self.check_architecture(architecture)
        values = self._values(architecture)
        net = self._plain(values)
        net.initialize(ctx=mx.cpu())
        net(nd.zeros((1, *self.input_shape)))
        kept_in = self.input_shape[0]
        masked_layers = self.supernet.masked_layers()
        names = [layer.name for layer in self.space.weight_layers] + [OUTPUT_NAME]
        for index, (name, masked) in enumerate(zip(names, masked_layers)):
            chosen = values.get(name, {})
            target = net._children[name]
            out = self.classes if name == OUTPUT_NAME else chosen.get(
                "channels", self.space.weight_layers[index].spec["channels"])
            inputs = kept_in * self.scales[index]
            weight = masked.weight._reduce().asnumpy()[:out, :inputs]
            if weight.ndim == 4:
                kernel = chosen.get("kernel", weight.shape[-1])
                start = (weight.shape[-1] - kernel) // 2
                weight = weight[:, :, start:start + kernel, start:start + kernel]
            target.weight.set_data(nd.array(weight))
            target.bias.set_data(masked.bias._reduce()[:out])
            if hasattr(masked, "gamma"):
                norm = net._children[f"{name}_bn"]
                for key in ("gamma", "beta", "running_mean", "running_var"):
                    getattr(norm, key).set_data(getattr(masked, key)._reduce()[:out])
            kept_in = out
        return net

    # --- state --------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict]:
        arrays = parameter_arrays(structural_params(self.supernet))
        weight_arrays, weight_state = self.weights.state("weights_opt")
        arch_arrays, arch_state = self.arch.state("arch_opt")
        arrays.update(weight_arrays)
        arrays.update(arch_arrays)
        return arrays, {"weights_step": self.weights.global_step,
                        "arch_step": self.arch.global_step, "weights_opt": weight_state,
                        "arch_opt": arch_state, "decisions": len(self.space.decisions())}

    def load_state(self, arrays: dict, json_state: dict) -> None:
        if json_state.get("decisions") != len(self.space.decisions()):
            raise ArchitectureError("checkpoint was written for a different arch_def")
        restore_parameters(structural_params(self.supernet), arrays,
                           missing=lambda name: f"checkpoint lacks {name}: written for another "
                                                f"arch_def")
        self.weights.load_state("weights_opt", arrays, json_state["weights_opt"],
                                json_state["weights_step"])
        self.arch.load_state("arch_opt", arrays, json_state["arch_opt"], json_state["arch_step"])


def _rounded(values: list[float] | None) -> list[float] | None:
    return None if values is None else [round(float(v), 6) for v in values]
