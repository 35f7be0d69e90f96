"""Deploy and observe (issue 15): ONNX exports checked by ONNX's reference evaluator for a mock
run of every method, bit-packed binary exports identical to inference_only, and TensorBoard's
own reader and server on a run's event files."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, TINY_ENAS, cli_env, run_cli, write_config

onnx = pytest.importorskip("onnx", reason="the [onnx] extra (onnx==1.14.1) is not installed")

TINY = {"epochs": 1, "batch_size": 16}
# One tiny mock run per method and zoo family; each must export to ONNX and pass the check
# (FBNet's, which needs a latency table, is in tests/test_fbnet_cli.py).
RUNS = {
    "enas_resnet_e": TINY_ENAS,
    "enas_meliusnet": {**TINY_ENAS, "model": {"name": "meliusnet22", "base_channels": 8},
                       "train": {**TINY_ENAS["train"], "epochs": 1}},
    "enas_resnet_v1": {**TINY_ENAS, "model": {"name": "resnet18_v1", "stem": "thumbnail",
                                              "base_channels": 4,
                                              "options": {"fp_shortcut": True}},
                       "train": {**TINY_ENAS["train"], "epochs": 1}},
    "pit_tcn": {"method": "pit", "seed": 1,
                "data": {"name": "mock", "mock": {"num_classes": 3, "shape": [1, 24],
                                                  "num_train": 48, "num_test": 16}},
                "model": {"name": "tcn", "options": {"channels": [4, 6], "kernel_size": 5}},
                "train": {**TINY, "epochs": 2}, "pit": {"strength": 1.0, "arch_lr": 0.3}},
    "dmasking_lenet": {"method": "dmasking", "seed": 1,
                       "data": {"name": "mock", "mock": {"num_classes": 4, "shape": [1, 12, 12],
                                                         "num_train": 64, "num_test": 16}},
                       "model": {"name": "lenet"}, "train": TINY,
                       "dmasking": {"systolic": {"s1": 8, "s2": 8, "sharpness": 5.0}}},
    "pit_dscnn": {"method": "pit", "seed": 1,
                  "data": {"name": "mock", "mock": {"num_classes": 3, "shape": [1, 20, 6],
                                                    "num_train": 32, "num_test": 16}},
                  "model": {"name": "dscnn", "options": {"filters": 8, "blocks": 1}},
                  "train": TINY},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("deploy")
    for name, config in RUNS.items():
        path = write_config(folder, config, f"{name}.yml")
        result = run_cli(["search", "-c", str(path), f"run.name={name}"], folder)
        assert result.returncode == 0, (name, result.stdout + result.stderr)
    return folder


@pytest.mark.parametrize("name", list(RUNS))
def test_every_method_exports_to_onnx_and_matches_mxnet(runs: Path, name: str) -> None:
    result = run_cli(["export", name, "--format", "onnx", "--kind", "inference_only"], runs)
    assert result.returncode == 0, result.stdout + result.stderr
    folder = next((runs / "trainings" / name / "exported_models").glob("epoch-*")) / \
        "inference_only"
    manifest = json.loads((folder / "export.json").read_text())
    model_file = folder / manifest["files"]["onnx"]
    model = onnx.load(str(model_file))
    onnx.checker.check_model(model)
    # Independently of the exporter's own check: the reference evaluator on a fresh input
    # (batch of 3: the batch axis is dynamic) agrees with the MXNet export.
    from onnx.reference import ReferenceEvaluator

    import mxnet as mx
    from lightnas_cli.export import load_exported
    arch = json.loads((folder / manifest["files"]["architecture"]).read_text())
    x = np.random.RandomState(7).normal(size=(3, *arch["input_shape"])).astype(np.float32)
    expected = load_exported(folder)(mx.nd.array(x)).asnumpy()
    got = ReferenceEvaluator(model).run(None, {"data": x})[0]
    assert np.abs(got - expected).max() <= 1e-4


def test_packed_export_equals_inference_only(runs: Path) -> None:
    import mxnet as mx
    from lightnas_cli.export import load_exported, read_manifest
    result = run_cli(["export", "enas_meliusnet", "--kind", "all"], runs)
    assert result.returncode == 0, result.stdout + result.stderr
    epoch = next((runs / "trainings" / "enas_meliusnet" / "exported_models").glob("epoch-*"))
    manifest = read_manifest(epoch / "packed")
    assert "params" not in manifest["files"] and manifest["files"]["packed"].endswith(".packed")
    x = mx.nd.array(np.random.RandomState(0).normal(size=(4, 1, 8, 8)))
    packed = load_exported(epoch / "packed")(x).asnumpy()
    inference = load_exported(epoch / "inference_only")(x).asnumpy()
    assert np.array_equal(packed, inference)
    assert (epoch / "packed" / manifest["files"]["packed"]).stat().st_size < \
        (epoch / "inference_only" / f"meliusnet22-{int(epoch.name[-4:]):04d}.params").stat().st_size


def test_pack_round_trip_is_exact_and_refuses_non_binary_tensors() -> None:
    from mxnet import nd
    from lightnas_cli.errors import ExportError
    from lightnas_cli.export import pack_params, unpack_params
    rng = np.random.RandomState(0)
    signs = np.where(rng.normal(size=(5, 3, 3, 3)) < 0, -1.0, 1.0).astype(np.float32)
    scale = rng.uniform(0.1, 2, size=(5, 1, 1, 1)).astype(np.float32)
    params = {"arg:conv_weight": nd.array(signs * scale), "arg:fc_weight": nd.array(
        rng.normal(size=(2, 7))), "aux:bn_running_mean": nd.array(rng.normal(size=4))}
    packed = pack_params(params, {"conv_weight"})
    assert packed["bits:arg:conv_weight"].dtype == np.uint8
    assert packed["bits:arg:conv_weight"].size == -(-5 * 27 // 8)
    back = unpack_params(packed)
    assert sorted(back) == sorted(params)
    for key in params:
        assert np.array_equal(back[key].asnumpy(), params[key].asnumpy()), key
    with pytest.raises(ExportError, match="not ±scale"):
        pack_params(params, {"fc_weight"})


def test_packed_meliusnet22_size_is_the_summary_memory(tmp_path: Path) -> None:
    """MeliusNet-22 at 224x224, 1000 classes, all blocks binary: the packed params file is
    within 10% of `lightnas summary`'s model size (which counts BatchNorm scale and shift; the
    file also holds the running statistics)."""
    import bmxnet_models
    from lightnas_cli.export import export_network, quantize_binary_weights
    from lightnas_cli.search.base import Architecture
    from lightnas_cli.summary import summarize_model
    net = bmxnet_models.get_model("meliusnet22", classes=1000)
    net.initialize()
    quantize_binary_weights(net)
    arch = Architecture(method="zoo", base_model="meliusnet22", model_options={},
                        input_shape=[3, 224, 224], classes=1000, decisions=[])
    written = export_network(net, arch, tmp_path / "packed", "meliusnet22", 0, "packed")
    size = written["packed"].stat().st_size
    memory = summarize_model("meliusnet22", [3, 224, 224], 1000).totals.memory_bytes
    assert abs(size - memory) / memory < 0.10, (size, memory)


# --- TensorBoard ----------------------------------------------------------------------------------

def _tags(logs: Path) -> dict:
    """TensorBoard's EventAccumulator on a log folder, in a process of its own: tensorboard's
    protos and mxboard's define the same `tensorboard.*` messages, so once tensorboard is
    imported, mxboard cannot be in that process (and the rest of the suite needs it)."""
    script = ("import json, sys\n"
              "from tensorboard.backend.event_processing.event_accumulator import "
              "EventAccumulator\n"
              "a = EventAccumulator(sys.argv[1], size_guidance={'images': 0, 'tensors': 0})\n"
              "a.Reload()\n"
              "print(json.dumps({k: v for k, v in a.Tags().items() if isinstance(v, list)}))\n")
    result = subprocess.run([sys.executable, "-c", script, str(logs)], env=cli_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_event_file_has_graphs_tables_config_and_test_metrics(runs: Path) -> None:
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    tags = _tags(runs / "trainings" / "enas_resnet_e" / "logs")
    for tag in ("train/loss", "val/accuracy", "test/accuracy", "test/loss", "cost/params"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    assert "search/probabilities" in tags["images"]
    import shutil
    if shutil.which("dot"):
        assert "architecture/graph" in tags["images"]
    for tag in ("architecture/decisions", "run/config", "search/probabilities/values"):
        assert tag in tags["tensors"], (tag, tags["tensors"])
    assert "" not in tags["tensors"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_tensorboard_serves_every_plugin_without_errors(runs: Path, tmp_path: Path) -> None:
    """`tensorboard --load_fast=false` (the slow, strict reader) on a run's logs: every
    plugin's tag list and every text tag answer HTTP 200 (mxboard's own add_text made the
    text plugin answer 500)."""
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    port = _free_port()
    binary = Path(sys.executable).with_name("tensorboard")
    log = open(tmp_path / "tensorboard.log", "wb")
    server = subprocess.Popen([str(binary), "--logdir", str(runs / "trainings"), "--port",
                               str(port), "--host", "127.0.0.1", "--load_fast=false"],
                              env=cli_env(), stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                status, body = _get(f"{base}/data/plugin/text/tags")
                if status == 200 and b"run/config" in body:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "TensorBoard did not come up with the run's tags"
            time.sleep(1)
        for plugin in ("scalars", "images", "text"):
            status, body = _get(f"{base}/data/plugin/{plugin}/tags")
            assert status == 200, (plugin, status)
        tags = json.loads(body)
        run = next(name for name in tags if name.startswith("enas_resnet_e"))
        for tag in tags[run]:
            status, _ = _get(f"{base}/data/plugin/text/text?run={run}&tag={tag}")
            assert status == 200, (tag, status)
        status, listing = _get(f"{base}/data/plugins_listing")
        assert status == 200 and b"scalars" in listing
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_a_failed_onnx_check_writes_nothing(runs: Path, tmp_path: Path, monkeypatch) -> None:
    from lightnas_cli import export as export_mod, runner
    from lightnas_cli.errors import ExportError
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.runs import RunDir
    monkeypatch.setattr(export_mod, "ONNX_TOLERANCE", -1.0)  # every comparison now fails
    with RunLogger(tmp_path / "logs", tensorboard=False) as logger:
        method, ckpt = runner.restore_method(RunDir(runs / "trainings" / "enas_resnet_e"),
                                             logger)
        with pytest.raises(ExportError, match="not trustworthy"):
            export_mod.export_architecture(method, method.derive(), tmp_path / "out", "net",
                                           ckpt.epoch, formats=("onnx",))
    epoch = tmp_path / "out" / f"epoch-{ckpt.epoch:04d}"
    assert not epoch.exists() or not any(epoch.iterdir())
