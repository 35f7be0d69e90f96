"""FBNet through the real CLI on a width-reduced space: `lightnas latency build|show|check`,
a search (one warm-up epoch, one search epoch with the additive loss and one Gumbel draw per
batch, two epochs fine-tuning the derived network), exact resume inside the fine-tuning, θ heatmaps in TensorBoard, the derived export loaded in a fresh process,
`lightnas export --sample`, and a table for other shapes refused."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_same_checkpoint, assert_same_metrics, cli_env, run_cli, write_config

TINY_FBNET = {
    "method": "fbnet",
    "seed": 4,
    "data": {"name": "mock", "mock": {"num_classes": 3, "shape": [1, 8, 8], "num_train": 40,
                                      "num_test": 8, "noise": 0.5}},
    "model": {"name": "fbnet", "width_multiplier": 0.25, "channel_divisor": 16,
              "stem_stride": 1, "feature_dim": 16},
    "train": {"epochs": 4, "batch_size": 16, "lr": 0.05, "clip_gradient": 0.1},
    "fbnet": {"warmup_epochs": 1, "finetune_epochs": 2, "loss": "add",
              "latency_table": "tables/tiny.json", "bn_recalibration_batches": 2,
              "arch_lr": 0.5},
    "relaxation": {"noise": "per_batch"},
}


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A table built by the CLI, a finished run `full`, and `part`: its copy that lost the
    last checkpoint (as if killed during epoch 4, the second fine-tuning one) and was
    resumed."""
    folder = tmp_path_factory.mktemp("fbnet_cli")
    write_config(folder, TINY_FBNET)
    ok(run_cli(["latency", "build", "-c", "config.yml", "--repeats", "2", "--stat", "min"],
               folder))
    ok(run_cli(["search", "-c", "config.yml", "run.name=full"], folder))
    runs = folder / "trainings"
    shutil.copytree(runs / "full", runs / "part")
    shutil.rmtree(runs / "part" / "checkpoints" / "epoch-0004")
    ok(run_cli(["resume", "part"], folder))
    return folder


@pytest.fixture(scope="module")
def restored(workdir: Path, tmp_path_factory):
    """The finished run's method rebuilt from its config and last checkpoint (the config
    names its table relative to the work folder)."""
    import os

    from lightnas_cli import runner
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.runs import RunDir

    previous = os.getcwd()
    os.chdir(workdir)
    try:
        with RunLogger(tmp_path_factory.mktemp("logs"), tensorboard=False) as logger:
            method, _ = runner.restore_method(RunDir(workdir / "trainings" / "full"), logger)
    finally:
        os.chdir(previous)
    return method


def test_latency_build_and_show(workdir: Path) -> None:
    table = json.loads((workdir / "tables" / "tiny.json").read_text())
    assert table["statistic"] == "min" and table["repeats"] == 2 and table["device"] == "cpu"
    assert len(table["layers"]) == 22 and [p["name"] for p in table["fixed"]] == ["stem", "tail"]
    assert table["space"]["input_shape"] == [1, 8, 8]
    shown = ok(run_cli(["latency", "show", "tables/tiny.json"], workdir)).stdout
    assert "device_name:" in shown and "layers.21" in shown and "k5_e1_g2" in shown
    assert "fastest_ms" in shown and "slowest_ms" in shown


def test_latency_check_prints_errors(workdir: Path) -> None:
    result = ok(run_cli(["latency", "check", "-c", "config.yml", "--samples", "2",
                         "--repeats", "2"], workdir)).stdout
    assert "predicted ms" in result and "median |error|" in result
    report = json.loads(result.strip().splitlines()[-1])     # the table, then its JSON
    assert report["statistic"] == "min" and report["samples"] == 2
    assert report["worst_abs_error_pct"] >= report["median_abs_error_pct"] >= 0
    assert result.count(" sample ") == 2 and "fastest" in result and "slowest" in result


def test_search_logs_theta_latency_and_temperature(workdir: Path) -> None:
    run = workdir / "trainings" / "full"
    records = read_metrics(run)
    assert [r["phase"] for r in records] == ["warmup", "search", "finetune", "finetune"]
    assert "arch_loss" not in records[0] and np.isfinite(records[1]["arch_loss"])
    for key in ("temperature", "expected_latency_ms", "val_accuracy", "cost"):
        assert key in records[1], key
    arch = json.loads((run / "logs" / "architectures" / "epoch_4.json").read_text())
    assert arch["method"] == "fbnet" and len(arch["decisions"]) == 22
    assert all(len(d["probabilities"]) == len(d["options"]) for d in arch["decisions"])
    assert records[3]["cost"] == arch["costs"]["latency_ms"]
    # θ is frozen while the derived network fine-tunes.
    assert records[2]["cost"] == records[3]["cost"] == records[1]["cost"]
    assert records[2]["expected_latency_ms"] == records[3]["expected_latency_ms"]
    events = b"".join(p.read_bytes() for p in (run / "logs").glob("events.out.tfevents.*"))
    for tag in (b"search/probabilities", b"search/expected_latency_ms", b"search/temperature"):
        assert tag in events, tag


