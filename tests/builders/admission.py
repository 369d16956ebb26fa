"""Admission policy inputs for tests of ``admit()``: queued and running jobs, nodes, snapshots,
and the decisions read back (who is admitted, who waits where and why)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from finetune_operator.admission import (
    NodeInfo,
    Policy,
    PolicyResult,
    QueuedJob,
    Quota,
    RunningJob,
    Snapshot,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
GPU = "nvidia.com/gpu"


def ago(minutes: float = 0, seconds: float = 0) -> datetime:
    return NOW - timedelta(minutes=minutes, seconds=seconds)


def make_job(name: str = "job", namespace: str = "team-a", gpus: int = 1, priority: int = 100,
             nodes: int = 1, created: datetime | None = None, priority_class: str | None = None,
             **kw: Any) -> QueuedJob:
    return QueuedJob(namespace=namespace, name=name, uid=f"uid-{namespace}-{name}",
                     priority=priority, priority_class=priority_class or f"band-{priority}",
                     gpus=gpus, nodes=nodes, created_at=created or NOW, **kw)


def make_running(name: str = "run", namespace: str = "team-a", gpus: int = 1,
                 priority: int = 100, nodes: int = 1, on: tuple[str, ...] | str = "n1",
                 started: datetime | None = None, checkpoint: datetime | None = None,
                 **kw: Any) -> RunningJob:
    placement = (on,) if isinstance(on, str) else on
    return RunningJob(namespace=namespace, name=name, uid=f"uid-{namespace}-{name}",
                      priority=priority, priority_class=f"band-{priority}", gpus=gpus,
                      nodes=nodes, started_at=started or ago(60), last_checkpoint_at=checkpoint,
                      placement=placement, **kw)


def make_node(name: str = "n1", free: int = 8, allocatable: int = 8, **kw: Any) -> NodeInfo:
    return NodeInfo(name=name, allocatable={GPU: allocatable}, free={GPU: free}, **kw)


def snap(queued: list[QueuedJob], running: list[RunningJob] | None = None,
         nodes: list[NodeInfo] | None = None, quotas: dict[str, tuple[int, int]] | None = None,
         **policy: Any) -> Snapshot:
    """quotas: {namespace: (hard, used)} of nvidia.com/gpu."""
    return Snapshot(
        queued=queued, running=running or [],
        nodes=[make_node()] if nodes is None else nodes,
        quotas=[Quota(namespace=ns, resource=GPU, hard=h, used=u)
                for ns, (h, u) in (quotas or {}).items()],
        policy=Policy(**{"aging_rate_per_minute": 0.0, **policy}),
    )


def admitted(d: PolicyResult) -> list[str]:
    return [a.job.name for a in d.admit]


def waiting(d: PolicyResult) -> dict[str, tuple[int, str, str]]:
    return {w.job.name: (w.position, w.code.value, w.reason) for w in d.waiting}
