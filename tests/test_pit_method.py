"""The `pit` search method end to end through the real CLI: search, artifacts, pruning,
export loaded in a fresh process, exact resume, the reconstruction task, config errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_same_checkpoint, assert_same_metrics, cli_env, run_cli, write_config

TINY_PIT = {
    "method": "pit",
    "seed": 5,
    "data": {"name": "mock", "mock": {"num_classes": 4, "shape": [1, 24], "num_train": 96,
                                      "num_test": 32, "noise": 0.5}},
    "model": {"name": "tcn", "options": {"channels": [6, 8], "kernel_size": 5}},
    "train": {"epochs": 3, "batch_size": 16, "lr": 0.01},
    "pit": {"regularizer": "size", "strength": 2.0, "warmup_epochs": 1, "finetune_epochs": 1,
            "arch_lr": 0.3},
}


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A finished 3-epoch run `full`, and its copy `part` that lost its last checkpoint (as if
    killed during epoch 3) and was resumed."""
    folder = tmp_path_factory.mktemp("pit")
    config = write_config(folder, TINY_PIT)
    result = run_cli(["search", "-c", str(config), "run.name=full"], folder)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = folder / "trainings"
    shutil.copytree(runs / "full", runs / "part")
    shutil.rmtree(runs / "part" / "checkpoints" / "epoch-0003")
    result = run_cli(["resume", "part"], folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def test_search_prunes_and_logs_phases(workdir: Path):
    run = workdir / "trainings" / "full"
    records = read_metrics(run)
    assert [r["phase"] for r in records] == ["warmup", "search", "finetune"]
    for key in ("train_loss", "train_accuracy", "val_accuracy", "cost", "params", "macs",
                "regularizer", "strength"):
        assert key in records[-1]
    assert records[0]["strength"] == 0 and records[1]["strength"] == 2.0
    arch = json.loads((run / "logs" / "architectures" / "epoch_3.json").read_text())
    costs = arch["costs"]
    assert arch["method"] == "pit" and costs["cost_name"] == "params"
    assert costs["params"] < costs["params_full"] and costs["macs"] < costs["macs_full"]
    assert records[-1]["cost"] == costs["params"]
    choices = {d["choice"] for d in arch["decisions"]}
    assert {"channels", "kernel", "dilation"} <= choices
    assert "pruned" in {d["kind"] for d in arch["decisions"]}
    assert (run / "logs" / "architectures" / "epoch_3.dot").is_file()
    # The classifier's outputs are never pruned.
    head = [d for d in arch["decisions"] if d["name"] == arch["decisions"][-1]["name"]]
    assert head[0]["value"] == 4 and head[0]["options"] == [4]


def test_exported_pruned_network_loads_in_a_fresh_process(workdir: Path, tmp_path: Path):
    run = workdir / "trainings" / "full"
    folder = run / "exported_models" / "epoch-0003" / "inference_only"
    symbol, params = folder / "tcn-symbol.json", folder / "tcn-0003.params"
    probe = np.random.RandomState(0).standard_normal((2, 1, 24)).astype(np.float32)
    np.save(tmp_path / "probe.npy", probe)
    script = (
        "import sys, numpy as np, mxnet as mx, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "net = mx.gluon.SymbolBlock.imports(sys.argv[1], ['data'], sys.argv[2])\n"
        "out = net(mx.nd.array(np.load(sys.argv[3]))).asnumpy()\n"
        "np.save(sys.argv[4], out)\n")
    subprocess.run([sys.executable, "-c", script, str(symbol), str(params),
                    str(tmp_path / "probe.npy"), str(tmp_path / "out.npy")],
                   check=True, env=cli_env(), cwd=tmp_path, timeout=120)
    fresh = np.load(tmp_path / "out.npy")

    from lightnas_cli import runner
    from lightnas_cli.runs import RunDir
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.search.base import Architecture
    from lightnas_cli import costs
    import mxnet as mx

    with RunLogger(tmp_path / "logs", tensorboard=False) as logger:
        method, _ = runner.restore_method(RunDir(run), logger)
        arch = Architecture.from_json(
            (folder / "tcn-0003-architecture.json")
            .read_text())
        net = method.build(arch)
        masked = method.model(mx.nd.array(probe)).asnumpy()
    assert np.abs(net(mx.nd.array(probe)).asnumpy() - fresh).max() <= 1e-5
    assert np.abs(masked - fresh).max() <= 1e-5
    # Smaller than the seed, and the record's counts are the exported network's.
    found = costs.summarize(costs.profile(method.build(arch), [1, 24]))
    assert found.params == arch.costs["params"] < arch.costs["params_full"]
    assert found.macs == arch.costs["macs"]


def test_resume_is_exact(workdir: Path):
    import mxnet as mx

    full, part = workdir / "trainings" / "full", workdir / "trainings" / "part"
    assert_same_metrics(read_metrics(part), read_metrics(full))
    assert_same_checkpoint(full, part, 3)


def test_export_command_and_architecture_edit(workdir: Path, tmp_path: Path):
    result = run_cli(["export", "part", "--epoch", "latest", "--kind", "inference_only",
                      "--out", str(tmp_path / "out")], workdir)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "epoch-0003" / "inference_only" / "tcn-symbol.json").is_file()

    from lightnas_cli import runner
    from lightnas_cli.runs import RunDir
    from lightnas_cli.errors import ArchitectureError
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.search.base import Architecture

    run = workdir / "trainings" / "part"
    with RunLogger(tmp_path / "logs", tensorboard=False) as logger:
        method, _ = runner.restore_method(RunDir(run), logger)
        arch = method.derive()
        record = arch.to_dict()
        # A user may edit an architecture: one channel in the first layer builds.
        first = record["decisions"][0]
        first["value"] = 1
        net = method.build(Architecture.from_dict(record))
        assert net(__import__("mxnet").nd.zeros((1, 1, 24))).shape == (1, 4)
        # Layers that add their outputs must agree on their channels.
        shared = [d for d in record["decisions"] if d["name"] == "0.downsample"][0]
        partner = [d for d in record["decisions"] if d["name"] == "0.conv2" and
                   d["choice"] == "channels"][0]
        shared["value"], partner["value"] = 1, 2
        with pytest.raises(ArchitectureError, match="share their channels"):
            method.build(Architecture.from_dict(record))


