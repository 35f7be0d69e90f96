"""`lightnas train` (issue 11): the winner of an ENAS run and of a PIT export, and a zoo model,
trained as runs of their own (kind train) by the shared runner; the trained network's size is
the architecture's recorded cost; `--init search` starts from the search's weights; exact
resume after SIGKILL; label smoothing and distillation by hand; bad sources refused."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import nd

from conftest import TINY_ENAS, assert_same_metrics, kill_during_epoch_two, run_cli, write_config
from test_cli import tree_digest
from test_pit_method import TINY_PIT

TRAIN = {"method": "train", "train": {"epochs": 2, "batch_size": 32, "lr": 0.01}}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """An ENAS search `enas` (2 epochs), a PIT search `pit` (3 epochs), a train schedule."""
    folder = tmp_path_factory.mktemp("train")
    ok(run_cli(["search", "-c", str(write_config(folder, TINY_ENAS, "enas.yml")),
                "run.name=enas"], folder))
    ok(run_cli(["search", "-c", str(write_config(folder, TINY_PIT, "pit.yml")),
                "run.name=pit"], folder))
    write_config(folder, TRAIN, "train.yml")
    return folder


def test_train_the_winner_of_an_enas_run(work: Path) -> None:
    ok(run_cli(["train", "enas", "-c", "train.yml", "run.name=t_enas"], work))
    run = work / "trainings" / "t_enas"
    status = json.loads((run / "run.json").read_text())
    best = json.loads((work / "trainings" / "enas" / "run.json").read_text())["best_epoch"]
    assert status["kind"] == "train" and status["method"] == "train"
    assert status["status"] == "finished" and "test_accuracy" in status
    assert status["source"]["kind"] == "run" and status["source"]["epoch"] == best
    assert status["init"] == "scratch"
    assert [r["epoch"] for r in metrics(run)] == [1, 2]
    searched = json.loads((work / "trainings" / "enas" / "logs" / "architectures" /
                           f"epoch_{best}.json").read_text())
    trained = json.loads((run / status["final_architecture"]).read_text())
    assert [d["value"] for d in trained["decisions"]] == \
        [d["value"] for d in searched["decisions"]]
    # The trained network's size is what the search recorded for that architecture.
    assert trained["costs"]["params"] == searched["costs"]["params"]
    assert trained["costs"]["binary_memory"] == searched["costs"]["memory_bytes"]
    config = (run / "config.yaml").read_text()
    assert "eval_split_percentage: 0" in config  # the full training split
    row = next(line for line in ok(run_cli(["runs"], work)).stdout.splitlines()
               if line.startswith("t_enas "))
    assert " train " in row and f"{status['test_accuracy']:.4f}" in row


def test_train_a_pit_export_file(work: Path) -> None:
    export = next((work / "trainings" / "pit" / "exported_models").glob(
        "epoch-*/inference_only/*-architecture.json"))
    ok(run_cli(["train", str(export), "-c", "train.yml", "run.name=t_pit"], work))
    run = work / "trainings" / "t_pit"
    status = json.loads((run / "run.json").read_text())
    assert status["source"]["kind"] == "architecture" and status["source"]["epoch"] == 3
    recorded = json.loads(export.read_text())["costs"]
    trained = json.loads((run / status["final_architecture"]).read_text())["costs"]
    assert trained["params"] == recorded["params"] < recorded["params_full"]
    assert trained["macs"] == recorded["macs"]
    # The export of a train run loads in stock MXNet and is the trained network.
    from lightnas_cli.export import load_exported
    folder = run / status["exported"] / "inference_only"
    out = load_exported(folder)(nd.array(np.zeros((2, 1, 24)))).asnumpy()
    assert out.shape == (2, 4)


def test_train_a_zoo_model(work: Path) -> None:
    ok(run_cli(["train", "resnet_e18", "-c", "train.yml", "run.name=t_zoo",
                "model.options.base_channels=4", "data.mock.shape=[1,8,8]",
                "data.mock.num_classes=4", "data.mock.num_train=64", "data.mock.num_test=32",
                "train.epochs=1"], work))
    status = json.loads((work / "trainings" / "t_zoo" / "run.json").read_text())
    assert status["source"] == {"kind": "zoo", "reference": "resnet_e18", "epoch": None,
                                "sha256": None, "run": None}


def _train_method(work: Path, init: str, tmp_path: Path):
    from lightnas_cli import data as data_mod
    from lightnas_cli.devices import parse_contexts
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.search.train.method import TrainMethod
    from lightnas_cli.search.train.source import train_config

    cwd = os.getcwd()
    os.chdir(work)
    try:
        cfg = train_config("enas", "train.yml", [f"run.name=x_{init}"], init=init)
        bundle = data_mod.load(cfg.data, cfg.seed, cfg.train.batch_size)
        logger = RunLogger(tmp_path / "logs", tensorboard=False, plain=True)
        method = TrainMethod(cfg, bundle, parse_contexts(["cpu"]), logger)
        if init == "search":
            method._take_search_weights()
        return method
    finally:
        os.chdir(cwd)


def test_init_search_starts_from_the_search_weights(work: Path, tmp_path: Path) -> None:
    from lightnas_cli import runner
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.runs import RunDir

    searched = _train_method(work, "search", tmp_path)
    scratch = _train_method(work, "scratch", tmp_path)
    with RunLogger(tmp_path / "l2", tensorboard=False) as logger:
        source, _ = runner.restore_method(RunDir(work / "trainings" / "enas"), logger,
                                          searched.source_cfg.epoch)
        reference = source.build(searched.record)
    x = nd.array(np.random.RandomState(0).normal(size=(4, 1, 8, 8)))
    expected = reference(x).asnumpy()
    np.testing.assert_allclose(searched.net(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(scratch.net(x).asnumpy(), expected, atol=1e-3)
    # Evaluated like the search evaluates that architecture: same loss on the same batches.
    assert searched.evaluate("val")["val_loss"] == pytest.approx(
        source_loss(reference, searched), rel=1e-5)


def source_loss(net, method) -> float:
    from lightnas_cli.search.training import ClassificationTask, evaluate
    return evaluate(net, method.data.val, ClassificationTask(), method.contexts, "val")["val_loss"]


def test_label_smoothing_and_distillation_by_hand() -> None:
    from lightnas_cli.search.training import ClassificationTask, DistillationTask
    out = nd.array([[2.0, 0.0, -1.0]])
    label = nd.array([0])
    p = np.exp([2.0, 0.0, -1.0]) / np.exp([2.0, 0.0, -1.0]).sum()
    smooth = ClassificationTask(0.1).loss(out, label, out).asscalar()
    assert smooth == pytest.approx(0.9 * -math.log(p[0]) + 0.1 * -np.log(p).mean(), rel=1e-5)
    teacher_logits = nd.array([[0.0, 1.0, 0.0]])
    task = DistillationTask(ClassificationTask(), lambda data: teacher_logits, 2.0, 0.25)
    got = float(task.loss(out, label, out).asscalar())
    q_t = np.exp([0.0, 0.5, 0.0]) / np.exp([0.0, 0.5, 0.0]).sum()
    q_s = np.exp([1.0, 0.0, -0.5]) / np.exp([1.0, 0.0, -0.5]).sum()
    kl = float((q_t * (np.log(q_t) - np.log(q_s))).sum())
    assert got == pytest.approx(0.75 * -math.log(p[0]) + 0.25 * 4 * kl, rel=1e-5)


def test_distillation_from_a_teacher_export_changes_training(work: Path) -> None:
    teacher = next((work / "trainings" / "enas" / "exported_models").glob(
        "epoch-*/inference_only"))
    short = ["train.epochs=1", "data.limit_train=64"]
    ok(run_cli(["train", "enas", "-c", "train.yml", "run.name=t_kd", *short,
                f"distill.teacher={teacher}", "distill.weight=0.9"], work))
    ok(run_cli(["train", "enas", "-c", "train.yml", "run.name=t_plain", *short], work))
    kd, plain = metrics(work / "trainings" / "t_kd")[0], metrics(work / "trainings" /
                                                                  "t_plain")[0]
    assert kd["train_loss"] != plain["train_loss"]
    bad = run_cli(["train", "enas", "-c", "train.yml", "run.name=t_kd_bad",
                   "distill.teacher=nowhere"], work)
    assert bad.returncode == 2 and "distill.teacher" in bad.stderr
    assert not (work / "trainings" / "t_kd_bad").exists()


def test_sigkill_then_resume_matches_the_uninterrupted_train_run(work: Path) -> None:
    args = ["train", "enas", "-c", "train.yml", "train.epochs=3",
            "data.limit_train=96"]
    ok(run_cli([*args, "run.name=t_full"], work))
    run = work / "trainings" / "t_killed"
    kill_during_epoch_two([*args, "run.name=t_killed"], work, run)
    ok(run_cli(["resume", "t_killed"], work))
    full, resumed = metrics(work / "trainings" / "t_full"), metrics(run)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert_same_metrics(resumed, full)


@pytest.mark.parametrize("args, message", [
    (["enas", "data.mock.num_classes=7"], "was derived for input"),
    (["resnet_e18", "--init", "search"], "init: search needs the search run"),
    (["nothing_here"], "is neither a run"),
    (["enas", "--epoch", "9"], "no derived architecture for epoch 9"),
])
def test_bad_sources_fail_and_create_nothing(work: Path, args: list, message: str) -> None:
    before = tree_digest(work / "trainings")
    result = run_cli(["train", *args, "-c", "train.yml", "run.name=t_bad"], work)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert tree_digest(work / "trainings") == before


def test_a_malformed_architecture_file_and_a_run_without_architectures(work: Path,
                                                                       tmp_path: Path) -> None:
    broken = tmp_path / "broken-architecture.json"
    broken.write_text('{"method": "enas", "decisions": [')
    result = run_cli(["train", str(broken), "-c", "train.yml", "run.name=t_bad"], work)
    assert result.returncode == 2 and "not valid JSON" in result.stderr
    empty = work / "trainings" / "enas_no_arch"
    shutil.copytree(work / "trainings" / "enas", empty)
    shutil.rmtree(empty / "logs" / "architectures")
    result = run_cli(["train", "enas_no_arch", "-c", "train.yml", "run.name=t_bad"], work)
    assert result.returncode == 2 and "no derived architecture" in result.stderr
    assert not (work / "trainings" / "t_bad").exists()
