"""Pure: the cluster as listed -> admission Snapshot -> one JobDecision per job.

Bridges the state machine (reconcile.py) and the admission policy (admission/): which jobs are
waiting, which hold GPUs, what nodes and quotas have free, and what admit() decided for each.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .admission import (
    Policy,
    QueuedJob,
    RunningJob,
    Snapshot,
    Toleration,
    admit,
)
from .admission.snapshot import nodes_from_k8s, quotas_from_k8s
from .api.job import FineTuneJob
from .reconcile import JobDecision, wants_admission
from .settings import OperatorSettings
from .status import attempt_of, parse_time

HOLDING_PHASES = ("Admitted", "Running", "Preempting")


@dataclass
class DecisionSet:
    by_uid: dict[str, JobDecision] = field(default_factory=dict)
    quotas: dict[str, float] = field(default_factory=dict)  # namespace -> hard GPUs (metrics)

    def get(self, uid: str, default: JobDecision) -> JobDecision:
        return self.by_uid.get(uid, default)


def _resource(job: FineTuneJob, settings: OperatorSettings) -> str:
    return job.spec.resources.gpu_resource or settings.gpu_resource


def _tolerations(job: FineTuneJob) -> tuple[Toleration, ...]:
    return tuple(Toleration(key=t.key or "", operator=t.operator or "Equal",
                            value=t.value or "", effect=t.effect or "")
                 for t in job.spec.resources.tolerations)


def _created(job: FineTuneJob, now: dt.datetime) -> dt.datetime:
    return parse_time(job.metadata.creation_timestamp) or now


def _active_current(job: FineTuneJob, pods: list[dict]) -> list[dict]:
    return [p for p in pods if attempt_of(p) == job.status.attempt
            and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]


def holds_gpus(job: FineTuneJob, pods: list[dict]) -> bool:
    return job.status.phase in HOLDING_PHASES or bool(_active_current(job, pods))


def build_snapshot(jobs: list[FineTuneJob], pods_by_uid: Mapping[str, list[dict]],
                   classes: Mapping[str, int], settings: OperatorSettings,
                   nodes: list[dict], active_pods: list[dict], quotas: list[dict],
                   now: dt.datetime) -> Snapshot:
    queued, running = [], []
    for job in jobs:
        cls = job.status.effective_priority_class or settings.resolve_priority_class(job)[0]
        if cls is None or cls not in classes:
            continue  # the state machine fails it with the policy error
        spec, st, pods = job.spec, job.status, pods_by_uid.get(job.metadata.uid, [])
        common: dict[str, Any] = dict(
            namespace=job.metadata.namespace, name=job.metadata.name, uid=job.metadata.uid,
            priority=classes[cls], priority_class=cls, gpus=spec.resources.gpus,
            nodes=spec.resources.nodes, gpu_resource=_resource(job, settings))
        if holds_gpus(job, pods):
            current = _active_current(job, pods)
            # this attempt's runtime: a resumed job counts from its latest admission
            times = [t for t in (parse_time(st.start_time), parse_time(st.admitted_at)) if t]
            started = max(times) if times else now
            ckpt = parse_time(st.checkpoint.saved_at) if st.checkpoint else None
            running.append(RunningJob(
                **common, started_at=started, last_checkpoint_at=ckpt,
                preempting=st.phase in ("Preempting", "Suspended") or spec.suspend,
                placement=tuple(sorted(p["spec"]["nodeName"] for p in current
                                       if p.get("spec", {}).get("nodeName"))),
                counted_in_quota=len(current) >= spec.resources.nodes))
        elif wants_admission(job, now):
            queued.append(QueuedJob(
                **common, created_at=_created(job, now),
                queued_since=parse_time(st.queued_since) or _created(job, now),
                node_selector=dict(spec.resources.node_selector),
                tolerations=_tolerations(job)))
    return Snapshot(queued=queued, running=running, nodes=nodes_from_k8s(nodes, active_pods),
                    quotas=quotas_from_k8s(quotas), policy=Policy.from_settings(settings))


def decide(jobs: list[FineTuneJob], pods_by_uid: Mapping[str, list[dict]],
           classes: Mapping[str, int], settings: OperatorSettings, nodes: list[dict],
           active_pods: list[dict], quotas: list[dict], now: dt.datetime) -> DecisionSet:
    snap = build_snapshot(jobs, pods_by_uid, classes, settings, nodes, active_pods, quotas, now)
    d = admit(snap, now)
    out = DecisionSet()
    for a in d.admit:
        out.by_uid[a.job.uid] = JobDecision(admit=True)
    for pr in d.preempt:
        out.by_uid[pr.victim.uid] = JobDecision(preempt=pr.reason)
    for w in d.waiting:
        out.by_uid[w.job.uid] = JobDecision(position=w.position, reason=w.reason,
                                            code=str(w.code))
    for i in d.impossible:
        out.by_uid[i.job.uid] = JobDecision(impossible=i.reason)
    res = settings.gpu_resource
    for q in snap.quotas:
        if q.resource == res:
            out.quotas[q.namespace] = min(out.quotas.get(q.namespace, q.hard), q.hard)
    return out


def policy_error(job: FineTuneJob, settings: OperatorSettings,
                 classes: Mapping[str, int]) -> tuple[str | None, str | None]:
    """(priority class, error): not allowed for the namespace, or not installed."""
    cls, err = settings.resolve_priority_class(job)
    if err or cls is None:
        return cls, err
    if cls not in classes:
        return cls, (f"PriorityClass {cls} does not exist in the cluster; the platform team "
                     "installs the finetune-* classes with the Helm chart, or pick an existing "
                     "class in spec.priorityClassName")
    return cls, None
