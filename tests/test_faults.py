"""Fault injection (issue 9): every fault gives one clear `error:` line and exit 2 (no
traceback), a failed command changes nothing, and no file can take the tool down.

Each numbered item of the issue has a test here, named `test_item_NN_...`. "Nothing changed" is
checked with `tree_digest` (every file of the run folder with its SHA-256, hidden files such as
`.lock` included) before and after. The real CLI runs either as a subprocess (`run_cli`) or
in-process through Typer's test runner (`invoke`: the same app, error handling and exit codes,
without another MXNet import); faults that need a file system of their own (a full disk, a
read-only folder) use a tmpfs in a private mount namespace (`unshare -rm`) where the machine
allows it, and a monkeypatched write raising ENOSPC everywhere.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import REPO, TINY_ENAS, assert_same_metrics, cli_env, run_cli, write_config
from lightnas_cli import checkpoint, runner
from lightnas_cli.cli import app
from lightnas_cli.config import load_config
from lightnas_cli.errors import ConfigError, DivergedError
from lightnas_cli.runs import RunDir


def tree_digest(folder: Path, skip: tuple[str, ...] = ()) -> dict:
    """Every file under folder (hidden ones included) with its SHA-256; folders starting with
    a name in `skip` are left out. Equal digests mean nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and not str(p.relative_to(folder)).startswith(skip)}


def _outcome(result) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a subprocess or a Typer test-runner result."""
    if isinstance(result, subprocess.CompletedProcess):
        return result.returncode, result.stdout, result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bug: show its traceback
    return result.exit_code, result.stdout, result.stderr


def assert_user_error(result, *needles: str) -> str:
    """Exit 2, exactly one `error:` line naming every needle, no traceback; returns it."""
    code, out, err = _outcome(result)
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def assert_ok(result) -> tuple[str, str]:
    code, out, err = _outcome(result)
    assert code == 0, (code, out, err)
    return out, err


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A working folder with the tiny config and one finished 2-epoch run, `base`."""
    folder = tmp_path_factory.mktemp("faults")
    write_config(folder, TINY_ENAS)
    config = write_config(folder, {**TINY_ENAS, "run": {"name": "base",
                                                        "root": str(folder / "trainings")}},
                          "base.yml")
    runner.start_search(str(config))
    return folder


def copy_run(work: Path, name: str) -> Path:
    target = work / "trainings" / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(work / "trainings" / "base", target)
    return target


@pytest.fixture
def invoke(monkeypatch):
    """The CLI in-process, in a given working folder."""
    def call(args: list, cwd: Path):
        monkeypatch.chdir(cwd)
        return CliRunner().invoke(app, [str(a) for a in args])
    return call


def _status(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]




def _unshare_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(not _unshare_available(),
                                   reason="no private mount namespace (unshare -rm) here")


# --- 1. a failed resume changes nothing ---------------------------------------------------

def test_item_01_failed_resume_changes_nothing(work: Path, invoke) -> None:
    run = copy_run(work, "allbad")
    for state in (run / "checkpoints").glob("epoch-*/state.json"):
        state.write_text("{broken")
    before = tree_digest(run)
    assert_user_error(run_cli(["resume", "allbad", "--epochs", "6"], work),
                      "no complete checkpoint", "allbad")
    assert tree_digest(run) == before  # config.yaml still says 2 epochs, status finished
    assert _status(run)["status"] == "finished"
    assert not list((run / "checkpoints").glob("corrupt-*"))

    run = copy_run(work, "noconfig")
    (run / "config.yaml").write_text("")
    before = tree_digest(run)
    assert_user_error(invoke(["resume", "noconfig", "--epochs", "6"], work),
                      "config.yaml is empty")
    assert tree_digest(run) == before


# --- 2. read-only commands never modify a run ---------------------------------------------

def test_item_02_export_runs_and_summary_change_nothing(work: Path, invoke) -> None:
    run = copy_run(work, "ro")
    arrays = run / "checkpoints" / "epoch-0002" / "arrays.params"
    arrays.write_bytes(arrays.read_bytes()[:1000])
    before = tree_digest(run)
    out = work / "ro-export"
    _, err = assert_ok(invoke(["export", "ro", "--out", out], work))
    assert "epoch-0002" in err and "falling back to epoch-0001" in err
    assert (out / "epoch-0001" / "trainable" / "export.json").is_file()
    assert tree_digest(run) == before  # nothing moved aside, `latest` untouched
    assert_ok(invoke(["runs"], work))
    assert_ok(invoke(["summary", "run:ro", "--json"], work))
    assert tree_digest(run) == before

    (run / "checkpoints" / "epoch-0001" / "state.json").write_text("{}")
    before = tree_digest(run)
    assert_user_error(run_cli(["export", "ro"], work), "no complete checkpoint")
    assert tree_digest(run) == before
    assert not list((run / "checkpoints").glob("corrupt-*"))


