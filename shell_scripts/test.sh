#!/usr/bin/env bash
# README command 2: set up, then run the test suite. pytest's exit code 5 (no tests collected)
# means the setup is broken, so it fails here too.
#
# With no arguments the suite runs as two pytest processes (one core each) that share it by
# test file: each claims the next unclaimed file, slowest first, before running it
# (tests/conftest.py). Arguments run one plain pytest process with them.
set -uo pipefail
cd "$(dirname "$0")/.."
bash shell_scripts/setup.sh --with-browser || exit $?

fail_on_no_tests() {
  if [ "$1" -eq 5 ]; then
    echo "error: pytest collected no tests - the test setup is broken" >&2
    return 1
  fi
  return "$1"
}

if [ "$#" -gt 0 ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
  .venv/bin/python -m pytest "$@"
  fail_on_no_tests $?
  exit $?
fi

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
claims=$(mktemp -d)
second_log=$(mktemp)
trap 'rm -rf "$claims" "$second_log"' EXIT
start=$(date +%s)
LIGHTNAS_TEST_CLAIMS=$claims .venv/bin/python -m pytest >"$second_log" 2>&1 &
second=$!
LIGHTNAS_TEST_CLAIMS=$claims .venv/bin/python -m pytest
first_status=$?
wait "$second"
second_status=$?
echo "--- second pytest process ---"
cat "$second_log"
ran=$(ls "$claims" | wc -l)
echo "test files run: $ran; wall time: $(( $(date +%s) - start )) s"
fail_on_no_tests "$first_status" || exit $?
fail_on_no_tests "$second_status" || exit $?
if [ "$ran" -ne "$(ls tests/test_*.py | wc -l)" ]; then
  echo "error: $ran test files ran of $(ls tests/test_*.py | wc -l)" >&2
  exit 1
fi
exit 0
