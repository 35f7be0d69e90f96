"""Shared helpers: run the real CLI in a subprocess inside a temporary working folder."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, TINY_ENAS)


# --- Two pytest processes sharing the suite (shell_scripts/test.sh) ---------------------------
# With LIGHTNAS_TEST_CLAIMS=DIR, a process runs a test file only after claiming it (creating
# DIR/<file>.claim exclusively); files another process claimed first are left to it. With
# LIGHTNAS_TEST_REVERSE=1 it walks the files from the last one, so two processes start at
# opposite ends and meet wherever the durations put them: balanced without a duration table,
# each file (and its module fixtures) in one process, each test run exactly once.

_CLAIMS = os.environ.get("LIGHTNAS_TEST_CLAIMS")
_owned: dict[str, bool] = {}


def pytest_collection_modifyitems(session, config, items) -> None:
    if not _CLAIMS or os.environ.get("LIGHTNAS_TEST_REVERSE") != "1":
        return
    order: list[str] = []
    by_file: dict[str, list] = {}
    for item in items:
        if item.nodeid.split("::")[0] not in by_file:
            order.append(item.nodeid.split("::")[0])
        by_file.setdefault(item.nodeid.split("::")[0], []).append(item)
    items[:] = [item for name in reversed(order) for item in by_file[name]]


def _claim(test_file: str) -> bool:
    if test_file not in _owned:
        marker = Path(_CLAIMS) / (test_file.replace("/", "__") + ".claim")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            _owned[test_file] = True
        except FileExistsError:
            _owned[test_file] = False
    return _owned[test_file]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Run the item only if this process owns its file; True tells pytest it was handled."""
    if _CLAIMS and not _claim(item.nodeid.split("::")[0]):
        return True
    return None
