"""Speed of binary layers relative to their float counterparts; prints one JSON object.

`qconv_vs_conv` is the forward+backward time of a QConv2D (sign activations and weights,
256 -> 256 channels, 3x3, 14x14, batch 32) over the same float Conv2D, measured in one run on
one device: the cost of building binary layers from stock MXNet operators (straight-through
signs around a float convolution) instead of BMXNet-v2's custom operators. Target <= 1.5.

Both layers are hybridized; each is warmed up, then timed `--repeats` times and the median
step is reported. Run: ``PYTHONPATH=. python benchmarks/binary_layers.py [--ctx gpu:0]``.
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

from bmxnet_models.binary import QConv2D, QDense  # noqa: E402


def step_time(layer: gluon.HybridBlock, x: nd.NDArray, repeats: int, warmup: int) -> float:
    """Median seconds of one forward + backward pass (input and weight gradients)."""
    x = x.copy()
    x.attach_grad()
    head = nd.ones_like(layer(x))
    times = []
    for index in range(warmup + repeats):
        start = time.perf_counter()
        with autograd.record():
            out = layer(x)
        out.backward(head)
        x.grad.wait_to_read()
        for param in layer.collect_params().values():
            param.grad().wait_to_read()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def make(layer: gluon.HybridBlock, ctx: mx.Context) -> gluon.HybridBlock:
    layer.initialize(mx.init.Xavier(), ctx=ctx)
    layer.hybridize(static_alloc=True, static_shape=True)
    return layer


def parse_ctx(text: str) -> mx.Context:
    kind, _, index = text.partition(":")
    return mx.gpu(int(index or 0)) if kind == "gpu" else mx.cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", default="cpu", help="cpu or gpu:N")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    ctx = parse_ctx(args.ctx)
    rng = np.random.RandomState(0)
    x = nd.array(rng.normal(size=(32, 256, 14, 14)).astype(np.float32), ctx=ctx)

    conv = make(gluon.nn.Conv2D(256, 3, padding=1, use_bias=False, in_channels=256), ctx)
    results = {"conv_ms": step_time(conv, x, args.repeats, args.warmup) * 1e3}
    variants = {"qconv": {}, "qconv_approx_sign": {"activation": "approx_sign"},
                "qconv_minus_one_padding": {"binary_padding": "minus_one"},
                "qconv_mean_scaling": {"weight_scaling": "mean"}}
    for name, options in variants.items():
        layer = make(QConv2D(256, 3, padding=1, in_channels=256, **options), ctx)
        results[f"{name}_ms"] = step_time(layer, x, args.repeats, args.warmup) * 1e3

    # A BinaryNet-style hidden layer: 4096 -> 4096, batch 32.
    flat = nd.array(rng.normal(size=(32, 4096)).astype(np.float32), ctx=ctx)
    dense = make(gluon.nn.Dense(4096, use_bias=False, in_units=4096), ctx)
    qdense = make(QDense(4096, in_units=4096), ctx)
    results["dense_ms"] = step_time(dense, flat, args.repeats, args.warmup) * 1e3
    results["qdense_ms"] = step_time(qdense, flat, args.repeats, args.warmup) * 1e3

    report = {
        "qconv_vs_conv": results["qconv_ms"] / results["conv_ms"],
        "target": 1.5,
        "qdense_vs_dense": results["qdense_ms"] / results["dense_ms"],
        "variants_vs_conv": {name: results[f"{name}_ms"] / results["conv_ms"]
                             for name in variants},
        "ms": {k[:-3]: round(v, 3) for k, v in results.items()},
        "shape": {"batch": 32, "channels": 256, "kernel": 3, "size": 14,
                  "dense_units": 4096},
        "device": str(ctx), "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "mxnet": mx.__version__, "machine": platform.machine(),
        "repeats": args.repeats,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
