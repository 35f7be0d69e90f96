"""The shared training code (lightnas_cli/search/training.py): learning-rate schedules at
chosen steps, the trainer's options, tasks and metrics, and the data-parallel epoch loop with
its hooks; plus the layering rules that keep every method in its own folder."""
from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon, nd

from lightnas_cli.errors import ConfigError
from lightnas_cli.search.training import (ClassificationTask, LearningRateSchedule,
                                          MetricTotals, ReconstructionTask, weight_trainer,
                                          evaluate, make_trainer, schedule_from_config)

from conftest import REPO, cli_env


# --- learning-rate schedules ----------------------------------------------------------------

def test_constant_schedule() -> None:
    schedule = LearningRateSchedule(0.1, "constant", total_steps=100)
    assert [schedule(step) for step in (0, 50, 99, 100, 500)] == [0.1] * 5


def test_cosine_schedule_at_chosen_steps() -> None:
    schedule = LearningRateSchedule(0.2, "cosine", total_steps=100)
    assert schedule(0) == pytest.approx(0.2)
    assert schedule(25) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)))
    assert schedule(50) == pytest.approx(0.1)
    assert schedule(100) == pytest.approx(0.0, abs=1e-12)
    assert schedule(150) == pytest.approx(0.0, abs=1e-12)  # past the end: stays at 0


def test_linear_warmup_then_cosine() -> None:
    schedule = LearningRateSchedule(0.4, "cosine", total_steps=110, warmup_steps=10)
    assert schedule(0) == pytest.approx(0.04)       # the first step already trains
    assert schedule(4) == pytest.approx(0.2)
    assert schedule(9) == pytest.approx(0.4)
    assert schedule(10) == pytest.approx(0.4)       # the cosine starts at the peak
    assert schedule(60) == pytest.approx(0.2)       # half-way through the cosine's 100 steps
    assert schedule(110) == pytest.approx(0.0, abs=1e-12)
    constant = LearningRateSchedule(0.4, "constant", total_steps=110, warmup_steps=10)
    assert constant(1) == pytest.approx(0.08) and constant(50) == 0.4


def test_schedule_from_config_rounds_fractional_warmup() -> None:
    train = SimpleNamespace(lr=0.1, lr_schedule="cosine", epochs=4, warmup_epochs=0.5)
    schedule = schedule_from_config(train, steps_per_epoch=7)
    assert schedule.total_steps == 28 and schedule.warmup_steps == 4
    with pytest.raises(ConfigError, match="unknown learning-rate schedule"):
        LearningRateSchedule(0.1, "step")


def test_trainer_options() -> None:
    net = gluon.nn.Dense(2, in_units=3)
    net.initialize()
    sgd = make_trainer(net.collect_params(), "sgd", 0.1, [mx.cpu()], weight_decay=1e-4,
                       momentum=0.8, clip_gradient=0.5)
    assert sgd._optimizer.momentum == 0.8 and sgd._optimizer.clip_gradient == 0.5
    assert sgd._optimizer.wd == 1e-4
    adam = make_trainer(net.collect_params(), "adam", 0.1, [mx.cpu()], momentum=0.8)
    assert adam._optimizer.clip_gradient is None and not hasattr(adam._optimizer, "momentum")


def test_gradient_clipping_bounds_the_update() -> None:
    """With plain SGD, lr 1 and clip 0.01 no weight moves by more than 0.01 per step."""
    net = gluon.nn.Dense(1, in_units=1)
    net.initialize(mx.init.Constant(0.0))
    trainer = make_trainer(net.collect_params(), "sgd", 1.0, [mx.cpu()], momentum=0.0,
                           clip_gradient=0.01)
    x, y = nd.array([[100.0]]), nd.array([[1000.0]])
    with mx.autograd.record():
        loss = ((net(x) - y) ** 2).sum()
    loss.backward()
    trainer.step(1)
    assert abs(float(net.weight.data().asscalar())) == pytest.approx(0.01)


