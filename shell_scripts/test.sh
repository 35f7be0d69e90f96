#!/usr/bin/env bash
# README command 2: set up, then run the test suite. pytest's exit code 5 (no tests collected)
# means the setup is broken, so it fails here too.
set -uo pipefail
cd "$(dirname "$0")/.."
bash shell_scripts/setup.sh --with-browser || exit $?
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests - the test setup is broken" >&2
  exit 1
fi
exit "$status"