# --- 3. a corrupt checkpoint is never deleted ----------------------------------------------

def test_item_03_corrupt_checkpoints_get_fresh_names(work: Path, invoke) -> None:
    run = copy_run(work, "twice")
    checkpoints = run / "checkpoints"
    earlier = checkpoints / "corrupt-epoch-0002"
    earlier.mkdir()
    (earlier / "note").write_text("an earlier corrupt copy")
    arrays = checkpoints / "epoch-0002" / "arrays.params"
    truncated = arrays.read_bytes()[:5000]
    arrays.write_bytes(truncated)
    assert_ok(invoke(["resume", "twice"], work))
    assert (earlier / "note").read_text() == "an earlier corrupt copy"
    assert (checkpoints / "corrupt-epoch-0002-2" / "arrays.params").read_bytes() == truncated
    assert checkpoint.load(checkpoints).epoch == 2  # epoch 2 re-run and saved anew


def test_item_03_save_moves_a_corrupt_epoch_aside(tmp_path: Path) -> None:
    """A re-run epoch never deletes what sits at its name unless it is a complete copy."""
    from mxnet import nd
    (tmp_path / "epoch-0001").mkdir(parents=True)
    (tmp_path / "epoch-0001" / "state.json").write_text("half")
    (tmp_path / "corrupt-epoch-0001").mkdir()
    checkpoint.save(tmp_path, 1, {"w": nd.array([1])}, {}, keep=3)
    assert (tmp_path / "corrupt-epoch-0001-2" / "state.json").read_text() == "half"
    assert (tmp_path / "corrupt-epoch-0001").is_dir()
    assert checkpoint.load(tmp_path).arrays["w"].asscalar() == 1


# --- 4. summary of a moved run shows that run ---------------------------------------------

def test_item_04_summary_of_a_moved_run(work: Path, invoke) -> None:
    copy_run(work, "R")
    os.replace(work / "trainings" / "R", work / "trainings" / "old")
    new = copy_run(work, "R")  # a new run R with another architecture
    record = new / "logs" / "architectures" / "epoch_2.json"
    arch = json.loads(record.read_text())
    for decision in arch["decisions"]:
        decision["value"] = 32 if decision["value"] == 1 else 1
    record.write_text(json.dumps(arch))
    old_status = work / "trainings" / "old" / "run.json"
    assert _status(old_status.parent)["final_architecture"] == "logs/architectures/epoch_2.json"

    def totals(name: str) -> dict:
        out, _ = assert_ok(invoke(["summary", f"run:{name}", "--json"], work))
        return json.loads(out)["totals"]

    base, old, renamed = totals("base"), totals("old"), totals("R")
    assert old == base and renamed != base
    # A path of the old kind (relative to the folder the search started in) points into R:
    # it is not trusted, the run's own newest record is used.
    status = _status(old_status.parent)
    status["final_architecture"] = "trainings/R/logs/architectures/epoch_2.json"
    old_status.write_text(json.dumps(status))
    assert totals("old") == base


# --- 5. the run lock is exclusive ------------------------------------------------------------

LOCKER = """
import json, os, sys, time
from lightnas_cli.errors import RunError
from lightnas_cli.runs import RunDir
run, go = RunDir(sys.argv[1]), sys.argv[2]
open(go + "-ready-" + str(os.getpid()), "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
got = overlaps = busy = 0
for _ in range(int(sys.argv[3])):
    try:
        with run.lock():
            got += 1
            try:
                fd = os.open(os.path.join(sys.argv[1], "holder"), os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                overlaps += 1
            else:
                time.sleep(0.002)
                os.close(fd)
                os.unlink(os.path.join(sys.argv[1], "holder"))
    except RunError:
        busy += 1
    time.sleep(0.001)
print(json.dumps({"got": got, "overlaps": overlaps, "busy": busy}))
"""


