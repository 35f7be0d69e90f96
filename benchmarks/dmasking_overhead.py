"""Training-step time of the DMasking supernet over the plain largest network of its space.

LeNet-5 with seed 004's choices (the default arch_def) on 1x28x28 inputs, batch 64, as the
search builds them: the masked supernet (hybridized, Gumbel-softmax masks with the config's
default noise, per batch) and the zoo's plain LeNet at the largest widths, from the same
weights. A step is forward + backward + SGD update of the weights; steps alternate A/B in one
process, so machine load affects both alike. Prints one JSON object: `masked_vs_largest` is
the ratio of median step times (target <= 1.2); `per_sample_vs_largest` the same with noise
per sample (every activation multiplied by its own mask); `arch_step_vs_largest` the α step
(latency term on, Adam on α).

    PYTHONPATH=. .venv/bin/python benchmarks/dmasking_overhead.py [--steps 200] [--batch 64]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon, nd  # noqa: E402

from lightnas_cli import data as data_mod  # noqa: E402
from lightnas_cli.config import load_config  # noqa: E402
from lightnas_cli.logging import RunLogger  # noqa: E402
from lightnas_cli.search.dmasking.method import DMaskingSearch  # noqa: E402


def build(shape: list[int], batch: int, imperative: bool) -> DMaskingSearch:
    cfg = load_config(None, ["method=dmasking", f"data.mock.shape={shape}",
                             f"train.batch_size={batch}",
                             f"train.hybridize={'false' if imperative else 'true'}"])
    spec = SimpleNamespace(spec=data_mod.describe(cfg.data))
    logger = RunLogger(Path(tempfile.mkdtemp()) / "logs", tensorboard=False, plain=True)
    return DMaskingSearch(cfg, spec, [mx.cpu()], logger)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=28, help="input side (1 channel)")
    parser.add_argument("--imperative", action="store_true", help="do not hybridize")
    args = parser.parse_args()
    shape = [1, args.size, args.size]
    method = build(shape, args.batch, args.imperative)
    masked = method.supernet
    noise = method.config.relaxation.noise
    masked.configure(mode="sample", temperature=1.0, noise=noise, latency=False)
    # The plain largest network, with the supernet's weights (what `build` exports).
    largest = method.derive()
    plain = method.build(largest)
    if not args.imperative:
        plain.hybridize()

    rng = np.random.RandomState(0)
    x = nd.array(rng.standard_normal((args.batch, *shape)).astype(np.float32))
    y = nd.array(rng.randint(0, 10, args.batch).astype(np.float32))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    sgd = {"learning_rate": 0.01, "momentum": 0.9}
    plain_trainer = gluon.Trainer(plain.collect_params(), "sgd", sgd)
    masked_trainer = gluon.Trainer(masked.weight_params(), "sgd", sgd)
    arch_trainer = gluon.Trainer(masked.architecture_params(), "adam", {"learning_rate": 0.01})

    def plain_step() -> None:
        with autograd.record():
            loss = loss_fn(plain(x), y).sum()
        loss.backward()
        plain_trainer.step(args.batch)

    def masked_step() -> None:
        with autograd.record():
            loss = loss_fn(method.tap(x), y).sum()
        loss.backward()
        masked_trainer.step(args.batch)

    def arch_step() -> None:
        with autograd.record():
            logits, latency = masked(x)
            loss = loss_fn(logits, y).sum() + args.batch * latency / method.latency_largest
        loss.backward()
        arch_trainer.step(args.batch)

    def timed(step) -> float:
        nd.waitall()
        start = time.perf_counter()
        step()
        nd.waitall()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {}
    for phase, step in (("masked", masked_step), ("per_sample", masked_step),
                        ("arch", arch_step)):
        masked.configure(latency=phase == "arch",
                         noise="per_sample" if phase == "per_sample" else noise)
        for index in range(args.warmup + args.steps):
            plain_time, step_time = timed(plain_step), timed(step)
            if index >= args.warmup:
                times.setdefault(phase, []).append(step_time)
                times.setdefault(f"plain_{phase}", []).append(plain_time)
    ms = {key: 1000 * statistics.median(values) for key, values in times.items()}
    plain_ms, masked_ms, arch_ms = ms["plain_masked"], ms["masked"], ms["arch"]
    print(json.dumps({
        "benchmark": "dmasking_overhead", "model": "lenet (default arch_def)", "input": shape,
        "batch": args.batch, "steps": args.steps, "hybridized": not args.imperative,
        "largest_step_ms": round(plain_ms, 3), "masked_step_ms": round(masked_ms, 3),
        "arch_step_ms": round(arch_ms, 3), "noise": noise,
        "masked_vs_largest": round(masked_ms / plain_ms, 3),
        "per_sample_vs_largest": round(ms["per_sample"] / ms["plain_per_sample"], 3),
        "arch_step_vs_largest": round(arch_ms / ms["plain_arch"], 3), "target": 1.2,
        "threads": os.environ.get("OMP_NUM_THREADS"), "mxnet": mx.__version__,
        "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
