"""`lightnas launch` (issue 13): roles on loopback, identical workers, one run folder, teardown
when a worker dies, resume under launch, every method, ssh command lines, bad input.

The launched runs are tiny (1-3 epochs of 8x8 mock images); each costs a few seconds, mostly
the start of the processes. Every process a test starts is killed by pid in `finally`.
"""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import TINY_ENAS, cli_env, write_config
from lightnas_cli.cli import app
from lightnas_cli.launch.launcher import (REMOTE_SCRIPT, check_command, plan_roles, read_hosts,
                                          ssh_command)

STARTED = re.compile(r"\[launch\] started (scheduler|server \d+|worker \d+) on \S+ \(pid (\d+)\)")
DIGEST = re.compile(r"worker rank (\d) state sha256 ([0-9a-f]{64})")


def launch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightnas_cli", "launch", *args]


def started_pids(output: str) -> dict[str, int]:
    return {label: int(pid) for label, pid in STARTED.findall(output)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped by a dead parent's init) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_launch(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """A whole launch; whatever it started is killed afterwards, whatever happened."""
    process = subprocess.Popen(launch_cmd(*args), cwd=cwd, env=cli_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    out = ""
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all([process.pid])
        out, _ = process.communicate()
    finally:
        kill_all([process.pid, *started_pids(out).values()])
    return subprocess.CompletedProcess(process.args, process.returncode, out, "")


def final_digests(output: str) -> dict[int, str]:
    return {int(rank): digest for rank, digest in DIGEST.findall(output)}


def checkpoint_digest(run: Path) -> str:
    """The digest (world.state_digest) of a run's latest checkpoint: what rank 0 saved."""
    from lightnas_cli import checkpoint
    from lightnas_cli.launch.world import state_digest

    ckpt = checkpoint.load(run / "checkpoints")
    return state_digest(ckpt.arrays, ckpt.state["method"])


# --- the launcher's plan, ssh command and the remote watchdog (no processes of MXNet) -------
def test_plan_local_roles_and_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # shared by the two workers of this host
    roles = plan_roles(2, 1, ["--", "search", "-c", "x.yml"], port=9999)
    assert [r.env["OMP_NUM_THREADS"] for r in roles] == ["1", "1", "2", "2"]
    assert [r.label for r in roles] == ["scheduler", "server 0", "worker 0", "worker 1"]
    for role in roles:
        assert role.env["DMLC_ROLE"] == role.kind
        assert role.env["DMLC_PS_ROOT_URI"] == "127.0.0.1"
        assert role.env["DMLC_PS_ROOT_PORT"] == "9999"
        assert role.env["DMLC_NUM_WORKER"] == "2" and role.env["DMLC_NUM_SERVER"] == "1"
        assert role.env["DMLC_INTERFACE"] == "lo" and role.env["DMLC_NODE_HOST"] == "127.0.0.1"
    assert roles[2].command == [sys.executable, "-m", "lightnas_cli", "search", "-c", "x.yml"]
    assert roles[0].command[-1] == "import mxnet"


def test_hosts_file_and_ssh_command(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("# cluster\nnode-a\n\nalice@node-b  # second\n", encoding="utf-8")
    assert read_hosts(hosts) == ["node-a", "alice@node-b"]
    roles = plan_roles(3, 2, ["train", "my run"], read_hosts(hosts))
    assert [(r.label, r.host) for r in roles] == [
        ("scheduler", "node-a"), ("server 0", "node-a"), ("server 1", "alice@node-b"),
        ("worker 0", "node-a"), ("worker 1", "alice@node-b"), ("worker 2", "node-a")]
    worker = roles[4]
    assert worker.env["DMLC_PS_ROOT_URI"] == "node-a"
    assert worker.env["DMLC_PS_ROOT_PORT"] == "9091"
    assert worker.env["DMLC_NODE_HOST"] == "node-b" and "DMLC_INTERFACE" not in worker.env
    argv = ssh_command(worker, "/data/my project", {"PYTHONPATH": "/src", "HOME": "/x"})
    assert argv[:4] == ["ssh", "-o", "BatchMode=yes", "alice@node-b"]
    shell, flag, script = shlex.split(argv[4])  # what the remote login shell runs
    assert (shell, flag) == ("sh", "-c")
    assert script.startswith("cd '/data/my project' || exit 2\n")
    assert "PYTHONPATH=/src" in script and "HOME" not in script
    assert "DMLC_ROLE=worker" in script and "DMLC_NUM_WORKER=3" in script
    assert f"{sys.executable} -m lightnas_cli train 'my run' </dev/null &" in script


def test_remote_script_stops_its_role_when_the_connection_closes(tmp_path):
    """The script ssh runs: its role ends with it, and is stopped when stdin (the ssh
    channel) closes - as when the launcher stops ssh."""
    script = REMOTE_SCRIPT.format(cwd=str(tmp_path), env="MARK=1",
                                  command="sh -c 'echo $MARK > started; exec sleep 60'")
    shell = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "started").read_text().strip() == "1"
        shell.stdin.close()
        assert shell.wait(timeout=10) != 0  # the role was stopped, not finished
    finally:
        kill_all([shell.pid])
    quick = subprocess.Popen(["sh", "-c", REMOTE_SCRIPT.format(cwd=str(tmp_path), env="A=1",
                                                               command="sh -c 'exit 3'")],
                             stdin=subprocess.PIPE, start_new_session=True)
    try:  # the connection stays open: the role's own exit code comes back
        assert quick.wait(timeout=10) == 3
    finally:
        quick.stdin.close()
        kill_all([quick.pid])


def sleeper_roles(worker_command: list[str]) -> list:
    """A plan whose scheduler, server and worker 0 sleep, and worker 1 runs `worker_command`
    (the launcher's watching and teardown, without MXNet)."""
    roles = plan_roles(2, 1, ["search"], port=9)
    for role in roles:
        role.command = ["sleep", "60"]
    roles[-1].command = worker_command
    return roles


def test_a_failing_role_stops_every_role_and_gives_its_code():
    from lightnas_cli.launch.launcher import Launch

    roles = sleeper_roles(["sh", "-c", "echo going; exit 3"])
    out = io.StringIO()
    started = time.monotonic()
    try:
        assert Launch(roles, out).run(poll_s=0.05) == 3
    finally:
        kill_all([role.process.pid for role in roles if role.process is not None])
    assert time.monotonic() - started < 10  # sleep ignores nothing: SIGTERM ends it
    assert "[worker 1] going" in out.getvalue()
    assert "worker 1 failed (exit code 3)" in out.getvalue()
    assert all(role.process.returncode is not None for role in roles)
    assert not any(alive(role.process.pid) for role in roles)


def test_ctrl_c_stops_every_role(tmp_path):
    """SIGINT to the launcher: every role stopped, exit 130."""
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_launch import sleeper_roles\n"
        "from lightnas_cli.launch.launcher import Launch\n"
        "sys.exit(Launch(sleeper_roles(['sleep', '60'])).run())\n")
    process = subprocess.Popen([sys.executable, "-c", script], env=cli_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    lines: list[str] = []
    try:
        for line in process.stdout:
            lines.append(line)
            if len(started_pids("".join(lines))) == 4:
                break
        process.send_signal(signal.SIGINT)
        lines.extend(process.stdout)
        code = process.wait(timeout=20)
    finally:
        process.kill()
        kill_all([process.pid, *started_pids("".join(lines)).values()])
        process.stdout.close()
    assert code == 130, "".join(lines)
    pids = started_pids("".join(lines))
    assert len(pids) == 4 and not any(alive(pid) for pid in pids.values())


@pytest.mark.parametrize("args, message", [
    (["--workers", "0", "--", "search", "-c", "x.yml"], "--workers must be at least 1"),
    (["--workers", "2", "--servers", "0", "--", "search", "-c", "x.yml"], "--servers"),
    (["--workers", "2", "--", "export", "run"], "not 'export'"),
    (["--workers", "2", "--hosts", "missing-hosts", "--", "search", "-c", "x.yml"],
     "host file 'missing-hosts' does not exist"),
    (["--workers", "2", "--port", "70000", "--", "search", "-c", "x.yml"], "--port"),
])
def test_bad_input_is_refused_with_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["launch", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_command_after_the_separator():
    assert check_command(["--", "resume", "X"]) == ["resume", "X"]
    with pytest.raises(Exception, match="give the command"):
        check_command(["--"])


# --- launched runs ---------------------------------------------------------------------------
def tiny(tmp_path: Path, epochs: int = 2, **sections) -> Path:
    config = json.loads(json.dumps(TINY_ENAS))
    config["train"]["epochs"] = epochs
    for key, value in sections.items():
        config[key] = value
    return write_config(tmp_path, config)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """An uninterrupted 2-epoch launch of two workers (shared: the resume test compares)."""
    folder = tmp_path_factory.mktemp("launch")
    config = tiny(folder, epochs=2)
    result = run_launch(["--workers", "2", "--", "search", "-c", str(config), "run.name=X"],
                        folder)
    return folder, config, result


def test_two_workers_identical_state_and_one_run_folder(whole_run):
    folder, _, result = whole_run
    assert result.returncode == 0, result.stdout[-3000:]
    assert "[worker 0]" in result.stdout and "[worker 1]" in result.stdout
    digests = final_digests(result.stdout)
    assert sorted(digests) == [0, 1]
    assert digests[0] == digests[1] == checkpoint_digest(folder / "trainings" / "X")
    runs = sorted(p.name for p in (folder / "trainings").iterdir() if p.is_dir())
    assert runs == ["X"]
    lines = (folder / "trainings" / "X" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    status = json.loads((folder / "trainings" / "X" / "run.json").read_text())
    assert status["status"] == "finished"
    assert result.stdout.count("run folder:") == 1  # rank 0 alone reports (and writes) it
    for pid in started_pids(result.stdout).values():
        assert not alive(pid)


def test_dead_worker_stops_the_launch_and_resume_continues(whole_run):
    """A worker killed mid-run: every role stopped within 30 s, a non-zero exit, no process
    left; `launch -- resume` then finishes the run, with identical workers, exactly as the
    uninterrupted launch did."""
    tmp_path, config, whole = whole_run
    process = subprocess.Popen(
        launch_cmd("--workers", "2", "--", "search", "-c", str(config), "run.name=K"),
        cwd=tmp_path, env=cli_env(), text=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    try:
        for line in process.stdout:
            lines.append(line)
            if re.search(r"epoch 1/2", line):
                break
        pids = started_pids("".join(lines))
        assert set(pids) == {"scheduler", "server 0", "worker 0", "worker 1"}, "".join(lines)
        killed = time.monotonic()
        os.kill(pids["worker 1"], signal.SIGKILL)
        lines.extend(process.stdout)
        code = process.wait(timeout=30)
        took = time.monotonic() - killed
    finally:
        process.kill()
        kill_all([process.pid, *started_pids("".join(lines)).values()])
        process.stdout.close()
    output = "".join(lines)
    assert code != 0, output[-2000:]
    assert took < 30
    assert "worker 1 failed" in output
    for label, pid in started_pids(output).items():
        assert not alive(pid), f"{label} (pid {pid}) outlived the launch"
    run = tmp_path / "trainings" / "K"
    assert (run / "checkpoints" / "latest").exists()

    resumed = run_launch(["--workers", "2", "--", "resume", "K"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    digests = final_digests(resumed.stdout)
    assert digests[0] == digests[1] == checkpoint_digest(run)
    assert final_digests(whole.stdout)[0] == digests[0]  # exact resume under launch


# --- every method under launch: architecture parameters stay identical -----------------------
WORKER_SCRIPT = '''
import json, sys
from lightnas_cli.launch.launcher import run_entry

def main():
    from lightnas_cli import runner
    from lightnas_cli.search.train.source import source_status, train_config
    for kind, args in json.load(open(sys.argv[1])):
        if kind == "search":
            runner.start_search(args[0], args[1:], autosave=False)
        else:
            cfg = train_config(args[0], None, args[1:])
            runner.start_run(cfg, status=source_status(cfg))

run_entry(main)
'''


def test_every_method_keeps_identical_workers(tmp_path, monkeypatch):
    """PIT masks, FBNet θ, DMasking α and a `train` run, each searched by two launched
    workers (one launch, the runs in turn): after every run both workers hold the state
    rank 0 saved in its last checkpoint (weights, architecture parameters, optimizer states)."""
    from test_dmasking import TINY as TINY_DMASKING
    from test_fbnet_method import OVERRIDES as FBNET, synthetic_table
    from test_pit_method import TINY_PIT

    from lightnas_cli import config as config_mod
    from lightnas_cli.launch.launcher import Launch

    pit = write_config(tmp_path, {**TINY_PIT, "train": {**TINY_PIT["train"], "epochs": 2},
                                  "pit": {**TINY_PIT["pit"], "finetune_epochs": 0}}, "pit.yml")
    dmasking = write_config(tmp_path, TINY_DMASKING, "dmasking.yml")
    table = tmp_path / "fbnet_table.json"
    # FBNet's supernet is the slow one (22 layers x 9 blocks): one epoch that searches θ.
    fbnet = [*FBNET, f"fbnet.latency_table={table}", "train.epochs=1", "fbnet.warmup_epochs=0"]
    synthetic_table(config_mod.load_config(None, fbnet), table)
    jobs = [("search", [str(pit), "run.name=pit"]),
            ("search", [str(dmasking), "run.name=dmasking"]),
            ("search", [None, *fbnet, "run.name=fbnet"]),
            ("train", ["resnet_e18", "model.options.base_channels=4", "data.name=mock",
                       "data.mock.shape=[1,8,8]", "data.mock.num_classes=4",
                       "data.mock.num_train=64", "data.mock.num_test=32", "train.epochs=1",
                       "train.batch_size=16", "run.name=train"])]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "worker.py").write_text(WORKER_SCRIPT)
    for name, value in cli_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    roles = plan_roles(2, 1, ["search"])
    for role in roles:
        if role.kind == "worker":
            role.command = [sys.executable, str(tmp_path / "worker.py"),
                            str(tmp_path / "jobs.json")]
    out = io.StringIO()
    launch = Launch(roles, out)
    try:
        code = launch.run()
    finally:
        kill_all([role.process.pid for role in roles if role.process is not None])
    output = out.getvalue()
    assert code == 0, output[-3000:]
    by_rank: dict[int, list[str]] = {0: [], 1: []}
    for rank, digest in DIGEST.findall(output):
        by_rank[int(rank)].append(digest)
    expected = [checkpoint_digest(tmp_path / "trainings" / name)
                for name in ("pit", "dmasking", "fbnet", "train")]
    assert by_rank[0] == by_rank[1] == expected
    for name, epochs in (("pit", 2), ("dmasking", 2), ("fbnet", 1), ("train", 1)):
        history = [json.loads(line) for line in
                   (tmp_path / "trainings" / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in history] == list(range(1, epochs + 1))
    assert [json.loads(line)["phase"] for line in (tmp_path / "trainings" / "pit" /
                                                    "metrics.jsonl").read_text().splitlines()] \
        == ["warmup", "search"]
