"""End-to-end CLI behaviour: a real mock search, its artifacts, export, and every bad-input case
(each exits 2 with a message naming the problem and the fix, and leaves existing runs as they were)."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_ENAS, cli_env, run_cli, write_config

RUN = "tiny"


def tree_digest(folder: Path) -> dict:
    """Every file under folder with its content hash: equal digests mean nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working folder holding one finished 2-epoch run named `tiny`."""
    folder = tmp_path_factory.mktemp("cli")
    config = write_config(folder, TINY_ENAS)
    result = run_cli(["search", "-c", str(config), f"run.name={RUN}"], folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def test_search_writes_every_artifact(workdir: Path) -> None:
    run = workdir / "trainings" / RUN
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["epoch"] == 2
    assert status["method"] == "enas" and status["versions"]["mxnet"] == "1.9.1"
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "latest").read_text().strip() == "epoch-0002"
    for epoch in (1, 2):
        assert (run / "checkpoints" / f"epoch-{epoch:04d}" / "arrays.params").is_file()
        for suffix in ("json", "txt", "dot"):
            assert (run / "logs" / "architectures" / f"epoch_{epoch}.{suffix}").is_file()
    if shutil.which("dot"):
        assert (run / "logs" / "architectures" / "epoch_2.png").stat().st_size > 0
    assert list((run / "logs").glob("events.out.tfevents.*"))
    for kind in ("inference_only", "trainable"):
        folder = run / "exported_models" / "epoch-0002" / kind
        assert (folder / "resnet_e18-symbol.json").is_file()
        assert (folder / "resnet_e18-0002.params").is_file()
        assert json.loads((folder / "export.json").read_text())["epoch"] == 2
    assert status["exported"] == "exported_models/epoch-0002"
    assert status["final_architecture"] == "logs/architectures/epoch_2.json"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    record = json.loads(lines[-1])
    for key in ("train_loss", "train_accuracy", "val_accuracy", "reward", "baseline", "entropy",
                "lr", "cost"):
        assert key in record
    # The overrides were autosaved next to the working folder's configs/.
    assert (workdir / "configs" / "autosaved" / f"{RUN}.yml").is_file()


def test_architecture_record_is_complete(workdir: Path) -> None:
    arch = json.loads((workdir / "trainings" / RUN / "logs" / "architectures" /
                       "epoch_2.json").read_text())
    assert arch["method"] == "enas" and arch["base_model"] == "resnet_e18"
    assert len(arch["decisions"]) == 16
    assert {d["value"] for d in arch["decisions"]} <= {1, 32}
    assert {d["kind"] for d in arch["decisions"]} <= {"binary", "float"}
    costs = arch["costs"]
    assert costs["params"] == costs["params_binary"] + costs["params_float"]
    assert costs["memory_bytes"] == costs["params_binary"] / 8 + costs["params_float"] * 4


def test_exported_model_matches_in_fresh_process(workdir: Path, tmp_path: Path) -> None:
    from lightnas_cli import runner
    from lightnas_cli.runs import RunDir
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.search.base import Architecture

    run = workdir / "trainings" / RUN
    with RunLogger(tmp_path / "logs", tensorboard=False) as logger:
        method, _ = runner.restore_method(RunDir(run), logger)
        arch = Architecture.from_json((run / "exported_models" / "epoch-0002" /
                                       "inference_only" /
                                       "resnet_e18-0002-architecture.json").read_text())
        net = method.build(arch)
    x = np.random.RandomState(0).normal(size=(4, 1, 8, 8)).astype("float32")
    import mxnet as mx
    expected = net(mx.nd.array(x)).asnumpy()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", expected)
    script = f"""
