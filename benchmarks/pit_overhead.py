"""Training-step time of a PIT search over the same plain network (ResNet-8, batch 32, 32x32).

All variants run through the shared epoch loop (`search.training.EpochTrainer`), and the PIT
ones through the search method's own hooks (`search.pit.step.SearchStep`): what a search step
costs, masks, regularizer and the masks' optimizer update included.

- plain: the seed network, weights only;
- pit: a search step, size regularizer (λ = 0.1, normalised) and mask update;
- pit_no_regularizer: a search step with λ = 0 (masks still trained by the task loss), which
  gives the regularizer's share of the pit step: (pit - pit_no_regularizer) / pit.

The variants alternate in one process, a few steps each, in rotating order, so machine load
(other processes on a shared CPU) hits them alike; reported times are medians per step. Both
networks are hybridized with static allocation (as earlier figures were); the search itself
hybridizes without it (`--dynamic`), which slows the plain step more than the PIT one.
Prints one JSON object; `pit_vs_plain` is the ratio of median step times (target <= 1.15);
`pit_vs_plain_paired` the median of the ratios of back-to-back rounds, and `cpu_ms` the
process's CPU time per step, both less disturbed by other processes on a loaded machine.

    .venv/bin/python benchmarks/pit_overhead.py [--rounds 50] [--steps 2] [--imperative]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.simplefilter("ignore")

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import gluon, nd  # noqa: E402

import bmxnet_models  # noqa: E402
from lightnas_cli.search.pit.model import PITModel  # noqa: E402
from lightnas_cli.search.pit.step import SearchStep  # noqa: E402
from lightnas_cli.search.training import (ClassificationTask, EpochTrainer,  # noqa: E402
                                          LearningRateSchedule, make_trainer)

SHAPE = (3, 32, 32)
TARGET = 1.15


def make_net(seed: int) -> gluon.HybridBlock:
    mx.random.seed(seed)
    net = bmxnet_models.get_model("resnet8", prefix="resnet8_")
    net.initialize(mx.init.Xavier())
    return net


class Batches:
    """`steps` copies of one batch: a loader for EpochTrainer."""

    def __init__(self, data: nd.NDArray, label: nd.NDArray, steps: int):
        self.batch, self.steps = (data, label), steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return iter([self.batch] * self.steps)


class Quiet:
    """A progress display that shows nothing."""

    def update(self, **_: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50, help="alternations of the variants")
    parser.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--strength", type=float, default=0.1)
    parser.add_argument("--imperative", action="store_true", help="do not hybridize")
    parser.add_argument("--dynamic", action="store_true",
                        help="hybridize without static allocation (as the search does)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rng = np.random.RandomState(0)
    x = nd.array(rng.standard_normal((args.batch, *SHAPE)).astype(np.float32))
    y = nd.array(rng.randint(0, 10, args.batch).astype(np.float32))
    loader = Batches(x, y, args.steps)
    contexts = [mx.cpu()]
    task = ClassificationTask()
    schedule = lambda steps: LearningRateSchedule(1e-3)  # noqa: E731

    plain = make_net(0)
    model = PITModel(make_net(0), SHAPE)
    if not args.imperative:
        # static_alloc/static_shape: fixed buffers, bulked operations, less per-op overhead.
        flags = {} if args.dynamic else {"static_alloc": True, "static_shape": True}
        plain.hybridize(**flags)
        model.hybridize(**flags)
    plain_loop = EpochTrainer(make_trainer(plain.collect_params(), "adam", 1e-3, contexts),
                              contexts, task, schedule)
    pit_loop = EpochTrainer(make_trainer(model.net_parameters(), "adam", 1e-3, contexts),
                            contexts, task, schedule)
    masks = make_trainer(model.nas_parameters(), "adam", 1e-3, contexts)
    full = float(model.costs(soft=False, names=("params",))["params"])
    model.freeze_masks(False)
    weight = args.strength / full

    def plain_epoch() -> None:
        plain_loop.train_epoch(plain, loader, Quiet())

    def pit_epoch(step_weight: float):
        def run() -> None:
            step = SearchStep(model, masks, "size", step_weight)
            pit_loop.train_epoch(step.net, loader, Quiet(), **step.hooks())
        return run

    variants = {"plain": plain_epoch, "pit": pit_epoch(weight),
                "pit_no_regularizer": pit_epoch(0.0)}
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for index in range(args.warmup + args.rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            nd.waitall()
            start, start_cpu = time.perf_counter(), time.process_time()
            variants[name]()
            nd.waitall()
            if index >= args.warmup:
                times[name].append((time.perf_counter() - start) / args.steps)
                cpu[name].append((time.process_time() - start_cpu) / args.steps)
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    cpu_ms = {name: 1000 * statistics.median(values) for name, values in cpu.items()}
    print(json.dumps({
        "benchmark": "pit_overhead", "model": "resnet8", "input": list(SHAPE),
        "batch": args.batch, "rounds": args.rounds, "steps_per_round": args.steps,
        "hybridized": not args.imperative, "static_alloc": not (args.imperative or args.dynamic),
        "plain_step_ms": round(ms["plain"], 3), "pit_step_ms": round(ms["pit"], 3),
        "pit_no_regularizer_step_ms": round(ms["pit_no_regularizer"], 3),
        "pit_vs_plain": round(ms["pit"] / ms["plain"], 3),
        "pit_vs_plain_paired": round(statistics.median(
            a / b for a, b in zip(times["pit"], times["plain"])), 3),
        "regularizer_share": round((ms["pit"] - ms["pit_no_regularizer"]) / ms["pit"], 3),
        # CPU time of this process per step: less disturbed by other processes than wall time.
        "cpu_ms": {name: round(value, 3) for name, value in cpu_ms.items()},
        "pit_vs_plain_cpu": round(cpu_ms["pit"] / cpu_ms["plain"], 3),
        "target": TARGET, "threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average": [round(v, 2) for v in load_before + os.getloadavg()],
        "mxnet": mx.__version__, "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
