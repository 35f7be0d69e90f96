"""Resume equivalence: a 3-epoch search killed with SIGKILL during epoch 2 and resumed ends
exactly like the uninterrupted run (same derived architecture, same epoch-3 metrics), with one
metrics line per epoch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import (TINY_ENAS, assert_same_metrics, cli_env, kill_during_epoch_two, run_cli,
                      write_config)

CONFIG = {**TINY_ENAS,
          "train": {**TINY_ENAS["train"], "epochs": 3},
          "data": {**TINY_ENAS["data"],
                   "mock": {**TINY_ENAS["data"]["mock"], "num_train": 640}}}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_during_epoch_two_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG)
    full = run_cli(["search", "-c", str(config), "run.name=full"], tmp_path)
    assert full.returncode == 0, full.stderr

    run = tmp_path / "trainings" / "killed"
    kill_during_epoch_two(["search", "-c", str(config), "run.name=killed"], tmp_path, run)
    assert json.loads((run / "run.json").read_text())["status"] == "running"

    runs = run_cli(["runs"], tmp_path)
    assert "interrupted" in next(l for l in runs.stdout.splitlines() if l.startswith("killed"))

    resumed = run_cli(["resume", "killed"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming killed from epoch 1" in resumed.stdout + resumed.stderr

    reference = _metrics(tmp_path / "trainings" / "full")
    continued = _metrics(run)
    assert [r["epoch"] for r in continued] == [1, 2, 3]
    assert_same_metrics(continued, reference)
    arch_full = json.loads((tmp_path / "trainings/full/logs/architectures/epoch_3.json").read_text())
    arch_resumed = json.loads((run / "logs/architectures/epoch_3.json").read_text())
    assert arch_resumed == arch_full
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_sigterm_marks_the_run_interrupted_and_it_resumes(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG)
    process = subprocess.Popen([sys.executable, "-m", "lightnas_cli.cli", "search", "-c",
                                str(config), "run.name=stopped"], cwd=tmp_path, env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = tmp_path / "trainings" / "stopped" / "checkpoints" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None and not latest.is_file():
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "lightnas resume stopped" in stderr and "Traceback" not in stderr
    status = json.loads((tmp_path / "trainings" / "stopped" / "run.json").read_text())
    assert status["status"] == "interrupted"
    from lightnas_cli.runs import RunDir
    with RunDir(tmp_path / "trainings" / "stopped").lock():  # released, though the file stays
        pass
    resumed = run_cli(["resume", "stopped", "--epochs", "2"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in _metrics(tmp_path / "trainings" / "stopped")] == [1, 2]


def test_resume_from_an_earlier_epoch_moves_later_files_aside_and_reruns_them(
        tmp_path: Path) -> None:
    config = write_config(tmp_path, {**TINY_ENAS, "train": {**TINY_ENAS["train"], "epochs": 3}})
    assert run_cli(["search", "-c", str(config), "run.name=r"], tmp_path).returncode == 0
    run = tmp_path / "trainings" / "r"
    reference = _metrics(run)

    bad = run_cli(["resume", "r", "--from-epoch", "9"], tmp_path)
    assert bad.returncode == 2 and "available epochs: [1, 2, 3]" in bad.stderr, bad.stderr
    assert not (run / "superseded").exists()

    again = run_cli(["resume", "r", "--from-epoch", "1"], tmp_path)
    assert again.returncode == 0, again.stderr
    aside = run / "superseded" / "from-epoch-0001"
    assert sorted(p.name for p in (aside / "checkpoints").iterdir()) == ["epoch-0002",
                                                                          "epoch-0003"]
    assert (aside / "exported_models" / "epoch-0003" / "inference_only").is_dir()
    assert (aside / "logs" / "architectures" / "epoch_3.json").is_file()
    assert _metrics(aside) == reference
    # Same config, same checkpoint: epochs 2 and 3 come out as they did the first time.
    rerun = _metrics(run)
    assert [r["epoch"] for r in rerun] == [1, 2, 3]
    assert_same_metrics(rerun, reference)
    assert (run / "checkpoints" / "latest").read_text().strip() == "epoch-0003"
    assert (run / "exported_models" / "epoch-0003" / "inference_only").is_dir()
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
