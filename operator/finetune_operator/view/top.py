"""GPUs per namespace and GPU resource (``kubectl finetune top``): what FineTuneJobs hold vs the
ResourceQuota, and the queue in order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from finetune_api.quantity import quantity
from finetune_api.spec import DEFAULT_GPU_RESOURCE
from finetune_operator.view.jobs import (
    Job,
    phase_of,
    priority_of,
    queue_place,
    spec_of,
    status_of,
    total_gpus,
)

# Phases whose pods hold GPUs (the same set as the operator's metrics).
ALLOCATED_PHASES = frozenset({"Admitted", "Running", "Preempting"})


class QueueEntry(TypedDict):
    name: str | None
    position: int | None  # its status.queue place (view/jobs.py queue_place; None: not yet)
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


def _hard(quota: Mapping[str, Any]) -> Mapping[str, Any]:
    return (quota.get("status") or {}).get("hard") or (quota.get("spec") or {}).get("hard") or {}


def _limited_resource(key: str) -> str | None:
    """The extended resource a ResourceQuota key ``requests.<domain>/<name>`` limits."""
    return key.removeprefix("requests.") if key.startswith("requests.") and "/" in key else None


def _named_resource(job: Job) -> str | None:
    return (spec_of(job).get("resources") or {}).get("gpuResource") or None


def inferred_default_gpu_resource(jobs: Iterable[Job],
                                  quotas: Iterable[Mapping[str, Any]]) -> str:
    """The GPU resource that jobs naming no ``resources.gpuResource`` count under, as far as
    what the CLI reads tells (it has no operator settings): the one resource the ResourceQuotas
    limit; else, with no quota on any, the one resource the jobs name; else the API's default
    (``DEFAULT_GPU_RESOURCE``), also when several resources say different things."""
    limited = {r for q in quotas for r in map(_limited_resource, _hard(q)) if r}
    named = limited or {r for r in map(_named_resource, jobs) if r}
    return next(iter(named)) if len(named) == 1 else DEFAULT_GPU_RESOURCE


def top_rows(jobs: Iterable[Job], quotas: Iterable[Mapping[str, Any]],
             default_gpu_resource: str | None = None,
             namespaces: Iterable[str] = ()) -> list[TopRow]:
    """Per (namespace, GPU resource), in that order. ``namespaces`` are always listed (e.g.
    the one asked for with -n), even when empty; jobs that name no ``resources.gpuResource``
    count under ``default_gpu_resource`` (None: the one the quotas and jobs tell, see
    :func:`inferred_default_gpu_resource`)."""
    jobs, quotas = list(jobs), list(quotas)
    if default_gpu_resource is None:
        default_gpu_resource = inferred_default_gpu_resource(jobs, quotas)
    rows: dict[tuple[str, str], TopRow] = {}

    def row(ns: str, res: str) -> TopRow:
        return rows.setdefault((ns, res), TopRow(
            namespace=ns, gpuResource=res, allocated=0, quotaHard=None, quotaUsed=None,
            running=0, queued=0, queuedGpus=0, queue=[], quotaFree=None))

    for ns in namespaces:
        row(ns, default_gpu_resource)
    for q in quotas:
        ns = (q.get("metadata") or {}).get("namespace", "")
        used = (q.get("status") or {}).get("used") or {}
        for key, value in _hard(q).items():
            res = _limited_resource(key)
            if res is None:
                continue
            r = row(ns, res)
            h, u = _quantity(value), _quantity(used.get(key))
            if h is not None:
                r["quotaHard"] = h if r["quotaHard"] is None else min(r["quotaHard"], h)
            if u is not None:
                r["quotaUsed"] = u if r["quotaUsed"] is None else max(r["quotaUsed"], u)
    for j in jobs:
        ns = (j.get("metadata") or {}).get("namespace", "")
        r, phase = row(ns, _named_resource(j) or default_gpu_resource), phase_of(j)
        if phase in ALLOCATED_PHASES:
            r["allocated"] += total_gpus(j)
            r["running"] += 1
        elif phase in ("Queued", "Pending"):
            r["queued"] += 1
            r["queuedGpus"] += total_gpus(j)
            q = status_of(j).get("queue") or {}
            r["queue"].append(QueueEntry(
                name=(j.get("metadata") or {}).get("name"), position=queue_place(q),
                gpus=total_gpus(j), priority=priority_of(j), reason=q.get("reason", "")))
    for r in rows.values():
        r["queue"].sort(key=lambda e: (e["position"] is None, e["position"] or 0, e["name"]))
        if r["quotaHard"] is not None:
            r["quotaFree"] = max(0.0, r["quotaHard"] - (r["quotaUsed"] or 0.0))
    return [rows[k] for k in sorted(rows)]