def test_reconstruction_task_without_accuracy(tmp_path: Path):
    config = dict(TINY_PIT)
    config.update(data={"name": "mock", "mock": {"shape": [1, 32], "num_train": 64,
                                                 "num_test": 16, "num_classes": 2}},
                  model={"name": "fc_autoencoder", "options": {"hidden": 8, "bottleneck": 2,
                                                               "depth": 1}},
                  train={"epochs": 2, "batch_size": 16, "lr": 0.01},
                  pit={"regularizer": "size", "strength": 0.5, "finetune_epochs": 1})
    path = write_config(tmp_path, config)
    result = run_cli(["search", "-c", str(path), "run.name=ae"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "trainings" / "ae"
    records = read_metrics(run)
    assert "train_accuracy" not in records[0] and "val_loss" in records[0]
    status = json.loads((run / "run.json").read_text())
    assert status["best_epoch"] in (1, 2) and status["status"] == "finished"
    arch = json.loads((run / "logs" / "architectures" / "epoch_2.json").read_text())
    output = [d for d in arch["decisions"] if d["choice"] == "channels"][-1]
    assert output["value"] == 32 and output["options"] == [32]


@pytest.mark.parametrize("override, message", [
    (["pit.warmup_epochs=3", "pit.finetune_epochs=1"], "exceed train.epochs"),
    (["pit.regularizer=latency"], "'pit.regularizer': unknown cost model 'latency'"),
    (["pit.exclude_types=[Conv3D]"], "'pit.exclude_types' is 'Conv3D'; allowed: Conv1D"),
])
def test_config_errors_exit_2(tmp_path: Path, override, message):
    path = write_config(tmp_path, TINY_PIT)
    result = run_cli(["search", "-c", str(path), "run.name=bad", *override], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr


def test_summary_of_a_pit_run_is_the_pruned_network(workdir: Path):
    """`lightnas summary run:full` builds the derived (pruned) network through the method:
    its weight layers count what the architecture record says, and `--cost` adds columns."""
    result = run_cli(["summary", "run:full", "--json", "--cost", "flops"], workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    arch = json.loads((workdir / "trainings" / "full" / "logs" / "architectures" /
                       "epoch_3.json").read_text())
    assert data["model"] == "run:full (tcn)" and data["input_shape"] == [1, 24]
    weights = [row for row in data["layers"] if row["type"] != "batchnorm"]
    assert sum(row["params_float"] for row in weights) == arch["costs"]["params"]
    assert sum(row["macs_float"] for row in weights) == arch["costs"]["macs"]
    assert arch["costs"]["params"] < arch["costs"]["params_full"]
    assert data["costs"]["flops"]["total"] == 2 * data["totals"]["macs"]
    assert data["costs"]["flops"]["unit"] == "FLOPs"
    assert all(row["costs"]["flops"] == 2 * (row["macs_float"] + row["macs_binary"])
               for row in data["layers"])


# --- in-process: the method's phases and flags (issue 10, items 3-5) -----------------------

def make_method(tmp_path: Path, config: dict, *overrides: str):
    """A PitSearch built from a config as the runner builds it (no run folder)."""
    from lightnas_cli import config as config_mod, data as data_mod, runner
    from lightnas_cli.logging import RunLogger

    cfg = config_mod.load_config(write_config(tmp_path, config), list(overrides))
    data = data_mod.load(cfg.data, cfg.seed, cfg.train.batch_size)
    logger = RunLogger(tmp_path / "logs", tensorboard=False)
    return runner.create_method(cfg, data, logger)


def bank_values(method) -> np.ndarray:
    return method.model.nas_parameters()[0].data().asnumpy().copy()


def test_strength_zero_still_trains_the_masks(tmp_path: Path):
    """PLiNIO: the task loss trains the masks even without a regularizer."""
    method = make_method(tmp_path, TINY_PIT, "pit.strength=0", "pit.finetune_epochs=0",
                         "train.epochs=2")
    start = bank_values(method)
    warmup = method.train_epoch(1)
    assert warmup["phase"] == "warmup" and not warmup["masks_updated"]
    assert np.array_equal(bank_values(method), start)
    search = method.train_epoch(2)
    assert search["phase"] == "search" and search["masks_updated"]
    assert search["strength"] == 0 and search["regularizer"] == 0
    assert not np.array_equal(bank_values(method), start)


DSCNN_PIT = {**TINY_PIT,
             "data": {"name": "mock", "mock": {"num_classes": 3, "shape": [1, 12, 6],
                                               "num_train": 32, "num_test": 16}},
             "model": {"name": "dscnn", "options": {"filters": 4, "blocks": 1}},
             "train": {"epochs": 3, "batch_size": 16, "lr": 0.01}}


def test_conv2d_receptive_field_off_by_type_survives_the_phases(tmp_path: Path):
    """train_rf_types / train_dilation_types without Conv2D: its β and γ stay untouched
    through warm-up, search and fine-tuning, while its channels are searched."""
    method = make_method(tmp_path, DSCNN_PIT, "pit.train_rf_types=[Conv1D]",
                         "pit.train_dilation_types=[Conv1D]")
    model = method.model
    convs = [l for _, l in model.pit_layers if type(l).__name__ == "PITConv2D"
             and l.time_searchable(0)]
    assert convs
    taps = [m for l in convs for m in l.timestep_maskers + l.dilation_maskers if not m.frozen]
    alphas = model.maskers
    start_taps = [m.nas_parameter.data().asnumpy().copy() for m in taps]
    start_alpha = [m.nas_parameter.data().asnumpy().copy() for m in alphas]
    for epoch in (1, 2, 3):
        method.train_epoch(epoch)
        assert all(not l.train_rf and not l.train_dilation for l in convs)
    assert all(np.array_equal(m.nas_parameter.data().asnumpy(), s)
               for m, s in zip(taps, start_taps))
    assert any(not np.array_equal(m.nas_parameter.data().asnumpy(), s)
               for m, s in zip(alphas, start_alpha))


def test_new_pit_keys_are_validated(tmp_path: Path):
    from lightnas_cli.errors import ConfigError
    for override, message in (("pit.cost_layers=some", "'pit.cost_layers' is 'some'"),
                              ("pit.train_rf_types=[Dense]", "'pit.train_rf_types' is 'Dense'")):
        with pytest.raises(ConfigError, match=message):
            make_method(tmp_path, TINY_PIT, override)


def test_cost_layers_searchable_normalises_by_the_searchable_layers(tmp_path: Path):
    method = make_method(tmp_path, TINY_PIT, "pit.cost_layers=searchable",
                         "pit.exclude_names=[3]")
    model = method.model
    fixed = [e for e in model.layers if e.role != "pit"]
    assert fixed and method.regularizer_full < method.full_cost
    assert method.regularizer_full == model.costs(soft=False, scope="searchable")["size"]
