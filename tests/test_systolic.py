"""The `systolic` cost model (U-Boost NAS): exact runtimes computed by hand, the smooth ceiling
against its defining sum and the exact ceiling, gradients in NDArray and hybridized (Symbol)
graphs, and the model used by ENAS rewards, PIT regularizers and `lightnas summary`."""
from __future__ import annotations

import json
import math
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd
from scipy.special import expit

from lightnas_cli import costs
from lightnas_cli.costs.systolic import smooth_ceil
from lightnas_cli.errors import ConfigError

from conftest import run_cli


def _conv(cin, cout, kernel, out_hw, groups=1, **extra) -> costs.Layer:
    return costs.Layer(op="conv", in_channels=cin, out_channels=cout, kernel=kernel,
                       groups=groups, output_shape=(1, cout, *out_hw), **extra)


# (description, options, cycles worked out by hand: ⌈k1·k2·c/s1⌉ · ⌈f/s2⌉ · h·w · B)
CASES = [
    # k1·k2·c = 9·128 = 1152 = 9·128 exactly: 9 row tiles; 64 filters: 1 column tile.
    (_conv(128, 64, (3, 3), (8, 8)), {}, 9 * 1 * 64 * 64),
    # 9·100 = 900 is not a multiple of 128: ⌈7.03⌉ = 8.
    (_conv(100, 128, (3, 3), (4, 4)), {}, 8 * 1 * 16 * 64),
    # f = 129, one above a multiple of s2 = 128: two column tiles.
    (_conv(128, 129, (1, 1), (2, 2)), {}, 1 * 2 * 4 * 64),
    # Stride 2 on an 8x8 input: the array computes the 4x4 *output* positions.
    (_conv(16, 32, (3, 3), (4, 4), stride=(2, 2), input_shape=(1, 16, 8, 8)), {},
     2 * 1 * 16 * 64),
    # Depthwise (g = c = f = 32): each channel its own product, ⌈9/128⌉ · ⌈1/128⌉ each.
    (_conv(32, 32, (3, 3), (8, 8), groups=32), {}, 32 * 1 * 1 * 64 * 64),
    # Two groups of 128 -> 150: per group ⌈9·128/128⌉ = 9 rows, ⌈150/128⌉ = 2 columns.
    (_conv(256, 300, (3, 3), (1, 1), groups=2), {}, 2 * 9 * 2 * 1 * 64),
    # Dense 300 -> 10 is a 1x1 convolution on a 1x1 map: ⌈300/128⌉ · ⌈10/128⌉ · B.
    (costs.Layer(op="dense", in_channels=300, out_channels=10, output_shape=(1, 10)), {},
     3 * 1 * 64),
    # A 4 x 3 array, batch 1, a 3x1 kernel: ⌈3·1·2/4⌉ = 2 rows, ⌈7/3⌉ = 3 columns, 5x5 outputs.
    (_conv(2, 7, (3, 1), (5, 5)), {"s1": 4, "s2": 3, "batch": 1}, 2 * 3 * 25),
    # Conv1D, k = 5, c = 3 on a 4 x 4 array, batch 2: ⌈15/4⌉ = 4, ⌈8/4⌉ = 2, 20 positions.
    (costs.Layer(op="conv", in_channels=3, out_channels=8, kernel=(5,), output_shape=(1, 8, 20)),
     {"s1": 4, "s2": 4, "batch": 2}, 4 * 2 * 20 * 2),
    # Batch norms fold into the neighbouring layer.
    (costs.Layer(op="batchnorm", in_channels=8, out_channels=8, output_shape=(1, 8, 4, 4)), {},
     0),
]


@pytest.mark.parametrize("layer, options, expected", CASES)
def test_exact_runtime_by_hand(layer, options, expected) -> None:
    for ceiling in ("exact", "auto"):
        value = costs.get_cost_model("systolic", ceiling=ceiling, **options)(layer)
        assert value == expected and isinstance(value, int)


def test_options_are_checked() -> None:
    assert "systolic" in costs.available_cost_models()
    assert costs.cost_unit("systolic") == "cycles"
    for bad in ({"s1": 0}, {"batch": 2.5}, {"ceiling": "round"}, {"sharpness": -1.0},
                {"array": 128}):
        with pytest.raises((ConfigError, TypeError)):
            costs.get_cost_model("systolic", **bad)


