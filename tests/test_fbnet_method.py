"""The `fbnet` search method in-process, with a synthetic latency table (no timing): expected
latency against a hand-computed sum, the loss terms, warm-up then θ search, derive and sample,
the derived network against the supernet, BatchNorm re-estimation, exact state round trip,
and config errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import nd

from lightnas_cli import config as config_mod, data as data_mod
from lightnas_cli.costs.latency_table import TABLE_FORMAT, TABLE_KIND
from lightnas_cli.errors import ConfigError
from lightnas_cli.logging import RunLogger

OVERRIDES = ["method=fbnet", "seed=1", "data.name=mock", "data.mock.num_classes=3",
             "data.mock.shape=[1,8,8]", "data.mock.num_train=40", "data.mock.num_test=8",
             "data.mock.noise=0.5", "model.width_multiplier=0.25", "model.channel_divisor=16",
             "model.stem_stride=1", "model.feature_dim=16", "train.epochs=2",
             "train.batch_size=16", "train.lr=0.05", "fbnet.warmup_epochs=1",
             "fbnet.bn_recalibration_batches=2", "fbnet.arch_lr=0.5"]


def synthetic_table(cfg, path: Path) -> dict:
    """A table in the file format with made-up latencies: entry i of layer l costs
    0.1 * (i + 1) + 0.01 * l ms; stem 0.3, tail 0.2."""
    from lightnas_cli.search.fbnet.space import latency_space

    space = latency_space(cfg, data_mod.describe(cfg.data))
    table = {"format": TABLE_FORMAT, "kind": TABLE_KIND, "space": space.signature,
             "device": "synthetic", "batch": 1,
             "fixed": [{"name": p.name, "input_shape": list(p.input_shape),
                        "output_shape": list(p.output_shape),
                        "latency_ms": {"stem": 0.3, "tail": 0.2}[p.name]} for p in space.fixed],
             "layers": [{"name": layer.name, "input_shape": list(layer.input_shape),
                         "output_shape": list(layer.output_shape),
                         "latency_ms": {c: 0.1 * (i + 1) + 0.01 * index
                                        for i, c in enumerate(layer.candidates)}}
                        for index, layer in enumerate(space.layers)]}
    path.write_text(json.dumps(table))
    return table


def make_method(tmp_path: Path, *extra: str):
    from lightnas_cli.search.base import get_method

    table_path = tmp_path / "table.json"
    cfg = config_mod.load_config(None, OVERRIDES + [f"fbnet.latency_table={table_path}",
                                                    *extra])
    if not table_path.exists():
        synthetic_table(cfg, table_path)
    data = data_mod.load(cfg.data, cfg.seed, cfg.train.batch_size)
    logger = RunLogger(tmp_path / "logs", tensorboard=False)
    return get_method("fbnet")(cfg, data, [mx.cpu()], logger), json.loads(table_path.read_text())


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One method for the tests that set θ themselves (building one takes seconds)."""
    folder = tmp_path_factory.mktemp("fbnet")
    return make_method(folder), folder


def set_thetas(method, values) -> None:
    for param, value in zip(method.supernet.thetas(), values):
        param.set_data(nd.array(value))


def test_expected_latency_and_costs_equal_hand_sums(shared) -> None:
    (method, table), _ = shared
    rng = np.random.RandomState(0)
    thetas = [rng.normal(size=len(spec.candidates)) for spec in method.specs]
    set_thetas(method, thetas)
    fixed = 0.3 + 0.2
    by_hand = fixed
    for theta, layer in zip(thetas, table["layers"]):
        p = np.exp(theta) / np.exp(theta).sum()
        by_hand += float(p @ np.array(list(layer["latency_ms"].values())))
    assert method.expected_latency() == pytest.approx(by_hand, rel=1e-6)
    arch = method.derive()
    chosen = [int(np.argmax(t)) for t in thetas]
    assert [d.value for d in arch.decisions] == [s.candidates[i] for s, i in
                                                 zip(method.specs, chosen)]
    latency = fixed + sum(list(layer["latency_ms"].values())[i]
                          for layer, i in zip(table["layers"], chosen))
    assert arch.costs["latency_ms"] == pytest.approx(latency)
    assert arch.costs["cost"] == arch.costs["latency_ms"] and arch.costs["cost_name"] == "latency_ms"
    assert arch.costs["expected_latency_ms"] == pytest.approx(by_hand, rel=1e-6)
    first = arch.decisions[0]
    assert first.probabilities == pytest.approx(list(np.exp(thetas[0]) / np.exp(thetas[0]).sum()),
                                                abs=1e-6)
    assert {d.kind for d in arch.decisions} <= {"skip", "other"}
    # Parameters and MACs of the record are those of the built network.
    from lightnas_cli import costs
    counts = costs.summarize(costs.profile(method.build(arch), method.input_shape))
    assert (arch.costs["params"], arch.costs["macs"]) == (counts.params, counts.macs)


def test_latency_term_of_the_loss(shared) -> None:
    (method, _), _ = shared
    x = nd.random.uniform(shape=(4, 1, 8, 8))
    method.tau = 1.0
    method._forward(x)
    latency = method._latency[x.context].asnumpy()
    assert latency.shape == (4,)                   # per-sample noise: one mixture per sample
    term = float(method._latency_term(x.context).asscalar())
    assert term == pytest.approx(0.2 * math.log(1 + latency.mean() / 1.0) ** 0.6, rel=1e-5)


