#!/usr/bin/env bash
# The trainer's GPU paths in one command, a few minutes on one NVIDIA GPU (never part of CI):
# QLoRA nf4 train + SIGTERM + resume, DeepSpeed ZeRO-2 and ZeRO-3 on one GPU without launcher
# variables, optimizer offload, merge, tokens/s; prints a table (finetune_trainer/gpucheck.py).
# Then the serving row: vLLM on the GPU with two adapters trained here, TTFT and tokens/s for 1 and
# 8 clients (benchmarks/bench_serving.py --gpu-row; vLLM from $VLLM_PYTHON, a python with
# vllm==0.32.0, default ~/.cache/finetune-operator/vllm-0.32.0/bin/python; skipped without it).
#
#   scripts/gpu-check.sh [--only qlora zero2 zero3 zero2-offload merge gpu-memory vs-llamafactory serving]
#                        [--keep DIR]
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
# --only: the serving row is this script's; the rest goes to finetune_dev.gpucheck
args=() only=0 serving=1 trainer_checks=0
for a in "$@"; do
  case $a in
    --only) only=1; serving=0; args+=("$a") ;;
    --*) only=0; args+=("$a") ;;
    serving) if [ "$only" = 1 ]; then serving=1; else args+=("$a"); fi ;;
    *) [ "$only" = 1 ] && trainer_checks=1; args+=("$a") ;;
  esac
done
keep=()
for ((i = 1; i <= $#; i++)); do [ "${!i}" = --keep ] && { j=$((i + 1)); keep=(--keep "${!j}/serving"); }; done
rc=0
if ! printf '%s\n' "${args[@]}" | grep -qx -- --only || [ "$trainer_checks" = 1 ]; then
  "$PY" -m finetune_dev.gpucheck "${args[@]}" || rc=$?
fi
if [ "$serving" = 1 ]; then
  "$PY" benchmarks/bench_serving.py --gpu-row "${keep[@]}" || rc=1
fi
exit "$rc"
