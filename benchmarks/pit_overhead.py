"""Training-step time of a PIT search over the same plain network (ResNet-8, batch 32, 32x32).

All variants run through the shared epoch loop (`search.training.EpochTrainer`), and the PIT
ones through the search method's own hooks (`search.pit.step.SearchStep`): what a search step
costs, masks, regularizer and the masks' optimizer update included.

- plain: the seed network, weights only;
- pit: a search step, size regularizer (λ = 0.1, normalised) and mask update;
- pit_no_regularizer: a search step with λ = 0 (masks still trained by the task loss), which
  gives the regularizer's share of the pit step: (pit - pit_no_regularizer) / pit.

The variants alternate in one process, a few steps each, in rotating order, so machine load
(other processes on a shared CPU) hits them alike; reported times are medians per step.
Prints one JSON object; `pit_vs_plain` is the ratio of median step times (target <= 1.15).

    .venv/bin/python benchmarks/pit_overhead.py [--rounds 40] [--steps 2] [--imperative]
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
    parser.add_argument("--rounds", type=int, default=40, help="alternations of the variants")
    parser.add_argument("--steps", type=int, default=2, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--strength", type=float, default=0.1)
    parser.add_argument("--imperative", action="store_true", help="do not hybridize")
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
        # static_alloc/static_shape: fixed buffers, less per-op overhead (helps both alike).
        plain.hybridize(static_alloc=True, static_shape=True)
        model.hybridize(static_alloc=True, static_shape=True)
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
    for index in range(args.warmup + args.rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            nd.waitall()
            start = time.perf_counter()
            variants[name]()
            nd.waitall()
            if index >= args.warmup:
                times[name].append((time.perf_counter() - start) / args.steps)
    ms = {name: 1000 * statistics.median(values) for name, values in times.items()}
    print(json.dumps({
        "benchmark": "pit_overhead", "model": "resnet8", "input": list(SHAPE),
        "batch": args.batch, "rounds": args.rounds, "steps_per_round": args.steps,
        "hybridized": not args.imperative,
        "plain_step_ms": round(ms["plain"], 3), "pit_step_ms": round(ms["pit"], 3),
        "pit_no_regularizer_step_ms": round(ms["pit_no_regularizer"], 3),
        "pit_vs_plain": round(ms["pit"] / ms["plain"], 3),
        "regularizer_share": round((ms["pit"] - ms["pit_no_regularizer"]) / ms["pit"], 3),
        "target": TARGET, "threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average": [round(v, 2) for v in load_before + os.getloadavg()],
        "mxnet": mx.__version__, "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
