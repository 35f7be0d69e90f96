"""ENAS search (Pham et al., 2018) over a supernet of `enas_unit` blocks.

Per training step the controller samples one architecture and the supernet trains only that
path. Every `controller.update_every` steps (or after the epoch with
`enas.only_post_training_eval`), the controller samples `controller.batch_size` architectures,
each is scored on a validation batch, and REINFORCE updates the controller with

    reward = accuracy * (cost_target / cost) ** cost_weight

where the cost is any registered cost model of `lightnas_cli.costs` (`enas.cost`). Costs of a
sampled architecture are exact sums of per-unit costs measured once at start-up, so scoring an
architecture costs no extra forward pass.
"""
from __future__ import annotations

import itertools

import mxnet as mx
import numpy as np
from mxnet import gluon, nd
from omegaconf import OmegaConf

import bmxnet_models
from bmxnet_models.enas.unit import (EnasUnit, active_parameters, find_units, fixed_choices,
                                     hybridize_supernet)
from lightnas_cli import costs as cost_models
from lightnas_cli.checkpoint import load_trainer_state, trainer_state
from lightnas_cli.errors import ArchitectureError, ConfigError
from lightnas_cli.launch import world as launch_world
from lightnas_cli.search.base import Architecture, Decision, SearchMethod
from lightnas_cli.search.enas.controller import Controller, Reinforce
from lightnas_cli.search.enas.space import (architecture_to_custom_string, decision_kind,
                                            is_meliusnet, unit_paths)
from lightnas_cli.search.training import (ClassificationTask, evaluate, evaluate_batch,
                                          structural_params, weight_trainer)
from lightnas_cli.seeding import derive_seed, seed_everything

#: Costs every decision and architecture record lists (the reward's cost is added to them).
RECORDED_COSTS = {"params": "params", "memory_bytes": "binary_memory", "macs": "macs"}

