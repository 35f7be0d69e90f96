"""Config loading, checkpoints, optimizer-state resume, costs, the controller and REINFORCE."""
from __future__ import annotations

import json
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon, nd

from lightnas_cli import checkpoint, costs
from lightnas_cli.config import load_config
from lightnas_cli.errors import CheckpointError, ConfigError, RunError
from lightnas_cli.runs import RunDir
from lightnas_cli.search.enas.controller import Controller, Reinforce

from conftest import TINY_ENAS, write_config


# --- config -------------------------------------------------------------------------------

def test_config_defaults_file_and_overrides(tmp_path: Path) -> None:
    path = write_config(tmp_path, TINY_ENAS)
    cfg = load_config(path, ["train.epochs=5", "train.contexts=[cpu:0,cpu:1]"])
    assert cfg.train.epochs == 5 and list(cfg.train.contexts) == ["cpu:0", "cpu:1"]
    assert cfg.data.mock.num_classes == 4          # from the file
    assert cfg.checkpoint.keep == 3                # schema default
    assert cfg.controller.baseline_decay == 0.95   # ENAS defaults of the issue
    assert cfg.controller.entropy_weight == 1e-4
    assert cfg.controller.lr == 3e-3
    assert cfg.controller.hidden_size == 16            # file overrides the default of 100
    assert load_config(None, ["method=enas"]).controller.hidden_size == 100
    with pytest.raises(ConfigError, match="names no search method"):
        load_config(None)


@pytest.mark.parametrize("overrides, message", [
    (["train.batchsize=3"], "Did you mean 'train.batch_size'"),
    (["checkpoint.keep=0"], "'checkpoint.keep' must be >= 1, got 0"),
    (["data.eval_split_percentage=100"], "'data.eval_split_percentage' must be < 100"),
    (["enas.cost=flop"], "'enas.cost': unknown cost model 'flop'. Did you mean 'flops'?"),
    (["enas.cost=flops:x=1"], "'enas.cost': cost model 'flops' takes no options"),
    (["train.lr=nan"], "'train.lr' is nan; it must be a finite number"),
    (["train.lr=-0.1"], "'train.lr' must be > 0"),
    (["train.warmup_epochs=2"], "must be below 'train.epochs'"),
    (["controller.batch_size=0"], "'controller.batch_size' must be >= 1"),
    (["data.mock.shape=[1,0,8]"], "'data.mock.shape' must be >= 1, got 0"),
    (["method=enaz"], "Did you mean 'enas'"),
    (["seed"], "key=value"),
])
def test_config_errors_name_the_key(tmp_path: Path, overrides, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, TINY_ENAS), overrides)
    assert message in str(info.value)


def test_shipped_configs_load() -> None:
    """Every shipped config loads; a config with a sweep section loads as a sweep."""
    from lightnas_cli.config import read_config_file
    from lightnas_cli.sweep import read_sweep_config
    repo = Path(__file__).resolve().parents[1]
    sweeps = 0
    for path in sorted((repo / "configs").rglob("*.yml")):
        if "autosaved" in path.parts:
            continue
        if "sweep" in read_config_file(path):
            read_sweep_config(path)
            sweeps += 1
        else:
            load_config(path)
    assert sweeps >= 2


# --- run folders ----------------------------------------------------------------------------

def test_run_dir_refuses_existing_name_and_locks(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "a")
    with pytest.raises(RunError, match="already exists"):
        RunDir.create(tmp_path, "a")
    run.update_status(status="running", pid=1)
    with run.lock():
        with pytest.raises(RunError, match="in use"):  # a second holder is refused
            with run.lock():
                pass
    # The lock file stays (it is never deleted); a lock left by a dead process is free.
    assert (run.path / ".lock").is_file()
    (run.path / ".lock").write_text("999999")
    with run.lock():
        pass


# --- checkpoints ---------------------------------------------------------------------------

def test_checkpoint_atomic_keep_and_protect(tmp_path: Path) -> None:
    for epoch in range(1, 6):
        checkpoint.save(tmp_path, epoch, {"w": nd.array([epoch])}, {"epoch": epoch}, keep=2,
                        protect=(1,))
    assert checkpoint.complete_epochs(tmp_path) == [5, 4, 1]
    assert (tmp_path / "latest").read_text().strip() == "epoch-0005"
    assert not list(tmp_path.glob(".tmp-*"))
    loaded = checkpoint.load(tmp_path)
    assert loaded.epoch == 5 and loaded.arrays["w"].asscalar() == 5
    assert checkpoint.load(tmp_path, 1).state == {"epoch": 1}
    with pytest.raises(CheckpointError, match="no checkpoint for epoch 3"):
        checkpoint.load(tmp_path, 3)


