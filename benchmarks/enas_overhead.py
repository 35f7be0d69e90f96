"""How much does running ENAS's supernet cost over the plain network, and binary over float?

Prints JSON:
- supernet_vs_static: training-step time of the ResNet-E18 supernet running one sampled
  architecture (each searchable block an EnasUnit, only the chosen candidates hybridized) over
  the step time of that same architecture built as a plain, fully hybridized network. Same
  batch, same device, measured side by side in one run (rounds alternate A/B).
- binary_vs_float: step time of an all-binary ResNet-E18 over an all-float one.
- controller_sample_ms: time the LSTM controller takes to sample one architecture (a per-step
  cost of the search on top of the supernet step).

    python benchmarks/enas_overhead.py [--batch 32] [--size 32] [--width 64] [--steps 10]
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon, nd  # noqa: E402

import bmxnet_models  # noqa: E402
from lightnas_cli.search.enas.controller import Controller  # noqa: E402
from bmxnet_models.enas.unit import find_units, fixed_choices, hybridize_supernet  # noqa: E402


def make_step(net, batch, labels):
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-3})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def step(before=None):
        if before:
            before()
        with autograd.record():
            loss = loss_fn(net(batch), labels)
        loss.backward()
        trainer.step(batch.shape[0], ignore_stale_grad=True)
        loss.wait_to_read()
        nd.waitall()
    return step


def init(net, batch):
    net.initialize(mx.init.Xavier(magnitude=2))
    net(batch[:1])


def time_side_by_side(steps: dict, rounds: int, per_round: int) -> dict:
    """Median seconds per step of each callable, alternating between them every round."""
    for step in steps.values():
        for _ in range(2):
            step()
    samples = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            samples[name].append((time.perf_counter() - start) / per_round)
    return {name: float(np.median(values)) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=64, help="ResNet-E base channels")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    args = parser.parse_args()

    mx.random.seed(0)
    rng = np.random.RandomState(0)
    batch = nd.array(rng.normal(size=(args.batch, 3, args.size, args.size)))
    labels = nd.array(rng.randint(0, 10, size=args.batch))
    options = dict(classes=10, stem="thumbnail", base_channels=args.width)

    supernet = bmxnet_models.get_model("resnet_e18", enas=True, **options)
    units = find_units(supernet)
    init(supernet, batch)
    hybridize_supernet(supernet)
    sampled = [{"bits": int(rng.choice([1, 32]))} for _ in units]
    for unit, values in zip(units, sampled):
        unit.select(values)

    with fixed_choices(sampled):
        static = bmxnet_models.get_model("resnet_e18", enas=True, **options)
    init(static, batch)
    static.hybridize()

    def reselect():  # what the search does every step: activate the sampled path
        for unit, values in zip(units, sampled):
            unit.select(values)

    supernet_step = make_step(supernet, batch, labels)
    binary = bmxnet_models.get_model("resnet_e18", bits=1, **options)
    floating = bmxnet_models.get_model("resnet_e18", bits=32, **options)
    for net in (binary, floating):
        init(net, batch)
        net.hybridize()
    times = time_side_by_side({
        "supernet": lambda: supernet_step(reselect),
        "static": make_step(static, batch, labels),
        "binary": make_step(binary, batch, labels),
        "float": make_step(floating, batch, labels),
    }, args.rounds, args.steps)

    controller = Controller([2] * len(units), hidden_size=100)
    controller.initialize()
    start = time.perf_counter()
    for _ in range(20):
        controller.run(1, rng=rng)
    controller_ms = (time.perf_counter() - start) / 20 * 1000

    print(json.dumps({
        "supernet_vs_static": round(times["supernet"] / times["static"], 3),
        "binary_vs_float": round(times["binary"] / times["float"], 3),
        "controller_sample_ms": round(controller_ms, 2),
        "step_seconds": {k: round(v, 4) for k, v in times.items()},
        "sampled_bits": ",".join(str(v["bits"]) for v in sampled),
        "setup": {"model": "resnet_e18", "batch": args.batch, "input": [3, args.size, args.size],
                  "base_channels": args.width, "device": "cpu",
                  "omp_threads": os.environ.get("OMP_NUM_THREADS")},
    }, indent=2))


if __name__ == "__main__":
    main()
