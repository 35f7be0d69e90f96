"""The `fbnet` search method (Wu et al., "FBNet", CVPR 2019; seed 003's MXNet port).

Each searchable layer of the zoo's supernet mixes its candidate blocks with Gumbel-softmax
weights m = softmax((θ + g)/τ) (`search/relaxation.py`). Per epoch:

1. the weights train on the training split (SGD, `train.*`; task loss only: the latency term
   does not depend on the weights, and as a factor it would only rescale their learning rate);
2. after `fbnet.warmup_epochs` epochs of weights only, θ trains on the validation split (Adam,
   `fbnet.arch_*`) with the loss

       multiply (the paper):  CE · α · log(LAT)^β
       add      (seed 003):   CE + α · log(LAT)^β

   where LAT is the expected latency of the sampled mixture from the measured table
   (`latency_table` cost model) and log(LAT) is computed as log(1 + LAT / latency_unit_ms):
   the paper's log(LAT_ms) is undefined below 1 ms and negative (so the power is NaN) or zero
   up to it, which would stop the latency pressure on exactly the small networks a CPU runs
   in under a millisecond; above ~20 ms the two differ by less than 2%.

3. in the last `fbnet.finetune_epochs` epochs the derived network (argmax θ, now frozen)
   trains alone from the supernet's weights (the `train.*` schedule runs again over these
   epochs), and hands its weights back to the supernet after each epoch.

τ starts at `relaxation.initial_temperature` and is multiplied by exp(-temperature_decay)
after each search epoch (warm-up epochs keep the initial τ). `derive()` takes argmax θ per
layer; `sample_architectures` draws from softmax(θ) (`lightnas export --sample`). Validation
and test metrics are those of the derived network, its BatchNorm statistics re-estimated
first (`fbnet.bn_recalibration_batches`).
"""
from __future__ import annotations

from types import SimpleNamespace

import mxnet as mx
import numpy as np
from mxnet import gluon, nd
from omegaconf import OmegaConf

import bmxnet_models
from bmxnet_models.fbnet import margin_logits
from lightnas_cli import costs
from lightnas_cli.costs.latency_table import LatencyTable, entry_key
from lightnas_cli.errors import ArchitectureError
from lightnas_cli.search.base import Architecture, Decision, SearchMethod
from lightnas_cli.search.fbnet import space as fbnet_space
from lightnas_cli.search.fbnet.supernet import FBNetSupernet
from lightnas_cli.search.relaxation import temperature_at
from lightnas_cli.search.training import (ClassificationTask, EpochTrainer, LearningRateSchedule,
                                          average_statistics, evaluate, make_trainer,
                                          parameter_arrays, restore_parameters,
                                          schedule_from_config, structural_params,
                                          weight_trainer, weight_trainer_from_config)
from lightnas_cli.seeding import derive_seed, seed_everything


class MarginTask(ClassificationTask):
    """Cross-entropy on the margin logits of an AM-Softmax / ArcFace head (the network outputs
    s·cos; the prediction is its arg-max, so accuracy is unchanged)."""

    def __init__(self, kind: str, margin: float, scale: float):
        super().__init__()
        self.kind, self.margin, self.scale = kind, float(margin), float(scale)

    def loss(self, output: nd.NDArray, label: nd.NDArray, data: nd.NDArray) -> nd.NDArray:
        return self._loss(margin_logits(nd, output, label, self.kind, self.margin, self.scale),
                          label)


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