def test_resume_is_exact(workdir: Path) -> None:
    full, part = workdir / "trainings" / "full", workdir / "trainings" / "part"
    assert_same_metrics(read_metrics(part), read_metrics(full))
    arrays = assert_same_checkpoint(full, part, 4)
    assert any(key.startswith("finetune_opt/") for key in arrays)


def test_derived_export_loads_in_a_fresh_process(workdir: Path, tmp_path: Path,
                                                 restored) -> None:
    run = workdir / "trainings" / "full"
    folder = run / "exported_models" / "epoch-0004" / "inference_only"
    probe = np.random.RandomState(0).uniform(size=(2, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "probe.npy", probe)
    script = ("import sys, numpy as np, mxnet as mx, warnings\n"
              "warnings.simplefilter('ignore')\n"
              "net = mx.gluon.SymbolBlock.imports(sys.argv[1], ['data'], sys.argv[2])\n"
              "np.save(sys.argv[4], net(mx.nd.array(np.load(sys.argv[3]))).asnumpy())\n")
    subprocess.run([sys.executable, "-c", script, str(folder / "fbnet-symbol.json"),
                    str(folder / "fbnet-0004.params"), str(tmp_path / "probe.npy"),
                    str(tmp_path / "out.npy")], check=True, env=cli_env(), cwd=workdir,
                   timeout=120)
    fresh = np.load(tmp_path / "out.npy")
    assert fresh.shape == (2, 3) and np.all(np.isfinite(fresh))
    # Only the chosen blocks are in the exported graph: no mixing, θ or table left.
    symbol = (folder / "fbnet-symbol.json").read_text()
    assert "theta0" not in symbol and "lut0" not in symbol and "mix" not in symbol
    arch = json.loads((folder / "fbnet-0004-architecture.json").read_text())
    for decision in arch["decisions"]:
        if decision["value"] != "skip":
            assert f"layer{decision['name'].split('.')[1]}_{decision['value']}_" in symbol

    from mxnet import nd
    from lightnas_cli.search.base import Architecture

    net = restored.build(Architecture.from_dict(arch))
    np.testing.assert_allclose(net(nd.array(probe)).asnumpy(), fresh, rtol=1e-4, atol=1e-5)


def test_export_samples_from_theta(workdir: Path, restored) -> None:
    result = ok(run_cli(["export", "full", "--sample", "2", "--seed", "3",
                         "--kind", "inference_only"], workdir))
    assert len(result.stdout.strip().splitlines()) == 2
    run = workdir / "trainings" / "full"
    exported = []
    for index in (1, 2):
        folder = (run / "exported_models" / "samples" / "seed-3" / f"sample-0{index}" /
                  "epoch-0004" / "inference_only")
        assert (folder / "fbnet-symbol.json").is_file() and (folder / "export.json").is_file()
        record = json.loads((folder / "fbnet-0004-architecture.json").read_text())
        exported.append([d["value"] for d in record["decisions"]])
    drawn = [[d.value for d in a.decisions] for a in restored.sample_architectures(2, seed=3)]
    assert exported == drawn and exported[0] != exported[1]
    bad = run_cli(["export", "full", "--sample", "0"], workdir)
    assert bad.returncode == 2 and "--sample must be at least 1" in bad.stderr


def test_a_table_for_other_shapes_is_refused(workdir: Path) -> None:
    result = run_cli(["search", "-c", "config.yml", "run.name=other",
                      "data.mock.shape=[1,12,12]"], workdir)
    assert result.returncode == 2
    assert "input_shape=[1, 8, 8], this config has input_shape=[1, 12, 12]" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run_cli(["latency", "show", "tables/none.json"], workdir)
    assert missing.returncode == 2 and "lightnas latency build" in missing.stderr


def test_derived_fbnet_exports_to_onnx(workdir: Path) -> None:
    """Channel shuffles and the head of a derived FBNet convert to ONNX and agree with MXNet
    under ONNX's reference evaluator (the export refuses itself otherwise)."""
    pytest.importorskip("onnx", reason="the [onnx] extra is not installed")
    result = ok(run_cli(["export", "full", "--format", "onnx", "--kind", "inference_only",
                         "--out", "onnx_out"], workdir))
    assert ".onnx" in result.stdout
    assert list((workdir / "onnx_out").glob("epoch-*/inference_only/*.onnx"))
