"""Latency tables (lightnas_cli/costs/latency_table.py): building one over a small space, the
per-call overhead, refusing a table for other shapes or another space, the `latency_table`
cost model, and the supernet's differentiable expected latency against a hand-computed sum."""
from __future__ import annotations

import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from lightnas_cli import costs
from lightnas_cli.costs.latency_table import (LatencySpace, LatencyTable, SpaceLayer,
                                              build_table, check_table, write_table)
from lightnas_cli.errors import ConfigError
from lightnas_cli.search.relaxation import gumbel_softmax


def small_space(width: int = 4, size: int = 6) -> LatencySpace:
    """stem (1x1 conv) -> two layers choosing a 1x1 or a 3x3 convolution -> tail (pool)."""
    shape = (width, size, size)

    def conv(kernel: int) -> gluon.HybridBlock:
        block = gluon.nn.Conv2D(width, kernel, padding=kernel // 2, in_channels=width)
        block.initialize()
        return block

    def tail() -> gluon.HybridBlock:
        block = gluon.nn.HybridSequential()
        block.add(gluon.nn.GlobalAvgPool2D(), gluon.nn.Flatten())
        return block

    def make_block(name: str, candidate: str) -> gluon.HybridBlock:
        if name == "stem":
            return conv(1)
        if name == "tail":
            return tail()
        return conv(int(candidate[1]))

    def make_network(choices) -> gluon.HybridBlock:
        net = gluon.nn.HybridSequential()
        net.add(conv(1), *[conv(int(c[1])) for c in choices], tail())
        return net

    layers = [SpaceLayer(f"layers.{i}", shape, shape, ("k1", "k3")) for i in range(2)]
    fixed = [SpaceLayer("stem", shape, shape), SpaceLayer("tail", shape, (width,))]
    return LatencySpace(signature={"model": "toy", "options": {"width": width},
                                   "input_shape": list(shape)},
                        layers=layers, fixed=fixed, make_block=make_block,
                        make_network=make_network)


@pytest.fixture(scope="module")
def built() -> dict:
    return build_table(small_space(), mx.cpu(), "cpu", repeats=4, warmup=1, rounds=2)


def test_build_table_records_where_and_what(built) -> None:
    assert built["device"] == "cpu" and built["batch"] == 1 and built["repeats"] == 4
    assert built["rounds"] == 2
    assert built["mxnet"] == mx.__version__ and built["threads"] >= 1 and built["date"]
    assert [layer["name"] for layer in built["layers"]] == ["layers.0", "layers.1"]
    assert list(built["layers"][0]["latency_ms"]) == ["k1", "k3"]
    assert built["layers"][0]["input_shape"] == [4, 6, 6]
    overhead = built["overhead_ms"]
    assert overhead >= 0
    # The stem keeps the one call overhead of a whole network; every other entry is net of it.
    stem, tail = built["fixed"]
    assert stem["latency_ms"] == stem["raw_ms"]
    assert tail["latency_ms"] == pytest.approx(max(tail["raw_ms"] - overhead, 0.0))
    for layer in built["layers"]:
        for candidate, value in layer["latency_ms"].items():
            assert value == pytest.approx(max(layer["raw_ms"][candidate] - overhead, 0.0))
    table = LatencyTable(built)
    calibration = built["calibration"]
    assert len(calibration) == 5 and calibration[0]["choices"] == ["k1", "k1"]
    estimates = sorted(c["overhead_ms"] for c in calibration)
    if overhead != built["identity_call_ms"]:
        # The median of the networks' estimates; the network giving it is predicted exactly.
        assert overhead == estimates[2]
        network = next(c for c in calibration if c["overhead_ms"] == overhead)
        assert table.predict(["layers.0", "layers.1"], network["choices"]) == pytest.approx(
            network["measured_ms"])


def test_written_table_loads_and_predicts_sums(built, tmp_path) -> None:
    path = write_table(built, tmp_path / "toy.json")
    table = LatencyTable.load(path)
    table.check_space(small_space())
    fixed = sum(part["latency_ms"] for part in built["fixed"])
    by_hand = fixed + built["layers"][0]["latency_ms"]["k3"] + built["layers"][1]["latency_ms"]["k1"]
    assert table.predict(["layers.0", "layers.1"], ["k3", "k1"]) == pytest.approx(by_hand)
    # (sums in another order may differ in the last bit: the random choice can be the fastest)
    ulp = 1e-12 * by_hand
    assert table.extremes()["fastest_ms"] - ulp <= by_hand <= table.extremes()["slowest_ms"] + ulp


def test_a_table_for_other_shapes_or_another_space_is_refused(built) -> None:
    table = LatencyTable(built, "toy.json")
    with pytest.raises(ConfigError, match=r"built for input_shape=\[4, 6, 6\], this config "
                                          r"has input_shape=\[8, 6, 6\]"):
        table.check_space(small_space(width=8))
    another = small_space()
    another.signature["options"]["bn"] = "outside"
    with pytest.raises(ConfigError, match=r"built for options\.bn=None, this config has "
                                          r"options\.bn='outside'"):
        table.check_space(another)
    other = small_space()
    other.layers[1] = SpaceLayer("layers.1", (4, 5, 5), (4, 5, 5), ("k1", "k3"))
    with pytest.raises(ConfigError, match=r"layers\.1 was measured with input_shape "
                                          r"\[4, 6, 6\], this config gives \[4, 5, 5\]"):
        table.check_space(other)
    fewer = small_space()
    fewer.layers[0] = SpaceLayer("layers.0", (4, 6, 6), (4, 6, 6), ("k1",))
    with pytest.raises(ConfigError, match="candidates"):
        table.check_space(fewer)
    with pytest.raises(ConfigError, match="not a valid latency table"):
        LatencyTable({"kind": "something else"})


def test_cost_model_prices_blocks_from_the_table(built, tmp_path) -> None:
    path = write_table(built, tmp_path / "toy.json")
    model = costs.get_cost_model("latency_table", table=str(path))
    block = costs.Layer(op="block", in_channels=4, out_channels=4, output_shape=(1, 4, 6, 6),
                        key="layers.1:k3")
    assert model(block) == built["layers"][1]["latency_ms"]["k3"]
    stem = costs.Layer(op="block", in_channels=4, out_channels=4, output_shape=(1, 4, 6, 6),
                       key="stem")
    assert model.total([block, stem]) == pytest.approx(
        built["layers"][1]["latency_ms"]["k3"] + built["fixed"][0]["latency_ms"])
    # Counting models see a block as weightless; the table refuses single layers.
    assert costs.get_cost_model("params")(block) == 0 and costs.get_cost_model("macs")(block) == 0
    conv = costs.Layer(op="conv", in_channels=4, out_channels=4, kernel=(3, 3), stride=(1, 1),
                       dilation=(1, 1), output_shape=(1, 4, 6, 6))
    with pytest.raises(ConfigError, match="prices whole blocks"):
        model(conv)
    with pytest.raises(ConfigError, match="needs a table"):
        costs.get_cost_model("latency_table")
    # Config keys that name a cost model alone (enas.cost, pit.regularizer) do not offer it.
    assert "latency_table" not in costs.available_cost_models()
    assert "latency_table" in costs.available_cost_models(with_options=True)
    with pytest.raises(ConfigError, match="lightnas latency build"):
        costs.get_cost_model("latency_table", table=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="no entry 'layers.1:k5'"):
        model(costs.Layer(op="block", in_channels=4, out_channels=4, output_shape=(1,),
                          key="layers.1:k5"))


def test_check_compares_whole_networks_with_predictions(built) -> None:
    result = check_table(small_space(), LatencyTable(built), mx.cpu(), samples=2, repeats=3,
                         warmup=1)
    assert [row["kind"] for row in result["rows"]] == ["sample", "sample", "fastest", "slowest"]
    assert result["rows"][2]["choices"] == [min(("k1", "k3"), key=lambda c, i=i: built[
        "layers"][i]["latency_ms"][c]) for i in range(2)]
    for row in result["rows"]:
        assert row["measured_ms"] > 0
        assert row["error_pct"] == pytest.approx(
            100 * (row["predicted_ms"] - row["measured_ms"]) / row["measured_ms"])
    assert result["worst_abs_error_pct"] >= result["median_abs_error_pct"] >= 0


def test_supernet_expected_latency_by_hand() -> None:
    """LAT = fixed + Σ_l Σ_i softmax(θ_l / τ)_i · LUT(l, i) (no noise), differentiable in θ:
    dLAT/dθ_j = p_j (LUT_j - Σ_i p_i LUT_i) / τ."""
    from lightnas_cli.search.fbnet.supernet import FBNetSupernet

    class TwoLayers(gluon.HybridBlock):
        def hybrid_forward(self, F, x, *weights):
            return x

    luts = [[1.0, 2.0, 4.0], [0.5, 3.0]]
    supernet = FBNetSupernet(TwoLayers(), luts, fixed_ms=0.25, theta_init=1.0, noise="none")
    supernet.initialize()
    thetas = [np.array([0.2, -0.4, 1.0]), np.array([2.0, 0.0])]
    for param, value in zip(supernet.thetas(), thetas):
        param.set_data(nd.array(value))
    tau = 2.0
    with autograd.record():
        _, latency = supernet(nd.zeros((3, 1)), nd.array([tau]))
    latency.backward()
    probs = [np.exp(t / tau) / np.exp(t / tau).sum() for t in thetas]
    expected = 0.25 + sum(float(p @ np.array(l)) for p, l in zip(probs, luts))
    assert latency.shape == (1,)
    assert float(latency.asscalar()) == pytest.approx(expected, rel=1e-5)
    for param, p, lut in zip(supernet.thetas(), probs, luts):
        lut = np.array(lut)
        np.testing.assert_allclose(param.grad().asnumpy(), p * (lut - p @ lut) / tau,
                                   rtol=1e-4, atol=1e-6)
    # Per-sample noise: one mixture and one latency per sample, each between min and max.
    noisy = FBNetSupernet(TwoLayers(), luts, fixed_ms=0.25, theta_init=1.0, noise="per_sample")
    noisy.initialize()
    noisy.hybridize()
    _, latency = noisy(nd.zeros((5, 1)), nd.array([1.0]))
    assert latency.shape == (5,) and len(set(np.round(latency.asnumpy(), 6))) > 1
    assert np.all(latency.asnumpy() >= 0.25 + 1.5) and np.all(latency.asnumpy() <= 0.25 + 7.0)


def test_array_temperature_equals_number_temperature() -> None:
    """τ as a (1,)-shaped array (an input of a cached graph) gives what a number gives."""
    logits = nd.array([0.5, -1.0, 2.0])
    for noise in ("none", "per_batch"):
        mx.random.seed(4)
        number = gumbel_softmax(nd, logits, 0.7, noise).asnumpy()
        mx.random.seed(4)
        array = gumbel_softmax(nd, logits, nd.array([0.7]), noise).asnumpy()
        np.testing.assert_allclose(array, number, rtol=1e-6)
    symbol = gumbel_softmax(mx.sym, mx.sym.var("theta"), mx.sym.var("tau"), "none")
    out = symbol.eval(theta=logits, tau=nd.array([0.7]))[0].asnumpy()
    np.testing.assert_allclose(out, np.exp(logits.asnumpy() / 0.7) / np.exp(
        logits.asnumpy() / 0.7).sum(), rtol=1e-5)
    assert math.isclose(float(out.sum()), 1.0, rel_tol=1e-6)
