#!/usr/bin/env bash
# README command 2: set up, then run the test suite. pytest's exit code 5 (no tests collected)
# means the setup is broken, so it fails here too.
#
# With no arguments the suite runs one fresh pytest process per test file, two at a time
# (one core each), slowest first (tests/run_suite.py says why). Arguments run one plain pytest
# process with them.
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
exec .venv/bin/python tests/run_suite.py --jobs "${LIGHTNAS_TEST_JOBS:-2}"