def test_checkpoint_corrupt_newest_falls_back(tmp_path: Path) -> None:
    checkpoint.save(tmp_path, 1, {"w": nd.array([1])}, {}, keep=3)
    checkpoint.save(tmp_path, 2, {"w": nd.array([2])}, {}, keep=3)
    arrays = tmp_path / "epoch-0002" / "arrays.params"
    arrays.write_bytes(arrays.read_bytes()[:-7])
    warnings: list[str] = []
    loaded = checkpoint.load(tmp_path, warn=warnings.append)
    assert loaded.epoch == 1 and [epoch for epoch, _ in loaded.skipped] == [2]
    assert "epoch-0002" in warnings[0] and "checksum" in warnings[0]
    # Loading only reads; a writer (resume) then moves the corrupt one aside.
    assert (tmp_path / "epoch-0002").is_dir()
    assert (tmp_path / "latest").read_text().strip() == "epoch-0002"
    checkpoint.set_aside(tmp_path, loaded)
    assert (tmp_path / "corrupt-epoch-0002").is_dir() and not (tmp_path / "epoch-0002").exists()
    assert (tmp_path / "latest").read_text().strip() == "epoch-0001"


def _toy_net(ctx):
    # Children inside the parent's name scope get names relative to it ("toy_dense0_"), so two
    # nets order their parameters alike (a Trainer numbers parameters by name) whatever was
    # created before in the process.
    net = gluon.nn.HybridSequential(prefix="toy_")
    with net.name_scope():
        net.add(gluon.nn.Dense(8, activation="relu", in_units=5), gluon.nn.Dense(3, in_units=8))
    net.initialize(mx.init.Xavier(), ctx=ctx)
    return net


@pytest.mark.parametrize("optimizer, contexts", [("adam", [mx.cpu(0)]),
                                                 ("sgd", [mx.cpu(0), mx.cpu(1)])])
def test_trainer_state_resumes_exactly(tmp_path: Path, optimizer, contexts) -> None:
    """Five steps, save, five more == five steps, restore into a fresh trainer, five more."""
    options = {"learning_rate": 0.05}
    if optimizer == "sgd":
        options["momentum"] = 0.9
    data = nd.array(np.random.RandomState(0).normal(size=(20, 4, 5)).astype("float32"))
    labels = nd.array(np.random.RandomState(1).randint(0, 3, size=(20, 4)).astype("float32"))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def steps(net, trainer, start, stop):
        for i in range(start, stop):
            xs = gluon.utils.split_and_load(data[i], contexts)
            ys = gluon.utils.split_and_load(labels[i], contexts)
            with autograd.record():
                losses = [loss_fn(net(x), y) for x, y in zip(xs, ys)]
            autograd.backward(losses)
            trainer.step(4)

    def make():
        mx.random.seed(7)
        net = _toy_net(contexts)
        kv = "device" if len(contexts) > 1 else None
        return net, gluon.Trainer(net.collect_params(), optimizer, dict(options), kvstore=kv,
                                  update_on_kvstore=False)

    net_a, trainer_a = make()
    steps(net_a, trainer_a, 0, 10)

    net_b, trainer_b = make()
    steps(net_b, trainer_b, 0, 5)
    arrays, state = checkpoint.trainer_state(trainer_b, "opt")
    weights = [p.data(contexts[0]).copy() for p in net_b.collect_params().values()]
    json.dumps(state)  # JSON only, no pickle

    net_c, trainer_c = make()
    for param, value in zip(net_c.collect_params().values(), weights):
        param.set_data(value)
    checkpoint.load_trainer_state(trainer_c, "opt", arrays, state)
    steps(net_c, trainer_c, 5, 10)
    for pa, pc in zip(net_a.collect_params().values(), net_c.collect_params().values()):
        assert np.array_equal(pa.data(contexts[0]).asnumpy(), pc.data(contexts[0]).asnumpy())


def test_optimizer_states_of_other_parameters_are_refused() -> None:
    """States saved in one parameter order do not load into a trainer that numbers the
    parameters differently (bias and weight of a layer have different shapes)."""
    net = _toy_net([mx.cpu()])
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    with autograd.record():
        loss = net(nd.ones((2, 5))).sum()
    loss.backward()
    trainer.step(2)
    arrays, state = checkpoint.trainer_state(trainer, "opt")
    reordered = gluon.Trainer(list(reversed(list(net.collect_params().values()))), "sgd",
                              {"learning_rate": 0.1, "momentum": 0.9})
    with pytest.raises(CheckpointError, match="belong to other parameters"):
        checkpoint.load_trainer_state(reordered, "opt", arrays, state)


# --- costs ---------------------------------------------------------------------------------

def test_cost_convention_matches_plinio() -> None:
    # ARCHITECTURE.md: Conv1d 3->32, k=3, length 100 -> 320 parameters, 32,000 MACs.
    assert costs.conv_params(3, 32, (3,)) == 320
    assert costs.conv_macs(3, 32, (3,), (100,)) == 32000
    net = gluon.nn.Conv1D(32, 3, padding=1, in_channels=3)
    net.initialize()
    layers = costs.profile(net, (3, 100))
    assert (layers[0].params, layers[0].macs) == (320, 32000)
    summary = costs.summarize(layers)
    assert summary.flops == 64000 and summary.memory_bytes == 320 * 4


