"""GPUs per namespace and GPU resource (``kubectl finetune top``): what FineTuneJobs hold vs the
ResourceQuota, and the queue in order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from finetune_api.quantity import quantity
from finetune_operator.view.jobs import Job, phase_of, priority_of, spec_of, status_of, total_gpus

# Phases whose pods hold GPUs (the same set as the operator's metrics).
ALLOCATED_PHASES = frozenset({"Admitted", "Running", "Preempting"})


class QueueEntry(TypedDict):
    name: str | None
    position: int | None  # the job's status.queue.position (None before the operator set it)
    gpus: int
    priority: str
    reason: str


class TopRow(TypedDict):
    """One namespace's use of one GPU resource. Quota figures are None without a quota on it
    (several quotas: the smallest hard limit, the largest use)."""

    namespace: str
    gpuResource: str
    allocated: int  # GPUs of jobs whose pods hold them (Admitted, Running, Preempting)
    quotaHard: float | None
    quotaUsed: float | None
    running: int
    queued: int  # jobs waiting (Queued, or Pending: not seen by the operator yet)
    queuedGpus: int  # what the waiting jobs ask for
    queue: list[QueueEntry]  # by position, then name
    quotaFree: float | None


def _quantity(value: Any) -> float | None:
    """A GPU count as ResourceQuota reports it ("4", "4000m"); None when absent/odd."""
    try:
        return None if value is None else float(quantity(value))
    except ValueError:
        return None


def top_rows(jobs: Iterable[Job], quotas: Iterable[Mapping[str, Any]],
             default_gpu_resource: str = "nvidia.com/gpu",
             namespaces: Iterable[str] = ()) -> list[TopRow]:
    """Per (namespace, GPU resource), in that order. ``namespaces`` are always listed (e.g.
    the one asked for with -n), even when empty; jobs that name no ``resources.gpuResource``
    count under ``default_gpu_resource``."""
    rows: dict[tuple[str, str], TopRow] = {}

    def row(ns: str, res: str) -> TopRow:
        return rows.setdefault((ns, res), TopRow(
            namespace=ns, gpuResource=res, allocated=0, quotaHard=None, quotaUsed=None,
            running=0, queued=0, queuedGpus=0, queue=[], quotaFree=None))

    for ns in namespaces:
        row(ns, default_gpu_resource)
    for q in quotas:
        ns = (q.get("metadata") or {}).get("namespace", "")
        hard = (q.get("status") or {}).get("hard") or (q.get("spec") or {}).get("hard") or {}
        used = (q.get("status") or {}).get("used") or {}
        for key, value in hard.items():
            if not key.startswith("requests.") or "/" not in key:
                continue
            r = row(ns, key.removeprefix("requests."))
            h, u = _quantity(value), _quantity(used.get(key))
            if h is not None:
                r["quotaHard"] = h if r["quotaHard"] is None else min(r["quotaHard"], h)
            if u is not None:
                r["quotaUsed"] = u if r["quotaUsed"] is None else max(r["quotaUsed"], u)
    for j in jobs:
        ns = (j.get("metadata") or {}).get("namespace", "")
        res = (spec_of(j).get("resources") or {}).get("gpuResource") or default_gpu_resource
        r, phase = row(ns, res), phase_of(j)
        if phase in ALLOCATED_PHASES:
            r["allocated"] += total_gpus(j)
            r["running"] += 1
        elif phase in ("Queued", "Pending"):
            r["queued"] += 1
            r["queuedGpus"] += total_gpus(j)
            q = status_of(j).get("queue") or {}
            r["queue"].append(QueueEntry(
                name=(j.get("metadata") or {}).get("name"), position=q.get("position"),
                gpus=total_gpus(j), priority=priority_of(j), reason=q.get("reason", "")))
    for r in rows.values():
        r["queue"].sort(key=lambda e: (e["position"] is None, e["position"] or 0, e["name"]))
        if r["quotaHard"] is not None:
            r["quotaFree"] = max(0.0, r["quotaHard"] - (r["quotaUsed"] or 0.0))
    return [rows[k] for k in sorted(rows)]
