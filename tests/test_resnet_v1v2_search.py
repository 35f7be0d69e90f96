"""End to end through the real CLI, for a basic-block and a bottleneck net: the mock ENAS
searches configs/mock/enas_resnet18_v1.yml and enas_resnet50_v2.yml run 2 epochs, resume exactly
after a crash following epoch 1, export (binary blocks' weights stored as +-1), the export
reproduces the outputs in a fresh process, and `lightnas summary run:<name>` describes the run."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, assert_same_metrics, cli_env

#: mock config -> (model, ENAS decisions: one per residual block)
CASES = {"enas_resnet18_v1": ("resnet18_v1", 8), "enas_resnet50_v2": ("resnet50_v2", 16)}


def _env() -> dict:
    env = cli_env()
    env["OMP_NUM_THREADS"] = "1"  # 2 shared cores: oversubscribed OpenMP threads crawl
    return env


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightnas_cli.cli", *args], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=300)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", params=sorted(CASES))
def searched(request, tmp_path_factory) -> tuple[Path, str, int]:
    """(folder with the finished 2-epoch run `net`, model name, number of decisions)."""
    model, decisions = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    config = REPO / "configs" / "mock" / f"{request.param}.yml"
    result = _cli(["search", "-c", str(config), "run.name=net"], folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder, model, decisions


def test_search_runs_two_epochs_with_one_bits_decision_per_block(searched) -> None:
    folder, model, count = searched
    run = folder / "trainings" / "net"
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["epoch"] == 2 and status["model"] == model
    assert [r["epoch"] for r in _metrics(run)] == [1, 2]
    arch = json.loads((run / "logs" / "architectures" / "epoch_2.json").read_text())
    assert arch["base_model"] == model and len(arch["decisions"]) == count
    assert all(d["choice"] == "bits" and d["options"] == [1, 32] for d in arch["decisions"])
    assert all(d["kind"] == {1: "binary", 32: "float"}[d["value"]] for d in arch["decisions"])
    # Per-unit costs: a 32-bit block costs 32x the weight memory of the same block at 1 bit.
    for d in arch["decisions"]:
        bits = d["value"]
        assert d["cost"]["memory_bytes"] == d["cost"]["params"] * bits / 8
    costs = arch["costs"]
    assert costs["memory_bytes"] == costs["params_binary"] / 8 + 4 * costs["params_float"]
    for kind in ("inference_only", "trainable"):
        assert (run / "exported_models" / "epoch-0002" / kind /
                f"{model}-symbol.json").is_file()


def test_resume_after_epoch_one_matches_the_uninterrupted_run(searched) -> None:
    folder, _, _ = searched
    full = folder / "trainings" / "net"
    crashed = folder / "trainings" / "crashed"
    shutil.copytree(full, crashed)
    # As if the process died after epoch 1's checkpoint: epoch 2's is gone, latest -> epoch 1.
    shutil.rmtree(crashed / "checkpoints" / "epoch-0002")
    (crashed / "checkpoints" / "latest").write_text("epoch-0001\n")
    result = _cli(["resume", "crashed"], folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming crashed from epoch 1" in result.stdout + result.stderr
    reference, resumed = _metrics(full), _metrics(crashed)
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert_same_metrics(resumed, reference)
    assert json.loads((crashed / "logs/architectures/epoch_2.json").read_text()) == \
        json.loads((full / "logs/architectures/epoch_2.json").read_text())


def test_export_stores_binary_blocks_as_signs_and_loads_in_a_fresh_process(
        searched, tmp_path: Path) -> None:
    import mxnet as mx

    folder, model, count = searched
    out = tmp_path / "exported"
    result = _cli(["export", "net", "--out", str(out)], folder)
    assert result.returncode == 0, result.stdout + result.stderr
    inference = out / "epoch-0002" / "inference_only"
    arch = json.loads((inference / f"{model}-0002-architecture.json").read_text())
    # Unit "features.S.B" (thumbnail stem: features[1..4] are the stages) is block B of stage S.
    bits = {tuple(int(v) for v in d["name"].split(".")[1:]): d["value"]
            for d in arch["decisions"]}
    assert len(bits) == count
    params = mx.nd.load(str(inference / f"{model}-0002.params"))
    seen = set()
    for key, value in params.items():
        match = re.search(r"_stage(\d+)_\w+?enas(\d+)_(?:sc_)?qconv2d\d+_weight$", key)
        if not match:
            continue
        block = (int(match.group(1)), int(match.group(2)))
        seen.add(block)
        signs = set(np.unique(value.asnumpy())) <= {-1.0, 1.0}
        # 1-bit blocks hold their weights as +-1 (weight_scaling none), 32-bit blocks do not.
        assert signs == (bits[block] == 1), (key, bits[block])
    assert seen == set(bits)

    # The exported symbol and params alone reproduce the derived network in a fresh process.
    from lightnas_cli import runner
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.runs import RunDir
    from lightnas_cli.search.base import Architecture

    with RunLogger(tmp_path / "logs", tensorboard=False) as logger:
        method, _ = runner.restore_method(RunDir(folder / "trainings" / "net"), logger)
        net = method.build(Architecture.from_json(
            (inference / f"{model}-0002-architecture.json").read_text()))
    x = np.random.RandomState(0).normal(size=(4, 1, 8, 8)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", net(mx.nd.array(x)).asnumpy())
    for kind in ("inference_only", "trainable"):
        script = f"""
import numpy as np, mxnet as mx, warnings
warnings.simplefilter("ignore")
from mxnet import gluon
d = {str(out / "epoch-0002" / kind)!r}
net = gluon.SymbolBlock.imports(d + "/{model}-symbol.json", ["data"], d + "/{model}-0002.params")
out = net(mx.nd.array(np.load({str(tmp_path / 'x.npy')!r}))).asnumpy()
expected = np.load({str(tmp_path / 'expected.npy')!r})
diff = float(np.abs(out - expected).max())
assert diff <= 1e-5 * max(1.0, float(np.abs(expected).max())), diff
"""
        fresh = subprocess.run([sys.executable, "-c", script], env=_env(),
                               capture_output=True, text=True, timeout=120)
        assert fresh.returncode == 0, kind + fresh.stdout + fresh.stderr


def test_summary_of_the_run_counts_its_chosen_bits(searched) -> None:
    folder, model, _ = searched
    result = _cli(["summary", "run:net", "--json"], folder)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == f"run:net ({model})" and data["input_shape"] == [1, 8, 8]
    arch = json.loads((folder / "trainings/net/logs/architectures/epoch_2.json").read_text())
    float_blocks = {d["name"] for d in arch["decisions"] if d["value"] == 32}
    for row in data["layers"]:
        block = ".".join(row["name"].split(".")[:3])
        if row["type"] in ("qconv2d", "conv2d") and row["name"].count(".") >= 3:
            assert row["binary"] == (block not in float_blocks), row
    # Same weight layers as the search's record (the summary adds BatchNorms).
    totals = data["totals"]
    assert totals["params_binary"] == arch["costs"]["params_binary"]
    assert totals["macs"] == arch["costs"]["macs"]
