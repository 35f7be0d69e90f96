"""The ENAS method in process: costs, rewards, build, multi-device training, both update modes."""
from __future__ import annotations

from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import nd

from lightnas_cli import costs, data
from lightnas_cli.config import load_config
from lightnas_cli.devices import parse_contexts
from lightnas_cli.errors import ArchitectureError, ConfigError
from lightnas_cli.logging import RunLogger
from lightnas_cli.search.base import Architecture
from lightnas_cli.search.enas.method import EnasSearch

from conftest import TINY_ENAS, write_config


def _method(tmp_path: Path, *overrides: str) -> EnasSearch:
    cfg = load_config(write_config(tmp_path, TINY_ENAS), list(overrides))
    bundle = data.load(cfg.data, cfg.seed, cfg.train.batch_size)
    logger = RunLogger(tmp_path / "logs", tensorboard=False, plain=True)
    return EnasSearch(cfg, bundle, parse_contexts(list(cfg.train.contexts)), logger)


def test_costs_of_any_architecture_equal_the_built_network(tmp_path: Path) -> None:
    method = _method(tmp_path)
    rng = np.random.RandomState(0)
    for actions in ([0] * 16, [1] * 16, list(rng.randint(0, 2, 16))):
        method._select(actions)
        arch = method.derive()
        arch.decisions = [type(d)(**{**d.__dict__, "value": d.options[a]})
                          for d, a in zip(arch.decisions, actions)]
        net = method.build(arch)
        measured = costs.summarize(costs.profile(net, method.input_shape))
        assert measured == method.cost_summary(actions)
    all_binary, all_float = method.cost_summary([0] * 16), method.cost_summary([1] * 16)
    assert all_binary.params == all_float.params
    assert all_binary.memory_bytes < all_float.memory_bytes / 4
    low, high = method.cost_range
    assert low == all_binary.memory_bytes and high == all_float.memory_bytes
    assert method.cost_target == pytest.approx((low + high) / 2)


def test_reward_follows_the_formula(tmp_path: Path) -> None:
    method = _method(tmp_path, "enas.cost=params", "enas.cost_weight=0.5",
                     "enas.cost_target=1000")
    actions = [0] * 16
    reward, cost = method.reward(0.8, actions)
    assert cost == method.cost_summary(actions).params
    assert reward == pytest.approx(0.8 * (1000 / cost) ** 0.5)
    off = _method(tmp_path, "enas.cost_weight=0")
    assert off.reward(0.8, actions)[0] == 0.8


def test_build_matches_supernet_and_rejects_foreign_architectures(tmp_path: Path) -> None:
    method = _method(tmp_path)
    method.train_epoch(1)
    arch = method.derive()
    method._select(method.controller.run(1, greedy=True).actions[0])
    x = nd.array(np.random.RandomState(2).normal(size=(3, 1, 8, 8)))
    expected = method.supernet(x).asnumpy()
    got = method.build(arch)(x).asnumpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    broken = Architecture.from_dict({**arch.to_dict(), "decisions": arch.to_dict()["decisions"][:3]})
    with pytest.raises(ArchitectureError):
        method.build(broken)
    with pytest.raises(ArchitectureError, match="not one of"):
        Architecture.from_dict({**arch.to_dict(), "decisions": [
            {"name": "x", "choice": "bits", "value": 8, "options": [1, 32]}]})
    with pytest.raises(ArchitectureError, match="not valid JSON"):
        Architecture.from_json("{bits: 1")


def test_two_cpu_contexts_train_data_parallel(tmp_path: Path) -> None:
    two = _method(tmp_path, "train.contexts=[cpu:0,cpu:1]")
    before = {k: p.data(mx.cpu(0)).asnumpy().copy()
              for k, p in two.supernet.collect_params().items() if p.grad_req != "null"}
    metrics = two.train_epoch(1)
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["reward"])
    moved = 0
    for key, param in two.supernet.collect_params().items():
        if param.grad_req == "null":
            continue
        # Gradients are summed over devices, so every copy takes the same update.
        np.testing.assert_array_equal(param.data(mx.cpu(0)).asnumpy(),
                                      param.data(mx.cpu(1)).asnumpy())
        moved += not np.array_equal(param.data(mx.cpu(0)).asnumpy(), before[key])
    assert moved > 0
    assert np.isfinite(two.evaluate("val")["val_accuracy"])


@pytest.mark.parametrize("post", [False, True])
def test_controller_update_modes(tmp_path: Path, post: bool) -> None:
    method = _method(tmp_path, f"enas.only_post_training_eval={str(post).lower()}",
                     "controller.steps_after_epoch=3", "controller.update_every=2")
    before = [p.data().asnumpy().copy() for p in method.controller.collect_params().values()]
    metrics = method.train_epoch(1)
    after = [p.data().asnumpy() for p in method.controller.collect_params().values()]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    counts = method.reinforce.trainer._optimizer._all_index_update_counts[0]
    assert max(counts.values()) == (3 if post else len(method.data.train) // 2)
    for key in ("reward", "baseline", "entropy", "train_accuracy", "lr"):
        assert np.isfinite(metrics[key])


def test_gpu_context_is_refused_without_gpus() -> None:
    if mx.context.num_gpus() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="GPU"):
        parse_contexts(["gpu:0"])


def test_model_options_reach_the_zoo_model(tmp_path: Path) -> None:
    """`model.options` passes model-specific constructor options (ResNet V1's fp_shortcut:
    32-bit shortcut convolutions) and refuses keys that belong elsewhere."""
    base = ["model.name=resnet18_v1", "model.stem=thumbnail"]
    binary = _method(tmp_path, *base)
    fp = _method(tmp_path, *base, "model.options.fp_shortcut=true")
    assert fp.model_options["fp_shortcut"] is True and "fp_shortcut" not in binary.model_options
    all_binary = [0] * len(binary.decisions)
    assert fp.cost_summary(all_binary).params_float > binary.cost_summary(all_binary).params_float
    with pytest.raises(ConfigError, match="repeats"):
        _method(tmp_path, *base, "model.options.stem=imagenet")
    with pytest.raises(ConfigError, match="no option"):
        _method(tmp_path, *base, "model.options.warp=1")
