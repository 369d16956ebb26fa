"""kwok stage configuration: kwok >= 0.8 needs its stages passed in.

The default stages ship inside the kwok module (already in the Go module cache because kwok was
built from it); we combine the ones we need instead of copying them into the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from finetune_dev.devcluster import versions

STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)


def kwok_module_dir() -> Path:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/kwok@{versions.KWOK}"],
        capture_output=True, text=True, check=False, cwd="/",
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"cannot locate the kwok {versions.KWOK} module: {out.stderr.strip()}")
    return Path(json.loads(out.stdout)["Dir"])


def write_kwok_config(path: Path, stages: tuple[str, ...] = STAGES) -> None:
    stage_dir = kwok_module_dir() / "kustomize" / "stage"
    docs = [(stage_dir / s).read_text().strip() for s in stages]
    path.write_text("\n---\n".join(docs) + "\n")