def _reference(x: float, T: float, N: int = 400) -> float:
    """The smooth ceiling as the issue defines it: Σ_{i=0..N} sigmoid(T (x − i))."""
    return float(np.sum(expit(T * (x - np.arange(N + 1)))))


def test_smooth_ceiling_is_the_sum_of_sigmoids() -> None:
    for T in (0.5, 2.0, 10.0, 50.0):
        for x in np.linspace(0.0, 20.0, 81):
            assert smooth_ceil(float(x), T) == pytest.approx(_reference(float(x), T), abs=1e-9)
    # The NDArray path computes the same (float32).
    xs = np.linspace(0.0, 20.0, 41)
    values = smooth_ceil(nd.array(xs), 3.0).asnumpy()
    np.testing.assert_allclose(values, [_reference(x, 3.0) for x in xs], atol=2e-4)


def test_smooth_ceiling_converges_to_the_ceiling_with_a_gradient() -> None:
    points = np.array([n + d for n in range(6) for d in (0.3, 0.7)], dtype=np.float32)
    worst = {}
    for T in (5.0, 20.0, 50.0):
        x = nd.array(points)
        x.attach_grad()
        with autograd.record():
            y = smooth_ceil(x, T)
        y.backward()
        error = np.abs(y.asnumpy() - np.ceil(points))
        worst[T] = float(error.max())
        assert (x.grad.asnumpy() > 0).all(), T
    assert worst[50.0] <= 0.01
    assert worst[50.0] < worst[20.0] < worst[5.0]
    # Integer offsets: at an integer the smooth ceiling sits half way up the step.
    assert smooth_ceil(3.0, 50.0) == pytest.approx(3.5, abs=1e-6)


