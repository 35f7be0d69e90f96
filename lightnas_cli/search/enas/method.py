"""ENAS search (Pham et al., 2018) over a supernet of `enas_unit` blocks.

Per training step the controller samples one architecture and the supernet trains only that
path. Every `controller.update_every` steps (or after the epoch with
`enas.only_post_training_eval`), the controller samples `controller.batch_size` architectures,
each is scored on a validation batch, and REINFORCE updates the controller with

    reward = accuracy * (cost_target / cost) ** cost_weight

where the cost (`params`, `binary_memory`, `macs`) comes from `lightnas_cli.costs`. Costs of a
sampled architecture are exact sums of per-unit costs measured once at start-up, so scoring an
architecture costs no extra forward pass.
"""
from __future__ import annotations

import itertools
import math

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon, nd
from omegaconf import OmegaConf

import bmxnet_models
from lightnas_cli import costs as cost_models
from lightnas_cli.checkpoint import load_trainer_state, trainer_state
from lightnas_cli.errors import ArchitectureError, ConfigError
from lightnas_cli.search.base import Architecture, Decision, SearchMethod, register_method
from lightnas_cli.search.enas.controller import Controller, Reinforce
from bmxnet_models.enas.unit import (EnasUnit, active_parameters, find_units, fixed_choices,
                                     hybridize_supernet)
from lightnas_cli.search.enas.space import decision_kind, unit_paths
from lightnas_cli.seeding import derive_seed, seed_everything

def structural_params(net: gluon.Block) -> dict[str, gluon.Parameter]:
    """Parameters by structural name (stable across processes), each shared one once."""
    result, seen = {}, set()
    for name, param in net._collect_params_with_prefix().items():
        if id(param) not in seen:
            seen.add(id(param))
            result[name] = param
    return result


def learning_rate(config, step: int, total_steps: int) -> float:
    """Cosine decay from train.lr to 0 over all steps, or constant."""
    if config.train.lr_schedule == "cosine" and total_steps > 0:
        return 0.5 * config.train.lr * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return float(config.train.lr)


def make_trainer(params, config, contexts) -> gluon.Trainer:
    """The weights' optimizer. update_on_kvstore=False keeps states in `_updaters` (exact resume)."""
    options = {"learning_rate": config.train.lr, "wd": config.train.weight_decay}
    if config.train.optimizer in ("sgd", "nag"):
        options["momentum"] = config.train.momentum
    return gluon.Trainer(params, config.train.optimizer, options,
                         kvstore="device" if len(contexts) > 1 else None,
                         update_on_kvstore=False)


