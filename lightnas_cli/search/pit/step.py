"""What a PIT epoch adds to the shared epoch loop (`search.training.EpochTrainer`), as hooks.

One search step is: the network and the regularizer in one graph (`PITModel.search_graph`),
loss = task loss + λ · cost / normaliser (`extra_loss`), one backward pass, the weights' update
(the loop's trainer) and the masks' update (`also_step`: one trainer over the one mask-bank
parameter). Outside the search phase, or with λ = 0, the network runs alone. The masks are
updated whenever some mask is trainable in the current phase, λ = 0 included: the task loss
alone trains them then (as in PLiNIO).

`benchmarks/pit_overhead.py` times exactly these hooks, so its figure is the search's.
"""
from __future__ import annotations

from typing import Any, Sequence

from mxnet import gluon, nd

from lightnas_cli.search.pit.model import PITModel
from lightnas_cli.search.training import BatchResult


class SearchStep:
    """Hooks for one epoch of `EpochTrainer.train_epoch(step.net, loader, progress,
    extra_loss=step.extra_loss, also_step=step.also_step, after_step=step.after_step)`.

    `weight` multiplies the raw cost (λ / normaliser); 0 leaves the regularizer out.
    `arch_trainer` (None: masks not updated) steps whenever the model has a trainable mask.
    """

    def __init__(self, model: PITModel, arch_trainer: gluon.Trainer | None, cost_name: str,
                 weight: float = 0.0, discrete: bool = False, scope: str = "all"):
        self.model = model
        self.weight = float(weight)
        self.graph = model.search_graph(cost_name, discrete, scope) if self.weight > 0 else None
        self.also_step: Sequence[gluon.Trainer] = (
            (arch_trainer,) if arch_trainer is not None and model.trainable_masks() else ())
        self.extra_loss = self._extra_loss if self.graph is not None else None
        self._costs: dict[int, nd.NDArray] = {}
        self._step_costs: list[nd.NDArray] = []
        self.cost_sum = 0.0
        self.samples = 0

    def net(self, x: nd.NDArray) -> nd.NDArray:
        """The network's output for one device's shard; keeps that shard's cost."""
        if self.graph is None:
            return self.model(x)
        out, cost = self.graph(x)
        self._costs[id(x)] = cost
        return out

    def _extra_loss(self, x: nd.NDArray, batch: int, shards: int) -> nd.NDArray:
        # Trainer.step(batch) divides by the batch size: add batch · weight · cost in all,
        # split over the devices (their gradients are summed).
        cost = self._costs.pop(id(x))
        self._step_costs.append(cost)
        return (batch * self.weight / shards) * cost

    def after_step(self, result: BatchResult) -> None:
        """Accumulate the (unweighted) cost for the epoch's mean."""
        self.samples += result.size
        if self._step_costs:
            self.cost_sum += float(self._step_costs[0].asscalar()) * result.size
            self._step_costs.clear()

    def mean_cost(self) -> float:
        """The raw cost averaged over the epoch's samples (0 without a regularizer)."""
        return self.cost_sum / max(self.samples, 1) if self.graph is not None else 0.0

    def hooks(self) -> dict[str, Any]:
        """Keyword arguments of `EpochTrainer.train_epoch` (after net, loader, progress)."""
        return {"extra_loss": self.extra_loss, "also_step": self.also_step,
                "after_step": self.after_step, "statistics": self.model.collect_params()}
