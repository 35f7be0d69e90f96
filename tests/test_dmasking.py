"""The `dmasking` method: arch_def checks, the LeNet zoo model, gradients of the latency term
reaching every α, export equal to the masked supernet, a large λ choosing the smallest
options, and a search through the real CLI (artifacts, probabilities, exact resume)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from lightnas_cli import costs
from lightnas_cli.errors import ConfigError

from conftest import (REPO, assert_same_checkpoint, assert_same_metrics, cli_env, run_cli,
                      write_config)

ARCH_DEF = [
    {"type": "conv", "name": "c1", "channels": [2, 4], "kernel": [1, 3], "batchnorm": True},
    {"type": "pool", "kernel": 2},
    {"type": "conv", "name": "c2", "channels": [2, 4, 6], "kernel": 3, "stride": 2},
    {"type": "dense", "name": "d1", "channels": [3, 6], "activation": "tanh"},
    {"type": "dropout", "rate": 0.1},
]
TINY = {
    "method": "dmasking",
    "seed": 1,
    "data": {"name": "mock", "mock": {"num_classes": 3, "shape": [1, 8, 8], "num_train": 120,
                                      "num_test": 24, "noise": 0.5}},
    "train": {"epochs": 2, "batch_size": 24, "lr": 0.05},
    "dmasking": {"arch_def": ARCH_DEF, "latency_weight": 0.5, "arch_lr": 0.1,
                 "systolic": {"s1": 4, "s2": 4, "batch": 8, "sharpness": 3.0}},
    "relaxation": {"initial_temperature": 1.0, "temperature_decay": 0.1},
}


def make_method(tmp_path: Path, overrides: tuple = (), config: dict = TINY):
    from lightnas_cli import data
    from lightnas_cli.config import load_config
    from lightnas_cli.devices import parse_contexts
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.search.dmasking.method import DMaskingSearch

    cfg = load_config(write_config(tmp_path, config), list(overrides))
    bundle = data.load(cfg.data, cfg.seed, cfg.train.batch_size)
    logger = RunLogger(tmp_path / "logs", tensorboard=False, plain=True)
    return DMaskingSearch(cfg, bundle, parse_contexts(list(cfg.train.contexts)), logger)


# --- config -----------------------------------------------------------------------------------

@pytest.mark.parametrize("layers, message", [
    ([{"type": "conv", "chanels": [2, 4]}], "Did you mean 'channels'"),
    ([{"type": "conv", "channels": [2, 4], "kernel": [2, 4]}], "odd sizes"),
    ([{"type": "conv", "channels": 4}, {"type": "dense", "channels": 8}], "lists no choice"),
    ([{"type": "dense", "channels": [2, 4]}, {"type": "conv", "channels": 4}], "follows a dense"),
    ([{"type": "conv", "channels": [0, 4]}], "integer >= 1"),
    ([{"type": "attention", "channels": [2, 4]}], "'type' one of"),
    ([{"type": "conv", "name": "output", "channels": [2, 4]}], "reserved"),
])
def test_bad_arch_defs_are_refused(tmp_path: Path, layers, message) -> None:
    from lightnas_cli.config import load_config
    config = dict(TINY, dmasking=dict(TINY["dmasking"], arch_def=layers))
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path, config))


def test_alpha_needs_a_validation_split(tmp_path: Path) -> None:
    from lightnas_cli.config import load_config
    path = write_config(tmp_path, TINY)
    with pytest.raises(ConfigError, match="eval_split_percentage"):
        load_config(path, ["data.eval_split_percentage=0"])
    with pytest.raises(ConfigError, match="warmup_epochs"):
        load_config(path, ["dmasking.warmup_epochs=2"])
    defaults = load_config(None, ["method=dmasking"])
    assert defaults.train.optimizer == "sgd" and defaults.model.name == "lenet"
    assert defaults.dmasking.systolic.s1 == 128 and defaults.dmasking.systolic.batch == 64


# --- zoo ---------------------------------------------------------------------------------------

def test_lenet_is_the_default_space_and_imports_without_the_search_package() -> None:
    import bmxnet_models
    from bmxnet_models.lenet import lenet_layers, normalize_layers
    from lightnas_cli.search.dmasking.space import SearchSpace, default_arch_def

    space = SearchSpace(default_arch_def())
    assert space.plain_specs(space.extreme(largest=True)) == normalize_layers(lenet_layers())
    small = space.plain_specs(space.extreme(largest=False))
    assert small == normalize_layers(lenet_layers(channels=(2, 8), units=(60, 84)))
    for shape in ((1, 8, 8), (3, 32, 32)):
        net = bmxnet_models.get_model("lenet", classes=7, in_channels=shape[0],
                                      channels=(4, 12))
        net.initialize()
        assert net(nd.zeros((2, *shape))).shape == (2, 7)
    widths = [layer.out_channels for layer in costs.profile(net, (3, 32, 32))]
    assert widths == [4, 12, 120, 84, 7]
    script = ("import sys, bmxnet_models; bmxnet_models.get_model('lenet'); "
              "bad = [m for m in sys.modules if m.startswith('lightnas_cli.search')]; "
              "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", script], env=cli_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --- latency -----------------------------------------------------------------------------------

def test_latency_gradients_reach_every_alpha(tmp_path: Path) -> None:
    method = make_method(tmp_path)
    net = method.supernet
    alphas = net.architecture_params()
    assert len(alphas) == 4  # c1 channels and kernel, c2 channels, d1 channels
    x = nd.array(np.random.RandomState(0).normal(size=(6, 1, 8, 8)))
    for noise in ("per_sample", "per_batch"):
        net.configure(mode="sample", temperature=1.0, noise=noise, latency=True)
        with autograd.record():
            _, latency = net(x)
        latency.backward()
        for alpha in alphas:
            assert np.abs(alpha.grad().asnumpy()).min() > 0, (noise, alpha.name)
    # The largest network's exact latency is the plain network's, counted by the cost model.
    largest = method.space.extreme(largest=True)
    plain = method._plain(largest)
    plain.initialize()
    described = costs.profile(plain, method.input_shape)
    assert method.latency_largest == costs.get_cost_model(
        "systolic", s1=4, s2=4, batch=8).total(described)
    assert method.latency_smallest < method.latency_largest


def _randomize(method, seed: int = 0) -> None:
    """Random weights, batch-norm statistics and α (masks and option values stay)."""
    rng = np.random.RandomState(seed)
    for name, param in method.supernet.collect_params().items():
        if name.endswith(("channel_masks", "channel_values", "kernel_masks", "kernel_values")):
            continue
        values = rng.normal(scale=0.5, size=param.shape)
        if name.endswith(("running_var", "gamma")):
            values = np.abs(values) + 0.5
        if "alpha" in name:
            values = rng.normal(scale=2.0, size=param.shape)
        param.set_data(nd.array(values))


def test_export_is_a_plain_narrower_network_equal_to_the_masked_one(tmp_path: Path) -> None:
    method = make_method(tmp_path)
    x = nd.array(np.random.RandomState(1).normal(size=(5, 1, 8, 8)))
    seen = set()
    for seed in range(6):
        _randomize(method, seed)
        architecture = method.derive()
        values = method.derived_values()
        seen.add(tuple(sorted((k, tuple(sorted(v.items()))) for k, v in values.items())))
        method.supernet.configure(mode="argmax", latency=False)
        masked = method.tap(x).asnumpy()
        net = method.build(architecture)
        net.hybridize()
        plain = net(x).asnumpy()
        assert np.abs(plain - masked).max() <= 1e-5
        # Narrower: the exported layers have the chosen widths and kernels, no masks.
        described = costs.profile(method.build(architecture), method.input_shape)
        assert [d.out_channels for d in described] == [values[n]["channels"] for n in
                                                       ("c1", "c2", "d1")] + [3]
        assert described[0].kernel == (values["c1"]["kernel"],) * 2
        assert not [p for p in net.collect_params() if "alpha" in p or "mask" in p]
        exact = costs.get_cost_model("systolic", s1=4, s2=4, batch=8).total(described)
        assert architecture.costs["latency"] == exact
    assert len(seen) > 1  # the draws above chose different architectures
    # The exported files reload in stock MXNet and compute the same.
    prefix = str(tmp_path / "plain")
    net.export(prefix, epoch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data"],
                                           prefix + "-0001.params")
    assert np.abs(loaded(x).asnumpy() - plain).max() <= 1e-5


def test_a_mask_folded_into_the_weights_equals_masking_the_activations(tmp_path: Path) -> None:
    """Per-batch masks of relu layers scale filters and biases (or batch-norm scale and shift)
    instead of activations; the result is the masked activation of the largest layer."""
    method = make_method(tmp_path)
    _randomize(method, 3)
    net = method.supernet
    net.hybridize(active=False)
    net.configure(mode="sample", temperature=0.7, noise="none", latency=False)
    x = nd.array(np.random.RandomState(2).normal(size=(4, 1, 8, 8)))
    c1 = net._children["c1"]  # conv, kernel options, batch norm, relu
    out = c1(x)[0].asnumpy()
    gate = nd.softmax(c1.alpha.data() / 0.7)
    mask = nd.dot(gate, c1.channel_masks.data()).reshape((1, -1, 1, 1))
    kernel = nd.dot(nd.softmax(c1.kernel_alpha.data() / 0.7), c1.kernel_masks.data())
    z = nd.Convolution(x, c1.weight.data() * kernel.reshape((1, 1, 3, 3)), c1.bias.data(),
                       kernel=(3, 3), pad=(1, 1), num_filter=4)
    stats = [p.data().reshape((1, -1, 1, 1)) for p in (c1.running_mean, c1.running_var,
                                                        c1.gamma, c1.beta)]
    z = (z - stats[0]) / nd.sqrt(stats[1] + 1e-5) * stats[2] + stats[3]
    expected = (nd.relu(z) * mask).asnumpy()
    assert 0 < np.abs(expected).max() and np.abs(out - expected).max() <= 1e-5
    c2 = net._children["c2"]  # conv, relu, no batch norm: the filters are scaled
    h = nd.array(np.random.RandomState(3).normal(size=(4, 4, 4, 4)))
    gate = nd.softmax(c2.alpha.data() / 0.7)
    mask = nd.dot(gate, c2.channel_masks.data()).reshape((1, -1, 1, 1))
    z = nd.Convolution(h, c2.weight.data(), c2.bias.data(), kernel=(3, 3), stride=(2, 2),
                       pad=(1, 1), num_filter=6)
    assert np.abs(c2(h)[0].asnumpy() - (nd.relu(z) * mask).asnumpy()).max() <= 1e-5


def test_batch_norm_statistics_are_re_estimated_for_the_derived_network(tmp_path: Path) -> None:
    method = make_method(tmp_path)
    c1 = method.supernet._children["c1"]
    assert not c1.running_mean.data().asnumpy().any()  # fresh: zeros
    method._recalibrate(1)
    derived_channels = method.derived_values()["c1"]["channels"]
    mean = c1.running_mean.data().asnumpy()
    assert np.abs(mean[:derived_channels]).min() > 0


def test_large_latency_weight_picks_the_smallest_options(tmp_path: Path) -> None:
    method = make_method(tmp_path, ["dmasking.latency_weight=20", "dmasking.arch_lr=0.3",
                                    "train.epochs=3"])
    for epoch in (1, 2, 3):
        metrics = method.train_epoch(epoch)
    smallest = method.space.extreme(largest=False)
    assert method.derived_values() == smallest
    assert metrics["latency"] == method.latency_smallest
    assert metrics["latency_ratio"] < 1 and metrics["l_latency"] > 0


# --- the CLI -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A finished 2-epoch run `full`, and its copy `part` resumed from epoch 1."""
    folder = tmp_path_factory.mktemp("dmasking")
    config = write_config(folder, TINY)
    result = run_cli(["search", "-c", str(config), "run.name=full"], folder)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = folder / "trainings"
    shutil.copytree(runs / "full", runs / "part")
    shutil.rmtree(runs / "part" / "checkpoints" / "epoch-0002")
    result = run_cli(["resume", "part"], folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_search_logs_alpha_latency_and_exports(workdir: Path) -> None:
    run = workdir / "trainings" / "full"
    records = _metrics(run)
    last = records[-1]
    for key in ("train_loss", "arch_loss", "arch_accuracy", "val_accuracy", "tau",
                "expected_latency", "latency", "latency_ratio", "l_latency", "ch_c1", "k_c1",
                "ch_c2", "ch_d1", "widths"):
        assert key in last, key
    assert records[1]["tau"] == pytest.approx(records[0]["tau"] * np.exp(-0.1))
    arch = json.loads((run / "logs" / "architectures" / "epoch_2.json").read_text())
    assert arch["method"] == "dmasking" and arch["costs"]["cost_name"] == "systolic"
    assert arch["costs"]["latency"] == last["latency"] == last["cost"]
    searched = [d for d in arch["decisions"] if d["probabilities"]]
    assert [(d["name"], d["choice"], len(d["probabilities"])) for d in searched] == [
        ("c1", "channels", 2), ("c1", "kernel", 2), ("c2", "channels", 3), ("d1", "channels", 2)]
    for decision in searched:
        assert sum(decision["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    folder = run / "exported_models" / "epoch-0002" / "inference_only"
    assert (folder / "lenet-symbol.json").is_file() and (folder / "lenet-0002.params").is_file()
    summary = run_cli(["summary", "run:full", "--cost", "systolic", "--json"], workdir)
    assert summary.returncode == 0, summary.stderr
    data = json.loads(summary.stdout)
    weights = [row for row in data["layers"] if row["type"] != "batchnorm"]
    assert sum(row["params_float"] for row in weights) == arch["costs"]["params"]
    # `--cost systolic` counts with the model's defaults (128 x 128, B = 64), not the run's
    # array: every layer of this tiny network fits one tile, so B x output positions each.
    assert [row["costs"]["systolic"] for row in weights] == [64 * 64, 64 * 4, 64, 64]
    assert "c1" in data["notes"]["layers"]


def test_resume_is_exact(workdir: Path) -> None:
    full, part = workdir / "trainings" / "full", workdir / "trainings" / "part"
    assert_same_metrics(_metrics(part), _metrics(full))
    assert_same_checkpoint(full, part, 2)
