"""`lightnas sweep`, `lightnas resume <sweep>` and `lightnas report` (issue 12): trials through
autogluon.core's scheduler, one run folder each, trials.csv, a failing trial recorded alone, a
sweep killed during trial 3 resumed without running any trial twice from scratch, Pareto
fronts as PNG and a self-contained HTML page checked in headless Chromium."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_env, run_cli, write_config
from test_cli import tree_digest

SWEEP = {
    "method": "pit", "seed": 2,
    "data": {"name": "mock", "mock": {"num_classes": 4, "shape": [1, 24], "num_train": 96,
                                      "num_test": 32, "noise": 0.5}},
    "model": {"name": "tcn", "options": {"channels": [6, 8], "kernel_size": 5}},
    "train": {"epochs": 4, "batch_size": 16, "lr": 0.01},
    "pit": {"strength": 1.0, "warmup_epochs": 1, "finetune_epochs": 1, "arch_lr": 0.3},
    "sweep": {"searcher": "grid", "num_trials": 4, "objective": "val_accuracy",
              "costs": ["params", "macs"],
              "space": {"pit.strength": {"type": "categorical",
                                         "values": [0.0, 0.5, 2.0, 8.0]}}},
}


def trials(folder: Path) -> list[dict]:
    with open(folder / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    result = run_cli(["sweep", "-c", str(write_config(folder, SWEEP)), "run.name=sw"], folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def test_sweep_runs_every_trial_as_a_run_folder(swept: Path) -> None:
    sweep = swept / "trainings" / "sw"
    rows = trials(sweep)
    assert [r["trial"] for r in rows] == ["1", "2", "3", "4"]
    assert all(r["status"] == "finished" for r in rows)
    assert [json.loads(r["overrides"]) for r in rows] == [
        ["pit.strength=0.0"], ["pit.strength=0.5"], ["pit.strength=2.0"], ["pit.strength=8.0"]]
    for row in rows:
        run = sweep / f"trial_{row['trial']}"
        status = json.loads((run / "run.json").read_text())
        assert status["status"] == "finished" and status["sweep"] == "sw"
        assert status["overrides"] == json.loads(row["overrides"])
        arch = json.loads((run / status["final_architecture"]).read_text())
        # The trial's costs are its final derived network's, from the cost models.
        assert float(row["cost_params"]) == arch["costs"]["params"]
        assert float(row["cost_macs"]) == arch["costs"]["macs"]
        assert float(row["objective"]) == float(row["val_accuracy"])
    params = [float(r["cost_params"]) for r in rows]
    assert params[0] > params[-1]  # λ = 0 keeps the most, λ = 8 the least
    assert not (swept / "configs" / "autosaved").exists()  # trials record overrides themselves


def test_report_of_the_sweep_and_the_browser_check(swept: Path) -> None:
    result = run_cli(["report", "sw"], swept)
    assert result.returncode == 0, result.stdout + result.stderr
    report = swept / "trainings" / "sw" / "report"
    for name in ("front_params.png", "front_macs.png", "report.html"):
        assert (report / name).stat().st_size > 1000, name
    page = (report / "report.html").read_text()
    assert "src=\"http" not in page and page.count("data:image/png;base64,") == 2
    from lightnas_cli.browser_check import check_page, find_browser
    if find_browser() is None:
        pytest.skip("Chromium is not installed (shell_scripts/setup.sh installs it as root)")
    checked = check_page(report / "report.html")
    assert checked["ok"], checked
    assert checked["images"] == "2/2" and checked["errors"] == 0


def test_report_of_one_trial_run(swept: Path) -> None:
    result = run_cli(["report", "trainings/sw/trial_2", "--out", "r2"], swept)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("learning_curves.png", "costs.png", "decisions.png", "report.html"):
        assert (swept / "r2" / name).is_file(), name


def test_runs_lists_the_sweep_with_its_trials_and_front(swept: Path) -> None:
    from lightnas_cli.sweep import front_trials, load_sweep
    sweep_cfg, recorded = load_sweep(swept / "trainings" / "sw")
    front = front_trials(sweep_cfg, recorded)
    assert front and 4 in front  # the cheapest trial is always on the front
    row = next(line for line in run_cli(["runs"], swept).stdout.splitlines()
               if line.startswith("sw "))
    assert " sweep " in row and " pit " in row and "4/4 trials" in row and f"front {len(front)} pts" in row


def test_pareto_front() -> None:
    from lightnas_cli.report import pareto_front
    points = [(10, 0.9), (5, 0.8), (7, 0.7), (5, 0.85), (20, 0.9), (1, 0.1)]
    assert pareto_front(points) == [5, 3, 0]
    assert pareto_front([(1, 2.0), (2, 3.0)], maximize=False) == [0]
    assert pareto_front([(1, 2.0), (2, 1.0)], maximize=False) == [0, 1]


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    config = {**SWEEP, "sweep": {**SWEEP["sweep"], "num_trials": 2, "space": {
        "pit.warmup_epochs": {"type": "categorical", "values": [9, 1]}}}}
    result = run_cli(["sweep", "-c", str(write_config(tmp_path, config)), "run.name=bad"],
                     tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = trials(tmp_path / "trainings" / "bad")
    assert [r["status"] for r in rows] == ["failed", "finished"]
    assert "exceed train.epochs" in rows[0]["error"]
    assert not (tmp_path / "trainings" / "bad" / "trial_1").exists()


@pytest.mark.parametrize("sweep, message", [
    ({"space": {}}, "sweep.space is empty"),
    ({"space": {"pit.strenght": {"type": "real", "lower": 0.1, "upper": 1}}},
     "not a key of this method's config"),
    ({"space": {"pit.strength": {"type": "real", "lower": 1, "upper": 0.1}}}, "lower < upper"),
    ({"space": {"pit.strength": {"type": "uniform"}}}, "type: categorical | real | int"),
    ({"searcher": "bayes", "space": {"pit.strength": {"type": "categorical", "values": [1]}}},
     "'sweep.searcher' is 'bayes'"),
    ({"costs": ["latency"], "space": {"pit.strength": {"type": "categorical", "values": [1]}}},
     "'sweep.costs': unknown cost model 'latency'"),
    ({"costs": ["systolic:rows=3"], "space": {"pit.strength": {"type": "categorical",
                                                                "values": [1]}}},
     "cost model 'systolic' has no option(s) rows"),
])
def test_bad_sweep_sections_fail_before_anything_is_created(tmp_path: Path, sweep: dict,
                                                            message: str) -> None:
    config = write_config(tmp_path, {**SWEEP, "sweep": sweep})
    result = run_cli(["sweep", "-c", str(config), "run.name=x"], tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "trainings").exists()


def test_search_refuses_a_sweep_config(tmp_path: Path) -> None:
    result = run_cli(["search", "-c", str(write_config(tmp_path, SWEEP))], tmp_path)
    assert result.returncode == 2 and "lightnas sweep -c" in result.stderr


def test_sweep_killed_in_trial_three_resumes_without_rerunning(tmp_path: Path) -> None:
    config = write_config(tmp_path, {**SWEEP, "train": {**SWEEP["train"], "epochs": 5}})
    process = subprocess.Popen([sys.executable, "-m", "lightnas_cli.cli", "sweep", "-c",
                                str(config), "run.name=k"], cwd=tmp_path, env=cli_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "trainings" / "k" / "trial_3" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not latest.is_file():
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    sweep = tmp_path / "trainings" / "k"
    assert latest.is_file(), "the sweep ended before trial 3's first checkpoint"
    assert [r["trial"] for r in trials(sweep)] == ["1", "2"]
    before = {k: tree_digest(sweep / f"trial_{k}") for k in (1, 2)}
    result = run_cli(["resume", "k"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = trials(sweep)
    assert [r["trial"] for r in rows] == ["1", "2", "3", "4"]
    assert all(r["status"] == "finished" for r in rows)
    assert {k: tree_digest(sweep / f"trial_{k}") for k in (1, 2)} == before  # not re-run
    assert "resuming trial_3 from epoch" in result.stdout + result.stderr
    assert not list(sweep.glob("trial_*.incomplete-*"))
    status = json.loads((sweep / "sweep.json").read_text())
    assert status["status"] == "finished"
