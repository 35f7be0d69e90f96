#!/usr/bin/env bash
# Create .venv (Python 3.11) in the repo root and install LightNAS with its test extra.
# Idempotent: a second run only checks, and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3 python; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 && \
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  PY=$(find_python) || { echo "error: LightNAS needs Python 3.11 (mxnet 1.9.1 does not run on 3.12+); install python3.11 or set PYTHON=/path/to/python3.11" >&2; exit 2; }
  echo "[setup] creating .venv with $($PY --version)"
  rm -rf .venv
  "$PY" -m venv .venv
fi

STAMP=.venv/.lightnas-installed
if [ ! -f "$STAMP" ] || [ setup.py -nt "$STAMP" ]; then
  echo "[setup] installing lightnas[test] into .venv (about a minute the first time)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
  touch "$STAMP"
else
  echo "[setup] .venv is up to date"
fi

# Debian packages: graphviz draws the architecture graphs (PNG); with --with-browser also
# chromium, which checks report pages in a real browser (the tests' setup asks for it:
# shell_scripts/test.sh; shell_scripts/check_report.sh installs it on its own).
missing=""
command -v dot >/dev/null 2>&1 || missing="$missing graphviz"
if [ "${1:-}" = "--with-browser" ]; then
  command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
fi
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing$missing (Debian packages; about a minute for chromium)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null) \
      || echo "[setup] warning: could not install$missing; without graphviz architecture graphs are .dot files only, without chromium the report's browser check is skipped" >&2
  else
    echo "[setup] warning:$missing not installed and apt-get is not usable here; without graphviz architecture graphs are .dot files only, without chromium the report's browser check is skipped" >&2
  fi
fi
echo "[setup] ready: $ROOT/.venv/bin/lightnas"
