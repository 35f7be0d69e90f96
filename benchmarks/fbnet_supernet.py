"""FBNet supernet overhead: one training step of a searchable layer of the supernet (θ, Gumbel
noise, every candidate, the mixing and the expected latency, as the search runs it) over the
sum of the training-step times of each candidate block alone on the same input.

One run, alternating: each round times the supernet step, then every candidate's step, so a
busy machine slows all of them alike; the per-item medians over the rounds are compared.
Prints JSON: `supernet_vs_candidates` (target <= 1.1; also in process CPU time), the medians,
the setup, and `grouped_1x1_conv_bn_ms` (the oneDNN cliff of README "FBNet").

    .venv/bin/python benchmarks/fbnet_supernet.py [--channels 32] [--size 16] [--batch 32]
        [--rounds 15] [--noise per_sample] [--ctx cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import mxnet as mx  # noqa: E402
from mxnet import autograd, gluon, nd  # noqa: E402

from bmxnet_models.fbnet import FBNET_CANDIDATES, LayerSpec, MixedLayer, make_candidate  # noqa: E402
from lightnas_cli.devices import parse_contexts  # noqa: E402
from lightnas_cli.search.fbnet.supernet import FBNetSupernet  # noqa: E402


class OneLayer(gluon.HybridBlock):
    """The zoo supernet reduced to one searchable layer (what FBNetSupernet wraps)."""

    def __init__(self, spec: LayerSpec, **kwargs):
        super().__init__(**kwargs)
        self.specs = [spec]
        with self.name_scope():
            self.layer = MixedLayer(spec, False, True, 2, prefix="layer0_")

    def hybrid_forward(self, F, x, weights):
        return self.layer(x, weights)


def step_timer(forward, params, ctx):
    """A function running one forward/backward/SGD step and returning its seconds."""
    trainer = gluon.Trainer(params, "sgd", {"learning_rate": 0.01, "momentum": 0.9})

    def step(x) -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        with autograd.record():
            loss = forward(x).mean()
        loss.backward()
        trainer.step(x.shape[0])
        nd.waitall()
        return time.perf_counter() - started, time.process_time() - cpu
    return step


def grouped_conv_cliff(channels: int, groups: int, ctx, size: int, batch: int) -> float:
    """Median ms of forward + backward of a 1x1 convolution (`groups` groups) + BatchNorm:
    oneDNN in MXNet 1.9.1 is slow when a group's channel count is not a multiple of 8."""
    block = gluon.nn.HybridSequential()
    block.add(gluon.nn.Conv2D(channels, 1, groups=groups, in_channels=channels, use_bias=False),
              gluon.nn.BatchNorm(in_channels=channels))
    block.initialize(ctx=ctx)
    block.hybridize()
    x = nd.random.uniform(shape=(batch, channels, size, size), ctx=ctx)
    x.attach_grad()
    times = []
    for _ in range(7):
        started = time.perf_counter()
        with autograd.record():
            out = block(x)
        out.backward()
        nd.waitall()
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:]) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--noise", default="per_sample")
    parser.add_argument("--ctx", default="cpu")
    args = parser.parse_args()
    ctx = parse_contexts([args.ctx])[0]
    spec = LayerSpec("layers.0", args.channels, args.channels, 1, FBNET_CANDIDATES, 0, 0)
    x = nd.random.uniform(shape=(args.batch, args.channels, args.size, args.size), ctx=ctx)

    supernet = FBNetSupernet(OneLayer(spec), [[0.1] * len(FBNET_CANDIDATES)], 0.0, 1.0,
                             args.noise, prefix="bench_")
    supernet.initialize(mx.init.Xavier(), ctx=ctx)
    supernet.hybridize()
    tau = nd.array([5.0], ctx=ctx)
    # The search steps the weights (and θ in its own epochs); here the weights.
    steps = {"supernet": step_timer(lambda v: supernet(v, tau)[0],
                                    supernet.net.collect_params(), ctx)}
    for name in FBNET_CANDIDATES:
        if name == "skip":
            continue  # no weights, nothing to train; an identity costs ~nothing
        block = make_candidate(spec, name)
        block.initialize(mx.init.Xavier(), ctx=ctx)
        block.hybridize()
        steps[name] = step_timer(block, block.collect_params(), ctx)
    for step in steps.values():  # warm-up: graphs built, memory allocated
        step(x)
        step(x)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(step(x))
    medians = {name: statistics.median(v[0] for v in values) * 1e3
               for name, values in times.items()}
    cpu = {name: statistics.median(v[1] for v in values) * 1e3 for name, values in times.items()}
    candidates = sum(v for k, v in medians.items() if k != "supernet")
    candidates_cpu = sum(v for k, v in cpu.items() if k != "supernet")
    print(json.dumps({
        "supernet_vs_candidates": round(medians["supernet"] / candidates, 4),
        # The same ratio in process CPU time: what the steps computed, without the time other
        # processes took the cores (equal to the wall-clock ratio on an idle machine with one
        # thread).
        "supernet_vs_candidates_cpu": round(cpu["supernet"] / candidates_cpu, 4),
        "supernet_step_ms": round(medians["supernet"], 3),
        "sum_of_candidate_steps_ms": round(candidates, 3),
        "candidate_step_ms": {k: round(v, 3) for k, v in medians.items() if k != "supernet"},
        "grouped_1x1_conv_bn_ms": {str(c): {"groups_1": round(grouped_conv_cliff(
            c, 1, ctx, args.size, args.batch), 3), "groups_2": round(grouped_conv_cliff(
                c, 2, ctx, args.size, args.batch), 3)} for c in (8, 16, 24, 32)},
        "setup": {"channels": args.channels, "size": args.size, "batch": args.batch,
                  "rounds": args.rounds, "noise": args.noise, "ctx": str(ctx),
                  "omp_threads": os.environ.get("OMP_NUM_THREADS")},
    }, indent=1))


if __name__ == "__main__":
    main()
