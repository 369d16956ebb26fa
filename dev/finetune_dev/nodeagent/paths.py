"""Where the node agent keeps things on the host (pure path arithmetic, no I/O)."""

from __future__ import annotations

from pathlib import Path

from finetune_dev.devcluster.cluster import default_state_dir


def default_root() -> Path:
    """`<cluster state dir>/nodeagent`, shared by every agent of the cluster (so PVC directories
    are shared storage, like a network file system, and a job can resume on another node)."""
    return default_state_dir() / "nodeagent"


def pvc_dir(root: Path, namespace: str, claim: str) -> Path:
    """The host directory behind a PersistentVolumeClaim: stable across pods (pre-fill it)."""
    return Path(root) / "pvc" / namespace / claim


def pod_dir(root: Path, namespace: str, name: str, uid: str) -> Path:
    """Per-pod directory: container logs, termination-message files, pid files, volumes."""
    return Path(root) / "pods" / f"{namespace}_{name}_{uid}"


def log_path(root: Path, namespace: str, name: str, uid: str, container: str) -> Path:
    """stdout+stderr of one container (there is no `kubectl logs`)."""
    return pod_dir(root, namespace, name, uid) / f"{container}.log"


def find_log(root: Path, namespace: str, name: str, container: str) -> Path | None:
    """The newest log of a container of pod `namespace/name` (any uid), or None."""
    logs = sorted(Path(root, "pods").glob(f"{namespace}_{name}_*/{container}.log"),
                  key=lambda p: p.stat().st_mtime)
    return logs[-1] if logs else None


def termination_file(pdir: Path, container: str) -> Path:
    return pdir / f"{container}.termination-log"


def pid_file(pdir: Path, container: str) -> Path:
    return pdir / f"{container}.pid"
