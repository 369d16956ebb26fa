#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml, from `make crd`: FineTuneJob, FineTuneSweep and ModelServer) into
# the Helm chart, byte for byte. tests/unit/test_chart.py fails when a copy differs.
set -euo pipefail
cd "$(dirname "$0")/.."
dst_dir=charts/finetune-operator/files/crds
for name in finetunejobs.finetune.dev.yaml finetunesweeps.finetune.dev.yaml modelservers.finetune.dev.yaml; do
  src=crds/$name
  if [ ! -f "$src" ]; then
    echo "sync-chart-crd: $src is missing; generate it first with \`make crd\`" >&2
    exit 1
  fi
  mkdir -p "$dst_dir"
  cp "$src" "$dst_dir/$name"
  echo "sync-chart-crd: $src -> $dst_dir/$name"
done