def test_binary_layer_costs_are_kept_apart() -> None:
    from bmxnet_models.binary import QConv2D
    layer = QConv2D(16, 3, padding=1, in_channels=8, bits=1)
    layer.initialize()
    summary = costs.summarize(costs.profile(layer, (8, 5, 5)))
    assert summary.params_binary == 16 * 8 * 9 and summary.params_float == 0
    assert summary.macs_binary == 16 * 8 * 9 * 25
    assert summary.memory_bytes == 16 * 8 * 9 / 8


# --- controller and REINFORCE ---------------------------------------------------------------

def _controller(seed: int = 0) -> Controller:
    mx.random.seed(seed)
    controller = Controller([2, 3, 2], hidden_size=8)
    controller.initialize()
    return controller


def test_controller_sampling_is_seeded_and_greedy_is_argmax() -> None:
    controller = _controller()
    a = controller.run(5, rng=np.random.RandomState(1)).actions
    b = controller.run(5, rng=np.random.RandomState(1)).actions
    assert np.array_equal(a, b) and a.shape == (5, 3)
    greedy = controller.run(1, greedy=True)
    first = greedy.probabilities[0][0]
    assert greedy.actions[0, 0] == int(np.argmax(first))


def _update_gradients(actions: np.ndarray, rewards: np.ndarray,
                      entropy_weight: float) -> list[np.ndarray]:
    """The gradients the real `Reinforce.update` left on a fresh controller (baseline held at
    0, so each architecture's advantage is its reward)."""
    controller = _controller()
    reinforce = Reinforce(controller, lr=0.05, baseline_decay=1.0,
                          entropy_weight=entropy_weight)
    reinforce.baseline = 0.0
    reinforce.update(actions, rewards)
    return [p.grad().asnumpy().copy() for p in controller.collect_params().values()
            if p.grad_req != "null"]


@pytest.mark.parametrize("entropy_weight", [0.0, 0.5])
def test_policy_gradient_sums_over_all_sampled_architectures(entropy_weight: float) -> None:
    """The real update's gradient for three architectures is the sum of its gradients for
    each alone: every sampled architecture is back-propagated, not only the last one."""
    actions = np.array([[0, 2, 1], [1, 0, 0], [1, 1, 1]])
    rewards = np.array([0.5, -0.25, 1.0])
    together = _update_gradients(actions, rewards, entropy_weight)
    parts = [_update_gradients(actions[i:i + 1], rewards[i:i + 1], entropy_weight)
             for i in range(3)]
    for index, value in enumerate(together):
        np.testing.assert_allclose(value, sum(part[index] for part in parts),
                                   rtol=1e-4, atol=1e-6)
    last_only = parts[-1]
    assert any(not np.allclose(a, b, atol=1e-6) for a, b in zip(together, last_only))
    assert any(np.abs(v).sum() > 0 for v in together)


def test_entropy_bonus_enters_the_update() -> None:
    actions, rewards = np.array([[0, 2, 1], [1, 0, 0]]), np.array([0.5, 1.0])
    plain = _update_gradients(actions, rewards, 0.0)
    with_entropy = _update_gradients(actions, rewards, 0.5)
    assert any(not np.allclose(a, b) for a, b in zip(plain, with_entropy))


def test_reinforce_baseline_is_an_ema_and_policy_learns() -> None:
    controller = _controller()
    reinforce = Reinforce(controller, lr=0.05, baseline_decay=0.95, entropy_weight=1e-4)
    stats = reinforce.update(np.array([[0, 0, 0], [1, 0, 0]]), np.array([1.0, 0.0]))
    assert stats["baseline"] == pytest.approx(0.5)
    stats = reinforce.update(np.array([[1, 1, 1]]), np.array([1.0]))
    assert stats["baseline"] == pytest.approx(0.95 * 0.5 + 0.05 * 1.0)
    rng = np.random.RandomState(0)
    for _ in range(60):
        sample = controller.run(6, rng=rng)
        reinforce.update(sample.actions, (sample.actions[:, 1] == 2).astype(float))
    assert controller.run(1, greedy=True).actions[0, 1] == 2


def test_a_missing_split_is_a_config_error_naming_it():
    from types import SimpleNamespace

    from lightnas_cli.search.base import SearchMethod
    holder = SimpleNamespace(data=SimpleNamespace(train="train loader", val=None))
    assert SearchMethod.split_loader(holder, "train") == "train loader"
    for split in ("val", "test"):
        with pytest.raises(ConfigError, match=f"data set has no '{split}' split"):
            SearchMethod.split_loader(holder, split)
