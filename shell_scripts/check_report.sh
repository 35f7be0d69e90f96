#!/usr/bin/env bash
# Check report pages in a real browser (headless Chromium): every image loaded, no script error,
# a screenshot that is not blank. Installs Debian's chromium if it is missing and apt is usable.
#   bash shell_scripts/check_report.sh trainings/<sweep>/report/report.html [...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash shell_scripts/setup.sh >/dev/null
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[check_report] installing chromium (about a minute)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "error: Chromium is not installed and apt-get is not usable here; install the chromium package" >&2
    exit 2
  fi
fi
exec .venv/bin/python -m lightnas_cli.browser_check "$@"