def test_warmup_then_search_then_derived_path_and_exact_state(tmp_path) -> None:
    """Epoch 1 trains the weights only; epoch 2 also moves θ on the validation split; the
    derived network computes what the supernet computes with one-hot mixing weights once the
    re-estimated BatchNorm statistics are stored back; state() restores exactly."""
    method, _ = make_method(tmp_path)
    before = [t.data().asnumpy().copy() for t in method.supernet.thetas()]
    weights = method.supernet.net.stem[0].weight.data().asnumpy().copy()
    warm = method.train_epoch(1)
    assert warm["phase"] == "warmup" and "arch_loss" not in warm
    assert all(np.array_equal(b, t.data().asnumpy()) for b, t in zip(before,
                                                                       method.supernet.thetas()))
    assert not np.array_equal(weights, method.supernet.net.stem[0].weight.data().asnumpy())
    search = method.train_epoch(2)
    assert search["phase"] == "search"
    assert search["temperature"] == pytest.approx(5.0)       # the first search epoch
    assert method.temperature(3) == pytest.approx(5.0 * math.exp(-0.045))
    for key in ("arch_loss", "arch_accuracy", "arch_lr", "sampled_latency_ms",
                "expected_latency_ms", "train_loss", "lr"):
        assert math.isfinite(search[key]), key
    assert not all(np.array_equal(b, t.data().asnumpy())
                   for b, t in zip(before, method.supernet.thetas()))
    stem_bn = method.supernet.net.stem[1]
    trained_var = stem_bn.running_var.data().asnumpy().copy()
    assert set(method.evaluate("val")) == {"val_loss", "val_accuracy"}
    # The statistics now are the derived network's own, not the supernet's training averages.
    assert not np.allclose(stem_bn.running_var.data().asnumpy(), trained_var)
    arch = method.derive()
    net = method.build(arch)
    chosen = method._choices(arch)
    x = nd.random.uniform(shape=(3, 1, 8, 8))
    weights = [nd.one_hot(nd.array([i]), len(s.candidates)) for s, i in zip(method.specs, chosen)]
    np.testing.assert_allclose(net(x).asnumpy(), method.supernet.net(x, *weights).asnumpy(),
                               rtol=1e-4, atol=1e-4)

    arrays, state = method.state()
    json.dumps(state)
    copy, _ = make_method(tmp_path)
    copy.load_state(arrays, state)
    assert [d.value for d in copy.derive().decisions] == [d.value for d in arch.decisions]
    again, _ = copy.state()
    assert sorted(again) == sorted(arrays)
    for key in arrays:
        np.testing.assert_array_equal(again[key].asnumpy(), arrays[key].asnumpy(), err_msg=key)
    assert copy.arch.global_step == method.arch.global_step > 0


def test_sampling_follows_softmax_theta_and_is_seeded(shared) -> None:
    (method, _), _ = shared
    peaked = [np.where(np.arange(len(s.candidates)) == s.index % len(s.candidates), 30.0, 0.0)
              for s in method.specs]
    set_thetas(method, peaked)
    samples = method.sample_architectures(3, seed=7)
    assert all([d.value for d in a.decisions] == [d.value for d in method.derive().decisions]
               for a in samples)
    set_thetas(method, [np.zeros(len(s.candidates)) for s in method.specs])
    first = [[d.value for d in a.decisions] for a in method.sample_architectures(4, seed=7)]
    again = [[d.value for d in a.decisions] for a in method.sample_architectures(4, seed=7)]
    other = [[d.value for d in a.decisions] for a in method.sample_architectures(4, seed=8)]
    assert first == again and first != other and len({tuple(v) for v in first}) == 4


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="warmup_epochs"):
        config_mod.load_config(None, OVERRIDES + ["fbnet.warmup_epochs=2"])
    with pytest.raises(ConfigError, match=r"finetune_epochs \(1\) must be below"):
        config_mod.load_config(None, OVERRIDES + ["fbnet.finetune_epochs=1"])
    with pytest.raises(ConfigError, match="eval_split_percentage"):
        config_mod.load_config(None, OVERRIDES + ["data.eval_split_percentage=0"])
    with pytest.raises(ConfigError, match="model.groups does not apply"):
        config_mod.load_config(None, OVERRIDES + ["model.groups=4"])
    with pytest.raises(ConfigError, match="noise"):
        config_mod.load_config(None, OVERRIDES + ["relaxation.noise=sometimes"])
    cfg = config_mod.load_config(None, ["method=fbnet"])
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay, cfg.train.epochs) == (
        "sgd", 0.1, 1e-4, 90)
    assert (cfg.fbnet.arch_lr, cfg.fbnet.arch_weight_decay, cfg.relaxation.noise) == (
        0.01, 5e-4, "per_sample")


def test_a_table_for_other_shapes_is_refused(shared) -> None:
    _, folder = shared
    with pytest.raises(ConfigError, match=r"input_shape=\[1, 8, 8\], this config has "
                                          r"input_shape=\[1, 12, 12\]"):
        make_method(folder, "data.mock.shape=[1,12,12]")