def test_item_05_lock_is_exclusive_under_concurrent_attempts(tmp_path: Path) -> None:
    """300 attempts from 30 processes on a run with a stale lock file (the PID of a dead
    process, as kill -9 leaves it): never two holders at once."""
    run = RunDir.create(tmp_path, "contended")
    (run.path / ".lock").write_text("999999")
    go = tmp_path / "go"
    processes = [subprocess.Popen([sys.executable, "-c", LOCKER, str(run.path), str(go), "10"],
                                  cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(30)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go-ready-*"))) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # all 30 start their attempts together
    counts = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        counts.append(json.loads(out))
    assert sum(c["got"] + c["busy"] for c in counts) == 300
    assert sum(c["overlaps"] for c in counts) == 0
    assert sum(c["got"] for c in counts) >= 1 and sum(c["busy"] for c in counts) >= 1
    assert (run.path / ".lock").is_file()  # never deleted, and free again:
    with run.lock():
        pass


def test_item_05_second_process_on_a_run_is_refused(work: Path, invoke) -> None:
    run = copy_run(work, "busy")
    before = tree_digest(run)
    with RunDir(run).lock():
        assert_user_error(invoke(["resume", "busy", "--epochs", "3"], work), "in use")
    assert tree_digest(run) == before


# --- 6. YAML that would hang or exhaust the tool ------------------------------------------

def _alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "method: enas\n" + "\n".join(lines) + "\n"


def test_item_06_alias_bomb_is_refused_in_time(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yml"
    bomb.write_text(_alias_bomb())
    started = time.monotonic()
    result = run_cli(["config", "show", "-c", bomb], tmp_path, timeout=60)
    assert_user_error(result, "aliases", "10,000 values")
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("text, needle", [
    ("method: enas\nx: [" + "0," * 400_000 + "0]\n", "10,000 values"),   # 800 kB, many items
    ("method: enas\nx: &x [*x]\n", "recursive"),
    ("method: enas\nx: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    ("method: enas\nseed: *nowhere\n", "undefined alias"),
])
def test_item_06_oversized_or_cyclic_yaml_is_refused(tmp_path: Path, text: str,
                                                    needle: str) -> None:
    path = tmp_path / "c.yml"
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=needle):
        load_config(path)
    assert time.monotonic() - started < 30


def test_item_06_file_size_and_override_limits(tmp_path: Path) -> None:
    big = tmp_path / "big.yml"
    big.write_text("method: enas\n# " + "x" * (2 << 20) + "\n")  # 2 MiB: a wrong file
    with pytest.raises(ConfigError, match="more than a config file may hold"):
        load_config(big)
    bomb = ("[" + ", ".join(["&a0 [1,1,1,1,1,1,1,1,1]"] +
                            [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]"
                             for i in range(1, 9)]) + "]")
    with pytest.raises(ConfigError, match="aliases"):
        load_config(write_config(tmp_path, TINY_ENAS), [f"model.options.x={bomb}"])
    # Aliases within the budget are fine.
    (tmp_path / "ok.yml").write_text("method: enas\nseed: &n 1\ntrain: {epochs: *n}\n")
    assert load_config(tmp_path / "ok.yml").train.epochs == 1


# --- 7. disk full -----------------------------------------------------------------------------

def _full_disk_on(monkeypatch, epoch: int) -> None:
    """Saving checkpoint `epoch` fails as a full disk would (after the staging folder and a
    temporary exist, so the cleanup is tested too)."""
    real = checkpoint._save_arrays

    def save_arrays(path: Path, arrays: dict) -> None:
        if path.parent.name.startswith(f".tmp-epoch-{epoch:04d}"):
            (path.parent / ARRAYS_PART).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, arrays)
    monkeypatch.setattr(checkpoint, "_save_arrays", save_arrays)


ARRAYS_PART = "arrays.params.part"


def test_item_07_disk_full_stops_cleanly_and_resumes_exactly(work: Path, invoke,
                                                            monkeypatch) -> None:
    _full_disk_on(monkeypatch, 2)
    line = assert_user_error(invoke(["search", "-c", work / "config.yml", "run.name=full"],
                                    work), "disk is full", "'full'", "lightnas resume full")
    run = work / "trainings" / "full"
    assert "after epoch 1" in line
    assert _status(run)["status"] == "interrupted"
    assert not [p for p in run.rglob(".*") if p.name != ".lock"]  # no temporaries left
    assert checkpoint.load(run / "checkpoints").epoch == 1  # the earlier one is intact
    monkeypatch.undo()
    # Temporaries of another, killed process are removed by the next one too.
    (run / "checkpoints" / ".tmp-epoch-0002-999999").mkdir()
    (run / ".run.json.999999.0badf00d.tmp").write_text("{")
    monkeypatch.chdir(work)
    runner.resume_search("full")
    assert not [p for p in run.rglob(".*") if p.name != ".lock"]
    assert _status(run)["status"] == "finished"
    assert_same_metrics(_metrics(run), _metrics(work / "trainings" / "base"))


@needs_unshare
def test_item_07_real_full_disk_on_a_tmpfs(work: Path, tmp_path: Path) -> None:
    """The CLI on real full disks (tmpfs): a new search whose second checkpoint does not fit,
    and a resume with 300 kB free. Each: exit 2, one clear error line and no traceback (not
    even from mxboard's buffered event file at exit), the run interrupted, no temporaries,
    the earlier checkpoints intact (the exact resume afterwards is tested above)."""
    run = copy_run(work, "tmpfs")
    arrays = (run / "checkpoints" / "epoch-0001" / "arrays.params").stat().st_size
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    cli = f"{sys.executable} -m lightnas_cli.cli"
    script = f"""
set -u
mount -t tmpfs -o size={int(arrays * 1.7) // 1024}k tmpfs {small}
{cli} search -c {work / 'config.yml'} run.name=r run.root={small} train.epochs=3 \
    >/dev/null 2>{tmp_path}/err1
echo $? > {tmp_path}/rc1
find {small}/r -name '.*' ! -name .lock > {tmp_path}/leftovers1
cp -r {small}/r {tmp_path}/fresh
mount -t tmpfs -o size=4m tmpfs {big}
cp -r {run} {big}/r
avail=$(df -k --output=avail {big} | tail -1)
dd if=/dev/zero of={big}/filler bs=1k count=$((avail - 300)) 2>/dev/null
{cli} resume {big}/r --epochs 3 >/dev/null 2>{tmp_path}/err2
echo $? > {tmp_path}/rc2
find {big}/r -name '.*' ! -name .lock > {tmp_path}/leftovers2
cp -r {big}/r {tmp_path}/resumed
"""
    subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=work, env=cli_env(),
                   timeout=300, check=True)
    for index, folder, done in ((1, "fresh", 1), (2, "resumed", 2)):
        code = int((tmp_path / f"rc{index}").read_text())
        err = (tmp_path / f"err{index}").read_text()
        assert_user_error(subprocess.CompletedProcess([], code, "", err), "disk is full",
                          f"after epoch {done}", "lightnas resume r")
        assert (tmp_path / f"leftovers{index}").read_text() == ""
        stopped = RunDir(tmp_path / folder)
        assert stopped.effective_status() == "interrupted"
        assert checkpoint.load(stopped.checkpoints).epoch == done
        assert checkpoint.complete_epochs(stopped.checkpoints)[0] == done


