"""End to end: the mock ENAS MeliusNet-22 search (configs/mock/enas_meliusnet22.yml) runs 2
epochs, resumes exactly after a crash following epoch 1, exports, its exported binary network
reproduces the outputs in a fresh process, and `lightnas summary run:<name>` describes it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, assert_same_metrics, cli_env

CONFIG = REPO / "configs" / "mock" / "enas_meliusnet22.yml"


def _env() -> dict:
    # One OpenMP thread: with 2 cores shared by parallel test runs, spinning OpenMP threads of
    # oversubscribed processes slow MXNet down tens of times.
    env = cli_env()
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightnas_cli.cli", *args], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=300)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with the finished 2-epoch mock run `mel`."""
    folder = tmp_path_factory.mktemp("meliusnet")
    result = _cli(["search", "-c", str(CONFIG), "run.name=mel"], folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def test_search_runs_two_epochs_with_34_decisions(workdir: Path) -> None:
    run = workdir / "trainings" / "mel"
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["epoch"] == 2
    assert status["model"] == "meliusnet22"
    assert [r["epoch"] for r in _metrics(run)] == [1, 2]
    arch = json.loads((run / "logs" / "architectures" / "epoch_2.json").read_text())
    assert arch["base_model"] == "meliusnet22" and len(arch["decisions"]) == 34
    assert {d["choice"] for d in arch["decisions"]} == {"replace_by_skip_connection"}
    assert {d["kind"] for d in arch["decisions"]} <= {"skip", "keep"}
    assert arch["model_options"]["activation"] == "det_sign"
    assert arch["model_options"]["binary_padding"] == "zero"
    for kind in ("inference_only", "trainable"):
        assert (run / "exported_models" / "epoch-0002" / kind /
                "meliusnet22-symbol.json").is_file()


def test_resume_after_epoch_one_matches_the_uninterrupted_run(workdir: Path) -> None:
    full = workdir / "trainings" / "mel"
    crashed = workdir / "trainings" / "crashed"
    shutil.copytree(full, crashed)
    # As if the process died after epoch 1's checkpoint: epoch 2's is gone, latest -> epoch 1.
    shutil.rmtree(crashed / "checkpoints" / "epoch-0002")
    (crashed / "checkpoints" / "latest").write_text("epoch-0001\n")
    result = _cli(["resume", "crashed"], workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming crashed from epoch 1" in result.stdout + result.stderr
    reference, resumed = _metrics(full), _metrics(crashed)
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert_same_metrics(resumed, reference)
    assert json.loads((crashed / "logs/architectures/epoch_2.json").read_text()) == \
        json.loads((full / "logs/architectures/epoch_2.json").read_text())


def test_export_loads_in_a_fresh_process_and_reproduces_outputs(workdir: Path,
                                                              tmp_path: Path) -> None:
    import mxnet as mx

    from lightnas_cli import runner
    from lightnas_cli.runs import RunDir
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.search.base import Architecture

    out = tmp_path / "exported"
    result = _cli(["export", "mel", "--out", str(out)], workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    folder = out / "epoch-0002" / "inference_only"
    run = workdir / "trainings" / "mel"
    with RunLogger(tmp_path / "logs", tensorboard=False) as logger:
        method, _ = runner.restore_method(RunDir(run), logger)
        arch = Architecture.from_json((folder / "meliusnet22-0002-architecture.json").read_text())
        net = method.build(arch)
    x = np.random.RandomState(0).normal(size=(4, 1, 8, 8)).astype("float32")
    expected = net(mx.nd.array(x)).asnumpy()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", expected)
    # Binary weights of the inference export are exactly +-1 (weight_scaling: none).
    params = mx.nd.load(str(folder / "meliusnet22-0002.params"))
    binary = [k for k in params if "qconv2d" in k and k.endswith("weight")]
    assert binary and all(set(np.unique(params[k].asnumpy())) <= {-1.0, 1.0} for k in binary)
    script = f"""
import numpy as np, mxnet as mx, warnings
warnings.simplefilter("ignore")
from mxnet import gluon
d = {str(folder)!r}
net = gluon.SymbolBlock.imports(d + "/meliusnet22-symbol.json", ["data"],
                                d + "/meliusnet22-0002.params")
out = net(mx.nd.array(np.load({str(tmp_path / 'x.npy')!r}))).asnumpy()
diff = float(np.abs(out - np.load({str(tmp_path / 'expected.npy')!r})).max())
assert diff <= 1e-5, diff
print("max diff", diff)
"""
    fresh = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True,
                           text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr


def test_summary_of_the_run_and_its_custom_string(workdir: Path) -> None:
    from lightnas_cli.search.enas.space import architecture_to_custom_string
    from lightnas_cli.search.base import Architecture

    result = _cli(["summary", "run:mel", "--json"], workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "run:mel (meliusnet22)" and data["input_shape"] == [1, 8, 8]
    arch = Architecture.from_json((workdir / "trainings/mel/logs/architectures/epoch_2.json")
                                  .read_text())
    assert data["architecture"].endswith("epoch_2.json")
    # The derived network's custom string builds a network with the same costs.
    name = architecture_to_custom_string(arch)
    assert data["notes"]["custom_string"] == name
    custom = _cli(["summary", name, "--input-shape", "1,8,8", "--classes", "4", "-o",
                   "stem=thumbnail", "-o", "base_channels=8", "--json"], workdir)
    assert custom.returncode == 0, custom.stderr
    assert json.loads(custom.stdout)["totals"] == data["totals"]
    layers = [(r["type"], r["output_shape"], r["params_binary"], r["params_float"])
              for r in data["layers"]]
    assert layers == [(r["type"], r["output_shape"], r["params_binary"], r["params_float"])
                      for r in json.loads(custom.stdout)["layers"]]
