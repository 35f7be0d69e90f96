"""Shared helpers: run the real CLI in a subprocess inside a temporary working folder."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# A pytest started in the background by a script (`cmd &`, as shell_scripts/test.sh does)
# ignores SIGINT, and so would every process it starts: the Ctrl-C tests need what a terminal
# gives, Python's KeyboardInterrupt handler here and the default disposition in children.
signal.signal(signal.SIGINT, signal.default_int_handler)

# A tiny, fast ENAS search on class-separable mock images (a few seconds per run).
TINY_ENAS = {
    "method": "enas",
    "seed": 3,
    "data": {"name": "mock", "mock": {"num_classes": 4, "shape": [1, 8, 8], "num_train": 160,
                                      "num_test": 32, "noise": 0.5}},
    "model": {"name": "resnet_e18", "base_channels": 4},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.01},
    "enas": {"cost": "binary_memory", "cost_weight": 0.2},
    "controller": {"batch_size": 3, "update_every": 2, "hidden_size": 16},
}


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    env["PYTHONWARNINGS"] = "ignore"
    env["COLUMNS"] = "200"
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`lightnas ARGS` in `cwd`; returns the finished process (stdout/stderr as text)."""
    return subprocess.run([sys.executable, "-m", "lightnas_cli.cli", *args], cwd=cwd,
                          env=cli_env(), capture_output=True, text=True, timeout=timeout)


def write_config(folder: Path, config: dict, name: str = "config.yml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def assert_same_metrics(got: list[dict], want: list[dict]) -> None:
    """Two runs' metrics.jsonl records agree epoch for epoch in every key but the wall time
    (`seconds`), which no two runs share."""
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for a, b in zip(got, want):
        assert {k: v for k, v in a.items() if k != "seconds"} == \
            {k: v for k, v in b.items() if k != "seconds"}, a["epoch"]


def assert_same_checkpoint(run_a: Path, run_b: Path, epoch: int) -> dict:
    """Two runs' checkpoints of `epoch` hold the same arrays, bit for bit; returns run_a's."""
    import mxnet as mx
    import numpy as np
    name = f"epoch-{epoch:04d}"
    a = mx.nd.load(str(run_a / "checkpoints" / name / "arrays.params"))
    b = mx.nd.load(str(run_b / "checkpoints" / name / "arrays.params"))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key].asnumpy(), b[key].asnumpy(), err_msg=key)
    return a


def kill_during_epoch_two(args: list[str], cwd: Path, run: Path,
                          before_kill: Callable[[int], Any] | None = None) -> Any:
    """Run `lightnas ARGS` (which writes `run`) and SIGKILL it after epoch 1's checkpoint,
    before epoch 2's; retried with shorter delays, from scratch, when the machine finished
    epoch 2 first. Returns what `before_kill(pid)` returned (called just before the kill)."""
    latest = run / "checkpoints" / "latest"
    for delay in (0.3, 0.05, 0.0):
        shutil.rmtree(run, ignore_errors=True)
        process = subprocess.Popen([sys.executable, "-m", "lightnas_cli.cli", *args], cwd=cwd,
                                   env=cli_env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while time.time() < deadline and process.poll() is None:
            if latest.is_file() and latest.read_text().strip() == "epoch-0001":
                break
            time.sleep(0.01)
        time.sleep(delay)
        seen = before_kill(process.pid) if before_kill else None
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if latest.is_file() and latest.read_text().strip() == "epoch-0001":
            return seen
    raise AssertionError("could not kill the run during epoch 2")


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, TINY_ENAS)
