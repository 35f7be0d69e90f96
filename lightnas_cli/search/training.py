"""What every search method shares to train and evaluate a network's weights.

- `make_trainer`: the weights' Gluon Trainer (optimizer, weight decay, gradient clipping),
  built so its states can be checkpointed without pickle (`lightnas_cli.checkpoint`);
- `LearningRateSchedule`: per-step rates (constant, cosine, cosine with restarts and a
  gradient-rising stage, optional linear warm-up);
- `Task`: the loss, and whether accuracy means anything (classification or reconstruction);
- `EpochTrainer` (`weight_trainer` for the network weights): the data-parallel
  forward/backward/update over `train.contexts` and the epoch loop around it, with hooks for
  what a method does between steps (select a path, update a controller, add a regularizer or
  scale the loss, step architecture parameters);
- `evaluate` / `evaluate_batch`: a network's loss and accuracy on a split or one batch;
- `MetricTotals`: running sums of loss, correct predictions and samples.

Under `lightnas launch` (`lightnas_cli.launch.world`) the same code trains on N workers:
every Trainer sums its gradients over the workers through the kvstore (its own key range)
and each worker applies the same update; `train.batch_size` is the global batch (each
worker reads its shard of it, and `Trainer.step` divides by the global size), so the learning
rate means what it means on one machine; metrics are summed over the workers, and batch-norm
running statistics (estimated by each worker on its shard) are averaged at the end of every
epoch. All workers therefore hold the same parameters after every epoch.

A method owns what is its own (a controller, masks, phases) and calls these for the rest, so
two methods never hold two copies of a training loop, and no method imports another's module.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import mxnet as mx
from mxnet import autograd, gluon, nd

from lightnas_cli import interrupts
from lightnas_cli.checkpoint import load_trainer_state, trainer_state
from lightnas_cli.errors import ArchitectureError, ConfigError, DivergedError
from lightnas_cli.launch import world as launch_world

#: Optimizers a config may name (`train.optimizer`); momentum applies to the first two.
OPTIMIZERS = ("sgd", "nag", "adam")
MOMENTUM_OPTIMIZERS = ("sgd", "nag")
#: Learning-rate schedules (`train.lr_schedule`).
SCHEDULES = ("constant", "cosine", "cosine_restarts")


def structural_params(net: gluon.Block) -> dict[str, gluon.Parameter]:
    """Parameters by structural name (stable across processes), each shared one once."""
    result, seen = {}, set()
    for name, param in net._collect_params_with_prefix().items():
        if id(param) not in seen:
            seen.add(id(param))
            result[name] = param
    return result


def parameter_arrays(named: dict[str, gluon.Parameter], prefix: str = "net/") -> dict:
    """Checkpoint arrays of parameters, `prefix + name` -> value (the devices' copies reduced);
    `restore_parameters` reads them back."""
    return {f"{prefix}{key}": param._reduce() for key, param in named.items()}


def restore_parameters(named: dict[str, gluon.Parameter], arrays: dict, prefix: str = "net/",
                       missing: Callable[[str], str] | None = None) -> None:
    """Set parameters from the checkpoint arrays `parameter_arrays` wrote. An array the
    checkpoint lacks is an ArchitectureError (`missing(name)` may word it). Each parameter
    gets fresh buffers first: after an inference pass oneDNN may hold a weight in its own
    layout, and copying into such a buffer fails ("Check failed: to.IsDefaultData")."""
    for key, param in named.items():
        name = f"{prefix}{key}"
        if name not in arrays:
            raise ArchitectureError(missing(name) if missing else
                                    f"checkpoint lacks {name}: written by another model")
        param.initialize(ctx=param.list_ctx(), force_reinit=True)
        param.set_data(arrays[name])


def hybridize_for_training(net: Any, wanted: bool, normalises_1d: Callable[[], bool],
                           logger: Any, method: str) -> None:
    """Hybridize `net` when the config asks (`train.hybridize`), unless a plain batch norm in
    it normalises 1-D (N x C x L) data (`normalises_1d()`, asked only then): MXNet 1.9.1's
    oneDNN backward of such a hybridized batch norm fails ("Check failed: !is_view"), so the
    network trains imperatively and the log says why."""
    if not wanted:
        return
    if normalises_1d():
        logger.info(f"{method}: training imperatively (not hybridized): MXNet 1.9.1 cannot "
                    f"back-propagate a hybridized batch norm over 1-D (N x C x L) data")
    else:
        net.hybridize()


def make_trainer(params: Any, optimizer: str, lr: float, contexts: Sequence[mx.Context],
                 weight_decay: float = 0.0, momentum: float | None = None,
                 clip_gradient: float | None = None, kvstore: str = "device") -> gluon.Trainer:
    """A Trainer whose states stay in `_updaters` (update_on_kvstore=False), for exact resume.

    `clip_gradient` clips every gradient element to [-c, c] after rescaling (MXNet's optimizer
    option): unlike a global-norm clip it needs no view of all gradients at once, so it stays
    correct when only part of a supernet has fresh gradients (ENAS).

    `kvstore` (`train.kvstore`) sums the gradients of several `contexts` on a device or on
    the CPU (`local`). In a launched worker every Trainer (weights and architecture
    parameters alike) sums over the workers instead, through its own range of keys on the
    process's one distributed kvstore.
    """
    options: dict[str, Any] = {"learning_rate": lr, "wd": weight_decay}
    if optimizer in MOMENTUM_OPTIMIZERS and momentum is not None:
        options["momentum"] = momentum
    if clip_gradient is not None:
        options["clip_gradient"] = float(clip_gradient)
    store: Any = launch_world.current().trainer_store()
    if store is None:  # one process: dist_* (an exported or summarised run) acts as device
        store = (kvstore if kvstore == "local" else "device") if len(contexts) > 1 else None
    return gluon.Trainer(params, optimizer, options, kvstore=store, update_on_kvstore=False)


def weight_trainer_from_config(params: Any, train_cfg: Any,
                               contexts: Sequence[mx.Context]) -> gluon.Trainer:
    """The weights' Trainer as the `train` config section describes it."""
    return make_trainer(params, train_cfg.optimizer, train_cfg.lr, contexts,
                        weight_decay=train_cfg.weight_decay, momentum=train_cfg.momentum,
                        clip_gradient=train_cfg.clip_gradient,
                        kvstore=getattr(train_cfg, "kvstore", "device"))


@dataclass(frozen=True)
class LearningRateSchedule:
    """The learning rate at a global step (counted from 0 over the whole run).

    `warmup_steps` > 0 first rises linearly, base_lr * (step + 1) / warmup_steps, so the first
    step already trains; then `cosine` decays from base_lr to 0 over the remaining steps
    (reaching 0 at `total_steps`), or `constant` keeps base_lr, or `cosine_restarts` runs
    seed 003's cosine decay with restarts and a gradient-rising stage (SGDR, Loshchilov &
    Hutter 2017, plus the MXNet FBNet port's `CosineDecayScheduler_Grad`):

    - period p (p = 0, 1, ...) lasts restart_steps · period_mul^p steps (rounded down) and
      peaks at base_lr · peak_mul^p; its floor is `floor` times its peak;
    - period 0 decays from its peak to its floor along a half cosine;
    - every later period first rises linearly from its floor to its peak over `rise_steps`
      steps (at most half the period), then decays to the floor over the rest.

    The rate is continuous across a restart (the floor of the new peak is where the rise
    starts), and never depends on `total_steps`, so a longer resumed run keeps its past.
    """

    base_lr: float
    kind: str = "constant"
    total_steps: int = 0
    warmup_steps: int = 0
    restart_steps: int = 0
    period_mul: float = 2.0
    peak_mul: float = 1.0
    floor: float = 0.0
    rise_steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ConfigError(f"unknown learning-rate schedule {self.kind!r}; choose one of "
                              f"{', '.join(SCHEDULES)}")
        if self.kind == "cosine_restarts" and self.restart_steps < 1:
            raise ConfigError("the cosine_restarts schedule needs a first period of at least "
                              "one step (train.restart_epochs)")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "cosine_restarts":
            return self._with_restarts(step - self.warmup_steps)
        span = self.total_steps - self.warmup_steps
        if self.kind == "cosine" and span > 0:
            progress = min(step - self.warmup_steps, span)
            return 0.5 * self.base_lr * (1.0 + math.cos(math.pi * progress / span))
        return float(self.base_lr)

    def period(self, step: int) -> tuple[int, int, int]:
        """(index, first step, length) of the restart period holding `step` (after warm-up)."""
        index, start, length = 0, 0, int(self.restart_steps)
        if self.period_mul == 1.0:
            index = step // length
            return index, index * length, length
        while step >= start + length:
            start += length
            length = max(1, int(length * self.period_mul))
            index += 1
        return index, start, length

    def _with_restarts(self, step: int) -> float:
        index, start, length = self.period(step)
        peak = self.base_lr * self.peak_mul ** index
        low = self.floor * peak
        offset = step - start
        rise = min(int(self.rise_steps), length // 2) if index > 0 else 0
        if offset < rise:
            return low + (peak - low) * offset / rise
        progress = (offset - rise) / max(length - rise, 1)
        return low + (peak - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_from_config(train_cfg: Any, steps_per_epoch: int) -> LearningRateSchedule:
    """The run's schedule: `train.lr`, `train.lr_schedule`, `train.warmup_epochs` (may be
    fractional; rounded to whole steps) over `train.epochs` epochs of `steps_per_epoch`;
    `cosine_restarts` also reads `train.restart_epochs` (the first period, rounded to whole
    steps), `restart_period_mul`, `restart_peak_mul`, `lr_floor` and `rise_steps`."""
    options: dict[str, Any] = {}
    if train_cfg.lr_schedule == "cosine_restarts":
        options = dict(restart_steps=max(1, int(round(float(train_cfg.restart_epochs)
                                                       * steps_per_epoch))),
                       period_mul=float(train_cfg.restart_period_mul),
                       peak_mul=float(train_cfg.restart_peak_mul),
                       floor=float(train_cfg.lr_floor), rise_steps=int(train_cfg.rise_steps))
    return LearningRateSchedule(base_lr=float(train_cfg.lr), kind=train_cfg.lr_schedule,
                                total_steps=steps_per_epoch * int(train_cfg.epochs),
                                warmup_steps=int(round(float(train_cfg.warmup_epochs)
                                                       * steps_per_epoch)), **options)


class Task(abc.ABC):
    """What is learnt: the per-sample loss, and whether accuracy is reported."""

    name = "task"
    has_accuracy = True

    @abc.abstractmethod
    def loss(self, output: nd.NDArray, label: nd.NDArray, data: nd.NDArray) -> nd.NDArray:
        """Per-sample loss of a batch (shape (batch,))."""


class ClassificationTask(Task):
    """Softmax cross-entropy on the labels; accuracy is the arg-max hit rate.

    `label_smoothing` ε mixes the one-hot target with the uniform one (Szegedy et al. 2016):
    loss = (1 - ε)·(-log p_y) + ε·mean_k(-log p_k)."""

    name = "classification"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self._loss = gluon.loss.SoftmaxCrossEntropyLoss()
        self.label_smoothing = float(label_smoothing)

    def loss(self, output: nd.NDArray, label: nd.NDArray, data: nd.NDArray) -> nd.NDArray:
        if not self.label_smoothing:
            return self._loss(output, label)
        log_p = nd.log_softmax(output, axis=-1)
        hit = -nd.pick(log_p, label, axis=-1)
        return (1.0 - self.label_smoothing) * hit - self.label_smoothing * log_p.mean(axis=-1)


class DistillationTask(Task):
    """Knowledge distillation (Hinton et al. 2015): (1 - w)·task loss + w·T²·KL(p_t ‖ p_s),
    with p = softmax(logits / T) of the teacher's and the student's outputs. The teacher runs
    on the same batch without gradients; accuracy is the student's."""

    name = "distillation"

    def __init__(self, base: Task, teacher: Callable, temperature: float, weight: float):
        self.base = base
        self.teacher = teacher
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.has_accuracy = base.has_accuracy

    def loss(self, output: nd.NDArray, label: nd.NDArray, data: nd.NDArray) -> nd.NDArray:
        hard = self.base.loss(output, label, data)
        with autograd.pause():
            target = nd.softmax(self.teacher(data) / self.temperature, axis=-1)
        log_student = nd.log_softmax(output / self.temperature, axis=-1)
        log_target = nd.log(nd.maximum(target, 1e-12))
        soft = (target * (log_target - log_student)).sum(axis=-1) * self.temperature ** 2
        return (1.0 - self.weight) * hard + self.weight * soft


class ReconstructionTask(Task):
    """Mean squared error between the output and the flattened input (autoencoders); labels
    are ignored and there is no accuracy."""

    name = "reconstruction"
    has_accuracy = False

    def loss(self, output: nd.NDArray, label: nd.NDArray, data: nd.NDArray) -> nd.NDArray:
        target = data.reshape((data.shape[0], -1))
        return ((output.reshape((output.shape[0], -1)) - target) ** 2).mean(axis=1)


TASKS: dict[str, Callable[[], Task]] = {"classification": ClassificationTask,
                                        "reconstruction": ReconstructionTask}


def split_batch(data: nd.NDArray, label: nd.NDArray,
                contexts: Sequence[mx.Context]) -> list[tuple[nd.NDArray, nd.NDArray]]:
    """(data, label) shards, one per device (uneven last shards allowed)."""
    xs = gluon.utils.split_and_load(data, contexts, even_split=False)
    ys = gluon.utils.split_and_load(label, contexts, even_split=False)
    return list(zip(xs, ys))


@dataclass
class MetricTotals:
    """Running sums over batches: loss, correct predictions (when the task has accuracy),
    samples. Per batch, device losses are summed first, then added (one rounding order)."""

    task: Task
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0

    def add(self, outputs: Sequence[nd.NDArray], losses: Sequence[nd.NDArray],
            shards: Sequence[tuple[nd.NDArray, nd.NDArray]]) -> tuple[float, int]:
        """Add one batch; returns its (summed loss, correct predictions)."""
        batch_loss = sum(float(loss.sum().asscalar()) for loss in losses)
        batch_correct = 0
        if self.task.has_accuracy:
            batch_correct = sum(int((out.argmax(axis=1) == y).sum().asscalar())
                                for out, (_, y) in zip(outputs, shards))
        self.loss_sum += batch_loss
        self.correct += batch_correct
        self.seen += sum(x.shape[0] for x, _ in shards)
        return batch_loss, batch_correct

    def shown(self) -> dict:
        """Running values for a progress bar."""
        shown = {"loss": self.loss_sum / max(self.seen, 1)}
        if self.task.has_accuracy:
            shown["acc"] = self.correct / max(self.seen, 1)
        return shown

    def result(self, prefix: str) -> dict:
        """`{prefix}_loss` and (with accuracy) `{prefix}_accuracy`, averaged per sample."""
        result = {f"{prefix}_loss": self.loss_sum / max(self.seen, 1)}
        if self.task.has_accuracy:
            result[f"{prefix}_accuracy"] = self.correct / max(self.seen, 1)
        return result


def evaluate_batch(net: Callable, data: nd.NDArray, label: nd.NDArray, task: Task,
                   contexts: Sequence[mx.Context], totals: MetricTotals | None = None
                   ) -> tuple[float, int]:
    """(summed loss, correct predictions) of one batch in inference mode."""
    totals = totals if totals is not None else MetricTotals(task)
    shards = split_batch(data, label, contexts)
    outputs = [net(x) for x, _ in shards]
    losses = [task.loss(out, y, x) for out, (x, y) in zip(outputs, shards)]
    return totals.add(outputs, losses, shards)


def over_workers(totals: MetricTotals, tag: str) -> MetricTotals:
    """`totals` summed over the workers of a launched run (each saw its own shard); the same
    numbers on every worker. Unchanged in one process."""
    world = launch_world.current()
    if not world.distributed:
        return totals
    loss, correct, seen = world.sum(f"metrics/{tag}", [totals.loss_sum, totals.correct,
                                                       totals.seen])
    return MetricTotals(totals.task, float(loss), int(round(correct)), int(round(seen)))


def average_statistics(params: Any, tag: str) -> None:
    """Average parameters that no gradient trains (batch-norm running statistics) over the
    workers of a launched run: each worker estimates them on its own shard. No-op in one
    process."""
    world = launch_world.current()
    if world.distributed:
        world.average_parameters(f"statistics/{tag}",
                                 [p for p in launch_world.parameters_of(params)
                                  if p.grad_req == "null"])


def evaluate(net: Callable, loader: Iterable, task: Task, contexts: Sequence[mx.Context],
             split: str) -> dict:
    """`{split}_loss` (and `{split}_accuracy`) of a network over a whole split (over all
    workers' shards of it, in a launched run)."""
    totals = MetricTotals(task)
    for data, label in loader:
        interrupts.check()
        if data.shape[0]:
            evaluate_batch(net, data, label, task, contexts, totals)
    return over_workers(totals, split).result(split)


@dataclass
class BatchResult:
    """One training step: its index in the epoch, its batch size, summed loss and hits (of
    this worker's shard of the batch, in a launched run)."""

    index: int
    size: int
    loss: float
    correct: int


#: extra_loss(x_shard, batch_size, shard_count) -> a scalar NDArray added to that shard's
#: summed task loss (Trainer.step divides the summed gradient by the batch size). In a
#: launched run batch_size is the global batch and shard_count counts the shards of all
#: workers, so the hooks' terms add up over the workers as on one machine.
ExtraLoss = Callable[[nd.NDArray, int, int], nd.NDArray]


#: steps per epoch -> the learning-rate schedule of the whole run (asked once per epoch, so a
#: resume with more epochs stretches it as the uninterrupted longer run would have).
ScheduleFactory = Callable[[int], LearningRateSchedule]


class EpochTrainer:
    """One set of parameters, its Trainer, learning-rate schedule and step counter, and the
    data-parallel training epoch every method runs: the network weights on the training split
    (`weight_trainer`), or architecture parameters on the validation split (FBNet's θ, say).

    Gradients are summed over devices (and launched workers) by the Trainer;
    `trainer.step(batch)` divides by the (global) batch size, so losses are per-sample sums.
    Hooks let a method act around each step without its own copy of the loop:
      - `before_step(index)`: e.g. pick the supernet path to train (ENAS);
      - `loss_factor(x, batch, shards)`: multiplies the shard's summed task loss, e.g. FBNet's
        α·log(LAT)^β;
      - `extra_loss(x, batch, shards)`: added to it, e.g. λ·regularizer (PIT);
      - `also_step`: further trainers stepped with the same batch (architecture parameters);
      - `after_step(result)`: e.g. a controller update every k steps (ENAS).
    """

    def __init__(self, trainer: gluon.Trainer, contexts: Sequence[mx.Context], task: Task,
                 schedule: ScheduleFactory):
        self.trainer = trainer
        self.contexts = list(contexts)
        self.task = task
        self.schedule = schedule
        self.global_step = 0

    def train_epoch(self, net: Callable, loader: Any, progress: Any, *,
                    before_step: Callable[[int], None] | None = None,
                    loss_factor: ExtraLoss | None = None,
                    extra_loss: ExtraLoss | None = None,
                    also_step: Sequence[gluon.Trainer] = (),
                    after_step: Callable[[BatchResult], None] | None = None,
                    ignore_stale_grad: bool = False, prefix: str = "train",
                    statistics: Any = None) -> dict:
        """One pass over `loader`; returns {prefix}_loss, {prefix}_accuracy (if any) and lr
        (the rate after the epoch's last step). `statistics`: the parameters no gradient
        trains (batch-norm running statistics) that launched workers average after the
        epoch; by default those of `net` when it is a Block (a function `net` must name them)."""
        schedule = self.schedule(len(loader))
        totals = MetricTotals(self.task)
        workers = launch_world.current().size
        for index, (data, label) in enumerate(loader):
            interrupts.check()
            self.trainer.set_learning_rate(schedule(self.global_step))
            if before_step is not None:
                before_step(index)
            # The batch over all workers' shards: gradients are summed over the workers, so
            # this is what they average over (one process: the batch itself).
            step_samples = getattr(loader, "step_samples", None)
            batch = step_samples(index) if step_samples is not None else data.shape[0]
            shards = split_batch(data, label, self.contexts)
            shard_count = len(shards) * workers
            with autograd.record():
                outputs = [net(x) for x, _ in shards]
                losses = [self.task.loss(out, y, x) for out, (x, y) in zip(outputs, shards)]
                heads = losses
                if loss_factor is not None or extra_loss is not None:
                    heads = []
                    for loss, (x, _) in zip(losses, shards):
                        head = loss.sum()
                        if loss_factor is not None:
                            head = head * loss_factor(x, batch, shard_count)
                        if extra_loss is not None:
                            head = head + extra_loss(x, batch, shard_count)
                        heads.append(head)
            autograd.backward(heads)
            # Parameters off the trained path have no fresh gradient; leave them as they are.
            self.trainer.step(batch, ignore_stale_grad=ignore_stale_grad)
            for trainer in also_step:
                trainer.step(batch)
            self.global_step += 1
            loss, correct = totals.add(outputs, losses, shards)
            if not math.isfinite(loss):  # stop before a NaN/inf model reaches a checkpoint
                raise DivergedError(f"the {prefix} loss became {loss} at step {index + 1}")
            if after_step is not None:
                after_step(BatchResult(index, data.shape[0], loss, correct))
            progress.update(batches=1, samples=batch, metrics=totals.shown())  # all workers
        if statistics is None and isinstance(net, gluon.Block):
            statistics = net.collect_params()
        average_statistics(self.trainer._params if statistics is None else statistics,
                           prefix)
        metrics = over_workers(totals, prefix).result(prefix)
        metrics["lr"] = schedule(self.global_step)
        return metrics

    def state(self, prefix: str) -> tuple[dict, dict]:
        """Optimizer arrays (named `prefix/...`) and JSON state; the step count is the
        method's to store (it keeps its own key for compatibility with older checkpoints)."""
        return trainer_state(self.trainer, prefix)

    def load_state(self, prefix: str, arrays: dict, json_state: dict, global_step: int) -> None:
        load_trainer_state(self.trainer, prefix, arrays, json_state)
        self.global_step = int(global_step)


def weight_trainer(params: Any, train_cfg: Any, contexts: Sequence[mx.Context],
                   task: Task) -> EpochTrainer:
    """The network weights' EpochTrainer as the `train` config section describes it."""
    return EpochTrainer(weight_trainer_from_config(params, train_cfg, contexts), contexts, task,
                        lambda steps: schedule_from_config(train_cfg, steps))
