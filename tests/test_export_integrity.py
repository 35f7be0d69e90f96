"""Export integrity: no symbol/params pair in an export folder can come from different epochs.

The reproduction of the bug: a 3-epoch mock ENAS search, then `lightnas export RUN --epoch 1`
into the default folder used to replace the symbol beside epoch 3's params. Now every export is
its own `epoch-NNNN/<kind>/` folder with a manifest, with `export.every_epoch` too."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_ENAS, run_cli, write_config

CONFIG = {**TINY_ENAS, "train": {**TINY_ENAS["train"], "epochs": 3},
          "export": {"every_epoch": True}, "checkpoint": {"keep": 5}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    result = run_cli(["search", "-c", str(write_config(folder, CONFIG)), "run.name=r"], folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def assert_self_consistent(exported: Path) -> list[int]:
    """Every folder holding a symbol holds exactly one symbol and one params file, of the
    epoch its folder, manifest and architecture name; returns the epochs found."""
    from lightnas_cli.export import read_manifest
    epochs = []
    for symbol in exported.rglob("*-symbol.json"):
        folder = symbol.parent
        params = list(folder.glob("*.params"))
        assert len(list(folder.glob("*-symbol.json"))) == 1 and len(params) == 1, folder
        epoch = int(re.fullmatch(r"epoch-(\d{4})", folder.parent.name).group(1))
        assert params[0].name.endswith(f"-{epoch:04d}.params"), params[0]
        manifest = read_manifest(folder)
        assert manifest["epoch"] == epoch and manifest["kind"] == folder.name
        assert (folder / manifest["files"]["architecture"]).is_file()
        epochs.append(epoch)
    return sorted(epochs)


def test_every_epoch_export_writes_one_folder_per_epoch(workdir: Path) -> None:
    run = workdir / "trainings" / "r"
    exported = run / "exported_models"
    assert sorted(p.name for p in exported.iterdir()) == ["epoch-0001", "epoch-0002",
                                                          "epoch-0003"]
    assert assert_self_consistent(exported) == [1, 1, 2, 2, 3, 3]
    for epoch in (1, 2, 3):
        # Each folder holds the architecture derived at the end of that very epoch.
        folder = exported / f"epoch-{epoch:04d}" / "inference_only"
        exported_arch = json.loads((folder / f"resnet_e18-{epoch:04d}-architecture.json")
                                   .read_text())
        logged = json.loads((run / "logs" / "architectures" / f"epoch_{epoch}.json")
                            .read_text())
        assert exported_arch == logged


def test_exporting_an_older_epoch_leaves_the_newer_export_intact(workdir: Path) -> None:
    """The issue's reproduction: export epoch 1 into the default folder after the run."""
    run = workdir / "trainings" / "r"
    shutil.rmtree(run / "exported_models" / "epoch-0001")
    newest = run / "exported_models" / "epoch-0003"
    before = {p.name: p.read_bytes() for p in (newest / "inference_only").iterdir()}
    result = run_cli(["export", "r", "--epoch", "1"], workdir)
    assert result.returncode == 0, result.stderr
    assert assert_self_consistent(run / "exported_models") == [1, 1, 2, 2, 3, 3]
    assert {p.name: p.read_bytes() for p in (newest / "inference_only").iterdir()} == before


def test_a_mixed_pair_is_refused_when_loading(workdir: Path, tmp_path: Path) -> None:
    """Copy epoch 1's params into epoch 3's folder under epoch 3's name: the manifest's
    checksum catches it instead of a silently wrong network."""
    from lightnas_cli.errors import CheckpointError
    from lightnas_cli.export import load_exported
    exported = workdir / "trainings" / "r" / "exported_models"
    mixed = tmp_path / "epoch-0003" / "trainable"
    shutil.copytree(exported / "epoch-0003" / "trainable", mixed)
    load_exported(mixed)  # intact: loads
    shutil.copy(exported / "epoch-0001" / "trainable" / "resnet_e18-0001.params",
                mixed / "resnet_e18-0003.params")
    with pytest.raises(CheckpointError, match="does not match"):
        load_exported(mixed)


def test_exported_folders_load_in_stock_mxnet(workdir: Path) -> None:
    import warnings

    import mxnet as mx
    from mxnet import gluon
    folder = workdir / "trainings" / "r" / "exported_models" / "epoch-0002" / "inference_only"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = gluon.SymbolBlock.imports(str(folder / "resnet_e18-symbol.json"), ["data"],
                                        str(folder / "resnet_e18-0002.params"))
    out = net(mx.nd.array(np.zeros((2, 1, 8, 8)))).asnumpy()
    assert out.shape == (2, 4) and np.isfinite(out).all()
