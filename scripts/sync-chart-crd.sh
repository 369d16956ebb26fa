#!/usr/bin/env bash
# Copies the generated FineTuneJob CRD (crds/, from `make crd`) into the Helm chart, byte for byte.
# tests/unit/test_chart.py fails when the two differ.
set -euo pipefail
cd "$(dirname "$0")/.."
src=crds/finetunejobs.finetune.dev.yaml
dst=charts/finetune-operator/files/crds/finetunejobs.finetune.dev.yaml
if [ ! -f "$src" ]; then
  echo "sync-chart-crd: $src is missing; generate it first with \`make crd\`" >&2
  exit 1
fi
mkdir -p "$(dirname "$dst")"
cp "$src" "$dst"
echo "sync-chart-crd: $src -> $dst"