import numpy as np, mxnet as mx, warnings
warnings.simplefilter("ignore")
from mxnet import gluon
d = {str(run / 'exported_models' / 'epoch-0002' / 'inference_only')!r}
net = gluon.SymbolBlock.imports(d + "/resnet_e18-symbol.json", ["data"], d + "/resnet_e18-0002.params")
out = net(mx.nd.array(np.load({str(tmp_path / 'x.npy')!r}))).asnumpy()
diff = float(np.abs(out - np.load({str(tmp_path / 'expected.npy')!r})).max())
print(diff)
assert diff <= 1e-5, diff
"""
    result = subprocess.run([sys.executable, "-c", script], env=cli_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_inference_export_stores_binarized_weights(workdir: Path, tmp_path: Path) -> None:
    """Every block that is binary in the exported architecture has a ±scale weight tensor in
    inference_only/ and different (latent) values in trainable/. The architecture is made
    all-binary by hand, so the test cannot pass vacuously."""
    import mxnet as mx
    from lightnas_cli import export as export_mod, runner
    from lightnas_cli.logging import RunLogger
    from lightnas_cli.runs import RunDir

    with RunLogger(tmp_path / "logs", tensorboard=False) as logger:
        method, ckpt = runner.restore_method(RunDir(workdir / "trainings" / RUN), logger)
        arch = method.derive()
        for decision in arch.decisions:
            decision.value = 1
        written = export_mod.export_architecture(method, arch, tmp_path / "out", "net",
                                                 ckpt.epoch)
    inference = mx.nd.load(str(written["inference_only"]["params"]))
    trainable = mx.nd.load(str(written["trainable"]["params"]))
    binary_convs = [k for k in inference if "conv" in k and k.endswith("weight")
                    and np.unique(np.abs(inference[k].asnumpy())).size == 1]
    assert len(arch.decisions) == 16 and len(binary_convs) >= 16
    assert all(not np.array_equal(inference[k].asnumpy(), trainable[k].asnumpy())
               for k in binary_convs)


def test_export_command_best_and_out(workdir: Path, tmp_path: Path) -> None:
    """`--epoch best` exports the best epoch's checkpoint and its derived architecture."""
    status = json.loads((workdir / "trainings" / RUN / "run.json").read_text())
    best = status["best_epoch"]
    out = tmp_path / "exported"
    result = run_cli(["export", RUN, "--epoch", "best", "--kind", "trainable", "--out",
                      str(out)], workdir)
    assert result.returncode == 0, result.stderr
    folder = out / f"epoch-{best:04d}" / "trainable"
    assert (folder / "resnet_e18-symbol.json").is_file()
    assert (folder / f"resnet_e18-{best:04d}.params").is_file()
    exported = json.loads((folder / f"resnet_e18-{best:04d}-architecture.json").read_text())
    derived = json.loads((workdir / "trainings" / RUN / "logs" / "architectures" /
                          f"epoch_{best}.json").read_text())
    assert exported == derived
    assert sorted(p.name for p in out.iterdir()) == [f"epoch-{best:04d}"]


def test_runs_table_and_config_show(workdir: Path) -> None:
    result = run_cli(["runs"], workdir)
    assert result.returncode == 0
    row = next(line for line in result.stdout.splitlines() if line.startswith(RUN))
    for text in ("enas", "resnet_e18", "mock", "finished", "2/2"):
        assert text in row
    shown = run_cli(["config", "show", "-c", str(workdir / "config.yml"), "train.epochs=7"],
                    workdir)
    assert shown.returncode == 0 and "epochs: 7" in shown.stdout


def _assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


