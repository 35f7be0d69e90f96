#!/usr/bin/env bash
# TensorBoard on trainings/ at http://localhost:8989. Installs the `tensorboard` extra if missing
# (tensorboard 2.20.0: the newest that keeps protobuf 3.20.3, which mxboard needs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash shell_scripts/setup.sh
if ! .venv/bin/python -c 'import tensorboard' 2>/dev/null; then
  .venv/bin/python -m pip install --quiet -e ".[tensorboard]"
fi
exec .venv/bin/tensorboard --logdir "${1:-trainings}" --port "${PORT:-8989}" --bind_all
