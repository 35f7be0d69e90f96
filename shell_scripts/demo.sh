#!/usr/bin/env bash
# README command 1: set up, run a short ENAS search over binarized ResNet-E on the real, offline
# `digits` data set (configs/demo.yml), export the result, train the winner to completion
# (configs/train/digits.yml) and say where everything is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash shell_scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
RUN=${1:-demo_$(date +%Y%m%d-%H%M%S)}
.venv/bin/lightnas search -c configs/demo.yml "run.name=$RUN"
.venv/bin/lightnas export "$RUN" --epoch best
.venv/bin/lightnas train "$RUN" -c configs/train/digits.yml "run.name=${RUN}_train"
.venv/bin/lightnas runs
echo
echo "run folder:        trainings/$RUN   (the winner trained: trainings/${RUN}_train)"
echo "exported (final and best epoch, one folder each, inference_only/ and trainable/ inside):"
ls -d "trainings/$RUN"/exported_models/epoch-*/ | sed 's/^/                   /'
echo "architecture:      trainings/$RUN/logs/architectures/ (json, txt, dot, png per epoch)"
echo "tensorboard logs:  trainings/$RUN/logs/  ->  bash shell_scripts/run_tensorboard.sh"