class FBNetSearch(SearchMethod):
    """FBNet's differentiable search with a measured latency table (module docstring)."""

    console_hidden = ("arch_lr", "arch_loss", "sampled_latency_ms")

    def __init__(self, config, data, contexts, logger):
        super().__init__(config, data, contexts, logger)
        self.fb = config.fbnet
        self.relaxation = config.relaxation
        seed_everything(config.seed, "init")
        space = fbnet_space.latency_space(config, data.spec)
        self.table = LatencyTable.load(space.default_table)
        self.table.check_space(space)
        price = costs.get_cost_model("latency_table", table=self.table)
        net = bmxnet_models.get_model(self.model_name, prefix=f"{self.model_name}_",
                                      **self.model_options)
        self.specs = list(net.specs)
        shapes = {layer.name: layer for layer in space.layers + space.fixed}

        def block(name: str, candidate: str = "") -> costs.Layer:
            layer = shapes[name]
            return costs.Layer(op="block", in_channels=layer.input_shape[0],
                               out_channels=layer.output_shape[0],
                               input_shape=(1, *layer.input_shape),
                               output_shape=(1, *layer.output_shape),
                               key=entry_key(name, candidate), name=name, path=name)

        self.latencies = [[float(price(block(spec.name, c))) for c in spec.candidates]
                          for spec in self.specs]
        self.fixed_ms = float(price.total([block(part.name) for part in space.fixed]))
        self.supernet = FBNetSupernet(net, self.latencies, self.fixed_ms, self.fb.theta_init,
                                      self.relaxation.noise, prefix="search_")
        self.tau = float(self.relaxation.initial_temperature)
        self.supernet.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in",
                                                magnitude=2), ctx=contexts)
        self._profile_counts(net)
        if config.train.hybridize:
            self.supernet.hybridize()
        head = net.head
        self.task = (MarginTask(head.kind, head.margin, head.scale)
                     if hasattr(head, "margin") else ClassificationTask())
        self.weights = weight_trainer(net.collect_params(), config.train, contexts, self.task)
        momentum = 0.9 if self.fb.arch_optimizer == "sgd" else None
        arch_lr = float(self.fb.arch_lr)
        self.arch = EpochTrainer(
            make_trainer(self.supernet.thetas(), self.fb.arch_optimizer, arch_lr, contexts,
                         weight_decay=float(self.fb.arch_weight_decay), momentum=momentum),
            contexts, self.task, lambda steps: LearningRateSchedule(arch_lr, "constant"))
        self._latency: dict = {}
        # (derived network, its EpochTrainer, chosen indices) once fine-tuning has begun.
        self._finetune: tuple | None = None

    def model_options_from(self, config) -> dict:
        return fbnet_space.zoo_options(config, self.input_shape, self.classes)

    @classmethod
    def latency_space(cls, config, spec):
        return fbnet_space.latency_space(config, spec)

    # --- counts ---------------------------------------------------------------------------
    def _profile_counts(self, net: gluon.HybridBlock) -> None:
        """Parameters and MACs of the fixed part and of every candidate, from one batch-1 pass
        of the (not yet hybridized) supernet, so any architecture's counts are exact sums.
        (A deformable convolution's weights are not counted: `costs.profile` knows layers
        with a `weight`.)"""
        layers = costs.profile(net, self.input_shape, self.contexts[0])
        params, macs = costs.get_cost_model("params"), costs.get_cost_model("macs")
        self.base_counts = np.zeros(2)
        self.candidate_counts = [np.zeros((len(spec.candidates), 2)) for spec in self.specs]
        for layer in layers:
            counts = np.array([params(layer), macs(layer)], dtype=np.float64)
            parts = layer.path.split(".")
            if parts[0] == "layers" and len(parts) > 3 and parts[2] == "candidates":
                self.candidate_counts[int(parts[1])][int(parts[3])] += counts
            else:
                self.base_counts += counts

    # --- training -------------------------------------------------------------------------
    def _forward(self, x: nd.NDArray) -> nd.NDArray:
        logits, latency = self.supernet(x, nd.array([self.tau], ctx=x.context))
        self._latency[x.context] = latency
        return logits

    def _latency_term(self, ctx) -> nd.NDArray:
        """α · log(1 + LAT/unit)^β of the shard on `ctx` (LAT averaged over its samples)."""
        latency = self._latency[ctx].mean()
        return float(self.fb.alpha) * nd.power(nd.log(1.0 + latency / float(
            self.fb.latency_unit_ms)), float(self.fb.beta))

    def temperature(self, epoch: int) -> float:
        warm = int(self.fb.warmup_epochs)
        initial = float(self.relaxation.initial_temperature)
        if epoch <= warm:
            return initial
        return temperature_at(epoch - warm, initial, float(self.relaxation.temperature_decay))

    def phase(self, epoch: int) -> str:
        """warmup | search | finetune for a (1-based) epoch."""
        if epoch <= int(self.fb.warmup_epochs):
            return "warmup"
        if epoch > int(self.config.train.epochs) - int(self.fb.finetune_epochs):
            return "finetune"
        return "search"

    def train_epoch(self, epoch: int) -> dict:
        config = self.config
        phase = self.phase(epoch)
        if phase == "finetune":
            return self._finetune_epoch(epoch)
        searching = phase == "search"
        tau = self.tau = self.temperature(epoch)
        loader, val = self.data.train, self.data.val
        loader.set_epoch(config.seed, epoch)
        val.set_epoch(config.seed, epoch)
        steps = len(loader) + (len(val) if searching else 0)
        # One bar for both phases: the epoch's img/s counts every image it passed.
        with self.logger.epoch_progress(epoch, config.train.epochs, steps,
                                        config.train.batch_size) as progress:
            metrics = self.weights.train_epoch(self._forward, loader, progress,
                                               statistics=self.supernet.collect_params())
            if searching:
                metrics.update(self._search_theta(val, progress))
        metrics["phase"] = "search" if searching else "warmup"
        metrics["temperature"] = tau
        metrics["expected_latency_ms"] = self.expected_latency()
        return metrics

    def _finetune_epoch(self, epoch: int) -> dict:
        """One epoch of the derived network alone; its weights go back into the supernet."""
        if self._finetune is None:
            self._start_finetune()
        net, trainer, chosen = self._finetune
        loader = self.data.train
        loader.set_epoch(self.config.seed, epoch)
        with self.logger.epoch_progress(epoch, self.config.train.epochs, len(loader),
                                        self.config.train.batch_size) as progress:
            metrics = trainer.train_epoch(net, loader, progress)
        self._hand_back(net, chosen)
        metrics["phase"] = "finetune"
        metrics["expected_latency_ms"] = self.expected_latency()
        return metrics

    def _start_finetune(self, global_step: int = 0) -> None:
        """The derived network and its own Trainer, whose schedule (`train.*`: the same
        optimizer, rate, schedule and warm-up) runs again over the fine-tuning epochs: the
        weights' own schedule is near its end by then."""
        architecture = self.derive()
        chosen = self._choices(architecture)
        net = self.build(architecture)
        net.collect_params().reset_ctx(self.contexts)
        if self.config.train.hybridize:
            net.hybridize()
        train = self.config.train
        epochs = int(self.fb.finetune_epochs)
        warmup = min(float(train.warmup_epochs), max(epochs - 1, 0))
        trainer = EpochTrainer(
            weight_trainer_from_config(net.collect_params(), train, self.contexts),
            self.contexts, self.task,
            lambda steps: schedule_from_config(SimpleNamespace(
                **{**OmegaConf.to_container(train), "epochs": epochs, "warmup_epochs": warmup}),
                steps))
        trainer.global_step = int(global_step)
        self._finetune = (net, trainer, chosen)

    def _hand_back(self, net: gluon.HybridBlock, chosen: list[int]) -> None:
        """Copy a derived network's parameters (running statistics included) into the
        supernet, so checkpoints, `build` and exports carry them."""
        source = structural_params(self.supernet.net)
        for path, param in structural_params(net).items():
            source[self._supernet_path(path, chosen)].set_data(param._reduce())

    def _search_theta(self, val, progress) -> dict:
        """One pass of θ's optimizer over the validation split."""
        sampled: list[float] = []

        def factor(x, batch, shards):
            return self._latency_term(x.context)

        def added(x, batch, shards):
            return (batch / shards) * self._latency_term(x.context)

        def record(result) -> None:
            sampled.append(float(np.mean([float(v.mean().asscalar())
                                          for v in self._latency.values()])))

        multiply = self.fb.loss == "multiply"
        arch = self.arch.train_epoch(self._forward, val, progress, prefix="arch",
                                     loss_factor=factor if multiply else None,
                                     extra_loss=None if multiply else added, after_step=record,
                                     statistics=self.supernet.collect_params())
        metrics = {k: v for k, v in arch.items() if k != "lr"}
        metrics["arch_lr"] = arch["lr"]
        metrics["sampled_latency_ms"] = float(np.mean(sampled)) if sampled else 0.0
        return metrics

    def evaluate(self, split: str) -> dict:
        loader = self.split_loader(split)
        architecture = self.derive()
        net = self.build(architecture)
        self._recalibrate(net, self._choices(architecture))
        net.collect_params().reset_ctx(self.contexts)
        net.hybridize()
        return evaluate(net, loader, self.task, self.contexts, split)

    def _recalibrate(self, net: gluon.HybridBlock, chosen: list[int]) -> None:
        """Re-estimate the derived network's BatchNorm statistics on training batches (the
        average over `fbnet.bn_recalibration_batches` batches) and keep them in the supernet,
        whose own training never reads running statistics. (Training, in the supernet or
        fine-tuning, uses batch statistics only, so this changes no weight: a resumed run
        matches the uninterrupted one.)"""
        batches = int(self.fb.bn_recalibration_batches)
        loader = self.data.train
        if not batches or loader is None:
            return
        norms = []

        def walk(block: gluon.Block) -> None:
            if isinstance(block, gluon.nn.BatchNorm):
                norms.append(block)
            for child in block._children.values():
                walk(child)

        walk(net)
        momentum = [block._kwargs["momentum"] for block in norms]
        loader.set_epoch(self.config.seed, 0)
        try:
            for index, (data, _) in enumerate(loader):
                if index == batches:
                    break
                for block in norms:  # running = mean of the batch statistics so far
                    block._kwargs["momentum"] = index / (index + 1)
                # MXNet 1.9.1 moves running statistics in the backward pass of a recorded
                # training-mode forward (not in a forward under train_mode alone).
                with mx.autograd.record():
                    out = net(data)
                out.backward()
        finally:
            for block, value in zip(norms, momentum):
                block._kwargs["momentum"] = value
        # Launched workers each measured their own shard: use the mean of their estimates.
        average_statistics(net.collect_params(), "fbnet/recalibration")
        source = structural_params(self.supernet.net)
        for path, param in structural_params(net).items():
            if path.endswith(("running_mean", "running_var")):
                source[self._supernet_path(path, chosen)].set_data(param._reduce())

    @staticmethod
    def _supernet_path(path: str, chosen: list[int]) -> str:
        """The supernet parameter a derived network's parameter comes from:
        layers.<l>.block.* is layers.<l>.candidates.<chosen[l]>.*; the rest is the same."""
        parts = path.split(".")
        if len(parts) > 2 and parts[0] == "layers" and parts[2] == "block":
            return ".".join(["layers", parts[1], "candidates", str(chosen[int(parts[1])])]
                            + parts[3:])
        return path

    # --- architectures --------------------------------------------------------------------
    def probabilities(self) -> list[np.ndarray]:
        """softmax(θ) per layer: the distribution `sample_architectures` draws from."""
        return [softmax(theta.data(self.contexts[0]).asnumpy().astype(np.float64))
                for theta in self.supernet.thetas()]

    def expected_latency(self) -> float:
        """Σ_l Σ_i softmax(θ_l)_i · LUT(l, i) + the fixed parts (ms)."""
        return self.fixed_ms + float(sum(np.dot(p, row) for p, row in
                                         zip(self.probabilities(), self.latencies)))

    def _architecture(self, chosen: list[int]) -> Architecture:
        probabilities = self.probabilities()
        decisions = []
        counts = self.base_counts.copy()
        latency = self.fixed_ms
        for spec, index, probs, row, cands in zip(self.specs, chosen, probabilities,
                                                  self.latencies, self.candidate_counts):
            value = spec.candidates[index]
            counts += cands[index]
            latency += row[index]
            decisions.append(Decision(
                name=spec.name, choice="block", value=value, options=list(spec.candidates),
                kind="skip" if value == "skip" else "other",
                cost={"latency_ms": round(row[index], 6), "params": int(cands[index][0]),
                      "macs": int(cands[index][1])},
                probabilities=[round(float(p), 6) for p in probs]))
        costs_record = {"latency_ms": latency, "expected_latency_ms": self.expected_latency(),
                        "params": int(counts[0]), "macs": int(counts[1]),
                        "latency_table": self.table.source, "cost_name": "latency_ms",
                        "cost": latency}
        return self.make_architecture(decisions, costs_record)

    def derive(self) -> Architecture:
        return self._architecture([int(np.argmax(p)) for p in self.probabilities()])

    def sample_architectures(self, count: int, seed: int) -> list[Architecture]:
        rng = np.random.RandomState(derive_seed(seed, "sample"))
        probabilities = self.probabilities()
        return [self._architecture([int(rng.choice(len(p), p=p)) for p in probabilities])
                for _ in range(int(count))]

    def describe(self, architecture: Architecture) -> dict[str, str]:
        return {"blocks": " ".join(str(d.value) for d in architecture.decisions),
                "latency": f"{architecture.costs.get('latency_ms', 0.0):.4f} ms predicted by "
                           f"{architecture.costs.get('latency_table', 'the table')}"}

    def _choices(self, architecture: Architecture) -> list[int]:
        self.check_architecture(architecture)
        if len(architecture.decisions) != len(self.specs):
            raise ArchitectureError(f"architecture has {len(architecture.decisions)} decisions, "
                                    f"the space has {len(self.specs)} searchable layers")
        chosen = []
        for decision, spec in zip(architecture.decisions, self.specs):
            if decision.name != spec.name or decision.value not in spec.candidates:
                raise ArchitectureError(f"decision {decision.name}={decision.value!r} does not "
                                        f"fit layer {spec.name} (candidates: "
                                        f"{', '.join(spec.candidates)})")
            chosen.append(spec.candidates.index(decision.value))
        return chosen

    def build(self, architecture: Architecture) -> gluon.HybridBlock:
        chosen = self._choices(architecture)
        values = [spec.candidates[i] for spec, i in zip(self.specs, chosen)]
        net = bmxnet_models.get_model(self.model_name, choices=values,
                                      prefix=f"{self.model_name}_",
                                      **architecture.model_options)
        net.initialize(ctx=mx.cpu())
        net(nd.zeros((1, *self.input_shape)))
        source = structural_params(self.supernet.net)
        for path, param in structural_params(net).items():
            path = self._supernet_path(path, chosen)
            if path not in source or source[path].shape != param.shape:
                raise ArchitectureError(f"derived network parameter {path} has no match in the "
                                        f"supernet")
            param.set_data(source[path]._reduce())
        return net

    def supernet_symbol(self) -> mx.sym.Symbol:
        """The searched supernet (θ, Gumbel noise, mixing and expected latency included) as an
        `mx.sym.Symbol` with inputs data and tau (shape (1,)) and outputs (logits, latency), for
        MXNet's Module API."""
        return mx.sym.Group(list(self.supernet(mx.sym.var("data"), mx.sym.var("tau"))))

    # --- state ----------------------------------------------------------------------------
    def _thetas(self) -> dict[str, gluon.Parameter]:
        """θ of every searchable layer, by layer index (their checkpoint names)."""
        return {str(i): theta for i, theta in enumerate(self.supernet.thetas())}

    def state(self) -> tuple[dict, dict]:
        arrays = parameter_arrays(structural_params(self.supernet.net))
        arrays.update(parameter_arrays(self._thetas(), prefix="theta/"))
        weight_arrays, weight_state = self.weights.state("weights_opt")
        arch_arrays, arch_state = self.arch.state("arch_opt")
        arrays.update(weight_arrays)
        arrays.update(arch_arrays)
        json_state = {"global_step": self.weights.global_step,
                      "arch_step": self.arch.global_step, "weights_opt": weight_state,
                      "arch_opt": arch_state, "layers": len(self.specs),
                      "candidates": [len(spec.candidates) for spec in self.specs]}
        if self._finetune is not None:
            _, trainer, _ = self._finetune
            finetune_arrays, finetune_state = trainer.state("finetune_opt")
            arrays.update(finetune_arrays)
            json_state.update(finetune_opt=finetune_state, finetune_step=trainer.global_step)
        return arrays, json_state

    def load_state(self, arrays: dict, json_state: dict) -> None:
        if json_state.get("candidates") != [len(spec.candidates) for spec in self.specs]:
            raise ArchitectureError("checkpoint was written for a different FBNet space")
        restore_parameters(structural_params(self.supernet.net), arrays)
        restore_parameters(self._thetas(), arrays, prefix="theta/")
        self.weights.load_state("weights_opt", arrays, json_state["weights_opt"],
                                json_state["global_step"])
        self.arch.load_state("arch_opt", arrays, json_state["arch_opt"], json_state["arch_step"])
        self._finetune = None
        if "finetune_opt" in json_state:
            # The derived network is rebuilt from the supernet (its weights were handed back).
            self._start_finetune(json_state["finetune_step"])
            _, trainer, _ = self._finetune
            trainer.load_state("finetune_opt", arrays, json_state["finetune_opt"],
                               json_state["finetune_step"])
