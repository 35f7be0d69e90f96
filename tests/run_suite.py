"""Run the test suite as one fresh pytest process per test file, `--jobs` at a time.

Why one process per file: MXNet keeps process-wide native state (its engine's worker threads,
oneDNN primitive caches, the storage pool, fork handlers) that a long pytest process
accumulates over hundreds of tests; a CI run on 2026-11-30 died with a segmentation fault in
an engine thread after ~290 tests in one process (tests/test_tinyml.py, which passes alone).
A fresh interpreter per file keeps one file's leftovers from reaching another, and a crash
names the one file it happened in.

Files are started slowest first (longest-processing-time scheduling), so the jobs end close
together. A file whose process is killed by a signal (a native crash, not a failed assertion)
is run once more in a fresh process and reported either way; a file that fails, crashes twice,
or collects no tests (pytest's exit 5: the setup is broken) fails the suite.

    python tests/run_suite.py [--jobs N]
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Seconds per test file (one core each, 2-core machine, 2026-11-30); files not listed take a
#: few seconds and start last. Stale figures only cost balance, never correctness.
SLOW_FILES = {"tests/test_data_streams.py": 58, "tests/test_fbnet_cli.py": 56,
              "tests/test_train.py": 55, "tests/test_deploy.py": 49, "tests/test_faults.py": 48,
              "tests/test_sweep.py": 45, "tests/test_launch.py": 45, "tests/test_resume.py": 40,
              "tests/test_cli.py": 37, "tests/test_resnet_v1v2_search.py": 34,
              "tests/test_resnet_v1v2.py": 27, "tests/test_meliusnet_search.py": 23,
              "tests/test_pit_method.py": 19, "tests/test_summary.py": 13,
              "tests/test_fbnet_method.py": 13, "tests/test_dmasking.py": 12,
              "tests/test_fbnet_zoo.py": 11, "tests/test_export_integrity.py": 10,
              "tests/test_systolic.py": 9, "tests/test_meliusnet.py": 8,
              "tests/test_training.py": 8}

NO_TESTS = 5  # pytest's exit code when it collected nothing
#: Seconds one test file may run (the slowest takes about one minute) before it is stopped.
FILE_TIMEOUT = 420


@dataclass
class FileResult:
    path: str
    returncode: int
    seconds: float
    output: str
    rerun_after_crash: bool = False
    timed_out: bool = False

    @property
    def passed(self) -> bool:
        return self.returncode == 0

    @property
    def summary(self) -> str:
        """pytest's last line ("12 passed in 3.41s"), or what went wrong."""
        if self.timed_out:
            return f"timed out after {self.seconds:.0f} s; every thread's stack below"
        if self.returncode < 0:
            return f"killed by {signal_name(-self.returncode)}"
        if self.returncode == NO_TESTS:
            return "no tests collected: the test setup is broken"
        lines = [line.strip("= ") for line in self.output.strip().splitlines()]
        return lines[-1] if lines else f"exit code {self.returncode}"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def ordered_files(root: Path = REPO) -> list[str]:
    files = sorted(str(p.relative_to(root)) for p in (root / "tests").glob("test_*.py"))
    return sorted(files, key=lambda name: -SLOW_FILES.get(name, 0))  # stable: ties keep order


class Suite:
    """The pool of pytest processes; `run()` returns every file's result."""

    def __init__(self, files: list[str], jobs: int, pytest_args: list[str],
                 root: Path = REPO, timeout: float = FILE_TIMEOUT) -> None:
        self.root = root
        self.timeout = timeout
        self.pending = list(files)
        self.jobs = jobs
        self.pytest_args = pytest_args
        self.results: list[FileResult] = []
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen] = set()
        self.stopping = False

    def _next(self) -> str | None:
        with self.lock:
            return self.pending.pop(0) if self.pending and not self.stopping else None

    def _run_file(self, path: str) -> FileResult:
        start = time.monotonic()
        # Its own session, so that stopping the suite stops the CLI processes a test started.
        process = subprocess.Popen([sys.executable, "-m", "pytest", *self.pytest_args, path],
                                   cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        with self.lock:
            self.running.add(process)
        timed_out = False
        try:
            try:
                output, _ = process.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                # SIGABRT first: pytest's faulthandler prints every thread's stack, which says
                # where it hung; then the whole session, CLI processes a test started included.
                timed_out = True
                process.send_signal(signal.SIGABRT)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                output, _ = process.communicate()  # everything, from the start
        finally:
            with self.lock:
                self.running.discard(process)
        return FileResult(path, process.returncode, time.monotonic() - start, output,
                          timed_out=timed_out)

    def _report(self, result: FileResult) -> None:
        with self.lock:
            self.results.append(result)
            status = "ok  " if result.passed else "FAIL"
            print(f"{status} {result.path:<40} {result.summary} ({result.seconds:.0f} s wall)",
                  flush=True)
            if not result.passed:
                print(result.output.rstrip(), flush=True)

    def _worker(self) -> None:
        while (path := self._next()) is not None:
            result = self._run_file(path)
            if result.returncode < 0 and not result.timed_out and not self.stopping:
                with self.lock:
                    print(f"CRASH {path}: {result.summary}; its output:\n{result.output.rstrip()}"
                          f"\n(running {path} once more in a fresh process)", flush=True)
                result = self._run_file(path)
                result.rerun_after_crash = True
            self._report(result)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for process in self.running:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def run(self) -> list[FileResult]:
        threads = [threading.Thread(target=self._worker, daemon=True)
                   for _ in range(min(self.jobs, len(self.pending)))]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        except KeyboardInterrupt:
            self.stop()
            for thread in threads:
                thread.join()
            raise
        return self.results


def counts(results: list[FileResult]) -> dict[str, int]:
    """Tests per outcome over all files, from pytest's summary lines."""
    total: dict[str, int] = {}
    for result in results:
        for number, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)",
                                       result.summary):
            word = "error" if word.startswith("error") else word
            total[word] = total.get(word, 0) + int(number)
    return total


def main(argv: list[str] | None = None, root: Path = REPO) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="test files run at the same time")
    parser.add_argument("--file-timeout", type=float, default=FILE_TIMEOUT,
                        help="seconds one test file may take before it is stopped")
    parser.add_argument("pytest_args", nargs="*", help="passed to every pytest (after --)")
    args = parser.parse_args(argv)
    files = ordered_files(root)
    if not files:
        print("error: no tests/test_*.py files - the checkout is broken", file=sys.stderr)
        return 1
    start = time.monotonic()
    try:
        results = Suite(files, max(1, args.jobs), args.pytest_args, root,
                        args.file_timeout).run()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    failed = [r for r in results if not r.passed]
    crashed = [r for r in results if r.rerun_after_crash]
    tally = ", ".join(f"{n} {word}" for word, n in sorted(counts(results).items()))
    print(f"{len(results)} of {len(files)} test files ran ({tally}); "
          f"wall time {time.monotonic() - start:.0f} s")
    for result in crashed:
        outcome = "passed" if result.passed else "failed"
        print(f"note: {result.path} crashed natively once and {outcome} on its rerun "
              "(output above)")
    if failed or len(results) != len(files):
        print("failed: " + (", ".join(r.path for r in failed) or "not every file ran"),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
