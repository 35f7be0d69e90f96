"""Architecture pictures/tables (viz) and run logging (event files, heatmap, console lines)."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from lightnas_cli import logging as run_logging
from lightnas_cli import viz
from lightnas_cli.logging import RunLogger, format_metric
from lightnas_cli.search.base import Architecture, Decision

CELL = 16


def make_arch() -> Architecture:
    return Architecture(
        method="fbnet", base_model="meliusnet22", model_options={"width": 1.0},
        input_shape=[3, 32, 32], classes=10,
        decisions=[
            Decision("block0", "precision", "binary", ["binary", "float"], kind="binary",
                     cost={"params": 1200, "memory_bytes": 150}, probabilities=[0.8, 0.2]),
            Decision("block1", "precision", "float", ["binary", "float"], kind="float",
                     cost={"params": 9600, "memory_bytes": 38400}, probabilities=[0.3, 0.7]),
            Decision("block2", "skip", True, [True, False], kind="skip", cost={"params": 0}),
        ],
        costs={"params": 10800, "memory_bytes": 38550})


def test_write_architecture_files_and_colours(tmp_path: Path) -> None:
    arch = make_arch()
    paths = viz.write_architecture(arch, tmp_path / "architectures" / "epoch_3")
    for kind in ("json", "txt", "dot"):
        assert paths[kind] == tmp_path / "architectures" / f"epoch_3.{kind}"
        assert paths[kind].stat().st_size > 0

    restored = Architecture.from_json(paths["json"].read_text(), source=str(paths["json"]))
    assert restored == arch

    table = paths["txt"].read_text()
    for expected in ("block0", "precision=binary", "binary", "params=1.2k", "block2",
                     "skip=True", "total costs", "binary:0.800", "float:0.700"):
        assert expected in table

    dot = paths["dot"].read_text()
    assert viz.KIND_STYLES["binary"]["fillcolor"] in dot
    assert viz.KIND_STYLES["float"]["fillcolor"] in dot
    assert "dashed" in dot  # the skipped block
    unit_lines = {line.split(" ")[0]: line for line in dot.splitlines()
                  if line.startswith("unit") and "[label=" in line}
    assert viz.KIND_STYLES["binary"]["fillcolor"] in unit_lines["unit0"]
    assert viz.KIND_STYLES["float"]["fillcolor"] in unit_lines["unit1"]
    assert "head (10 classes)" in dot and "cluster_legend" in dot and "fbnet on meliusnet22" in dot
    # No temporary files left behind by the atomic writes.
    assert sorted(p.name for p in paths["dot"].parent.iterdir() if p.name.startswith(".")) == []


@pytest.mark.skipif(not viz.graphviz_available(), reason="graphviz's dot is not installed")
def test_write_architecture_png(tmp_path: Path) -> None:
    paths = viz.write_architecture(make_arch(), tmp_path / "arch")
    assert paths["png_reason"] is None
    assert paths["png"] == tmp_path / "arch.png"
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grouped_unit_is_one_node(tmp_path: Path) -> None:
    arch = make_arch()
    arch.decisions.insert(1, Decision("block0", "kernel", 5, [3, 5], kind="binary",
                                      cost={"params": 300}))
    dot = viz.architecture_graph(arch).to_string()
    assert dot.count("block0") == 1
    assert "kernel=5" in dot and "params=1.5k" in dot  # 1200 + 300 summed for the unit


def test_without_graphviz_no_png_and_reason(tmp_path: Path, monkeypatch) -> None:
    stale = tmp_path / "arch.png"
    stale.write_bytes(b"old image")
    monkeypatch.setattr(viz, "graphviz_available", lambda: False)
    paths = viz.write_architecture(make_arch(), tmp_path / "arch")
    assert paths["png"] is None
    assert "dot" in paths["png_reason"] and "apt-get install graphviz" in paths["png_reason"]
    assert not stale.exists()
    assert paths["dot"].exists() and paths["txt"].exists() and paths["json"].exists()


def test_graphviz_detection_follows_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert viz.graphviz_available() is False
    paths = viz.write_architecture(make_arch(), tmp_path / "arch")
    assert paths["png"] is None and paths["png_reason"]


def test_event_file_holds_scalar_tags_and_heatmap(tmp_path: Path) -> None:
    console = Console(file=io.StringIO())
    with RunLogger(tmp_path / "logs", console=console) as logger:
        logger.scalars({"accuracy": 0.81, "loss": 0.52, "arch": "skip", "flag": True}, step=1,
                       prefix="train")
        probabilities = [[0.1, 0.2, 0.7], [0.05, 0.9, 0.05]]
        image = logger.heatmap("arch/probabilities", probabilities, step=1,
                               row_labels=["block0", "block1"],
                               option_labels=[["a", "b", "c"], ["a", "b", "c"]])
        logger.text("arch/derived", "block0: precision=binary", step=1)
        logger.flush()
    events = list((tmp_path / "logs").glob("events.out.tfevents.*"))
    assert len(events) == 1
    data = events[0].read_bytes()
    assert b"train/accuracy" in data and b"train/loss" in data
    assert b"train/arch" not in data and b"train/flag" not in data
    assert b"arch/probabilities" in data

    assert image.shape == (3, 2 * CELL, 3 * CELL) and image.dtype == np.uint8
    centres = image[:, CELL // 2::CELL, CELL // 2::CELL].astype(int).sum(axis=0)
    assert np.unravel_index(centres.argmax(), centres.shape) == (1, 1)
    assert np.unravel_index(centres.argmin(), centres.shape) in {(1, 0), (1, 2)}


def test_cost_names_with_options_become_legal_tags_without_warnings(tmp_path: Path,
                                                                    caplog) -> None:
    with RunLogger(tmp_path / "logs", console=Console(file=io.StringIO())) as logger:
        logger.scalars({"systolic:s1=8,s2=8": 512.0}, step=1, prefix="cost")
        logger.flush()
    data = next((tmp_path / "logs").glob("events.out.tfevents.*")).read_bytes()
    assert b"cost/systolic_s1_8_s2_8" in data
    assert "illegal" not in caplog.text


def test_heatmap_of_decisions_with_different_option_counts(tmp_path: Path) -> None:
    """Rows of 2, 4 and 1 options: the image pads short rows (black), the text names each
    row's own options."""
    from lightnas_cli.logging import _matrix_markdown
    rows = [[0.25, 0.75], [0.1, 0.2, 0.3, 0.4], [1.0]]
    labels = [["1", "32"], ["k3", "k5", "k7", "skip"], ["only"]]
    with RunLogger(tmp_path / "logs", console=Console(file=io.StringIO())) as logger:
        image = logger.heatmap("search/probabilities", rows, step=1,
                               row_labels=["a:bits", "b:op", "c:x"], option_labels=labels)
    assert image.shape == (3, 3 * CELL, 4 * CELL)
    centres = image[:, CELL // 2::CELL, CELL // 2::CELL].astype(int)
    assert (centres[:, 0, 2:] == 0).all() and (centres[:, 2, 1:] == 0).all()
    assert centres[:, 1, 3].sum() > 0
    text = _matrix_markdown(rows, ["a:bits", "b:op", "c:x"], labels)
    assert "| a:bits | 1: 0.250 | 32: 0.750 |  |  |" in text
    assert "skip: 0.400" in text and "only: 1.000" in text


def test_without_mxboard_warns_once_and_keeps_going(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mxboard", None)  # makes `import mxboard` fail
    monkeypatch.setattr(run_logging, "_MXBOARD_WARNED", False)
    console = Console(file=io.StringIO())
    first = RunLogger(tmp_path / "a", console=console)
    second = RunLogger(tmp_path / "b", console=console)
    first.scalars({"loss": 1.0}, step=0)
    assert first.heatmap("p", [[0.5, 0.5]], step=0).shape == (3, CELL, 2 * CELL)
    first.close()
    second.close()
    assert console.file.getvalue().count("mxboard") >= 1
    assert console.file.getvalue().count("warning:") == 1
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_plain_progress_prints_one_line_per_epoch(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), width=60)  # not a terminal -> plain mode
    logger = RunLogger(tmp_path, tensorboard=False, console=console)
    assert logger.plain
    for epoch in (1, 2):
        with logger.epoch_progress(epoch, 2, total_batches=4, batch_size=8) as progress:
            for _ in range(4):
                progress.update(metrics={"loss": 0.5})
        assert progress.samples == 32 and console.file.getvalue().count("\n") == epoch - 1
        logger.epoch_summary(epoch, 2, {"train_loss": 0.523, "train_acc": 0.812,
                                        "val_acc": 0.79, "reward": 0.71, "cost": 123000.0,
                                        "params_binary": 4567890}, seconds=2.0)
    lines = console.file.getvalue().splitlines()
    assert len(lines) == 2  # longer than the console width, still one line each
    assert lines[1] == ("epoch 2/2  train_loss=0.523 train_acc=0.812 val_acc=0.790 "
                        "reward=0.710 cost=1.23e5 params_binary=4.57e6  2.0s  (16 img/s)")


def test_tty_progress_bar_runs(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    logger = RunLogger(tmp_path, tensorboard=False, console=console)
    assert not logger.plain
    with logger.epoch_progress(1, 1, total_batches=3, batch_size=4) as progress:
        for _ in range(3):
            progress.update(samples=4, metrics={"loss": 0.25})
    line = logger.epoch_summary(1, 1, {"loss": 0.25}, seconds=1.0)
    assert line == "epoch 1/1  loss=0.250  1.0s  (12 img/s)"
    assert "img/s" in console.file.getvalue()


def test_format_metric() -> None:
    assert format_metric(0.5234) == "0.523"
    assert format_metric(123456.0) == "1.23e5"
    assert format_metric(0.000123) == "1.23e-4"
    assert format_metric(42) == "42"
    assert format_metric(0) == "0"