@pytest.mark.parametrize("overrides, needles", [
    (["trian.epochs=1"], ["unknown config key 'trian'", "Did you mean 'train'"]),
    (["train.epocs=1"], ["unknown config key 'train.epocs'", "Did you mean 'train.epochs'"]),
    (["train.epochs=many"], ["wrong type for 'train.epochs'"]),
    (["train.optimizer=adamw"], ["'train.optimizer'", "allowed"]),
    (["data.name=cifar10", "data.dir=no_such_folder"], ["data_batch_1.bin", "data.dir"]),
    (["data.name=imagenet"], ["imagenet"]),
    (["train.contexts=[tpu:0]"], ["train.contexts"]),
])
def test_bad_config_fails_before_any_work(tmp_path: Path, overrides, needles) -> None:
    config = write_config(tmp_path, TINY_ENAS)
    result = run_cli(["search", "-c", str(config), "run.name=x", *overrides], tmp_path)
    _assert_user_error(result, *needles)
    assert not (tmp_path / "trainings" / "x").exists()


def test_unknown_key_in_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, {**TINY_ENAS, "controler": {"lr": 0.1}})
    _assert_user_error(run_cli(["search", "-c", str(config)], tmp_path),
                       "unknown config key 'controler'", "Did you mean 'controller'")


def test_missing_config_file(tmp_path: Path) -> None:
    _assert_user_error(run_cli(["search", "-c", "nope.yml"], tmp_path), "nope.yml", "not found")


def test_unsafe_yaml_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "evil.yml"
    config.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    _assert_user_error(run_cli(["search", "-c", str(config)], tmp_path), "not valid YAML")


def test_existing_run_name_is_refused_and_untouched(workdir: Path) -> None:
    before = tree_digest(workdir / "trainings" / RUN)
    result = run_cli(["search", "-c", str(workdir / "config.yml"), f"run.name={RUN}"], workdir)
    _assert_user_error(result, "already exists", "run.name=", "lightnas resume")
    assert tree_digest(workdir / "trainings" / RUN) == before


def test_resume_of_unknown_run(tmp_path: Path) -> None:
    _assert_user_error(run_cli(["resume", "ghost"], tmp_path), "no run 'ghost'", "lightnas runs")


def _copy_run(workdir: Path, name: str) -> Path:
    target = workdir / "trainings" / name
    shutil.copytree(workdir / "trainings" / RUN, target)
    return target


def test_resume_falls_back_past_a_truncated_checkpoint(workdir: Path) -> None:
    run = _copy_run(workdir, "truncated")
    original = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    arrays = run / "checkpoints" / "epoch-0002" / "arrays.params"
    arrays.write_bytes(arrays.read_bytes()[: arrays.stat().st_size // 2])
    result = run_cli(["resume", "truncated"], workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "epoch-0002 is incomplete or corrupt" in result.stderr
    assert "falling back" in result.stderr
    # The corrupt checkpoint is kept aside, not deleted; epoch 2 was re-run identically.
    assert (run / "checkpoints" / "corrupt-epoch-0002" / "arrays.params").is_file()
    assert (run / "checkpoints" / "latest").read_text().strip() == "epoch-0002"
    redone = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in redone] == [1, 2]
    for key in ("train_loss", "val_accuracy", "reward", "cost"):
        assert redone[1][key] == original[1][key], key


def test_resume_with_no_complete_checkpoint(workdir: Path) -> None:
    run = _copy_run(workdir, "allbad")
    for state in (run / "checkpoints").glob("epoch-*/state.json"):
        state.write_text("{broken")
    _assert_user_error(run_cli(["resume", "allbad"], workdir), "no complete checkpoint",
                       "lightnas search")


def test_export_and_resume_without_checkpoint(workdir: Path) -> None:
    run = _copy_run(workdir, "nockpt")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    before = tree_digest(run)
    _assert_user_error(run_cli(["export", "nockpt"], workdir), "no checkpoint")
    _assert_user_error(run_cli(["resume", "nockpt"], workdir), "no checkpoint")
    assert tree_digest(run) == before


def test_export_of_pruned_epoch(workdir: Path) -> None:
    _assert_user_error(run_cli(["export", RUN, "--epoch", "99"], workdir),
                       "no checkpoint for epoch 99")
    _assert_user_error(run_cli(["export", RUN, "--epoch", "soon"], workdir), "--epoch")
