"""The cost-model registry: built-in models from layer descriptions, soft (differentiable)
channel counts, a user-registered model reaching summaries and ENAS rewards, and
`lightnas summary --cost`."""
from __future__ import annotations

import json
from pathlib import Path

import mxnet as mx
import pytest
from mxnet import autograd, gluon, nd

from lightnas_cli import costs
from lightnas_cli.errors import ConfigError

from conftest import run_cli


def _conv(**overrides) -> costs.Layer:
    fields = dict(op="conv", in_channels=16, out_channels=32, kernel=(3, 3), stride=(1, 1),
                  dilation=(1, 1), groups=1, bias=True, output_shape=(1, 32, 8, 8))
    fields.update(overrides)
    return costs.Layer(**fields)


def test_builtin_cost_models_by_hand() -> None:
    assert {"params", "macs", "flops", "binary_memory", "ops"} <= set(
        costs.available_cost_models())
    conv = _conv()
    params = 16 * 32 * 9 + 32
    assert costs.get_cost_model("params")(conv) == params
    assert costs.get_cost_model("macs")(conv) == params * 64
    assert costs.get_cost_model("flops")(conv) == 2 * params * 64
    assert costs.get_cost_model("binary_memory")(conv) == params * 4
    binary = _conv(bits=1, bias=False)
    assert costs.get_cost_model("binary_memory")(binary) == 16 * 32 * 9 / 8
    assert costs.get_cost_model("ops")(binary) == 16 * 32 * 9 * 64 / 64
    depthwise = _conv(in_channels=32, groups=32, bias=False)
    assert depthwise.params == 32 * 9 and depthwise.layer_type == "conv2d"
    dense = costs.Layer(op="dense", in_channels=10, out_channels=4, output_shape=(1, 4))
    assert (dense.params, dense.macs) == (44, 44)
    norm = costs.Layer(op="batchnorm", in_channels=8, out_channels=8, output_shape=(1, 8, 4, 4),
                       bias=False)
    assert (norm.params, norm.macs) == (16, 0)
    assert costs.get_cost_model("macs").total([conv, dense, norm]) == params * 64 + 44


def test_unknown_cost_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'flops'"):
        costs.get_cost_model("flop")
    with pytest.raises(ConfigError, match="takes no options"):
        costs.get_cost_model("params", array=128)


def test_cost_specs_carry_options() -> None:
    assert costs.parse_cost_spec("macs") == ("macs", {})
    assert costs.parse_cost_spec("systolic:s1=32, s2=16,ceiling=exact") == (
        "systolic", {"s1": 32, "s2": 16, "ceiling": "exact"})
    small = costs.cost_model_from_spec("systolic:s1=8,s2=8,batch=1")
    assert (small.s1, small.s2, small.batch) == (8, 8, 1)
    with pytest.raises(ConfigError, match="has no option"):
        costs.cost_model_from_spec("systolic:rows=8")
    with pytest.raises(ConfigError, match="name:key=value"):
        costs.parse_cost_spec("systolic:s1")


def test_soft_channel_counts_give_gradients() -> None:
    """A description whose channel counts are NDArrays costs an NDArray with gradients."""
    channels = nd.array([12.5])
    channels.attach_grad()
    with autograd.record():
        cost = costs.get_cost_model("macs")(_conv(out_channels=channels, bias=False))
    cost.backward()
    assert float(cost.asscalar()) == pytest.approx(16 * 12.5 * 9 * 64)
    assert float(channels.grad.asscalar()) == pytest.approx(16 * 9 * 64)


def test_profile_describes_stride_dilation_and_groups() -> None:
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(8, 3, strides=2, padding=2, dilation=2, groups=2, in_channels=4),
            gluon.nn.Dense(5))
    net.initialize()
    conv, dense = costs.profile(net, (4, 9, 9))
    assert (conv.op, conv.stride, conv.dilation, conv.groups) == ("conv", (2, 2), (2, 2), 2)
    assert conv.in_channels == 4 and conv.input_shape == (1, 4, 9, 9)
    assert conv.output_shape == (1, 8, 5, 5) and conv.path == "0"
    assert (dense.op, dense.in_channels, dense.out_channels) == ("dense", 200, 5)


@costs.register_cost_model
class _WeightedLayers(costs.CostModel):
    """A user's cost model: 1 per dense layer, 10 per convolution, 0 for batch norms."""

    name = "test_weighted_layers"
    unit = "points"
    description = "a test cost model"

    def layer(self, layer: costs.Layer):
        return {"conv": 10, "dense": 1}.get(layer.op, 0)


def test_a_registered_cost_model_reaches_the_summary() -> None:
    from lightnas_cli.summary import summarize_model
    result = summarize_model("resnet_e18", [1, 8, 8], 4, {"base_channels": 4},
                             cost_names=["test_weighted_layers", "ops"])
    data = result.to_dict()
    convs = sum(row["type"] in ("conv2d", "qconv2d") for row in data["layers"])
    assert data["costs"]["test_weighted_layers"] == {"total": 10 * convs + 1, "unit": "points"}
    assert data["costs"]["ops"]["total"] == pytest.approx(data["totals"]["ops"])
    with pytest.raises(ConfigError, match="unknown cost model"):
        summarize_model("resnet_e18", cost_names=["nope"])


def test_a_registered_cost_model_drives_the_enas_reward(tmp_path: Path) -> None:
    from lightnas_cli import data
    from lightnas_cli.config import load_config
    from lightnas_cli.devices import parse_contexts
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.search.enas.method import EnasSearch

    from conftest import TINY_ENAS, write_config
    cfg = load_config(write_config(tmp_path, TINY_ENAS), ["enas.cost=ops",
                                                          "enas.cost_weight=1"])
    bundle = data.load(cfg.data, cfg.seed, cfg.train.batch_size)
    with RunLogger(tmp_path / "logs", tensorboard=False, plain=True) as logger:
        method = EnasSearch(cfg, bundle, parse_contexts(["cpu"]), logger)
    actions = [0, 1] * 8
    arch = method.derive()
    for decision, action in zip(arch.decisions, actions):
        decision.value = decision.options[action]
    built = costs.profile(method.build(arch), method.input_shape)
    assert method.cost(actions) == pytest.approx(costs.get_cost_model("ops").total(built))
    reward, cost = method.reward(0.5, actions)
    assert reward == pytest.approx(0.5 * method.cost_target / cost)


def test_summary_cost_option_on_the_command_line(tmp_path: Path) -> None:
    result = run_cli(["summary", "meliusnet22", "--cost", "ops", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["costs"]["ops"]["total"] == pytest.approx(data["totals"]["ops"])
    assert data["costs"]["ops"]["total"] == pytest.approx(2.086e8, rel=1e-3)  # the paper: 2.08e8
    table = run_cli(["summary", "resnet_e18", "--input-shape", "1,8,8",
                     "--classes", "4", "-o", "base_channels=4", "--cost", "flops"], tmp_path)
    assert table.returncode == 0, table.stderr
    assert "flops (FLOPs)" in table.stdout and "flops:" in table.stdout
    bad = run_cli(["summary", "resnet_e18", "--cost", "latency"], tmp_path)
    assert bad.returncode == 2 and "unknown cost model 'latency'" in bad.stderr
    assert "Traceback" not in bad.stderr
