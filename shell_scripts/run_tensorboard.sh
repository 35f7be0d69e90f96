#!/usr/bin/env bash
# TensorBoard on trainings/ at http://127.0.0.1:8989, reachable from this machine only.
#   bash shell_scripts/run_tensorboard.sh [LOGDIR] [--bind-all] [--print]
# --bind-all (or BIND_ALL=1) serves on every network interface: anyone who can reach this
# machine can then read the logs. PORT=NNNN changes the port. --print only prints the command.
# Installs the `tensorboard` extra if missing (tensorboard 2.20.0: the newest that keeps
# protobuf 3.20.3, which mxboard needs).
set -euo pipefail
cd "$(dirname "$0")/.."
LOGDIR=trainings
HOST_ARGS=(--host 127.0.0.1)
PRINT=0
for arg in "$@"; do
  case "$arg" in
    --bind-all) HOST_ARGS=(--bind_all) ;;
    --print) PRINT=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $arg (known: --bind-all, --print, --help)" >&2; exit 2 ;;
    *) LOGDIR=$arg ;;
  esac
done
if [ "${BIND_ALL:-0}" = 1 ]; then HOST_ARGS=(--bind_all); fi
CMD=(.venv/bin/tensorboard --logdir "$LOGDIR" --port "${PORT:-8989}" "${HOST_ARGS[@]}")
if [ "$PRINT" = 1 ]; then
  echo "${CMD[*]}"
  exit 0
fi
bash shell_scripts/setup.sh
if ! .venv/bin/python -c 'import tensorboard' 2>/dev/null; then
  .venv/bin/python -m pip install --quiet -e ".[tensorboard]"
fi
exec "${CMD[@]}"
