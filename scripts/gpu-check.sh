#!/usr/bin/env bash
# The trainer's GPU paths in one command, a few minutes on one NVIDIA GPU (never part of CI):
# QLoRA nf4 train + SIGTERM + resume, DeepSpeed ZeRO-2 and ZeRO-3 on one GPU without launcher
# variables, optimizer offload, merge, tokens/s; prints a table (finetune_trainer/gpucheck.py).
#
#   scripts/gpu-check.sh [--only qlora zero2 zero3 zero2-offload merge] [--keep DIR]
#
# Uses $PYTHON, else .venv/bin/python, else python3 (in the trainer image: python).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu-check: skipped: nvidia-smi not found, so there is no NVIDIA GPU or driver here;" \
       "run it on a GPU machine (or inside the trainer image on a GPU node)"
  exit 0
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: skipped: nvidia-smi cannot list a GPU ($(nvidia-smi -L 2>&1 | head -1))"
  exit 0
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" -m finetune_dev.gpucheck "$@"
