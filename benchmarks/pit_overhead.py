"""Training-step time of a PIT network over the same plain network (ResNet-8, batch 32).

Both networks start from the same weights; a step is forward + backward + optimizer update(s).
The PIT step also computes the size regularizer and updates the masks, as the search does.
Prints one JSON object; `pit_vs_plain` is the ratio of median step times (target <= 1.3).

    PYTHONPATH=. .venv/bin/python benchmarks/pit_overhead.py [--steps 30] [--imperative]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon, nd  # noqa: E402

import bmxnet_models  # noqa: E402
from lightnas_cli.search.pit.model import PITModel  # noqa: E402

SHAPE = (3, 32, 32)


def make_net(seed: int) -> gluon.HybridBlock:
    mx.random.seed(seed)
    net = bmxnet_models.get_model("resnet8", prefix="resnet8_")
    net.initialize(mx.init.Xavier())
    return net


def time_steps(step, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    nd.waitall()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        nd.waitall()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--imperative", action="store_true", help="do not hybridize")
    args = parser.parse_args()
    rng = np.random.RandomState(0)
    x = nd.array(rng.standard_normal((args.batch, *SHAPE)).astype(np.float32))
    y = nd.array(rng.randint(0, 10, args.batch).astype(np.float32))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    plain = make_net(0)
    pit = PITModel(make_net(0), SHAPE)
    if not args.imperative:
        # static_alloc/static_shape: fixed buffers, less per-op overhead (helps both alike).
        plain.hybridize(static_alloc=True, static_shape=True)
        pit.hybridize(static_alloc=True, static_shape=True)
    plain_trainer = gluon.Trainer(plain.collect_params(), "adam", {"learning_rate": 1e-3})
    weight_trainer = gluon.Trainer(pit.net_parameters(), "adam", {"learning_rate": 1e-3})
    mask_trainer = gluon.Trainer(pit.nas_parameters(), "adam", {"learning_rate": 1e-3})
    full_size = float(pit.size(soft=False))

    def plain_step() -> None:
        with autograd.record():
            loss = loss_fn(plain(x), y).sum()
        loss.backward()
        plain_trainer.step(args.batch)

    def pit_step() -> None:
        with autograd.record():
            loss = loss_fn(pit(x), y).sum() + args.batch * 0.1 * pit.regularizer("size") / full_size
        loss.backward()
        weight_trainer.step(args.batch)
        mask_trainer.step(args.batch)

    # Interleave the two measurements so machine load affects both alike.
    plain_times, pit_times = [], []
    for _ in range(2):
        plain_times += time_steps(plain_step, args.steps // 2, args.warmup)
        pit_times += time_steps(pit_step, args.steps // 2, args.warmup)
    plain_ms = 1000 * statistics.median(plain_times)
    pit_ms = 1000 * statistics.median(pit_times)
    print(json.dumps({
        "benchmark": "pit_overhead", "model": "resnet8", "input": list(SHAPE),
        "batch": args.batch, "steps": len(plain_times), "hybridized": not args.imperative,
        "plain_step_ms": round(plain_ms, 3), "pit_step_ms": round(pit_ms, 3),
        "pit_vs_plain": round(pit_ms / plain_ms, 3), "target": 1.3,
        "threads": os.environ.get("OMP_NUM_THREADS"), "mxnet": mx.__version__,
        "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
