"""The suite runner (tests/run_suite.py): per-file processes, crash rerun, broken setups fail."""
from __future__ import annotations

from pathlib import Path

import run_suite


def make_suite(root: Path, files: dict[str, str]) -> None:
    (root / "tests").mkdir()
    for name, text in files.items():
        (root / "tests" / name).write_text(text, encoding="utf-8")


PASSING = "def test_one():\n    assert 1 + 1 == 2\n\ndef test_two():\n    pass\n"
# Crashes its process natively the first time (a marker file remembers), passes the second.
CRASH_ONCE = """import os, signal
from pathlib import Path

def test_crash_once():
    marker = Path(__file__).with_suffix(".crashed")
    if not marker.exists():
        marker.write_text("1")
        os.kill(os.getpid(), signal.SIGSEGV)
"""
ALWAYS_CRASH = "import os, signal\n\ndef test_crash():\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
FAILING = "def test_fails():\n    assert 1 == 2\n"


def test_every_file_runs_in_its_own_process_and_the_counts_add_up(tmp_path, capsys):
    make_suite(tmp_path, {"test_a.py": PASSING, "test_b.py": PASSING,
                          "test_c.py": "import os\n\ndef test_pid():\n    print(os.getpid())\n"})
    assert run_suite.main(["--jobs", "2"], root=tmp_path) == 0
    out = capsys.readouterr().out
    assert "3 of 3 test files ran (5 passed)" in out


def test_a_native_crash_is_rerun_once_and_reported(tmp_path, capsys):
    make_suite(tmp_path, {"test_a.py": PASSING, "test_crash.py": CRASH_ONCE})
    assert run_suite.main(["--jobs", "1"], root=tmp_path) == 0
    out = capsys.readouterr().out
    assert "CRASH tests/test_crash.py: killed by SIGSEGV" in out
    assert "crashed natively once and passed on its rerun" in out


def test_failures_second_crashes_and_empty_files_fail_the_suite(tmp_path, capsys):
    for files, reason in [({"test_a.py": PASSING, "test_f.py": FAILING}, "1 failed"),
                          ({"test_crash.py": ALWAYS_CRASH}, "killed by SIGSEGV"),
                          ({"test_empty.py": "X = 1\n"}, "no tests collected")]:
        root = tmp_path / reason.replace(" ", "_")
        root.mkdir()
        make_suite(root, files)
        assert run_suite.main(["--jobs", "2"], root=root) == 1, reason
        assert reason in capsys.readouterr().out


def test_slow_files_start_first():
    order = run_suite.ordered_files()
    slowest = max(run_suite.SLOW_FILES, key=run_suite.SLOW_FILES.get)
    assert order[0] == slowest
    assert set(order) == {str(p.relative_to(run_suite.REPO))
                          for p in (run_suite.REPO / "tests").glob("test_*.py")}


def test_a_hung_file_is_stopped_with_its_stack_and_fails_the_suite(tmp_path, capsys):
    make_suite(tmp_path, {"test_hang.py": "import time\n\ndef test_hang():\n    time.sleep(600)\n"})
    assert run_suite.main(["--jobs", "1", "--file-timeout", "3"], root=tmp_path) == 1
    out = capsys.readouterr().out
    assert "timed out after" in out and "CRASH" not in out
    assert "test_hang" in out.split("timed out after")[1]  # faulthandler's stack names it
