"""Shared helpers: run the real CLI in a subprocess inside a temporary working folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

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


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, TINY_ENAS)