FAILING_WRITERS = """
import errno, sys, threading
from lightnas_cli import cli

class BufferedEvents:  # like mxboard's event file: flushes again when collected at exit
    def __del__(self):
        raise OSError(errno.ENOSPC, "No space left on device", "events.out.tfevents")

def background_writer():
    raise OSError(errno.ENOSPC, "No space left on device", "events.out.tfevents")

events = BufferedEvents()
sys.argv = ["lightnas", "runs", "--root", sys.argv[1]]
cli.install_fault_hooks()  # what cli.main() does first
thread = threading.Thread(target=background_writer)
thread.start()
thread.join()
cli.main()
"""


def test_item_07_writers_failing_after_the_error_add_no_traceback(tmp_path: Path) -> None:
    """A full disk also breaks buffered writers (mxboard's event file and its thread): the
    CLI turns their late failures into nothing (at exit) or one warning line (a thread)."""
    result = subprocess.run([sys.executable, "-c", FAILING_WRITERS, str(tmp_path)], cwd=REPO,
                            env=cli_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert result.stderr.count("warning: a background writer stopped: No space left") == 1


def test_item_07_event_thread_dying_during_a_flush_does_not_hang(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """The event thread alive when a flush starts, dead (full disk) before the events queued
    behind the failing one are written: mxboard's own flush (queue.join) would wait forever.
    Seen as a hung `resume` on a full tmpfs, about one run in eight under load."""
    from lightnas_cli.logging import RunLogger
    logger = RunLogger(tmp_path / "logs", tensorboard=True, plain=True)
    events = logger._event_writer()
    assert events is not None, "mxboard is needed for this test"

    def full_disk(event) -> None:
        time.sleep(0.3)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(events._ev_writer, "write_event", full_disk)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the thread's death
    logger.scalars({"a": 1.0, "b": 2.0, "c": 3.0}, step=1)
    assert events._worker.is_alive()
    done = threading.Event()
    flusher = threading.Thread(target=lambda: (logger.flush(), logger.close(), done.set()),
                               daemon=True)
    flusher.start()
    flusher.join(timeout=20)
    assert done.is_set(), "flush/close waited for a dead event thread"
    assert logger.writer is None


# --- 8. file-system faults and oversized inputs ----------------------------------------------

@needs_unshare
def test_item_08_read_only_run_root_and_export_folder(work: Path, tmp_path: Path) -> None:
    run = copy_run(work, "rofs")
    before = tree_digest(run)
    ro = tmp_path / "ro"
    ro.mkdir()
    script = f"""
mount -t tmpfs -o ro tmpfs {ro}
{sys.executable} -m lightnas_cli.cli search -c {work / 'config.yml'} run.name=x \\
    run.root={ro}/runs 2>{tmp_path}/err1
echo $? > {tmp_path}/rc1
{sys.executable} -m lightnas_cli.cli export rofs --out {ro}/exported 2>{tmp_path}/err2
echo $? > {tmp_path}/rc2
"""
    subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=work, env=cli_env(),
                   timeout=300, check=True)
    for index, needles in ((1, ("run.root", "not writable")), (2, ("--out", "not writable"))):
        code = int((tmp_path / f"rc{index}").read_text())
        assert_user_error(subprocess.CompletedProcess([], code, "",
                                                      (tmp_path / f"err{index}").read_text()),
                          *needles)
    assert tree_digest(run) == before


def test_item_08_export_out_is_a_file(work: Path, invoke) -> None:
    run = copy_run(work, "outfile")
    target = work / "a-file"
    target.write_text("keep me")
    before = tree_digest(run)
    assert_user_error(invoke(["export", "outfile", "--out", target], work), "--out",
                      "is a file")
    assert_user_error(invoke(["export", "outfile", "--out", target / "sub"], work), "--out")
    assert target.read_text() == "keep me" and tree_digest(run) == before


def test_item_08_long_run_name_and_huge_summary_input(work: Path, invoke) -> None:
    result = run_cli(["search", "-c", work / "config.yml", "run.name=" + "n" * 300], work)
    assert_user_error(result, "run.name", "at most 100 characters")
    assert not [p for p in (work / "trainings").iterdir() if len(p.name) > 100]
    started = time.monotonic()
    assert_user_error(invoke(["summary", "resnet_e18", "--input-shape", "3,100000,100000"],
                             work), "--input-shape", "values per sample")
    assert_user_error(invoke(["summary", "resnet_e18", "--classes", "0"], work), "--classes")
    assert time.monotonic() - started < 30


def test_item_08_environment_oserror_is_one_error_line(work: Path, invoke,
                                                       monkeypatch) -> None:
    """Any permission or disk fault that reaches the CLI is reported, not a traceback."""
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/somewhere/file")
    monkeypatch.setattr(runner, "export_run", denied)
    assert_user_error(invoke(["export", "base"], work), "Permission denied",
                      "/somewhere/file")


# --- 9. corrupt run files -----------------------------------------------------------------

def test_item_09_non_utf8_config_and_run_json(work: Path, invoke) -> None:
    run = copy_run(work, "latin")
    (run / "config.yaml").write_bytes("model: {name: r\xe9snet}\n".encode("latin-1"))
    before = tree_digest(run)
    assert_user_error(run_cli(["resume", "latin"], work), "not UTF-8")
    for command in (["export", "latin"], ["summary", "run:latin"]):
        assert_user_error(invoke(command, work), "not UTF-8")
    assert tree_digest(run) == before

    run = copy_run(work, "badjson")
    for content in (b"\xff\xfe{}", b"[1, 2]", b'{"epoch": "two", "status": "finished"}',
                    b'{"status": "exploded"}', b'{"best_val_accuracy": "high"}'):
        (run / "run.json").write_bytes(content)
        before = tree_digest(run)
        assert_user_error(invoke(["resume", "badjson"], work), "run.json is unreadable")
        assert tree_digest(run) == before


def test_item_09_runs_lists_the_others_when_one_is_unreadable(work: Path) -> None:
    run = copy_run(work, "listbad")
    (run / "run.json").write_text("[]")
    result = run_cli(["runs"], work)
    out, err = assert_ok(result)
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert "unreadable" in rows["listbad"]
    assert "finished" in rows["base"]
    assert "run.json is unreadable" in err


@pytest.mark.parametrize("damage, needle", [
    ("empty_state", "no complete checkpoint"),
    ("no_method", "holds no method state"),
])
def test_item_09_damaged_state_json(work: Path, invoke, damage: str, needle: str) -> None:
    run = copy_run(work, f"state-{damage}")
    for state_file in (run / "checkpoints").glob("epoch-*/state.json"):
        record = json.loads(state_file.read_text())
        if damage == "empty_state":
            record = {}
        else:
            del record["state"]["method"]
        state_file.write_text(json.dumps(record))
    before = tree_digest(run)
    assert_user_error(invoke(["resume", run.name], work), needle)
    assert_user_error(invoke(["export", run.name], work), needle)
    assert tree_digest(run) == before


def _foreign_arrays(folder: Path) -> None:
    """Give a checkpoint arrays of another model (one weight of another shape), with a
    checksum that matches them."""
    from mxnet import nd
    arrays = nd.load(str(folder / "arrays.params"))
    key = next(k for k in sorted(arrays) if k.startswith("supernet/") and k.endswith("weight"))
    arrays[key] = nd.zeros((arrays[key].shape[0] + 1,) + arrays[key].shape[1:])
    nd.save(str(folder / "arrays.params"), arrays)
    record = json.loads((folder / "state.json").read_text())
    record["arrays_sha256"] = hashlib.sha256((folder / "arrays.params").read_bytes()).hexdigest()
    (folder / "state.json").write_text(json.dumps(record))


def test_item_09_arrays_of_another_model(work: Path, invoke) -> None:
    run = copy_run(work, "foreign")
    for folder in (run / "checkpoints").glob("epoch-*"):
        _foreign_arrays(folder)
    before = tree_digest(run)
    assert_user_error(invoke(["resume", "foreign"], work), "written for another model")
    assert tree_digest(run) == before
    # With only the newest one foreign, resume falls back to the one before and sets it aside.
    run = copy_run(work, "foreign1")
    _foreign_arrays(run / "checkpoints" / "epoch-0002")
    _, err = assert_ok(invoke(["resume", "foreign1"], work))
    assert "written for another model" in err
    assert (run / "checkpoints" / "corrupt-epoch-0002" / "arrays.params").is_file()
    assert_same_metrics(_metrics(run), _metrics(work / "trainings" / "base"))


def test_item_09_a_checkpoint_that_is_a_file(work: Path, invoke) -> None:
    run = copy_run(work, "filed")
    (run / "checkpoints" / "epoch-0003").write_text("not a folder")
    assert_ok(invoke(["resume", "filed", "--epochs", "3"], work))
    assert (run / "checkpoints" / "corrupt-epoch-0003").read_text() == "not a folder"
    assert (run / "checkpoints" / "epoch-0003" / "state.json").is_file()
    assert _status(run)["status"] == "finished" and _status(run)["epoch"] == 3


# --- 10. config values that crashed -------------------------------------------------------

@pytest.mark.parametrize("override, needle", [
    ("controller.batch_size=0", "'controller.batch_size' must be >= 1"),
    ("controller.update_every=0", "'controller.update_every' must be >= 1"),
    ("controller.hidden_size=0", "'controller.hidden_size' must be >= 1"),
    ("controller.steps_after_epoch=0", "'controller.steps_after_epoch' must be >= 1"),
    ("train.lr=[", "not valid YAML"),
    ("run.name=*", "not valid YAML"),
    ("train.lr=${nope}", "cannot resolve the interpolation in 'train.lr'"),
    ("train.lr=${train.", "overrides"),
    ("model.name=${oc.env:LIGHTNAS_NO_SUCH_VARIABLE}", "cannot resolve"),
])
def test_item_10_bad_values_and_overrides(tmp_path: Path, override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_config(write_config(tmp_path, TINY_ENAS), [override])
    assert needle in str(info.value)


def test_item_10_cli_refuses_before_creating_anything(work: Path) -> None:
    result = run_cli(["search", "-c", work / "config.yml", "run.name=zero",
                      "controller.hidden_size=0"], work)
    assert_user_error(result, "controller.hidden_size")
    assert not (work / "trainings" / "zero").exists()


def test_item_10_interpolations_are_resolved_once(tmp_path: Path) -> None:
    path = tmp_path / "i.yml"
    path.write_text(yaml.safe_dump({**TINY_ENAS, "controller": {
        **TINY_ENAS["controller"], "lr": "${train.lr}"}}))
    cfg = load_config(path)
    assert cfg.controller.lr == 0.01
    from lightnas_cli.config import to_yaml
    assert "${" not in to_yaml(cfg)  # the saved config is what ran


# --- 11. values accepted that should not be -----------------------------------------------

@pytest.mark.parametrize("override, needle", [
    ("train.lr=nan", "finite"), ("train.lr=inf", "finite"), ("train.lr=-0.1", "> 0"),
    ("controller.temperature=0", "> 0"), ("enas.cost_weight=nan", "finite"),
    ("enas.cost_target=0", "> 0"), ("data.image_size=0", ">= 1"), ("seed=-1", ">= 0"),
    ("data.mock.num_train=100000000", "<= 1000000"),
    ("data.mock.shape=[3,4096,4096]", "1 GiB"),
])
def test_item_11_values_out_of_range(tmp_path: Path, override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, TINY_ENAS), [override])
    assert needle in str(info.value)


def test_item_11_every_numeric_key_has_a_declared_range() -> None:
    """Each int/float key of every registered method's schema declares bounds or choices
    (so new methods and sections cannot forget)."""
    import dataclasses
    import typing

    from lightnas_cli.search.base import available_methods, method_schema

    missing = []

    def walk(schema: type, prefix: str) -> None:
        hints = typing.get_type_hints(schema)
        for spec in dataclasses.fields(schema):
            kind = hints[spec.name]
            if dataclasses.is_dataclass(kind):
                walk(kind, f"{prefix}{spec.name}.")
                continue
            args = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
            if any(a in (int, float) for a in args) or typing.get_origin(kind) in (list,) and \
                    any(a in (int, float) for a in typing.get_args(kind)):
                if not any(spec.metadata.get(b) is not None
                           for b in ("ge", "gt", "le", "lt", "choices")):
                    missing.append(prefix + spec.name)

    for method in available_methods():
        walk(method_schema(method), f"{method}:")
    assert not missing, missing


def test_item_11_duplicate_keys_are_refused(work: Path) -> None:
    path = work / "dup.yml"
    path.write_text(yaml.safe_dump(TINY_ENAS) + "seed: 4\n")
    assert_user_error(run_cli(["config", "show", "-c", path], work), "'seed' appears twice",
                      "remove one")


def test_item_11_resume_epochs_below_those_done(work: Path, invoke) -> None:
    run = copy_run(work, "fewer")
    before = tree_digest(run)
    assert_user_error(invoke(["resume", "fewer", "--epochs", "1"], work),
                      "--epochs 1 is below the 2 epoch(s)")
    assert tree_digest(run) == before


def test_item_11_resume_cannot_change_what_checkpoints_hold(work: Path, invoke) -> None:
    run = copy_run(work, "fixed")
    before = tree_digest(run)
    assert_user_error(invoke(["resume", "fixed", "model.base_channels=8"], work),
                      "cannot change 'model.base_channels'")
    assert tree_digest(run) == before


def test_item_11_nan_loss_stops_the_run(work: Path, invoke, monkeypatch) -> None:
    """The loss turns NaN in epoch 2: the run stops as failed with epoch 1 kept, and resumes
    from it with a lower learning rate."""
    from lightnas_cli.search import training

    real_loss = training.ClassificationTask.loss
    real_save = checkpoint.save
    poisoned = {"on": False}

    def loss(self, output, label, data):
        value = real_loss(self, output, label, data)
        return value * float("nan") if poisoned["on"] else value

    def save(*args, **kwargs):
        path = real_save(*args, **kwargs)
        poisoned["on"] = True  # every step after epoch 1's checkpoint diverges
        return path

    monkeypatch.setattr(training.ClassificationTask, "loss", loss)
    monkeypatch.setattr(checkpoint, "save", save)
    line = assert_user_error(invoke(["search", "-c", work / "config.yml", "run.name=nan"],
                                    work), "epoch 2", "nan", "lightnas resume nan train.lr=")
    run = work / "trainings" / "nan"
    assert "train loss became nan at step 1" in line
    assert _status(run)["status"] == "failed"
    assert [r["epoch"] for r in _metrics(run)] == [1]
    assert checkpoint.complete_epochs(run / "checkpoints") == [1]
    monkeypatch.undo()
    assert_ok(invoke(["resume", "nan", "train.lr=0.001"], work))
    assert _status(run)["status"] == "finished"
    assert load_config(run / "config.yaml").train.lr == 0.001


def test_item_11_an_epoch_with_an_infinite_loss_is_not_saved() -> None:
    runner._check_finite({"train_loss": 0.5, "val_loss": 0.7, "val_accuracy": 1.0})
    with pytest.raises(DivergedError, match="val loss became inf"):
        runner._check_finite({"train_loss": 0.5, "val_loss": float("inf")})


# --- 12. bad input creates nothing --------------------------------------------------------

@pytest.mark.parametrize("config, overrides, needle", [
    ("tiny", ["model.name=resnet_e99"], "unknown model"),
    ("tiny", ["model.options={stem: imagenet}"], "model.options repeats"),
    ("tiny", ["model.base_channels=0"], "base_channels"),
    (REPO / "configs/mock/pit_tcn.yml", ["model.name=nope"], "unknown model"),
    (REPO / "configs/mock/pit_tcn.yml", ["pit.warmup_epochs=100"], "exceed train.epochs"),
])
def test_item_12_method_checks_run_before_the_folder_exists(work: Path, monkeypatch, config,
                                                            overrides, needle) -> None:
    monkeypatch.chdir(work)
    path = work / "config.yml" if config == "tiny" else config
    root = work / "created-nothing"
    with pytest.raises(ConfigError, match=needle):
        runner.start_search(str(path), [f"run.root={root}", "run.name=x", *overrides])
    assert not root.exists()


def test_item_12_cli_unknown_model(work: Path) -> None:
    assert_user_error(run_cli(["search", "-c", work / "config.yml", "run.name=unknown",
                               "model.name=resnet_e99"], work), "unknown model")
    assert not (work / "trainings" / "unknown").exists()


# --- 13. run names --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["-x", ".hidden", "h\u00e9llo", "a\\b", "a/b", "'a b'",
                                  "n" * 101, "'~x'", '"a\\nb"', "'..'"])