# --- tasks and metrics ---------------------------------------------------------------------------

def test_tasks_and_metric_totals() -> None:
    out = nd.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    label = nd.array([0, 0, 0])
    data = nd.zeros((3, 2))
    classification = ClassificationTask()
    loss = classification.loss(out, label, data).asnumpy()
    assert loss[0] == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-4)  # float32
    totals = MetricTotals(classification)
    shards = [(data[:2], label[:2]), (data[2:], label[2:])]
    outputs = [out[:2], out[2:]]
    losses = [classification.loss(o, y, x) for o, (x, y) in zip(outputs, shards)]
    batch_loss, correct = totals.add(outputs, losses, shards)
    assert correct == 2 and totals.seen == 3
    assert totals.result("val")["val_accuracy"] == pytest.approx(2 / 3)
    assert totals.result("val")["val_loss"] == pytest.approx(float(loss.sum()) / 3, rel=1e-5)
    reconstruction = ReconstructionTask()
    error = reconstruction.loss(nd.array([[1.0, 2.0]]), nd.array([7]), nd.array([[[0.0, 0.0]]]))
    assert float(error.asscalar()) == pytest.approx(2.5)
    assert "val_accuracy" not in MetricTotals(reconstruction).result("val")


class _Loader:
    """A fixed list of batches, as the runner's loaders yield them."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class _Progress:
    def __init__(self):
        self.updates = 0

    def update(self, batches=1, samples=None, metrics=None):
        self.updates += batches


def _tiny(contexts):
    mx.random.seed(0)
    net = gluon.nn.Dense(3, in_units=4)
    net.initialize(mx.init.Xavier(), ctx=contexts)
    rng = np.random.RandomState(0)
    batches = [(nd.array(rng.normal(size=(6, 4))), nd.array(rng.randint(0, 3, 6)))
               for _ in range(4)]
    train = SimpleNamespace(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0,
                            clip_gradient=None, lr_schedule="cosine", epochs=2,
                            warmup_epochs=0.0)
    return net, _Loader(batches), train


def test_epoch_loop_calls_hooks_in_order_and_trains() -> None:
    net, loader, train = _tiny([mx.cpu()])
    weights = weight_trainer(net.collect_params(), train, [mx.cpu()], ClassificationTask())
    calls: list = []
    extra = gluon.Parameter("extra", shape=(1,), init=mx.init.Constant(1.0))
    extra.initialize()
    extra_trainer = make_trainer([extra], "sgd", 0.5, [mx.cpu()], momentum=0.0)
    before = net.weight.data().asnumpy().copy()

    def penalty(x, batch, shards):
        calls.append(("extra", batch, shards))
        return (extra.data(x.context) ** 2).sum()

    metrics = weights.train_epoch(
        net, loader, _Progress(), before_step=lambda i: calls.append(("before", i)),
        extra_loss=penalty, also_step=(extra_trainer,),
        after_step=lambda result: calls.append(("after", result.index, result.size)))
    assert calls[:3] == [("before", 0), ("extra", 6, 1), ("after", 0, 6)]
    assert len(calls) == 12 and weights.global_step == 4
    assert not np.allclose(net.weight.data().asnumpy(), before)
    assert float(extra.data().asscalar()) < 1.0          # the extra loss reached its trainer
    assert metrics["lr"] == pytest.approx(0.05)            # half-way through 2 epochs of cosine
    assert set(metrics) == {"train_loss", "train_accuracy", "lr"}


def test_loss_factor_scales_the_gradient() -> None:
    """A constant factor of 0 on the loss leaves the weights as they were (plain SGD, no
    weight decay), a factor of 1 trains: the factor multiplies what is back-propagated."""
    moved = []
    for factor in (0.0, 1.0):
        net, loader, train = _tiny([mx.cpu()])
        weights = weight_trainer(net.collect_params(), train, [mx.cpu()], ClassificationTask())
        before = net.weight.data().asnumpy().copy()
        metrics = weights.train_epoch(net, loader, _Progress(), prefix="arch",
                                      loss_factor=lambda x, b, n: nd.array([factor],
                                                                           ctx=x.context))
        moved.append(not np.allclose(net.weight.data().asnumpy(), before))
        assert {"arch_loss", "arch_accuracy", "lr"} == set(metrics)
    assert moved == [False, True]


def test_two_devices_train_like_one() -> None:
    """Gradients are summed over devices: the same batches on [cpu:0, cpu:1] give the
    weights one device gives (to rounding), and every copy is identical."""
    results = []
    for contexts in ([mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]):
        net, loader, train = _tiny(contexts)
        weights = weight_trainer(net.collect_params(), train, contexts, ClassificationTask())
        metrics = weights.train_epoch(net, loader, _Progress())
        copies = [net.weight.data(ctx).asnumpy() for ctx in contexts]
        assert all(np.array_equal(copies[0], c) for c in copies)
        results.append((copies[0], metrics, evaluate(net, loader, ClassificationTask(),
                                                      contexts, "val")))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    assert results[0][1]["train_loss"] == pytest.approx(results[1][1]["train_loss"], rel=1e-5)
    assert results[0][2]["val_accuracy"] == results[1][2]["val_accuracy"]


# --- layering -----------------------------------------------------------------------------------

SEARCH = REPO / "lightnas_cli" / "search"


def test_no_method_imports_another_methods_module() -> None:
    methods = [p.name for p in SEARCH.iterdir() if (p / "__init__.py").is_file()]
    assert {"enas", "pit"} <= set(methods)
    for method in methods:
        for source in (SEARCH / method).rglob("*.py"):
            imported = re.findall(r"lightnas_cli\.search\.(\w+)", source.read_text())
            foreign = {m for m in imported if m in methods and m != method}
            assert not foreign, f"{source} imports {foreign}"


def test_shared_code_names_no_method() -> None:
    shared = [REPO / "lightnas_cli" / name for name in
              ("runner.py", "summary.py", "viz.py", "logging.py", "export.py", "cli.py")]
    shared += list((REPO / "lightnas_cli" / "config").glob("*.py"))
    shared += [SEARCH / "training.py"]
    for source in shared:
        text = source.read_text()
        assert not re.search(r"[\"'](enas|pit|fbnet|dmasking)[\"']", text), source
        assert "search.enas" not in text and "search.pit" not in text, source


def test_the_zoo_imports_without_the_search_package() -> None:
    script = ("import sys, bmxnet_models; bmxnet_models.get_model('meliusnet22', enas=True); "
              "bad = [m for m in sys.modules if m.startswith('lightnas_cli.search') "
              "or m.startswith('autogluon.')]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", script], env=cli_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_module_imports_on_its_own() -> None:
    """Each module of the package imports first, with no other package module loaded before
    it (a circular import shows up as "partially initialized module")."""
    script = """
import importlib, pkgutil, sys
import mxnet  # loaded once: the check is about the package's own import order
import lightnas_cli, bmxnet_models
names = [m.name for pkg in (lightnas_cli, bmxnet_models)
         for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.')]
failed = []
for name in names:
    for loaded in [k for k in sys.modules if k.split('.')[0] in ('lightnas_cli', 'bmxnet_models')]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print(len(names), 'modules')
print('\\n'.join(failed))
sys.exit(1 if failed or len(names) < 50 else 0)
"""
    result = subprocess.run([sys.executable, "-c", script], env=cli_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_loading_a_config_does_not_import_mxnet() -> None:
    script = ("import sys; from lightnas_cli.config import load_config; "
              f"load_config({str(REPO / 'configs' / 'demo.yml')!r}); "
              "sys.exit(1 if 'mxnet' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", script], env=cli_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