class _SoftCost(gluon.HybridBlock):
    """A layer's systolic cost as a function of a soft channel count, inside a graph."""

    def __init__(self, model: costs.CostModel, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        with self.name_scope():
            self.channels = self.params.get("channels", shape=(1,), init=mx.init.Constant(20.3))

    def hybrid_forward(self, F, x, channels):
        layer = costs.Layer(op="conv", in_channels=channels, out_channels=channels * 2,
                            kernel=(3, 3), output_shape=(1, 1, 4, 4), F=F)
        return self.model(layer) + 0 * F.sum(x)


def test_smooth_cost_in_a_hybridized_graph_matches_the_imperative_one() -> None:
    model = costs.get_cost_model("systolic", s1=8, s2=8, batch=2, sharpness=4.0)
    results = []
    for hybridize in (False, True):
        block = _SoftCost(model, prefix="soft_")
        block.initialize()
        if hybridize:
            block.hybridize()
        with autograd.record():
            value = block(nd.zeros((1,)))
        value.backward()
        results.append((float(value.asscalar()), float(block.channels.grad().asscalar())))
    (imperative, grad), (hybrid, hybrid_grad) = results
    expected = smooth_ceil(9 * 20.3 / 8, 4.0) * smooth_ceil(40.6 / 8, 4.0) * 16 * 2
    assert imperative == pytest.approx(expected, rel=1e-5)
    assert hybrid == pytest.approx(imperative, rel=1e-6)
    assert grad != 0 and hybrid_grad == pytest.approx(grad, rel=1e-5)
    # Exact ceilings of soft counts (ceiling="exact") have no gradient, as expected.
    exact = costs.get_cost_model("systolic", s1=8, s2=8, batch=2, ceiling="exact")
    layer = costs.Layer(op="conv", in_channels=nd.array([20.3]), out_channels=nd.array([40.6]),
                        kernel=(3, 3), output_shape=(1, 1, 4, 4))
    assert float(exact(layer).asscalar()) == math.ceil(9 * 20.3 / 8) * math.ceil(40.6 / 8) * 32


def test_summary_with_the_systolic_cost(tmp_path: Path) -> None:
    result = run_cli(["summary", "lenet", "--input-shape", "1,8,8", "--classes", "10",
                      "--cost", "systolic", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    # conv1 ⌈25/128⌉·⌈6/128⌉·8·8·64, conv2 ⌈150/128⌉·1·4·4·64, three dense layers 64 each.
    per_layer = [row["costs"]["systolic"] for row in data["layers"]]
    assert per_layer == [4096, 2048, 64, 64, 64]
    assert data["costs"]["systolic"] == {"total": 6336, "unit": "cycles"}


def test_systolic_drives_the_enas_reward(tmp_path: Path) -> None:
    from lightnas_cli import data
    from lightnas_cli.config import load_config
    from lightnas_cli.devices import parse_contexts
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.search.enas.method import EnasSearch

    from conftest import TINY_ENAS, write_config
    cfg = load_config(write_config(tmp_path, TINY_ENAS), ["enas.cost=systolic",
                                                          "enas.cost_weight=1"])
    bundle = data.load(cfg.data, cfg.seed, cfg.train.batch_size)
    with RunLogger(tmp_path / "logs", tensorboard=False, plain=True) as logger:
        method = EnasSearch(cfg, bundle, parse_contexts(["cpu"]), logger)
    actions = [1, 0] * 8
    arch = method.derive()
    for decision, action in zip(arch.decisions, actions):
        decision.value = decision.options[action]
    built = costs.profile(method.build(arch), method.input_shape)
    assert method.cost(actions) == costs.get_cost_model("systolic").total(built) > 0
    assert arch.costs["cost_name"] == "systolic"


def test_systolic_pit_regularizer_is_differentiable() -> None:
    from lightnas_cli.search.pit.model import PITModel

    net = gluon.nn.HybridSequential(prefix="sys_")
    net.add(gluon.nn.Conv2D(12, 3, padding=1, in_channels=2), gluon.nn.Activation("relu"),
            gluon.nn.Conv2D(12, 3, padding=1, groups=12, in_channels=12),
            gluon.nn.Activation("relu"), gluon.nn.Dense(4, in_units=12 * 6 * 6))
    net.initialize()
    plain = costs.get_cost_model("systolic").total(costs.profile(net, (2, 6, 6)))
    pit = PITModel(net, (2, 6, 6))
    assert pit.costs(soft=False, names=("systolic",))["systolic"] == plain
    masks = list(pit.nas_parameters())
    with autograd.record():
        value = pit.regularizer("systolic")
    value.backward()
    assert float(value.asscalar()) > 0
    assert any(np.abs(p.grad().asnumpy()).sum() > 0 for p in masks)


def test_pit_regularizer_takes_cost_options(tmp_path: Path) -> None:
    """`pit.regularizer: systolic:s1=4,s2=4` prices a 4x4 array (not the default 128x128),
    in the fast regularizer and in the reported costs; a wrong option exits 2."""
    from lightnas_cli.search.pit.model import PITModel

    net = gluon.nn.HybridSequential(prefix="sysopt_")
    net.add(gluon.nn.Conv2D(12, 3, padding=1, in_channels=2), gluon.nn.Activation("relu"),
            gluon.nn.Dense(4, in_units=12 * 6 * 6))
    net.initialize()
    small = costs.cost_model_from_spec("systolic:s1=4,s2=4").total(costs.profile(net, (2, 6, 6)))
    default = costs.get_cost_model("systolic").total(costs.profile(net, (2, 6, 6)))
    assert small > default
    pit = PITModel(net, (2, 6, 6))
    spec = "systolic:s1=4,s2=4"
    assert pit.costs(soft=False, names=(spec,))[spec] == small
    # The options reach the fast regularizer: with the exact ceiling its value on the
    # binarized masks is the 4x4 array's cost; the smooth one differs from the default's.
    exact = "systolic:s1=4,s2=4,ceiling=exact"
    assert float(pit.regularizer(exact, discrete=True).asscalar()) == small
    assert float(pit.regularizer(spec).asscalar()) != pytest.approx(
        float(pit.regularizer("systolic").asscalar()))

    from conftest import REPO
    config = REPO / "configs" / "mock" / "pit_tcn.yml"
    ok = run_cli(["search", "-c", str(config), "run.name=s", "train.epochs=2",
                  "pit.finetune_epochs=0", f"pit.regularizer={spec}"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    record = json.loads((tmp_path / "trainings/s/logs/architectures/epoch_2.json").read_text())
    assert record["costs"]["cost_name"] == spec and record["costs"][spec] > 0
    bad = run_cli(["search", "-c", str(config), "run.name=b", "pit.regularizer=systolic:rows=4"],
                  tmp_path)
    assert bad.returncode == 2 and "has no option(s) rows" in bad.stderr
    assert not (tmp_path / "trainings" / "b").exists()