def test_item_13_bad_run_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="not a valid name"):
        load_config(write_config(tmp_path, TINY_ENAS), [f"run.name={name}"])


@pytest.mark.parametrize("value", ["~", "null", "", "' '", "''"])
def test_item_13_empty_names_are_not_the_default(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError):
        load_config(write_config(tmp_path, TINY_ENAS), [f"run.name={value}"])


def test_item_13_good_names_and_defaults(tmp_path: Path) -> None:
    for name in ("a", "run_1.b-2", "_x", "n" * 100):
        assert load_config(write_config(tmp_path, TINY_ENAS),
                           [f"run.name={name}"]).run.name == name
    from lightnas_cli.runs import check_name
    check_name(RunDir.default_name("meliusnet22_custom:" + "D" * 200, "cifar10"))
    check_name(RunDir.default_name("resnet_e18", "mock"))


def test_item_13_name_checked_before_data(work: Path) -> None:
    result = run_cli(["search", "-c", work / "config.yml", "run.name=-x", "data.name=cifar10",
                      "data.dir=/no/such/folder"], work)
    assert_user_error(result, "run.name '-x'")


# --- 14. autosave, export names, TensorBoard binding ---------------------------------------

def test_item_14_autosave_never_overwrites(work: Path, monkeypatch, tmp_path: Path) -> None:
    """configs/autosaved/same.yml of a run under another run.root stays as it was."""
    monkeypatch.chdir(tmp_path)
    saved = tmp_path / "configs" / "autosaved"
    saved.mkdir(parents=True)
    (saved / "same.yml").write_text("# the config of another run named same\n")
    runner.start_search(str(work / "config.yml"), ["run.name=same", "run.root=root-b",
                                                  "train.epochs=1"])
    assert (saved / "same.yml").read_text() == "# the config of another run named same\n"
    assert yaml.safe_load((saved / "same-2.yml").read_text())["run"]["root"] == "root-b"


@pytest.mark.parametrize("name, ok", [("net_v1", True), ("../x", False), ("-n", False),
                                      ("a b", False)])
def test_item_14_export_name_follows_the_name_rule(tmp_path: Path, name: str, ok: bool) -> None:
    path = write_config(tmp_path, {**TINY_ENAS, "export": {"name": name}})
    if ok:
        assert load_config(path).export.name == name
    else:
        with pytest.raises(ConfigError, match="export.name"):
            load_config(path)


def test_item_14_tensorboard_listens_on_localhost_unless_asked() -> None:
    script = REPO / "shell_scripts" / "run_tensorboard.sh"

    def command(*args: str, **env: str) -> str:
        result = subprocess.run(["bash", str(script), *args, "--print"], capture_output=True,
                                text=True, timeout=30, env={**os.environ, **env})
        assert result.returncode == 0, result.stderr
        return result.stdout
    default = command()
    assert "--host 127.0.0.1" in default and "--bind_all" not in default
    assert "--bind_all" in command("--bind-all") and "127.0.0.1" not in command("--bind-all")
    assert "--bind_all" in command(BIND_ALL="1")
    assert "--logdir elsewhere" in command("elsewhere")