@register_method("enas")
class EnasSearch(SearchMethod):
    """ENAS with an LSTM controller over the `enas_unit` decisions of a zoo model."""

    def __init__(self, config, data, contexts, logger):
        super().__init__(config, data, contexts, logger)
        # Every model.* key except the name is a constructor option of the zoo model.
        self.model_options = {k: v for k, v in OmegaConf.to_container(config.model).items()
                              if k != "name"}
        self.model_options["in_channels"] = self.input_shape[0]
        seed_everything(config.seed, "init")
        self.supernet = bmxnet_models.get_model(self.model_name, classes=self.classes, enas=True,
                                                **self.model_options)
        self.units = find_units(self.supernet)
        if not self.units:
            raise ConfigError(f"model {self.model_name!r} has no searchable ENAS units")
        paths = unit_paths(self.supernet)
        self.unit_names = [paths[id(unit)] for unit in self.units]
        # One controller decision per (unit, choice key).
        self.decisions = [(u, key, list(options)) for u, unit in enumerate(self.units)
                          for key, options in unit.choices.items()]
        self.supernet.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in",
                                                magnitude=2), ctx=contexts)
        self._profile_costs()
        if config.train.hybridize:
            hybridize_supernet(self.supernet)
        self.trainer = make_trainer(self.supernet.collect_params(), config, contexts)
        self.loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

        ctrl = config.controller
        self.controller = Controller([len(options) for _, _, options in self.decisions],
                                     hidden_size=ctrl.hidden_size, temperature=ctrl.temperature,
                                     tanh_constant=ctrl.tanh_constant)
        self.controller.initialize(ctx=mx.cpu())
        self.reinforce = Reinforce(self.controller, ctrl.lr, ctrl.baseline_decay,
                                   ctrl.entropy_weight)
        self.global_step = 0

    # --- costs --------------------------------------------------------------------------
    def _profile_costs(self) -> None:
        """Measure the fixed part's cost and every unit candidate's cost once.

        Candidates of a unit keep the unit's input and output shapes, so a network's cost is
        the fixed part plus the chosen candidate of each unit, exactly.
        """
        unit_inputs: dict[int, tuple] = {}
        handles = [unit.register_forward_pre_hook(
            lambda block, inputs: unit_inputs.__setitem__(id(block), inputs[0].shape))
            for unit in self.units]
        for unit in self.units:
            unit._active = 0
        try:
            all_layers = cost_models.profile(self.supernet, self.input_shape, self.contexts[0])
        finally:
            for handle in handles:
                handle.detach()
        inside_units = set()
        self.unit_costs: list[list[cost_models.CostSummary]] = []
        for unit in self.units:
            per_candidate = []
            for candidate in unit.candidates:
                shape = unit_inputs[id(unit)][1:]
                layers = cost_models.profile(candidate, shape, self.contexts[0])
                inside_units.update(layer.name for layer in layers)
                per_candidate.append(cost_models.summarize(layers))
            self.unit_costs.append(per_candidate)
        self.base_cost = cost_models.summarize(l for l in all_layers if l.name not in inside_units)
        cost_fn = cost_models.COST_FUNCTIONS[self.config.enas.cost]
        low = cost_fn(self.base_cost) + sum(min(cost_fn(c) for c in unit) for unit in self.unit_costs)
        high = cost_fn(self.base_cost) + sum(max(cost_fn(c) for c in unit) for unit in self.unit_costs)
        target = self.config.enas.cost_target
        self.cost_range = (low, high)
        self.cost_target = float(target) if target is not None else 0.5 * (low + high)

    def _candidate_index(self, unit: EnasUnit, values: dict) -> int:
        return unit.combinations.index(tuple(values[key] for key in unit.choices))

    def _unit_values(self, actions) -> list[dict]:
        values: list[dict] = [{} for _ in self.units]
        for (u, key, options), action in zip(self.decisions, actions):
            values[u][key] = options[int(action)]
        return values

    def cost_summary(self, actions) -> cost_models.CostSummary:
        total = self.base_cost
        for unit, costs, values in zip(self.units, self.unit_costs, self._unit_values(actions)):
            total = total + costs[self._candidate_index(unit, values)]
        return total

    def reward(self, accuracy: float, actions) -> tuple[float, float]:
        cost = cost_models.COST_FUNCTIONS[self.config.enas.cost](self.cost_summary(actions))
        weight = self.config.enas.cost_weight
        return accuracy * (self.cost_target / cost) ** weight if weight else accuracy, cost

    # --- training -----------------------------------------------------------------------
    def _select(self, actions) -> None:
        for unit, values in zip(self.units, self._unit_values(actions)):
            unit.select(values)

    def _forward_correct(self, data: nd.NDArray, label: nd.NDArray) -> tuple[float, int]:
        """Summed loss and number of correct predictions on one batch, in inference mode."""
        loss_sum, correct = 0.0, 0
        for x, y in zip(gluon.utils.split_and_load(data, self.contexts, even_split=False),
                        gluon.utils.split_and_load(label, self.contexts, even_split=False)):
            out = self.supernet(x)
            loss_sum += float(self.loss_fn(out, y).sum().asscalar())
            correct += int((out.argmax(axis=1) == y).sum().asscalar())
        return loss_sum, correct

    def _controller_step(self, val_batches, rng: np.random.RandomState) -> dict:
        data, label = next(val_batches)
        sample = self.controller.run(self.config.controller.batch_size, rng=rng)
        rewards, costs = [], []
        for actions in sample.actions:
            self._select(actions)
            _, correct = self._forward_correct(data, label)
            reward, cost = self.reward(correct / data.shape[0], actions)
            rewards.append(reward)
            costs.append(cost)
        stats = self.reinforce.update(sample.actions, np.array(rewards))
        stats["sampled_cost"] = float(np.mean(costs))
        return stats

    def _val_batches(self, epoch: int):
        loader = self.data.val
        loader.set_epoch(self.config.seed, epoch)
        return itertools.chain.from_iterable(itertools.repeat(loader))

    def train_epoch(self, epoch: int) -> dict:
        config = self.config
        rng = np.random.RandomState(derive_seed(config.seed, epoch, "controller"))
        loader = self.data.train
        loader.set_epoch(config.seed, epoch)
        val_batches = self._val_batches(epoch)
        steps = len(loader)
        total_steps = steps * config.train.epochs
        loss_sum, correct, seen = 0.0, 0, 0
        controller_stats: list[dict] = []
        interleave = not config.enas.only_post_training_eval
        # The policy only changes at controller updates, so the paths for all steps up to
        # the next update are sampled in one batched controller call (same distribution,
        # one LSTM pass instead of one per step).
        period = config.controller.update_every if interleave else steps
        planned: list = []
        with self.logger.epoch_progress(epoch, config.train.epochs, steps,
                                        config.train.batch_size) as progress:
            for index, (data, label) in enumerate(loader):
                lr = learning_rate(config, self.global_step, total_steps)
                self.trainer.set_learning_rate(lr)
                if not planned:
                    ahead = min(period - index % period, steps - index)
                    planned = list(self.controller.run(ahead, rng=rng).actions)
                self._select(planned.pop(0))
                xs = gluon.utils.split_and_load(data, self.contexts, even_split=False)
                ys = gluon.utils.split_and_load(label, self.contexts, even_split=False)
                with autograd.record():
                    outputs = [self.supernet(x) for x in xs]
                    losses = [self.loss_fn(out, y) for out, y in zip(outputs, ys)]
                autograd.backward(losses)
                # Candidates not on the sampled path have no fresh gradient: leave them as is.
                self.trainer.step(data.shape[0], ignore_stale_grad=True)
                self.global_step += 1
                batch_loss = sum(float(l.sum().asscalar()) for l in losses)
                batch_correct = sum(int((o.argmax(axis=1) == y).sum().asscalar())
                                    for o, y in zip(outputs, ys))
                loss_sum += batch_loss
                correct += batch_correct
                seen += data.shape[0]
                if interleave and (index + 1) % config.controller.update_every == 0:
                    controller_stats.append(self._controller_step(val_batches, rng))
                progress.update(batches=1, samples=data.shape[0],
                                metrics={"loss": loss_sum / seen, "acc": correct / seen})
        if not interleave:
            for _ in range(config.controller.steps_after_epoch):
                controller_stats.append(self._controller_step(val_batches, rng))
        elif not controller_stats:
            # Fewer steps than update_every: still let the controller learn once per epoch.
            controller_stats.append(self._controller_step(val_batches, rng))
        metrics = {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                   "lr": learning_rate(config, self.global_step, total_steps)}
        for key in ("reward", "baseline", "entropy", "controller_loss", "sampled_cost"):
            metrics[key] = float(np.mean([s[key] for s in controller_stats]))
        return metrics

    def evaluate(self, split: str) -> dict:
        loader = getattr(self.data, split, None)
        if loader is None:
            raise ConfigError(f"data set has no {split!r} split")
        self._select(self.controller.run(1, greedy=True).actions[0])
        loss_sum, correct, seen = 0.0, 0, 0
        for data, label in loader:
            batch_loss, batch_correct = self._forward_correct(data, label)
            loss_sum += batch_loss
            correct += batch_correct
            seen += data.shape[0]
        return {f"{split}_loss": loss_sum / max(seen, 1), f"{split}_accuracy": correct / max(seen, 1)}

    # --- architectures ------------------------------------------------------------------
    def derive(self) -> Architecture:
        greedy = self.controller.run(1, greedy=True)
        actions = greedy.actions[0]
        values = self._unit_values(actions)
        cost_fn = cost_models.COST_FUNCTIONS[self.config.enas.cost]
        decisions = []
        for position, ((u, key, options), action) in enumerate(zip(self.decisions, actions)):
            unit = self.units[u]
            unit_cost = self.unit_costs[u][self._candidate_index(unit, values[u])]
            decisions.append(Decision(
                name=self.unit_names[u], choice=key, value=options[int(action)],
                options=options, kind=decision_kind(key, options[int(action)]),
                cost={"params": unit_cost.params, "memory_bytes": unit_cost.memory_bytes,
                      "macs": unit_cost.macs},
                probabilities=[round(float(p), 6) for p in greedy.probabilities[position][0]]))
        total = self.cost_summary(actions)
        costs = total.as_dict()
        costs.update(cost_name=self.config.enas.cost, cost=cost_fn(total),
                     cost_target=self.cost_target)
        return self.make_architecture(decisions, costs)

    def build(self, architecture: Architecture) -> gluon.HybridBlock:
        self.check_architecture(architecture)
        values = architecture.values()
        if len(values) != len(self.units):
            raise ArchitectureError(f"architecture has {len(values)} units, the supernet has "
                                    f"{len(self.units)}")
        previous = [unit._active for unit in self.units]
        with fixed_choices(values):
            # A fixed prefix keeps exported parameter names the same from build to build.
            net = bmxnet_models.get_model(self.model_name, classes=self.classes, enas=True,
                                          prefix=f"{self.model_name}_",
                                          **architecture.model_options)
        net.initialize(ctx=mx.cpu())
        net(nd.zeros((1, *self.input_shape)))
        try:
            for unit, unit_values in zip(self.units, values):
                unit.select(unit_values)
            source = active_parameters(self.supernet)
            target = active_parameters(net)
            if len(source) != len(target):
                raise ArchitectureError("derived network does not match the supernet's path")
            for src, dst in zip(source, target):
                if src.shape != dst.shape:
                    raise ArchitectureError(f"shape mismatch copying {src.name} -> {dst.name}")
                dst.set_data(src._reduce())
        finally:
            for unit, active in zip(self.units, previous):
                unit._active = active
        return net

    # --- state --------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict]:
        arrays = {f"supernet/{k}": p._reduce() for k, p in structural_params(self.supernet).items()}
        arrays.update({f"controller/{k}": p._reduce()
                       for k, p in structural_params(self.controller).items()})
        weight_arrays, weight_state = trainer_state(self.trainer, "supernet_opt")
        ctrl_arrays, ctrl_state = trainer_state(self.reinforce.trainer, "controller_opt")
        arrays.update(weight_arrays)
        arrays.update(ctrl_arrays)
        return arrays, {"baseline": self.reinforce.baseline, "global_step": self.global_step,
                        "supernet_opt": weight_state, "controller_opt": ctrl_state,
                        "decisions": len(self.decisions)}

    def load_state(self, arrays: dict, json_state: dict) -> None:
        if json_state.get("decisions") != len(self.decisions):
            raise ArchitectureError("checkpoint was written for a different search space")
        for prefix, net in (("supernet", self.supernet), ("controller", self.controller)):
            for key, param in structural_params(net).items():
                name = f"{prefix}/{key}"
                if name not in arrays:
                    raise ArchitectureError(f"checkpoint lacks {name}: written by another model")
                param.set_data(arrays[name])
        load_trainer_state(self.trainer, "supernet_opt", arrays, json_state["supernet_opt"])
        load_trainer_state(self.reinforce.trainer, "controller_opt", arrays,
                           json_state["controller_opt"])
        self.reinforce.baseline = json_state["baseline"]
        self.global_step = int(json_state["global_step"])