class EnasSearch(SearchMethod):
    """ENAS with an LSTM controller over the `enas_unit` decisions of a zoo model."""

    console_hidden = ("controller_loss",)

    def __init__(self, config, data, contexts, logger):
        super().__init__(config, data, contexts, logger)
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
        self.cost_model = cost_models.cost_model_from_spec(config.enas.cost)
        self._profile_costs()
        if config.train.hybridize:
            hybridize_supernet(self.supernet)
        self.task = ClassificationTask()
        self.weights = weight_trainer(self.supernet.collect_params(), config.train, contexts,
                                     self.task)

        ctrl = config.controller
        self.controller = Controller([len(options) for _, _, options in self.decisions],
                                     hidden_size=ctrl.hidden_size, temperature=ctrl.temperature,
                                     tanh_constant=ctrl.tanh_constant)
        self.controller.initialize(ctx=mx.cpu())
        self.reinforce = Reinforce(self.controller, ctrl.lr, ctrl.baseline_decay,
                                   ctrl.entropy_weight)

    def model_options_from(self, config) -> dict:
        """Every model.* key except the name is a constructor option of the zoo model;
        `model.options` adds model-specific ones."""
        section = OmegaConf.to_container(config.model, resolve=True)
        extra = section.pop("options", None) or {}
        options = {k: v for k, v in section.items() if k != "name"}
        clash = sorted(set(extra) & (set(options) | {"in_channels", "classes", "enas"}))
        if clash:
            raise ConfigError(f"model.options repeats {clash}: set them as model.<key> (or "
                              f"leave them to the data: in_channels, classes)")
        options.update(extra)
        options["in_channels"] = self.input_shape[0]
        return options

    # --- costs --------------------------------------------------------------------------
    def _profile_costs(self) -> None:
        """Describe the fixed part's layers and every unit candidate's layers once.

        Candidates of a unit keep the unit's input and output shapes, so a network's cost is
        the fixed part's plus the chosen candidate's of each unit, exactly, for any cost model.
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
        # Per unit, per candidate: parameters/MACs by precision (records) and the reward's cost.
        self.unit_costs: list[list[cost_models.CostSummary]] = []
        self.unit_cost_values: list[list[float]] = []
        for unit in self.units:
            summaries, values = [], []
            for candidate in unit.candidates:
                shape = unit_inputs[id(unit)][1:]
                layers = cost_models.profile(candidate, shape, self.contexts[0])
                inside_units.update(layer.name for layer in layers)
                summaries.append(cost_models.summarize(layers))
                values.append(self.cost_model.total(layers))
            self.unit_costs.append(summaries)
            self.unit_cost_values.append(values)
        base_layers = [layer for layer in all_layers if layer.name not in inside_units]
        self.base_cost = cost_models.summarize(base_layers)
        self.base_cost_value = self.cost_model.total(base_layers)
        low = self.base_cost_value + sum(min(unit) for unit in self.unit_cost_values)
        high = self.base_cost_value + sum(max(unit) for unit in self.unit_cost_values)
        target = self.config.enas.cost_target
        self.cost_range = (float(low), float(high))
        self.cost_target = float(target) if target is not None else 0.5 * (low + high)

    def _candidate_index(self, unit: EnasUnit, values: dict) -> int:
        return unit.combinations.index(tuple(values[key] for key in unit.choices))

    def _unit_values(self, actions) -> list[dict]:
        values: list[dict] = [{} for _ in self.units]
        for (u, key, options), action in zip(self.decisions, actions):
            values[u][key] = options[int(action)]
        return values

    def _chosen(self, actions) -> list[int]:
        return [self._candidate_index(unit, values)
                for unit, values in zip(self.units, self._unit_values(actions))]

    def cost_summary(self, actions) -> cost_models.CostSummary:
        """Parameters and MACs (by precision) of the architecture `actions` encodes."""
        total = self.base_cost
        for costs, chosen in zip(self.unit_costs, self._chosen(actions)):
            total = total + costs[chosen]
        return total

    def cost(self, actions) -> float:
        """The reward's cost (`enas.cost`) of the architecture `actions` encodes."""
        total = self.base_cost_value
        for values, chosen in zip(self.unit_cost_values, self._chosen(actions)):
            total = total + values[chosen]
        return float(total)

    def reward(self, accuracy: float, actions) -> tuple[float, float]:
        cost = self.cost(actions)
        weight = self.config.enas.cost_weight
        return accuracy * (self.cost_target / cost) ** weight if weight else accuracy, cost

    # --- training -----------------------------------------------------------------------
    def _select(self, actions) -> None:
        for unit, values in zip(self.units, self._unit_values(actions)):
            unit.select(values)

    def _controller_step(self, val_batches, rng: np.random.RandomState) -> dict:
        data, label = next(val_batches)
        sample = self.controller.run(self.config.controller.batch_size, rng=rng)
        hits = []
        for actions in sample.actions:
            self._select(actions)
            hits.append(evaluate_batch(self.supernet, data, label, self.task, self.contexts)[1])
        accuracies = self._accuracies_over_workers(hits, data.shape[0])
        rewards, costs = [], []
        for actions, accuracy in zip(sample.actions, accuracies):
            reward, cost = self.reward(accuracy, actions)
            rewards.append(reward)
            costs.append(cost)
        stats = self.reinforce.update(sample.actions, np.array(rewards))
        stats["sampled_cost"] = float(np.mean(costs))
        return stats

    @staticmethod
    def _accuracies_over_workers(hits: list[int], samples: int) -> np.ndarray:
        """Each sampled architecture's accuracy on the validation batch. Launched workers
        each score their shard of the batch; the hits and samples are summed over them
        (`launch.world`), so every worker gets the accuracies one process would have, makes
        the same REINFORCE update and keeps the same controller (the workers sample the same
        architectures: same controller, same seeded draws)."""
        totals = launch_world.current().sum("enas/rewards", hits + [samples])
        return totals[:-1] / totals[-1]

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
        controller_stats: list[dict] = []
        interleave = not config.enas.only_post_training_eval
        # The policy only changes at controller updates, so the paths for all steps up to
        # the next update are sampled in one batched controller call (same distribution,
        # one LSTM pass instead of one per step).
        period = config.controller.update_every if interleave else steps
        planned: list = []

        def sample_path(index: int) -> None:
            if not planned:
                ahead = min(period - index % period, steps - index)
                planned.extend(self.controller.run(ahead, rng=rng).actions)
            self._select(planned.pop(0))

        def update_controller(result) -> None:
            if interleave and (result.index + 1) % config.controller.update_every == 0:
                controller_stats.append(self._controller_step(val_batches, rng))

        with self.logger.epoch_progress(epoch, config.train.epochs, steps,
                                        config.train.batch_size) as progress:
            metrics = self.weights.train_epoch(self.supernet, loader, progress,
                                               before_step=sample_path,
                                               after_step=update_controller,
                                               ignore_stale_grad=True)
        if not interleave:
            for _ in range(config.controller.steps_after_epoch):
                controller_stats.append(self._controller_step(val_batches, rng))
        elif not controller_stats:
            # Fewer steps than update_every: still let the controller learn once per epoch.
            controller_stats.append(self._controller_step(val_batches, rng))
        for key in ("reward", "baseline", "entropy", "controller_loss", "sampled_cost"):
            metrics[key] = float(np.mean([s[key] for s in controller_stats]))
        return metrics

    def evaluate(self, split: str) -> dict:
        loader = self.split_loader(split)
        self._select(self.controller.run(1, greedy=True).actions[0])
        return evaluate(self.supernet, loader, self.task, self.contexts, split)

    # --- architectures ------------------------------------------------------------------
    def derive(self) -> Architecture:
        greedy = self.controller.run(1, greedy=True)
        actions = greedy.actions[0]
        chosen = self._chosen(actions)
        cost_name = self.config.enas.cost
        decisions = []
        for position, ((u, key, options), action) in enumerate(zip(self.decisions, actions)):
            summary = self.unit_costs[u][chosen[u]]
            cost = {"params": summary.params, "memory_bytes": summary.memory_bytes,
                    "macs": summary.macs}
            if cost_name not in RECORDED_COSTS.values():
                cost[cost_name] = self.unit_cost_values[u][chosen[u]]
            decisions.append(Decision(
                name=self.unit_names[u], choice=key, value=options[int(action)],
                options=options, kind=decision_kind(key, options[int(action)]), cost=cost,
                probabilities=[round(float(p), 6) for p in greedy.probabilities[position][0]]))
        costs = self.cost_summary(actions).as_dict()
        costs.update(cost_name=cost_name, cost=self.cost(actions),
                     cost_target=self.cost_target)
        return self.make_architecture(decisions, costs)

    @classmethod
    def config_for_architecture(cls, architecture: Architecture) -> dict:
        """The model section back from the record's options: model.* keys the schema has,
        model.options for the rest (in_channels comes from the data)."""
        from dataclasses import fields

        from lightnas_cli.search.enas.config import EnasModelConfig
        section_keys = {f.name for f in fields(EnasModelConfig)} - {"name", "options"}
        options = {k: v for k, v in architecture.model_options.items() if k != "in_channels"}
        model = {"name": architecture.base_model,
                 **{k: v for k, v in options.items() if k in section_keys},
                 "options": {k: v for k, v in options.items() if k not in section_keys}}
        return {"method": cls.name, "model": model}

    def describe(self, architecture: Architecture) -> dict[str, str]:
        """A MeliusNet architecture's custom string (`lightnas summary` of it rebuilds it)."""
        if is_meliusnet(architecture.base_model):
            return {"custom_string": architecture_to_custom_string(architecture)}
        return {}

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
        weight_arrays, weight_state = self.weights.state("supernet_opt")
        ctrl_arrays, ctrl_state = trainer_state(self.reinforce.trainer, "controller_opt")
        arrays.update(weight_arrays)
        arrays.update(ctrl_arrays)
        return arrays, {"baseline": self.reinforce.baseline,
                        "global_step": self.weights.global_step,
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
        self.weights.load_state("supernet_opt", arrays, json_state["supernet_opt"],
                                json_state["global_step"])
        load_trainer_state(self.reinforce.trainer, "controller_opt", arrays,
                           json_state["controller_opt"])
        self.reinforce.baseline = json_state["baseline"]

